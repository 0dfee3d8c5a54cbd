//! API errors as the Kubernetes API server words them: a `metav1.Status` with reason and code.

use serde_json::{Value, json};

/// An error a request ends with; rendered as a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 404: the object (or namespace, or path) does not exist.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// Plural resource name, with group (`eips.berth.dev`).
        resource: String,
        /// Object name.
        name: String,
    },
    /// 404 for a path that names no resource.
    #[error("the server could not find the requested resource")]
    NoSuchPath,
    /// 409: create of a name that exists.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// Plural resource name, with group.
        resource: String,
        /// Object name.
        name: String,
    },
    /// 409: a write with a stale resourceVersion or a failed precondition.
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {why}")]
    Conflict {
        /// Plural resource name, with group.
        resource: String,
        /// Object name.
        name: String,
        /// What did not match.
        why: String,
    },
    /// 422: the object is not acceptable.
    #[error("{resource} \"{name}\" is invalid: {why}")]
    Invalid {
        /// Plural resource name, with group.
        resource: String,
        /// Object name (may be empty).
        name: String,
        /// What is wrong.
        why: String,
    },
    /// 422 from admission: field errors (`spec.address: Invalid value: ...`), each also a
    /// `details.causes` entry, which kubectl prints.
    #[error("{resource} \"{name}\" is invalid: {}", join_fields(.errors))]
    InvalidFields {
        /// Kind with group (`Eip.berth.dev`), as the real server names it here.
        resource: String,
        /// Object name.
        name: String,
        /// `<field>: <what>` each.
        errors: Vec<String>,
    },
    /// 400: the request cannot be understood.
    #[error("{0}")]
    BadRequest(String),
    /// 410: the resourceVersion is older than the retained history.
    #[error("too old resource version: {requested} ({oldest})")]
    Gone {
        /// What the client asked for.
        requested: u64,
        /// The oldest version a watch can still start from.
        oldest: u64,
    },
    /// 410 with its own message (an expired continue token).
    #[error("{0}")]
    Expired(String),
    /// 405: the verb is not served on this path.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 415: a patch type this server does not know.
    #[error(
        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
    )]
    UnsupportedMediaType,
    /// 413: the body is larger than the server reads.
    #[error("the request body is too large")]
    TooLarge,
    /// 401: no valid credentials.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403: RBAC does not allow the request.
    #[error("{message}")]
    Forbidden {
        /// Plural resource name, with group (`services`, `eips.berth.dev`); empty for paths.
        resource: String,
        /// Object name (may be empty).
        name: String,
        /// The whole message (see `rbac::Request::forbidden_message`).
        message: String,
    },
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } | ApiError::NoSuchPath => 404,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::Invalid { .. } | ApiError::InvalidFields { .. } => 422,
            ApiError::BadRequest(_) => 400,
            ApiError::Gone { .. } | ApiError::Expired(_) => 410,
            ApiError::MethodNotAllowed => 405,
            ApiError::UnsupportedMediaType => 415,
            ApiError::TooLarge => 413,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden { .. } => 403,
        }
    }

    /// The `reason` field (what clients such as kube-rs and kubectl branch on).
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoSuchPath => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid { .. } | ApiError::InvalidFields { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Gone { .. } | ApiError::Expired(_) => "Expired",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType => "UnsupportedMediaType",
            ApiError::TooLarge => "RequestEntityTooLarge",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden { .. } => "Forbidden",
        }
    }

    /// The `metav1.Status` object.
    pub fn to_status(&self) -> Value {
        let mut details = json!({});
        match self {
            ApiError::NotFound { resource, name }
            | ApiError::AlreadyExists { resource, name }
            | ApiError::Conflict { resource, name, .. }
            | ApiError::Invalid { resource, name, .. }
            | ApiError::Forbidden { resource, name, .. } => {
                let (kind, group) = resource.split_once('.').unwrap_or((resource.as_str(), ""));
                details = json!({ "name": name, "group": group, "kind": kind });
            }
            ApiError::InvalidFields {
                resource,
                name,
                errors,
            } => {
                let (kind, group) = resource.split_once('.').unwrap_or((resource.as_str(), ""));
                let causes: Vec<Value> = errors.iter().map(|e| cause(e)).collect();
                details = json!({ "name": name, "group": group, "kind": kind, "causes": causes });
            }
            _ => {}
        }
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "details": details,
            "code": self.code(),
        })
    }
}

/// One error or `[a, b]`, as `ToAggregate().Error()` joins field errors.
fn join_fields(errors: &[String]) -> String {
    match errors {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// A `StatusCause` from `<field>: <type>[: detail]`.
fn cause(error: &str) -> Value {
    let (field, message) = error.split_once(": ").unwrap_or(("", error));
    let reason = [
        ("Invalid value", "FieldValueInvalid"),
        ("Required value", "FieldValueRequired"),
        ("Unsupported value", "FieldValueNotSupported"),
        ("Too long", "FieldValueTooLong"),
        ("Too many", "FieldValueTooMany"),
        ("Forbidden", "FieldValueForbidden"),
        ("Duplicate value", "FieldValueDuplicate"),
    ]
    .iter()
    .find(|(prefix, _)| message.starts_with(prefix))
    .map_or("FieldValueInvalid", |(_, r)| r);
    json!({ "reason": reason, "message": message, "field": field })
}
