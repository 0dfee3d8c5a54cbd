//! Request bodies in Kubernetes' protobuf encoding, for the built-in kinds clients send that
//! way. client-go's typed clientsets encode built-in types as protobuf (Helm stores its
//! releases as Secrets through one); a real API server accepts it, so the double decodes the
//! kinds a client of ours sends (Secret, ConfigMap, Namespace from `kubectl create namespace`,
//! DeleteOptions) into the JSON it stores.
//! Answers stay JSON, which such clients accept as well. Another kind is refused with 415
//! and what to do, as the real server refuses a media type it does not serve.
//!
//! The wire form: the magic `k8s\0`, then a `runtime.Unknown` whose `raw` is the object
//! (k8s.io/apimachinery/pkg/runtime/generated.proto, k8s.io/api/core/v1/generated.proto).

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Value, json};

/// The media type of protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, prost::Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "5")]
    uid: Option<String>,
    #[prost(string, optional, tag = "6")]
    resource_version: Option<String>,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
    #[prost(string, repeated, tag = "14")]
    finalizers: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, bytes", tag = "2")]
    data: BTreeMap<String, Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    r#type: Option<String>,
    #[prost(btree_map = "string, string", tag = "4")]
    string_data: BTreeMap<String, String>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ConfigMap {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, string", tag = "2")]
    data: BTreeMap<String, String>,
    #[prost(btree_map = "string, bytes", tag = "3")]
    binary_data: BTreeMap<String, Vec<u8>>,
    #[prost(bool, optional, tag = "4")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Namespace {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DeleteOptions {
    #[prost(int64, optional, tag = "1")]
    grace_period_seconds: Option<i64>,
    #[prost(string, optional, tag = "4")]
    propagation_policy: Option<String>,
    #[prost(string, repeated, tag = "5")]
    dry_run: Vec<String>,
}

/// Why a protobuf body cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    /// Not the Kubernetes protobuf envelope, or a field that does not decode.
    #[error("the protobuf request body does not decode ({0}): send it as application/json")]
    Malformed(String),
    /// A kind the double does not decode from protobuf.
    #[error(
        "this API server double decodes protobuf bodies of Secret, ConfigMap, Namespace and DeleteOptions only, not {0}: send it as application/json"
    )]
    Unsupported(String),
}

fn meta(m: Option<ObjectMeta>) -> Value {
    let m = m.unwrap_or_default();
    let mut out = serde_json::Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.insert(k.to_owned(), Value::String(v));
        }
    };
    put("name", m.name);
    put("generateName", m.generate_name);
    put("namespace", m.namespace);
    put("uid", m.uid);
    put("resourceVersion", m.resource_version);
    if !m.labels.is_empty() {
        out.insert("labels".into(), json!(m.labels));
    }
    if !m.annotations.is_empty() {
        out.insert("annotations".into(), json!(m.annotations));
    }
    if !m.finalizers.is_empty() {
        out.insert("finalizers".into(), json!(m.finalizers));
    }
    Value::Object(out)
}

fn b64(map: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    map.into_iter()
        .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
        .collect()
}

/// The JSON object a protobuf request body stands for.
pub fn to_json(body: &[u8]) -> Result<Value, ProtobufError> {
    use prost::Message;
    let bad = |e: String| ProtobufError::Malformed(e);
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("no k8s\\0 prefix".into()))?;
    let unknown = Unknown::decode(rest).map_err(|e| bad(e.to_string()))?;
    let tm = unknown.type_meta.unwrap_or_default();
    let api_version = tm.api_version.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let mut v = match kind.as_str() {
        "Secret" => {
            let s = Secret::decode(raw.as_slice()).map_err(|e| bad(e.to_string()))?;
            let mut v = json!({"metadata": meta(s.metadata)});
            if !s.data.is_empty() {
                v["data"] = json!(b64(s.data));
            }
            if !s.string_data.is_empty() {
                v["stringData"] = json!(s.string_data);
            }
            if let Some(t) = s.r#type {
                v["type"] = json!(t);
            }
            if let Some(i) = s.immutable {
                v["immutable"] = json!(i);
            }
            v
        }
        "ConfigMap" => {
            let c = ConfigMap::decode(raw.as_slice()).map_err(|e| bad(e.to_string()))?;
            let mut v = json!({"metadata": meta(c.metadata)});
            if !c.data.is_empty() {
                v["data"] = json!(c.data);
            }
            if !c.binary_data.is_empty() {
                v["binaryData"] = json!(b64(c.binary_data));
            }
            if let Some(i) = c.immutable {
                v["immutable"] = json!(i);
            }
            v
        }
        "Namespace" => {
            let n = Namespace::decode(raw.as_slice()).map_err(|e| bad(e.to_string()))?;
            json!({"metadata": meta(n.metadata)})
        }
        "DeleteOptions" => {
            let d = DeleteOptions::decode(raw.as_slice()).map_err(|e| bad(e.to_string()))?;
            let mut v = json!({});
            if let Some(g) = d.grace_period_seconds {
                v["gracePeriodSeconds"] = json!(g);
            }
            if let Some(p) = d.propagation_policy {
                v["propagationPolicy"] = json!(p);
            }
            if !d.dry_run.is_empty() {
                v["dryRun"] = json!(d.dry_run);
            }
            v
        }
        other => return Err(ProtobufError::Unsupported(other.to_owned())),
    };
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Ok(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use prost::Message;

    fn envelope(kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
        }
        .encode(&mut out)
        .unwrap();
        out
    }

    #[test]
    fn a_secret_decodes_to_the_json_a_client_would_send() {
        let s = Secret {
            metadata: Some(ObjectMeta {
                name: Some("sh.helm.release.v1.berth.v1".into()),
                namespace: Some("berth-system".into()),
                labels: [("owner".to_owned(), "helm".to_owned())].into(),
                ..Default::default()
            }),
            data: [("release".to_owned(), b"\x00\x01hi".to_vec())].into(),
            r#type: Some("helm.sh/release.v1".into()),
            ..Default::default()
        };
        let v = to_json(&envelope("Secret", s.encode_to_vec())).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "sh.helm.release.v1.berth.v1", "namespace": "berth-system", "labels": {"owner": "helm"}},
                "data": {"release": "AAFoaQ=="}, "type": "helm.sh/release.v1"})
        );
    }

    #[test]
    fn other_kinds_and_garbage_are_refused_with_what_to_do() {
        let e = to_json(&envelope("Pod", vec![])).unwrap_err().to_string();
        assert!(
            e.contains("not Pod") && e.contains("application/json"),
            "{e}"
        );
        let e = to_json(b"{}").unwrap_err().to_string();
        assert!(e.contains("does not decode"), "{e}");
    }
}
