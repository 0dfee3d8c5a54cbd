//! Patch bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and the two Kubernetes
//! kinds this double approximates with merge patch (strategic merge patch and server-side apply:
//! lists are replaced whole instead of merged by key, field ownership is not tracked).

use serde_json::Value;

use super::status::ApiError;

/// The patch types of the `Content-Type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json` (served as a merge patch, `$` directives dropped).
    Strategic,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml` (create-or-merge; no managed fields, no conflicts).
    Apply,
}

impl PatchType {
    /// From a `Content-Type` header value.
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
            _ => Err(ApiError::UnsupportedMediaType),
        }
    }

    /// Parses the body for this type (YAML for apply, JSON otherwise).
    pub fn parse_body(self, body: &[u8]) -> Result<Value, ApiError> {
        let parsed = match self {
            PatchType::Apply => serde_yaml_ng::from_slice::<Value>(body).map_err(|e| e.to_string()),
            _ => serde_json::from_slice::<Value>(body).map_err(|e| e.to_string()),
        };
        parsed.map_err(|e| ApiError::BadRequest(format!("the patch body is not valid: {e}")))
    }

    /// Applies a parsed patch to `target`.
    pub fn apply(self, target: &Value, patch: &Value) -> Result<Value, ApiError> {
        match self {
            PatchType::Merge | PatchType::Apply => Ok(merge(target, patch)),
            PatchType::Strategic => Ok(merge(target, &without_directives(patch))),
            PatchType::Json => json_patch(target, patch),
        }
    }
}

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge(target: &Value, patch: &Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut out = match target {
                Value::Object(t) => t.clone(),
                _ => serde_json::Map::new(),
            };
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Drops strategic-merge directives (`$patch`, `$retainKeys`, `$setElementOrder/...`).
fn without_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), without_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_directives).collect()),
        other => other.clone(),
    }
}

fn pointer_parts(path: &str) -> Result<Vec<String>, ApiError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path.strip_prefix('/').ok_or_else(|| {
        ApiError::BadRequest(format!("JSON patch path {path:?} must start with '/'"))
    })?;
    Ok(rest
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn bad_path(path: &str) -> ApiError {
    ApiError::Invalid {
        resource: String::new(),
        name: String::new(),
        why: format!("JSON patch: path {path:?} does not exist"),
    }
}

/// The container holding the last part of `parts`.
fn parent<'a>(doc: &'a mut Value, parts: &[String], path: &str) -> Result<&'a mut Value, ApiError> {
    let mut cur = doc;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m.get_mut(p).ok_or_else(|| bad_path(path))?,
            Value::Array(a) => {
                let i: usize = p.parse().map_err(|_| bad_path(path))?;
                a.get_mut(i).ok_or_else(|| bad_path(path))?
            }
            _ => return Err(bad_path(path)),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    let parts = pointer_parts(path)?;
    let Some((last, init)) = parts.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, init, path)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse().map_err(|_| bad_path(path))?
            };
            if i > a.len() {
                return Err(bad_path(path));
            }
            a.insert(i, value);
        }
        _ => return Err(bad_path(path)),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let parts = pointer_parts(path)?;
    let Some((last, init)) = parts.split_last() else {
        return Err(bad_path(path));
    };
    match parent(doc, init, path)? {
        Value::Object(m) => m.remove(last).ok_or_else(|| bad_path(path)),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| bad_path(path))?;
            if i >= a.len() {
                return Err(bad_path(path));
            }
            Ok(a.remove(i))
        }
        _ => Err(bad_path(path)),
    }
}

/// RFC 6902: add, remove, replace, move, copy, test.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let ops = patch.as_array().ok_or_else(|| {
        ApiError::BadRequest("a JSON patch must be an array of operations".into())
    })?;
    let mut doc = target.clone();
    for op in ops {
        let s = |k: &str| op.get(k).and_then(Value::as_str);
        let path = s("path")
            .ok_or_else(|| ApiError::BadRequest("JSON patch operation without path".into()))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| ApiError::BadRequest(format!("JSON patch {path}: no value")))
        };
        let from =
            || s("from").ok_or_else(|| ApiError::BadRequest(format!("JSON patch {path}: no from")));
        match s("op").unwrap_or("") {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut doc, from()?)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| bad_path(path))?;
                add(&mut doc, path, v)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(ApiError::Invalid {
                        resource: String::new(),
                        name: String::new(),
                        why: format!("JSON patch test failed at {path}"),
                    });
                }
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown JSON patch operation {other:?}"
                )));
            }
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        let p = json!({"a": null, "b": {"c": 5}, "l": [9]});
        assert_eq!(merge(&t, &p), json!({"b": {"c": 5, "d": 3}, "l": [9]}));
    }

    #[test]
    fn strategic_directives_are_dropped() -> Result<(), ApiError> {
        let t = json!({"spec": {"x": 1}});
        let p = json!({"$setElementOrder/ports": [], "spec": {"x": 2, "$retainKeys": ["x"]}});
        assert_eq!(
            PatchType::Strategic.apply(&t, &p)?,
            json!({"spec": {"x": 2}})
        );
        Ok(())
    }

    #[test]
    fn json_patch_operations() -> Result<(), ApiError> {
        let t = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"x": 1}});
        let p = json!([
            {"op": "test", "path": "/spec/x", "value": 1},
            {"op": "remove", "path": "/metadata/finalizers/0"},
            {"op": "add", "path": "/metadata/finalizers/-", "value": "c"},
            {"op": "replace", "path": "/spec/x", "value": 2},
            {"op": "copy", "from": "/spec/x", "path": "/spec/y"},
            {"op": "move", "from": "/spec/y", "path": "/spec/z"},
            {"op": "add", "path": "/metadata/labels", "value": {"a~b/c": "1"}},
        ]);
        let out = json_patch(&t, &p)?;
        assert_eq!(
            out,
            json!({"metadata": {"finalizers": ["b", "c"], "labels": {"a~b/c": "1"}}, "spec": {"x": 2, "z": 2}})
        );
        let failing = json!([{"op": "test", "path": "/spec/x", "value": 7}]);
        assert_eq!(json_patch(&t, &failing).map_err(|e| e.code()), Err(422));
        assert!(json_patch(&t, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        Ok(())
    }

    #[test]
    fn content_types_map_to_patch_types() {
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml; charset=utf-8"),
            Ok(PatchType::Apply)
        );
        assert!(PatchType::from_content_type("text/plain").is_err());
    }
}
