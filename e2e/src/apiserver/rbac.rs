//! Authorization as Kubernetes' RBAC authorizer decides it, from the Roles, ClusterRoles,
//! RoleBindings and ClusterRoleBindings stored in the server. Pure: the caller passes the
//! objects; nothing here reads the store or the request.
//!
//! Implemented as in `k8s.io/kubernetes/plugin/pkg/auth/authorizer/rbac`: a request is allowed
//! when a rule of a role bound to the user matches it (verbs, apiGroups, resources with
//! `resource/subresource` and `*/subresource`, resourceNames, nonResourceURLs with a trailing
//! `*`); RoleBindings grant only in their namespace, ClusterRoleBindings everywhere; subjects
//! are Users, Groups and ServiceAccounts (a ServiceAccount subject without a namespace takes the
//! RoleBinding's). `system:masters` is a superuser, as the real server's authorizer chain makes
//! it. The bootstrap roles a real cluster has are reduced to what every authenticated user gets
//! from `system:discovery`, `system:basic-user` and `system:public-info-viewer`: discovery,
//! `/version`, health and OpenAPI paths. Not implemented: aggregated ClusterRoles
//! (`aggregationRule`), escalation checks on writes of roles and bindings, impersonation.

use serde_json::Value;

/// Who makes a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `system:serviceaccount:<ns>:<name>`, `kubernetes-admin`, `system:anonymous`.
    pub name: String,
    /// Groups (`system:authenticated`, `system:serviceaccounts:<ns>`, ...).
    pub groups: Vec<String>,
}

impl User {
    /// The identity of a ServiceAccount token, as the real token authenticator makes it.
    pub fn service_account(ns: &str, name: &str) -> Self {
        User {
            name: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        }
    }

    /// The cluster administrator (a member of `system:masters`).
    pub fn admin() -> Self {
        User {
            name: "kubernetes-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    /// A request without credentials.
    pub fn anonymous() -> Self {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

/// What a request asks to do (the authorizer's attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A request on a resource.
    Resource {
        /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
        verb: String,
        /// API group, empty for core.
        group: String,
        /// Plural resource (`services`).
        resource: String,
        /// Subresource (`status`, `token`), empty for none.
        subresource: String,
        /// Namespace, empty for cluster-scoped requests and lists across namespaces.
        namespace: String,
        /// Object name, empty for lists (unless a `metadata.name` field selector names one)
        /// and creates.
        name: String,
    },
    /// A request on a path that names no resource (`/version`, `/apis`).
    NonResource {
        /// Lower-case HTTP verb (`get`).
        verb: String,
        /// The path.
        path: String,
    },
}

impl Request {
    /// The message of a 403, word for word what the real server says (`forbiddenMessage` and
    /// `NewForbidden` in k8s.io/apiserver).
    pub fn forbidden_message(&self, user: &User) -> String {
        match self {
            Request::NonResource { verb, path } => format!(
                "forbidden: User {:?} cannot {verb} path {path:?}",
                user.name
            ),
            Request::Resource {
                verb,
                group,
                resource,
                subresource,
                namespace,
                name,
            } => {
                let gr = if group.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}.{group}")
                };
                let combined = if subresource.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}/{subresource}")
                };
                let scope = if namespace.is_empty() {
                    "at the cluster scope".to_owned()
                } else {
                    format!("in the namespace {namespace:?}")
                };
                let what = if name.is_empty() {
                    gr
                } else {
                    format!("{gr} {name:?}")
                };
                format!(
                    "{what} is forbidden: User {:?} cannot {verb} resource {combined:?} in API group {group:?} {scope}",
                    user.name
                )
            }
        }
    }
}

/// The stored RBAC objects (as JSON, the way the store holds them).
#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// Roles (namespaced).
    pub roles: Vec<Value>,
    /// ClusterRoles.
    pub cluster_roles: Vec<Value>,
    /// RoleBindings (namespaced).
    pub role_bindings: Vec<Value>,
    /// ClusterRoleBindings.
    pub cluster_role_bindings: Vec<Value>,
}

/// Paths every authenticated user may read (`system:discovery`, `system:basic-user`,
/// `system:public-info-viewer` in a real cluster).
const DISCOVERY: [&str; 9] = [
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/openapi",
    "/openapi/*",
    "/version",
    "/healthz",
    "/readyz",
];

/// Paths a request without credentials may read (`system:public-info-viewer`).
const PUBLIC: [&str; 4] = ["/version", "/healthz", "/readyz", "/livez"];

fn strs(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn s<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Whether a nonResourceURLs entry matches a path (exact, `*`, or a prefix ending in `*`).
fn url_matches(rule: &str, path: &str) -> bool {
    rule == "*"
        || rule == path
        || rule
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

/// Whether one PolicyRule allows the request (`RuleAllows` in the real authorizer).
pub fn rule_allows(rule: &Value, req: &Request) -> bool {
    let verbs = strs(rule, "verbs");
    let verb_ok = |verb: &str| verbs.iter().any(|v| v == "*" || v == verb);
    match req {
        Request::NonResource { verb, path } => {
            verb_ok(verb)
                && strs(rule, "nonResourceURLs")
                    .iter()
                    .any(|u| url_matches(u, path))
        }
        Request::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            let combined = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            let resource_ok = strs(rule, "resources").iter().any(|r| {
                r == "*"
                    || *r == combined
                    || (!subresource.is_empty()
                        && r.strip_prefix("*/") == Some(subresource.as_str()))
            });
            let names = strs(rule, "resourceNames");
            verb_ok(verb)
                && strs(rule, "apiGroups")
                    .iter()
                    .any(|g| g == "*" || g == group)
                && resource_ok
                && (names.is_empty() || names.iter().any(|n| n == name))
        }
    }
}

/// Whether a binding's subjects include the user (`appliesTo` in the real authorizer).
fn binds(binding: &Value, user: &User) -> bool {
    let binding_ns = s(binding, "/metadata/namespace");
    binding
        .get("subjects")
        .and_then(Value::as_array)
        .is_some_and(|subjects| {
            subjects.iter().any(|sub| {
                let name = s(sub, "/name");
                match s(sub, "/kind") {
                    "User" => user.name == name,
                    "Group" => user.groups.iter().any(|g| g == name),
                    "ServiceAccount" => {
                        let ns = match s(sub, "/namespace") {
                            "" => binding_ns,
                            ns => ns,
                        };
                        !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{name}")
                    }
                    _ => false,
                }
            })
        })
}

impl Policy {
    /// The rules of the role a binding refers to (none when the role does not exist, as in
    /// the real authorizer: a binding to a missing role grants nothing).
    fn rules_of(&self, binding: &Value) -> Vec<Value> {
        let kind = s(binding, "/roleRef/kind");
        let name = s(binding, "/roleRef/name");
        let ns = s(binding, "/metadata/namespace");
        let role = match kind {
            "ClusterRole" => self
                .cluster_roles
                .iter()
                .find(|r| s(r, "/metadata/name") == name),
            "Role" => self
                .roles
                .iter()
                .find(|r| s(r, "/metadata/name") == name && s(r, "/metadata/namespace") == ns),
            _ => None,
        };
        role.and_then(|r| r.get("rules"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether the user may make the request.
    pub fn allows(&self, user: &User, req: &Request) -> bool {
        if user.groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        if let Request::NonResource { verb, path } = req
            && verb == "get"
        {
            let table: &[&str] = if user.groups.iter().any(|g| g == "system:authenticated") {
                &DISCOVERY
            } else {
                &PUBLIC
            };
            if table.iter().any(|u| url_matches(u, path)) || PUBLIC.contains(&path.as_str()) {
                return true;
            }
        }
        let req_ns = match req {
            Request::Resource { namespace, .. } => namespace.as_str(),
            Request::NonResource { .. } => "",
        };
        let cluster = self.cluster_role_bindings.iter().filter(|b| binds(b, user));
        // RoleBindings grant only in their own namespace, and never non-resource URLs.
        let namespaced = self.role_bindings.iter().filter(|b| {
            !req_ns.is_empty() && s(b, "/metadata/namespace") == req_ns && binds(b, user)
        });
        cluster
            .chain(namespaced)
            .any(|b| self.rules_of(b).iter().any(|r| rule_allows(r, req)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Request {
        Request::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn operator() -> User {
        User::service_account("berth-system", "berth-operator")
    }

    fn policy() -> Policy {
        Policy {
            cluster_roles: vec![json!({
                "metadata": {"name": "op"},
                "rules": [
                    {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
                    {"apiGroups": [""], "resources": ["services/status"], "verbs": ["patch"]},
                    {"apiGroups": ["berth.dev"], "resources": ["*/status"], "verbs": ["*"]},
                ]
            })],
            roles: vec![json!({
                "metadata": {"name": "op", "namespace": "berth-system"},
                "rules": [
                    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                     "resourceNames": ["berth-operator"], "verbs": ["get", "update"]},
                ]
            })],
            cluster_role_bindings: vec![json!({
                "metadata": {"name": "op"},
                "roleRef": {"kind": "ClusterRole", "name": "op"},
                "subjects": [{"kind": "ServiceAccount", "name": "berth-operator", "namespace": "berth-system"}]
            })],
            role_bindings: vec![json!({
                "metadata": {"name": "op", "namespace": "berth-system"},
                "roleRef": {"kind": "Role", "name": "op"},
                "subjects": [{"kind": "ServiceAccount", "name": "berth-operator"}]
            })],
        }
    }

    #[test]
    fn verbs_are_distinct_and_subresources_need_their_own_rule() {
        let p = policy();
        let u = operator();
        assert!(p.allows(&u, &res("list", "", "services", "", "", "")));
        assert!(p.allows(&u, &res("watch", "", "services", "", "", "")));
        assert!(!p.allows(&u, &res("get", "", "services", "", "demo", "web")));
        assert!(!p.allows(&u, &res("patch", "", "services", "", "demo", "web")));
        assert!(p.allows(&u, &res("patch", "", "services", "status", "demo", "web")));
        assert!(!p.allows(&u, &res("update", "", "services", "status", "demo", "web")));
        // `*/status` and `*` verbs.
        assert!(p.allows(&u, &res("update", "berth.dev", "eips", "status", "", "a")));
        assert!(!p.allows(&u, &res("update", "berth.dev", "eips", "", "", "a")));
        // Another group with the same resource name.
        assert!(!p.allows(&u, &res("list", "apps", "services", "", "", "")));
    }

    #[test]
    fn role_bindings_grant_only_in_their_namespace_and_only_named_objects() {
        let p = policy();
        let u = operator();
        let lease =
            |ns: &str, name: &str| res("get", "coordination.k8s.io", "leases", "", ns, name);
        assert!(p.allows(&u, &lease("berth-system", "berth-operator")));
        assert!(!p.allows(&u, &lease("berth-system", "other")));
        assert!(!p.allows(&u, &lease("default", "berth-operator")));
        // A list has no name: resourceNames never match it.
        assert!(!p.allows(
            &u,
            &res(
                "list",
                "coordination.k8s.io",
                "leases",
                "",
                "berth-system",
                ""
            )
        ));
    }

    #[test]
    fn only_bound_subjects_get_the_rules() {
        let p = policy();
        let agent = User::service_account("berth-system", "berth-agent");
        let elsewhere = User::service_account("default", "berth-operator");
        for u in [agent, elsewhere] {
            assert!(!p.allows(&u, &res("list", "", "services", "", "", "")));
        }
        assert!(p.allows(&User::admin(), &res("delete", "", "nodes", "", "", "n1")));
        let mut groups = policy();
        groups.cluster_role_bindings[0]["subjects"] =
            json!([{"kind": "Group", "name": "system:serviceaccounts:berth-system"}]);
        assert!(groups.allows(
            &User::service_account("berth-system", "x"),
            &res("list", "", "services", "", "", "")
        ));
        // A binding to a role that does not exist grants nothing.
        let mut missing = policy();
        missing.cluster_roles.clear();
        assert!(!missing.allows(&operator(), &res("list", "", "services", "", "", "")));
    }

    #[test]
    fn discovery_is_for_the_authenticated_and_health_for_everyone() {
        let p = Policy::default();
        let get = |path: &str| Request::NonResource {
            verb: "get".into(),
            path: path.into(),
        };
        assert!(p.allows(&operator(), &get("/apis/berth.dev/v1alpha1")));
        assert!(p.allows(&operator(), &get("/openapi/v2")));
        assert!(!p.allows(&operator(), &get("/debug/berth/refusals")));
        assert!(p.allows(&User::anonymous(), &get("/healthz")));
        assert!(!p.allows(&User::anonymous(), &get("/apis")));
    }

    #[test]
    fn forbidden_messages_are_the_real_ones() {
        let u = operator();
        assert_eq!(
            res("patch", "", "services", "status", "demo", "web").forbidden_message(&u),
            "services \"web\" is forbidden: User \"system:serviceaccount:berth-system:berth-operator\" cannot patch resource \"services/status\" in API group \"\" in the namespace \"demo\""
        );
        assert_eq!(
            res("watch", "berth.dev", "eips", "", "", "").forbidden_message(&u),
            "eips.berth.dev is forbidden: User \"system:serviceaccount:berth-system:berth-operator\" cannot watch resource \"eips\" in API group \"berth.dev\" at the cluster scope"
        );
        assert_eq!(
            Request::NonResource {
                verb: "get".into(),
                path: "/metrics".into()
            }
            .forbidden_message(&u),
            "forbidden: User \"system:serviceaccount:berth-system:berth-operator\" cannot get path \"/metrics\""
        );
    }
}
