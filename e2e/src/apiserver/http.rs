//! HTTP: plain HTTP/1.1 with hyper, Kubernetes REST paths to store operations, JSON bodies,
//! streamed watch bodies.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Config;
use super::admission;
use super::auth::{Auth, Identity};
use super::discovery;
use super::events;
use super::object::{now_unix, rfc3339};
use super::openapi;
use super::paging;
use super::patch::PatchType;
use super::rbac::{self, Policy, User};
use super::resources::{Registry, ResourceType};
use super::selector::{FieldSelector, LabelSelector, Selectors};
use super::status::ApiError;
use super::store::{Store, Sub};
use super::table::{table, wants_table};
use super::watch::{self, WatchSpec};

/// Request bodies larger than this are refused (the real server's limit is 3 MiB too).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// A response body: one buffer, or a watch stream.
pub enum Body {
    /// The whole body (taken when sent).
    Full(Option<Bytes>),
    /// Chunks until the sender ends.
    Stream(mpsc::Receiver<Bytes>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => http_body::SizeHint::with_exact(0),
            Body::Stream(_) => http_body::SizeHint::default(),
        }
    }
}

fn respond(code: u16, v: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Body::Full(Some(Bytes::from(bytes))));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(e: &ApiError) -> Response<Body> {
    respond(e.code(), &e.to_status())
}

/// `%XX` and `+` decoding of a query component.
fn decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// Where a resource request points.
struct Target<'r> {
    rt: &'r ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

/// Resolves the segments after `/api/v1` or `/apis/<group>/<version>`.
fn resolve<'r>(
    reg: &'r Registry,
    group: &str,
    version: &str,
    segs: &[&str],
) -> Result<Target<'r>, ApiError> {
    let find = |p: &str| reg.find(group, version, p).ok_or(ApiError::NoSuchPath);
    let namespaced_list = |segs: &[&str]| {
        segs.len() >= 3
            && segs[0] == "namespaces"
            && reg
                .find(group, version, segs[2])
                .is_some_and(|t| t.namespaced)
    };
    let t = if namespaced_list(segs) {
        Target {
            rt: find(segs[2])?,
            namespace: Some(segs[1].to_owned()),
            name: segs.get(3).map(|s| (*s).to_owned()),
            sub: segs.get(4).map(|s| (*s).to_owned()),
        }
    } else {
        match segs {
            [p] | [p, _] | [p, _, _] => Target {
                rt: find(p)?,
                namespace: None,
                name: segs.get(1).map(|s| (*s).to_owned()),
                sub: segs.get(2).map(|s| (*s).to_owned()),
            },
            _ => return Err(ApiError::NoSuchPath),
        }
    };
    if segs.len() > 5 || (t.rt.namespaced && t.namespace.is_none() && t.name.is_some()) {
        return Err(ApiError::NoSuchPath);
    }
    if !t.rt.namespaced && t.namespace.is_some() {
        return Err(ApiError::NoSuchPath);
    }
    match t.sub.as_deref() {
        None => {}
        Some("status") if t.rt.status => {}
        // The TokenRequest API (`kubectl create token`).
        Some("token") if t.rt.group.is_empty() && t.rt.plural == "serviceaccounts" => {}
        Some(_) => return Err(ApiError::NoSuchPath),
    }
    Ok(t)
}

/// The server: the kinds it serves, the store, and its settings.
pub struct Server {
    /// Served kinds.
    pub registry: Registry,
    /// Objects.
    pub store: Arc<Store>,
    /// Settings.
    pub config: Config,
    /// Tokens and the record of refused requests.
    pub auth: Auth,
}

impl Server {
    /// Answers one request (errors become Status responses).
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let resp = match self.route(req).await {
            Ok(r) => r,
            Err(e) => error(&e),
        };
        if self.config.log_requests {
            eprintln!("{method} {uri} -> {}", resp.status().as_u16());
        }
        resp
    }

    /// Who makes the request: 401 for a token this server did not issue or whose
    /// ServiceAccount is gone.
    fn authenticate(&self, req: &Request<Incoming>) -> Result<User, ApiError> {
        let header = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let user = match self.auth.identify(header) {
            Identity::Admin => User::admin(),
            Identity::Anonymous => User::anonymous(),
            Identity::ServiceAccount(ns, name) => {
                let sa = self.registry.find("", "v1", "serviceaccounts");
                match sa.map(|rt| self.store.get(rt, &ns, &name)) {
                    Some(Ok(_)) => User::service_account(&ns, &name),
                    _ => User::anonymous(),
                }
            }
            Identity::Invalid => User::anonymous(),
        };
        if user == User::anonymous() && header.is_some() {
            self.auth.refuse(401, &user, "Unauthorized");
            return Err(ApiError::Unauthorized);
        }
        Ok(user)
    }

    /// The stored Roles, ClusterRoles and bindings.
    fn policy(&self) -> Policy {
        let all = |plural: &str| {
            self.registry
                .find("rbac.authorization.k8s.io", "v1", plural)
                .map(|rt| self.store.list(rt, None, &Selectors::default()).0)
                .unwrap_or_default()
        };
        Policy {
            roles: all("roles"),
            cluster_roles: all("clusterroles"),
            role_bindings: all("rolebindings"),
            cluster_role_bindings: all("clusterrolebindings"),
        }
    }

    /// 401 for anonymous requests RBAC refuses, 403 with the real message for the others;
    /// every refusal is recorded.
    fn authorize(&self, user: &User, attrs: &rbac::Request) -> Result<(), ApiError> {
        if !self.auth.enabled() || self.policy().allows(user, attrs) {
            return Ok(());
        }
        if *user == User::anonymous() {
            self.auth.refuse(401, user, "Unauthorized");
            return Err(ApiError::Unauthorized);
        }
        let message = attrs.forbidden_message(user);
        self.auth.refuse(403, user, &message);
        let (resource, name) = match attrs {
            rbac::Request::Resource {
                group,
                resource,
                name,
                ..
            } => (
                if group.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}.{group}")
                },
                name.clone(),
            ),
            rbac::Request::NonResource { .. } => (String::new(), String::new()),
        };
        Err(ApiError::Forbidden {
            resource,
            name,
            message,
        })
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let get = req.method() == Method::GET;
        let reg = &self.registry;
        let user = self.authenticate(&req)?;
        let resource_request = matches!(
            segs.as_slice(),
            ["api", "v1", _, ..] | ["apis", _, _, _, ..]
        );
        if !resource_request {
            self.authorize(
                &user,
                &rbac::Request::NonResource {
                    verb: req.method().as_str().to_lowercase(),
                    path: if path.is_empty() {
                        "/".into()
                    } else {
                        path.clone()
                    },
                },
            )?;
        }
        match segs.as_slice() {
            ["version"] if get => return Ok(respond(200, &discovery::version())),
            ["healthz" | "readyz" | "livez"] if get => {
                let mut r = Response::new(Body::Full(Some(Bytes::from_static(b"ok"))));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain"),
                );
                return Ok(r);
            }
            ["api"] if get => return Ok(respond(200, &discovery::core_versions())),
            ["api", "v1"] if get => return Ok(respond(200, &discovery::resources(reg, "", "v1"))),
            ["apis"] if get => return Ok(respond(200, &discovery::groups(reg))),
            ["apis", g] if get => {
                return discovery::one_group(reg, g)
                    .map(|v| respond(200, &v))
                    .ok_or(ApiError::NoSuchPath);
            }
            ["apis", g, v] if get && reg.has_group_version(g, v) => {
                return Ok(respond(200, &discovery::resources(reg, g, v)));
            }
            ["openapi", "v3"] if get => return Ok(respond(200, &openapi::index(reg))),
            ["openapi", "v2"] if get => {
                let mut r = Response::new(Body::Full(Some(Bytes::new())));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/octet-stream"),
                );
                return Ok(r);
            }
            ["openapi", "v3", "api", v] if get => {
                return openapi::group_version(reg, "", v)
                    .map(|d| respond(200, &d))
                    .ok_or(ApiError::NoSuchPath);
            }
            ["openapi", "v3", "apis", g, v] if get => {
                return openapi::group_version(reg, g, v)
                    .map(|d| respond(200, &d))
                    .ok_or(ApiError::NoSuchPath);
            }
            ["debug", "berth", "refusals"] if get => {
                let all: Vec<Value> = self
                    .auth
                    .refusals()
                    .into_iter()
                    .map(|r| json!({"code": r.code, "user": r.user, "message": r.message}))
                    .collect();
                return Ok(respond(200, &Value::Array(all)));
            }
            ["api", "v1", rest @ ..] if !rest.is_empty() => {
                let t = resolve(reg, "", "v1", rest)?;
                self.authorize(&user, &attributes(&t, &req))?;
                return self.resource(t, req).await;
            }
            ["apis", g, v, rest @ ..] if !rest.is_empty() => {
                let t = resolve(reg, g, v, rest)?;
                self.authorize(&user, &attributes(&t, &req))?;
                return self.resource(t, req).await;
            }
            _ => {}
        }
        Err(ApiError::NoSuchPath)
    }

    async fn resource(
        &self,
        t: Target<'_>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let q = parse_query(req.uri().query());
        if q.get("dryRun").is_some_and(|v| !v.is_empty()) {
            return Err(ApiError::BadRequest(
                "dryRun is not supported by this test double (berth-e2e fake-apiserver)".into(),
            ));
        }
        let header = |h: hyper::header::HeaderName| {
            req.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let accept = header(hyper::header::ACCEPT);
        let mut content_type = header(hyper::header::CONTENT_TYPE);
        let method = req.method().clone();
        let mut body = read_body(req.into_body()).await?;
        if content_type.starts_with(super::protobuf::MEDIA_TYPE) && t.sub.is_none() {
            // client-go's typed clients (Helm's release storage) send built-in kinds this way
            // (a TokenRequest, a subresource, is decoded where it is served).
            let v =
                super::protobuf::to_json(&body).map_err(|x| ApiError::BadRequest(x.to_string()))?;
            body = Bytes::from(v.to_string());
            content_type = "application/json".into();
        }
        let rt = t.rt;
        let ns = t.namespace.clone().unwrap_or_default();
        let sub = if t.sub.is_some() {
            Sub::Status
        } else {
            Sub::Main
        };
        let store = &self.store;
        if q.get("fieldValidation").map(String::as_str) == Some("Strict")
            && let Some(schema) = &rt.schema
            && matches!(method, Method::POST | Method::PUT | Method::PATCH)
            && t.sub.is_none()
            && !content_type.contains("json-patch")
            && let Ok(obj) = parse_object(&body)
        {
            strict(rt, schema, &obj, content_type.contains("apply-patch"))?;
        }
        if t.sub.as_deref() == Some("token") {
            return match (method, t.name.as_deref()) {
                (Method::POST, Some(name)) => {
                    self.token_request(rt, &ns, name, &content_type, &body)
                }
                _ => Err(ApiError::MethodNotAllowed),
            };
        }
        match (method, t.name.as_deref()) {
            (Method::GET, None) => {
                let selectors = Selectors {
                    labels: LabelSelector::parse(q.get("labelSelector").map_or("", |s| s))?,
                    fields: FieldSelector::parse(q.get("fieldSelector").map_or("", |s| s))?,
                };
                let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
                if flag("watch") {
                    let rv = match q.get("resourceVersion").map(String::as_str) {
                        None | Some("") => None,
                        Some(s) => Some(s.parse::<u64>().map_err(|_| {
                            ApiError::BadRequest(format!("invalid resourceVersion {s:?}"))
                        })?),
                    };
                    let timeout = q
                        .get("timeoutSeconds")
                        .and_then(|s| s.parse::<u64>().ok())
                        .map(Duration::from_secs)
                        .unwrap_or(self.config.max_watch)
                        .min(self.config.max_watch);
                    let spec = WatchSpec {
                        rt: rt.clone(),
                        namespace: t.namespace.clone(),
                        selectors,
                        resource_version: rv,
                        send_initial_events: flag("sendInitialEvents"),
                        bookmarks: flag("allowWatchBookmarks"),
                        timeout,
                        bookmark_every: self.config.bookmark_every,
                        table: wants_table(&accept),
                    };
                    let rx = watch::start(store.clone(), spec);
                    let mut r = Response::new(Body::Stream(rx));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    return Ok(r);
                }
                let (mut items, rv) = store.list(rt, t.namespace.as_deref(), &selectors);
                if rt.group.is_empty()
                    && rt.kind == "Event"
                    && let Some(new_api) = self.registry.find("events.k8s.io", "v1", "events")
                {
                    let (new_events, _) =
                        store.list(new_api, t.namespace.as_deref(), &Selectors::default());
                    items.extend(
                        new_events
                            .iter()
                            .map(events::to_core)
                            .filter(|e| selectors.matches(e)),
                    );
                }
                // Pagination: a continued list keeps the first page's resourceVersion and
                // expires with the history, as the real one does with etcd's compaction.
                let from = match q.get("continue").filter(|c| !c.is_empty()) {
                    Some(token) => {
                        let c = paging::Continue::decode(token)?;
                        if c.rv < store.oldest_rv() {
                            return Err(ApiError::Expired(paging::EXPIRED.into()));
                        }
                        Some(c)
                    }
                    None => None,
                };
                let rv = from.as_ref().map_or(rv, |c| c.rv);
                let limit = q
                    .get("limit")
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(0);
                let (items, token, remaining) = paging::page(items, limit, from.as_ref(), rv);
                let mut metadata = json!({ "resourceVersion": rv.to_string() });
                if let Some(t) = token {
                    metadata["continue"] = json!(t);
                    metadata["remainingItemCount"] = json!(remaining);
                }
                if wants_table(&accept) {
                    let mut t = table(rt, &items, rv, now_unix());
                    if let Some(c) = metadata.get("continue") {
                        t["metadata"]["continue"] = c.clone();
                    }
                    return Ok(respond(200, &t));
                }
                Ok(respond(
                    200,
                    &json!({
                        "kind": format!("{}List", rt.kind),
                        "apiVersion": rt.api_version(),
                        "metadata": metadata,
                        "items": items,
                    }),
                ))
            }
            (Method::GET, Some(name)) => {
                let o = store.get(rt, &ns, name)?;
                if wants_table(&accept) {
                    return Ok(respond(
                        200,
                        &table(rt, &[o], store.current_rv(), now_unix()),
                    ));
                }
                Ok(respond(200, &o))
            }
            (Method::POST, None) if t.sub.is_none() => {
                if rt.namespaced && t.namespace.is_none() {
                    return Err(ApiError::MethodNotAllowed);
                }
                let o = store.create(rt, &ns, parse_object(&body)?)?;
                Ok(respond(201, &o))
            }
            (Method::PUT, Some(name)) => {
                let o = store.update(rt, &ns, name, parse_object(&body)?, sub)?;
                Ok(respond(200, &o))
            }
            (Method::PATCH, Some(name)) => {
                let pt = PatchType::from_content_type(&content_type)?;
                let patch = pt.parse_body(&body)?;
                let (o, created) = store.patch(rt, &ns, name, pt, &patch, sub)?;
                Ok(respond(if created { 201 } else { 200 }, &o))
            }
            (Method::DELETE, Some(name)) if t.sub.is_none() => {
                let options = if body.is_empty() {
                    json!({})
                } else {
                    parse_object(&body)?
                };
                let o = store.delete(rt, &ns, name, &options)?;
                Ok(respond(200, &o))
            }
            _ => Err(ApiError::MethodNotAllowed),
        }
    }
}

/// `fieldValidation=Strict`: 400 for fields the CRD's schema does not name, worded as the real
/// server words them for a decoded body and for a server-side apply.
fn strict(rt: &ResourceType, schema: &Value, obj: &Value, apply: bool) -> Result<(), ApiError> {
    let unknown = admission::unknown_fields(schema, obj);
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ApiError::BadRequest(if apply {
        let fields: Vec<String> = unknown
            .iter()
            .map(|f| format!(".{f}: field not declared in schema"))
            .collect();
        format!(
            "failed to create typed patch object ({}, Kind={}): {}",
            rt.api_version(),
            rt.kind,
            fields.join(", ")
        )
    } else {
        let fields: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        format!(
            "{kind} in version {v:?} cannot be handled as a {kind}: strict decoding error: {}",
            fields.join(", "),
            kind = rt.kind,
            v = rt.version
        )
    }))
}

/// The authorizer's attributes of a resource request (`RequestInfo` in the real server): the
/// verb from the method, `watch` and the name; a list or watch narrowed to one name by a
/// `metadata.name` field selector counts as a request on that name, so resourceNames apply.
fn attributes(t: &Target<'_>, req: &Request<Incoming>) -> rbac::Request {
    let q = parse_query(req.uri().query());
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let mut name = t.name.clone().unwrap_or_default();
    let verb = match (req.method().clone(), t.name.is_some()) {
        (Method::GET, true) => "get",
        (Method::GET, false) => {
            if let Some(n) = q.get("fieldSelector").and_then(|f| {
                f.split(',').find_map(|term| {
                    term.strip_prefix("metadata.name==")
                        .or_else(|| term.strip_prefix("metadata.name="))
                })
            }) {
                name = n.to_owned();
            }
            if flag("watch") { "watch" } else { "list" }
        }
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, true) => "delete",
        (Method::DELETE, false) => "deletecollection",
        (m, _) => {
            return rbac::Request::Resource {
                verb: m.as_str().to_lowercase(),
                group: t.rt.group.clone(),
                resource: t.rt.plural.clone(),
                subresource: t.sub.clone().unwrap_or_default(),
                namespace: t.namespace.clone().unwrap_or_default(),
                name,
            };
        }
    };
    rbac::Request::Resource {
        verb: verb.to_owned(),
        group: t.rt.group.clone(),
        resource: t.rt.plural.clone(),
        subresource: t.sub.clone().unwrap_or_default(),
        namespace: t.namespace.clone().unwrap_or_default(),
        // A create names no object (the name is in the body): resourceNames cannot limit it.
        name: if verb == "create" {
            String::new()
        } else {
            name
        },
    }
}

impl Server {
    /// `POST .../serviceaccounts/<name>/token`: a token for an existing ServiceAccount. The
    /// token lasts as long as the ServiceAccount (the requested expiry is echoed, not
    /// enforced). `kubectl create token` sends protobuf, which this server cannot read: such a
    /// body is taken as an empty spec.
    fn token_request(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        self.store.get(rt, ns, name)?;
        let spec = if body.is_empty() || content_type.contains("protobuf") {
            json!({})
        } else {
            parse_object(body)?
                .get("spec")
                .cloned()
                .unwrap_or(json!({}))
        };
        let seconds = spec
            .get("expirationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(3600);
        let token = self.auth.issue(ns, name);
        Ok(respond(
            201,
            &json!({
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": ns, "creationTimestamp": rfc3339(now_unix())},
                "spec": spec,
                "status": {"token": token, "expirationTimestamp": rfc3339(now_unix() + seconds)},
            }),
        ))
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::TooLarge)
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// A JSON (or YAML) object body.
fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(json_err) => serde_yaml_ng::from_slice(body).map_err(|_| {
            ApiError::BadRequest(format!("the request body is not a JSON object: {json_err}"))
        })?,
    };
    if !v.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be an object".into(),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_components_are_decoded() {
        let q = parse_query(Some("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1&x"));
        assert_eq!(
            q.get("labelSelector").map(String::as_str),
            Some("app=web,tier in (a)")
        );
        assert_eq!(q.get("watch").map(String::as_str), Some("1"));
        assert_eq!(q.get("x").map(String::as_str), Some(""));
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%4"), "%4");
    }

    #[test]
    fn paths_resolve_to_resources() -> Result<(), ApiError> {
        let reg = Registry::builtin();
        let t = resolve(
            &reg,
            "",
            "v1",
            &["namespaces", "demo", "services", "web", "status"],
        )?;
        assert_eq!(
            (
                t.rt.plural.as_str(),
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("services", Some("demo"), Some("web"), Some("status"))
        );
        let t = resolve(&reg, "", "v1", &["namespaces", "demo", "status"])?;
        assert_eq!(
            (t.rt.plural.as_str(), t.name.as_deref()),
            ("namespaces", Some("demo"))
        );
        let t = resolve(&reg, "", "v1", &["services"])?;
        assert!(t.namespace.is_none() && t.name.is_none());
        assert!(resolve(&reg, "", "v1", &["services", "web"]).is_err());
        assert!(resolve(&reg, "", "v1", &["nodes", "n1", "proxy"]).is_err());
        assert!(resolve(&reg, "", "v1", &["secrets", "x", "status"]).is_err());
        Ok(())
    }
}
