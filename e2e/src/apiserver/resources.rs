//! The kinds this server knows: built-in types the operator, the agent and kubectl use, plus
//! the custom resources read from CRD files.

use std::path::Path;

use serde_json::Value;

/// One additional printer column of a CRD (what `kubectl get` shows).
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Header (`Address`).
    pub name: String,
    /// OpenAPI type (`string`, `integer`, `boolean`, `date`, ...).
    pub type_: String,
    /// OpenAPI format, if any.
    pub format: String,
    /// Description for `kubectl explain`-like uses.
    pub description: String,
    /// 0 always shown; higher only with `-o wide`.
    pub priority: i64,
    /// Where the value is (`.status.usage`).
    pub json_path: String,
}

/// A served resource: one group/version/plural.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    /// API group, empty for core.
    pub group: String,
    /// Version (`v1`, `v1alpha1`).
    pub version: String,
    /// Kind (`Service`).
    pub kind: String,
    /// Plural resource name (`services`).
    pub plural: String,
    /// Singular name (`service`).
    pub singular: String,
    /// Short names (`svc`).
    pub short_names: Vec<String>,
    /// Categories (`all`, `berth`).
    pub categories: Vec<String>,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether `.status` is a subresource (main writes ignore it, `/status` writes only it).
    pub status: bool,
    /// Printer columns (CRDs only; built-ins are rendered by `table`).
    pub columns: Vec<Column>,
    /// The CRD's `openAPIV3Schema`, for its `default` values (CRDs only).
    pub schema: Option<Value>,
}

impl ResourceType {
    fn builtin(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        ResourceType {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            short_names: Vec::new(),
            categories: Vec::new(),
            namespaced,
            status: false,
            columns: Vec::new(),
            schema: None,
        }
    }

    fn with_status(mut self) -> Self {
        self.status = true;
        self
    }

    fn short(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// `apiVersion` of its objects (`v1`, `berth.dev/v1alpha1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The name errors use (`services`, `eips.berth.dev`).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Storage identity: the same objects whatever version they are read through.
    pub fn storage_key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }
}

/// Why CRD files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory or a file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not YAML.
    #[error("{path} is not valid YAML: {source}")]
    Yaml {
        /// The path.
        path: String,
        /// The cause.
        source: serde_yaml_ng::Error,
    },
    /// A CRD lacks a field the server needs.
    #[error("{path}: CustomResourceDefinition {name} has no {field}")]
    Missing {
        /// The path.
        path: String,
        /// The CRD name.
        name: String,
        /// The missing field.
        field: &'static str,
    },
}

/// Every served resource.
#[derive(Debug, Clone)]
pub struct Registry {
    types: Vec<ResourceType>,
    crds: Vec<Value>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    /// The built-in types Berth's components and kubectl use.
    pub fn builtin() -> Self {
        let b = ResourceType::builtin;
        let types = vec![
            b("", "v1", "Namespace", "namespaces", false)
                .with_status()
                .short(&["ns"]),
            b("", "v1", "Node", "nodes", false)
                .with_status()
                .short(&["no"]),
            b("", "v1", "Service", "services", true)
                .with_status()
                .short(&["svc"]),
            b("", "v1", "Pod", "pods", true)
                .with_status()
                .short(&["po"]),
            b("", "v1", "Secret", "secrets", true),
            b("", "v1", "ConfigMap", "configmaps", true).short(&["cm"]),
            b("", "v1", "Endpoints", "endpoints", true).short(&["ep"]),
            b("", "v1", "Event", "events", true).short(&["ev"]),
            b("", "v1", "ServiceAccount", "serviceaccounts", true).short(&["sa"]),
            b(
                "discovery.k8s.io",
                "v1",
                "EndpointSlice",
                "endpointslices",
                true,
            ),
            b("coordination.k8s.io", "v1", "Lease", "leases", true),
            b("events.k8s.io", "v1", "Event", "events", true).short(&["ev"]),
            b("apps", "v1", "StatefulSet", "statefulsets", true)
                .with_status()
                .short(&["sts"]),
            b("apps", "v1", "Deployment", "deployments", true)
                .with_status()
                .short(&["deploy"]),
            b("apps", "v1", "DaemonSet", "daemonsets", true)
                .with_status()
                .short(&["ds"]),
            // The CRDs themselves, as objects: those given at start are stored (so `helm
            // install` finds its chart's CRDs present and skips them, as on a cluster where
            // they are installed); one created later is stored but not served.
            b(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
            )
            .with_status()
            .short(&["crd", "crds"]),
            // The chart's PodDisruptionBudgets (the lab applies everything it renders).
            b(
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
                true,
            )
            .with_status()
            .short(&["pdb"]),
            b("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
            b(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRole",
                "clusterroles",
                false,
            ),
            b(
                "rbac.authorization.k8s.io",
                "v1",
                "RoleBinding",
                "rolebindings",
                true,
            ),
            b(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRoleBinding",
                "clusterrolebindings",
                false,
            ),
        ];
        Registry {
            types,
            crds: Vec::new(),
        }
    }

    /// Adds the custom resources of every `*.yaml`/`*.yml` file in `dir` (documents of other
    /// kinds are skipped).
    pub fn load_crd_dir(&mut self, dir: &Path) -> Result<usize, LoadError> {
        let read = |source| LoadError::Read {
            path: dir.display().to_string(),
            source,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(read)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        let mut n = 0;
        for f in files {
            let path = f.display().to_string();
            let text = std::fs::read_to_string(&f).map_err(|source| LoadError::Read {
                path: path.clone(),
                source,
            })?;
            n += self.load_crd_yaml(&text, &path)?;
        }
        Ok(n)
    }

    /// Adds the custom resources of the CRDs in a YAML text (several documents allowed).
    pub fn load_crd_yaml(&mut self, text: &str, path: &str) -> Result<usize, LoadError> {
        let mut n = 0;
        for v in crd_documents(text, path)? {
            for t in crd_types(&v, path)? {
                self.types.retain(|x| {
                    !(x.group == t.group && x.version == t.version && x.plural == t.plural)
                });
                self.types.push(t);
                n += 1;
            }
            self.crds.push(v);
        }
        Ok(n)
    }

    /// The CRD objects loaded so far (the API server stores them as objects at start).
    pub fn crds(&self) -> &[Value] {
        &self.crds
    }

    /// Every served resource.
    pub fn all(&self) -> &[ResourceType] {
        &self.types
    }

    /// The resource at group/version/plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// Whether any resource is served in this group/version.
    pub fn has_group_version(&self, group: &str, version: &str) -> bool {
        self.types
            .iter()
            .any(|t| t.group == group && t.version == version)
    }

    /// Named groups (not core) with their versions, in first-seen order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, vs)) if !vs.contains(&t.version) => vs.push(t.version.clone()),
                Some(_) => {}
                None => out.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        out
    }
}

fn crd_types(crd: &Value, path: &str) -> Result<Vec<ResourceType>, LoadError> {
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_owned();
    let missing = |field| LoadError::Missing {
        path: path.to_owned(),
        name: name.clone(),
        field,
    };
    let s = |p: &str| crd.pointer(p).and_then(Value::as_str).map(str::to_owned);
    let strings = |p: &str| -> Vec<String> {
        crd.pointer(p)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let group = s("/spec/group").ok_or_else(|| missing("spec.group"))?;
    let kind = s("/spec/names/kind").ok_or_else(|| missing("spec.names.kind"))?;
    let plural = s("/spec/names/plural").ok_or_else(|| missing("spec.names.plural"))?;
    let singular = s("/spec/names/singular").unwrap_or_else(|| kind.to_lowercase());
    let namespaced = s("/spec/scope").as_deref() != Some("Cluster");
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .ok_or_else(|| missing("spec.versions"))?;
    let mut out = Vec::new();
    for v in versions {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let Some(version) = v.get("name").and_then(Value::as_str) else {
            return Err(missing("spec.versions[].name"));
        };
        let columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| cols.iter().filter_map(column).collect())
            .unwrap_or_default();
        out.push(ResourceType {
            group: group.clone(),
            version: version.to_owned(),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            short_names: strings("/spec/names/shortNames"),
            categories: strings("/spec/names/categories"),
            namespaced,
            status: v.pointer("/subresources/status").is_some(),
            columns,
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
        });
    }
    Ok(out)
}

/// Fills in the `default` values of a structural schema where the object lacks the field,
/// as the real API server does for custom resources on every write.
pub fn apply_defaults(schema: &Value, obj: &mut Value) {
    match obj {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, prop) in props {
                    match m.get_mut(k) {
                        Some(v) => apply_defaults(prop, v),
                        None => {
                            if let Some(d) = prop.get("default") {
                                let mut d = d.clone();
                                apply_defaults(prop, &mut d);
                                m.insert(k.clone(), d);
                            }
                        }
                    }
                }
            }
            if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for v in m.values_mut() {
                    apply_defaults(extra, v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for v in items {
                    apply_defaults(item_schema, v);
                }
            }
        }
        _ => {}
    }
}

fn column(c: &Value) -> Option<Column> {
    let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let name = s("name");
    let json_path = s("jsonPath");
    if name.is_empty() || json_path.is_empty() {
        return None;
    }
    Some(Column {
        name,
        type_: s("type"),
        format: s("format"),
        description: s("description"),
        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
        json_path,
    })
}

/// The CustomResourceDefinition documents of a YAML text (other kinds skipped).
fn crd_documents(text: &str, path: &str) -> Result<Vec<Value>, LoadError> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|source| LoadError::Yaml {
            path: path.to_owned(),
            source,
        })?;
        if v.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition") {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_load_with_columns_scope_and_status() {
        let mut r = Registry::builtin();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/crd");
        assert_eq!(r.load_crd_dir(&dir).ok(), Some(3));
        let eip = r.find("berth.dev", "v1alpha1", "eips");
        assert!(eip.is_some_and(|e| {
            !e.namespaced
                && e.status
                && e.kind == "Eip"
                && e.columns
                    .iter()
                    .any(|c| c.name == "Address" && c.json_path == ".spec.address")
        }));
        assert!(r.groups().iter().any(|(g, _)| g == "berth.dev"));
    }

    #[test]
    fn schema_defaults_fill_missing_fields_only() {
        let schema = serde_json::json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "disable": {"type": "boolean", "default": false},
            "address": {"type": "string"},
            "gr": {"type": "object", "default": {}, "properties": {"time": {"type": "integer", "default": 120}}},
            "peers": {"type": "array", "items": {"type": "object", "properties": {"port": {"type": "integer", "default": 179}}}}
        }}}});
        let mut obj = serde_json::json!({"spec": {"address": "a", "peers": [{}, {"port": 1}]}});
        apply_defaults(&schema, &mut obj);
        assert_eq!(
            obj,
            serde_json::json!({"spec": {"address": "a", "disable": false, "gr": {"time": 120}, "peers": [{"port": 179}, {"port": 1}]}})
        );
        let mut set = serde_json::json!({"spec": {"disable": true}});
        apply_defaults(&schema, &mut set);
        assert_eq!(set["spec"]["disable"], true);
    }
}
