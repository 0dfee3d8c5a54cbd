//! Admission of custom resources as the apiextensions API server does it, after defaulting:
//! pruning of fields the CRD's structural schema does not name, OpenAPI v3 schema validation,
//! then the `x-kubernetes-validations` CEL rules (through `kube-cel`, the library the
//! operator's own admission tests use), with the real server's field error texts
//! (`k8s.io/apimachinery/pkg/util/validation/field` and the apiextensions conversion of
//! kube-openapi's results).
//!
//! Validated: `type` (with `nullable`, `x-kubernetes-int-or-string`,
//! `x-kubernetes-preserve-unknown-fields`), `required`, `enum`, `minimum`/`maximum` (and their
//! exclusive forms), `minLength`/`maxLength`, `minItems`/`maxItems`, `properties`,
//! `additionalProperties`, `items`. Not validated: `pattern`, `format` (the CRDs here use only
//! numeric formats and `date-time`), `uniqueItems`, `x-kubernetes-list-type`, `oneOf`/`anyOf`,
//! ratcheting of unchanged invalid fields, CEL cost limits.

use std::cell::RefCell;

use kube_cel::{ErrorKind, Validator};
use serde_json::{Map, Value};

/// One field error, rendered as the real server renders it (`spec.asn: Required value`).
pub type FieldError = String;

fn quoted(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// The JSON type name of a value, as the "must be of type" errors show it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        "integer" => {
            v.is_i64()
                || v.is_u64()
                || v.as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.is_finite())
        }
        _ => true,
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Drops the fields the schema does not name (not under `x-kubernetes-preserve-unknown-fields`
/// or `additionalProperties`); at the root `apiVersion`, `kind` and `metadata` stay.
pub fn prune(schema: &Value, value: &mut Value, root: bool) {
    prune_at(schema, value, root, "", &mut Vec::new());
}

/// The fields pruning would drop (`spec.colour`), for `fieldValidation=Strict`.
pub fn unknown_fields(schema: &Value, value: &Value) -> Vec<String> {
    let mut v = value.clone();
    let mut removed = Vec::new();
    prune_at(schema, &mut v, true, "", &mut removed);
    removed
}

fn prune_at(schema: &Value, value: &mut Value, root: bool, path: &str, removed: &mut Vec<String>) {
    if flag(schema, "x-kubernetes-preserve-unknown-fields") {
        return;
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let here = child(path, &k);
                if let Some(s) = props.and_then(|p| p.get(&k)) {
                    if let Some(v) = map.get_mut(&k) {
                        prune_at(s, v, false, &here, removed);
                    }
                } else if let Some(s) = additional.filter(|a| a.is_object()) {
                    if let Some(v) = map.get_mut(&k) {
                        prune_at(s, v, false, &here, removed);
                    }
                } else if additional.and_then(Value::as_bool) != Some(true) {
                    map.remove(&k);
                    removed.push(here);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter_mut().enumerate() {
                    prune_at(s, v, false, &format!("{path}[{i}]"), removed);
                }
            }
        }
        _ => {}
    }
}

/// The OpenAPI schema errors of `value` at `path` (the root is `""`).
pub fn validate_schema(schema: &Value, value: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let at = |p: &str| {
        if p.is_empty() {
            "<root>".to_owned()
        } else {
            p.to_owned()
        }
    };
    if value.is_null() {
        if !flag(schema, "nullable") && schema.get("type").is_some() {
            let t = schema["type"].as_str().unwrap_or("");
            errs.push(format!(
                "{}: Invalid value: \"null\": {} in body must be of type {t}: \"null\"",
                at(path),
                at(path)
            ));
        }
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(value.is_string() || is_type(value, "integer")) {
            errs.push(format!(
                "{}: Invalid value: {:?}: {} in body must be of type integer,string: {:?}",
                at(path),
                type_name(value),
                at(path),
                type_name(value)
            ));
        }
        return;
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str)
        && !is_type(value, t)
    {
        errs.push(format!(
            "{}: Invalid value: {:?}: {} in body must be of type {t}: {:?}",
            at(path),
            type_name(value),
            at(path),
            type_name(value)
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(quoted).collect();
        errs.push(format!(
            "{}: Unsupported value: {}: supported values: {}",
            at(path),
            quoted(value),
            list.join(", ")
        ));
    }
    if let Some(n) = value.as_f64() {
        let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
        let fmt = |f: f64| {
            if f.fract() == 0.0 {
                format!("{}", f as i64)
            } else {
                f.to_string()
            }
        };
        if let Some(min) = bound("minimum") {
            let excl = flag(schema, "exclusiveMinimum");
            if n < min || (excl && n == min) {
                errs.push(format!(
                    "{}: Invalid value: {}: {} in body should be greater than {}{}",
                    at(path),
                    value,
                    at(path),
                    if excl { "" } else { "or equal to " },
                    fmt(min)
                ));
            }
        }
        if let Some(max) = bound("maximum") {
            let excl = flag(schema, "exclusiveMaximum");
            if n > max || (excl && n == max) {
                errs.push(format!(
                    "{}: Invalid value: {}: {} in body should be less than {}{}",
                    at(path),
                    value,
                    at(path),
                    if excl { "" } else { "or equal to " },
                    fmt(max)
                ));
            }
        }
    }
    if let Some(s) = value.as_str() {
        let chars = s.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && chars > max
        {
            errs.push(format!(
                "{}: Too long: may not be more than {max} bytes",
                at(path)
            ));
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && chars < min
        {
            errs.push(format!(
                "{}: Invalid value: {s:?}: {} in body should be at least {min} chars long",
                at(path),
                at(path)
            ));
        }
    }
    match value {
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                errs.push(format!(
                    "{}: Too many: {}: must have at most {max} items",
                    at(path),
                    items.len()
                ));
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                errs.push(format!(
                    "{}: Invalid value: {}: {} in body should have at least {min} items",
                    at(path),
                    items.len(),
                    at(path)
                ));
            }
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    validate_schema(s, v, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(map) => object(schema, map, path, errs),
        _ => {}
    }
}

fn object(schema: &Value, map: &Map<String, Value>, path: &str, errs: &mut Vec<FieldError>) {
    for r in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(r) {
            errs.push(format!("{}: Required value", child(path, r)));
        }
    }
    let props = schema.get("properties").and_then(Value::as_object);
    for (k, v) in map {
        if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(s) = props.and_then(|p| p.get(k)) {
            validate_schema(s, v, &child(path, k), errs);
        } else if let Some(s) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            validate_schema(s, v, &child(path, k), errs);
        }
    }
}

/// The schema's `type` at a dotted path (`spec.address`, `spec.excludes[0]`), for the value
/// the real server prints in a CEL rule's error.
fn type_at(schema: &Value, path: &str) -> String {
    let mut s = schema;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, index) = match part.split_once('[') {
            Some((n, _)) => (n, true),
            None => (part, false),
        };
        let next = s
            .pointer(&format!("/properties/{name}"))
            .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()));
        match next {
            Some(n) => s = n,
            None => return "object".into(),
        }
        if index && let Some(items) = s.get("items") {
            s = items;
        }
    }
    s.get("type")
        .and_then(Value::as_str)
        .unwrap_or("object")
        .to_owned()
}

thread_local! {
    // Registering every CEL function is not free; one validator per server thread.
    static CEL: RefCell<Option<Validator>> = const { RefCell::new(None) };
}

/// The failures of the schema's `x-kubernetes-validations` rules, worded as the real server
/// words them: `spec.address: Invalid value: "string": <the rule's message>`.
pub fn validate_cel(schema: &Value, value: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let result = CEL.with(|c| {
        let mut c = c.borrow_mut();
        c.get_or_insert_with(Validator::new)
            .validate(schema, value, old)
    });
    let Err(errors) = result else {
        return Vec::new();
    };
    errors
        .into_vec()
        .into_iter()
        .map(|e| {
            let path = if e.field_path.is_empty() {
                "<root>".to_owned()
            } else {
                e.field_path.trim_start_matches('.').to_owned()
            };
            match (&e.kind, e.reason.as_deref()) {
                (ErrorKind::ValidationFailure, Some("FieldValueForbidden")) => {
                    format!("{path}: Forbidden: {}", e.message)
                }
                (ErrorKind::ValidationFailure, Some("FieldValueRequired")) => {
                    format!("{path}: Required value: {}", e.message)
                }
                (ErrorKind::ValidationFailure, Some("FieldValueDuplicate")) => {
                    format!("{path}: Duplicate value: {}", e.message)
                }
                (ErrorKind::ValidationFailure, _) => format!(
                    "{path}: Invalid value: {:?}: {}",
                    type_at(schema, &path),
                    e.message
                ),
                // A rule the server cannot evaluate refuses the object (fail closed), as a
                // real server does for a runtime error.
                _ => format!(
                    "{path}: Invalid value: {:?}: rule {:?} could not be evaluated: {}",
                    type_at(schema, &path),
                    e.rule,
                    e.message
                ),
            }
        })
        .collect()
}

/// Prunes `obj` in place and returns every schema and CEL error (empty: admitted). CEL runs
/// only on a schema-valid object, as in the real server.
pub fn admit(schema: &Value, obj: &mut Value, old: Option<&Value>) -> Vec<FieldError> {
    prune(schema, obj, true);
    let mut errs = Vec::new();
    validate_schema(schema, obj, "", &mut errs);
    if errs.is_empty() {
        errs = validate_cel(schema, obj, old);
    }
    errs
}

/// The `why` of an Invalid Status for these errors: one, or `[a, b]` (`ToAggregate`).
pub fn why(errs: &[FieldError]) -> String {
    match errs {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eip_schema() -> Value {
        let text = include_str!("../../../config/crd/berth.dev_eips.yaml");
        let crd: Value = serde_yaml_ng::from_str(text).unwrap_or(Value::Null);
        crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn eip(spec: Value) -> Value {
        json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Eip", "metadata": {"name": "x"}, "spec": spec})
    }

    #[test]
    fn cel_rules_refuse_with_the_rule_message() {
        let s = eip_schema();
        let mut bad = eip(json!({"address": "300.1.1.1/24"}));
        let errs = admit(&s, &mut bad, None);
        assert_eq!(
            errs,
            vec!["spec.address: Invalid value: \"string\": spec.address must be an IP (10.0.0.5), a CIDR (10.0.0.0/24, fd00::/120) or a range of one family (10.0.0.10-10.0.0.20)".to_owned()]
        );
        let mut good = eip(json!({"address": "10.0.0.0/24"}));
        assert_eq!(admit(&s, &mut good, None), Vec::<String>::new());
    }

    #[test]
    fn schema_errors_read_like_the_real_ones() {
        let s = eip_schema();
        let mut missing = eip(json!({}));
        assert_eq!(
            admit(&s, &mut missing, None),
            vec!["spec.address: Required value"]
        );
        let mut typed = eip(json!({"address": 5}));
        assert_eq!(
            admit(&s, &mut typed, None),
            vec![
                "spec.address: Invalid value: \"integer\": spec.address in body must be of type string: \"integer\""
            ]
        );
        let mut unsupported = eip(json!({"address": "10.0.0.0/24", "protocol": "ospf"}));
        let errs = admit(&s, &mut unsupported, None);
        assert!(
            errs.len() == 1
                && errs[0]
                    .starts_with("spec.protocol: Unsupported value: \"ospf\": supported values: "),
            "{errs:?}"
        );
        let many = json!({"type": "object", "properties": {
            "n": {"type": "integer", "minimum": 1, "maximum": 10},
            "s": {"type": "string", "maxLength": 3, "minLength": 1},
            "l": {"type": "array", "maxItems": 1, "items": {"type": "string"}},
        }});
        let mut v = json!({"n": 11, "s": "four", "l": ["a", 2]});
        let errs = admit(&many, &mut v, None);
        assert_eq!(
            errs,
            vec![
                "l: Too many: 2: must have at most 1 items",
                "l[1]: Invalid value: \"integer\": l[1] in body must be of type string: \"integer\"",
                "n: Invalid value: 11: n in body should be less than or equal to 10",
                "s: Too long: may not be more than 3 bytes",
            ]
        );
        assert_eq!(why(&errs[..1]), errs[0]);
        assert!(why(&errs).starts_with("[l: Too many"));
    }

    #[test]
    fn unknown_fields_are_pruned_and_known_ones_kept() {
        let s = eip_schema();
        let mut v = eip(json!({"address": "10.0.0.0/24", "adress": "typo"}));
        v["extra"] = json!(1);
        assert!(admit(&s, &mut v, None).is_empty());
        assert_eq!(v["spec"], json!({"address": "10.0.0.0/24"}));
        assert!(v.get("extra").is_none());
        assert_eq!(v["metadata"]["name"], "x");
        let mut typo = eip(json!({"address": "10.0.0.0/24", "adress": "typo"}));
        typo["extra"] = json!(1);
        assert_eq!(unknown_fields(&s, &typo), vec!["extra", "spec.adress"]);
        let open = json!({"type": "object", "properties": {
            "m": {"type": "object", "additionalProperties": {"type": "string"}},
            "any": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        }});
        let mut v = json!({"m": {"a": "b"}, "any": {"z": 1}});
        assert!(admit(&open, &mut v, None).is_empty());
        assert_eq!(v, json!({"m": {"a": "b"}, "any": {"z": 1}}));
    }
}

/// The longest Event note (`NoteLengthLimit` in the real validation, in bytes).
pub const NOTE_LENGTH_LIMIT: usize = 1024;

/// The checks of built-in kinds this server makes: the Event note limit (events.k8s.io
/// `note`, and core/v1 `message` on Events with an `eventTime`, where the real legacy
/// validation applies it). The real path is `message` for both: the note is the internal
/// type's Message.
pub fn validate_builtin(group: &str, kind: &str, obj: &Value) -> Vec<FieldError> {
    let text = match (group, kind) {
        ("events.k8s.io", "Event") => obj.get("note"),
        ("", "Event") if obj.get("eventTime").is_some_and(|t| !t.is_null()) => obj.get("message"),
        _ => None,
    };
    match text.and_then(Value::as_str) {
        Some(t) if t.len() > NOTE_LENGTH_LIMIT => vec![format!(
            "message: Invalid value: \"\": can have at most {NOTE_LENGTH_LIMIT} characters"
        )],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod builtin_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_notes_longer_than_1_kib_are_refused() {
        let at_limit = "x".repeat(NOTE_LENGTH_LIMIT);
        let over = "é".repeat(NOTE_LENGTH_LIMIT / 2 + 1); // 1026 bytes, 513 characters
        assert!(validate_builtin("events.k8s.io", "Event", &json!({"note": at_limit})).is_empty());
        assert_eq!(
            validate_builtin("events.k8s.io", "Event", &json!({"note": over})),
            vec!["message: Invalid value: \"\": can have at most 1024 characters"]
        );
        let core = json!({"message": "x".repeat(2000), "eventTime": "2026-01-01T00:00:00.000000Z"});
        assert_eq!(validate_builtin("", "Event", &core).len(), 1);
        // Legacy core Events without eventTime are not limited (as in the real validation).
        assert!(validate_builtin("", "Event", &json!({"message": "x".repeat(2000)})).is_empty());
    }
}
