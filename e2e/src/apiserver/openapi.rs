//! OpenAPI v3 as kubectl reads it: the index at `/openapi/v3` and one document per
//! group/version, so plain `kubectl apply` (validation on, the default) works. Each resource
//! gets its object path with a PATCH operation that names its group/version/kind and takes the
//! `fieldValidation` query parameter: from that kubectl learns that the server validates
//! fields itself (it then sends `fieldValidation=Strict` and skips its own schema check).
//! Custom resources carry their CRD schema in `components.schemas` (`kubectl explain`);
//! built-in kinds carry none (no `kubectl explain` for them). No `/openapi/v2`.

use serde_json::{Map, Value, json};

use super::resources::{Registry, ResourceType};

/// The documents' key and URL part: `api/v1` or `apis/<group>/<version>`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group/version's document is.
pub fn index(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for t in reg.all() {
        let p = gv_path(&t.group, &t.version);
        paths.entry(p.clone()).or_insert_with(|| {
            // The hash only lets clients cache; the served kinds never change at run time.
            json!({ "serverRelativeURL": format!("/openapi/v3/{p}?hash=berth-fake-1") })
        });
    }
    json!({ "paths": paths })
}

/// The schema name a real server uses (`dev.berth.v1alpha1.Eip`: the group reversed).
fn schema_name(t: &ResourceType) -> String {
    let group: Vec<&str> = if t.group.is_empty() {
        vec!["io", "k8s", "api", "core"]
    } else {
        t.group.split('.').rev().collect()
    };
    format!("{}.{}.{}", group.join("."), t.version, t.kind)
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`; `None` for one not served.
pub fn group_version(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let types: Vec<&ResourceType> = reg
        .all()
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return None;
    }
    let base = format!("/{}", gv_path(group, version));
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for t in types {
        let gvk = json!({ "group": t.group, "version": t.version, "kind": t.kind });
        let item = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{base}/{}/{{name}}", t.plural)
        };
        let query = |name: &str| json!({ "name": name, "in": "query", "schema": { "type": "string", "uniqueItems": true } });
        let op = json!({
            "operationId": format!("patch{}", t.kind),
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [query("dryRun"), query("fieldManager"), query("fieldValidation"), query("force")],
            "responses": { "200": { "description": "OK" } },
        });
        paths.insert(item, json!({ "patch": op }));
        if let Some(schema) = &t.schema {
            let mut s = schema.clone();
            s["x-kubernetes-group-version-kind"] = json!([gvk]);
            schemas.insert(schema_name(t), s);
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": "v1.32.0-berth-fake" },
        "paths": paths,
        "components": { "schemas": schemas },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_group_version_is_indexed_with_patch_operations() {
        let reg = Registry::builtin();
        let idx = index(&reg);
        assert_eq!(
            idx.pointer("/paths/api~1v1/serverRelativeURL")
                .and_then(Value::as_str),
            Some("/openapi/v3/api/v1?hash=berth-fake-1")
        );
        assert!(idx.pointer("/paths/apis~1apps~1v1").is_some());
        let doc = group_version(&reg, "", "v1").unwrap_or_default();
        let svc = doc
            .pointer("/paths/~1api~1v1~1namespaces~1{namespace}~1services~1{name}/patch")
            .cloned()
            .unwrap_or_default();
        assert_eq!(svc["x-kubernetes-group-version-kind"]["kind"], "Service");
        assert!(
            svc["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "fieldValidation"))
        );
        assert!(
            doc.pointer("/paths/~1api~1v1~1nodes~1{name}/patch")
                .is_some()
        );
        assert!(group_version(&reg, "nope.dev", "v1").is_none());
    }
}
