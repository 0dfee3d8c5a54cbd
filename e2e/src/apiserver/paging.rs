//! Pagination of lists (`limit` and `continue`) as the real server offers it: a page of at
//! most `limit` items in key order (namespace, then name), and a continue token naming the
//! list's resourceVersion and the last key served. The token expires like the real one: once
//! the store has compacted the history past its resourceVersion, continuing gets 410 Expired
//! and the client must list again. Unlike the real server (which serves every page from the
//! same etcd snapshot), later pages show the objects as they are now.

use serde_json::{Value, json};

use super::object::meta_str;
use super::status::ApiError;

/// The real server's message for an expired continue token.
pub const EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

/// Where a continued list resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continue {
    /// The resourceVersion of the first page.
    pub rv: u64,
    /// The last key served (`<namespace>/<name>`).
    pub start: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Continue {
    /// The opaque token (hex of `{"v":"meta.k8s.io/v1","rv":..,"start":..}`, the real
    /// token's content; clients must not read it).
    pub fn encode(&self) -> String {
        hex(
            json!({"v": "meta.k8s.io/v1", "rv": self.rv, "start": self.start})
                .to_string()
                .as_bytes(),
        )
    }

    /// Reads a token; 400 as the real server words it for one it did not make.
    pub fn decode(token: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| ApiError::BadRequest(format!("continue key is not valid: {why}"));
        let bytes = unhex(token).ok_or_else(|| bad("illegal base64 data"))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))?;
        if v["v"] != "meta.k8s.io/v1" {
            return Err(bad(
                "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
            ));
        }
        let rv = v["rv"].as_u64().filter(|rv| *rv > 0).ok_or_else(|| {
            bad("incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
        })?;
        let start = v["start"].as_str().unwrap_or("").to_owned();
        Ok(Continue { rv, start })
    }
}

fn item_key(o: &Value) -> String {
    format!("{}/{}", meta_str(o, "namespace"), meta_str(o, "name"))
}

/// One page: the items after `from` (all when `None`), at most `limit` (0: no limit), in key
/// order. Returns the page, the token for the rest (if any) and how many items remain.
pub fn page(
    mut items: Vec<Value>,
    limit: usize,
    from: Option<&Continue>,
    rv: u64,
) -> (Vec<Value>, Option<String>, usize) {
    items.sort_by_key(item_key);
    if let Some(c) = from {
        items.retain(|o| item_key(o) > c.start);
    }
    if limit == 0 || items.len() <= limit {
        return (items, None, 0);
    }
    let rest = items.split_off(limit);
    let token = items.last().map(|last| {
        Continue {
            rv,
            start: item_key(last),
        }
        .encode()
    });
    (items, token, rest.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(ns: &str, name: &str) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}})
    }

    #[test]
    fn pages_cover_the_list_once_in_key_order() {
        let all: Vec<Value> = ["c", "a", "e", "b", "d"]
            .iter()
            .map(|n| obj("x", n))
            .collect();
        let (p1, t1, left) = page(all.clone(), 2, None, 7);
        assert_eq!((p1.len(), left), (2, 3));
        let c = Continue::decode(&t1.unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c,
            Continue {
                rv: 7,
                start: "x/b".into()
            }
        );
        let (p2, t2, _) = page(all.clone(), 2, Some(&c), 7);
        let c2 = Continue::decode(&t2.unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
        let (p3, t3, left) = page(all.clone(), 2, Some(&c2), 7);
        assert_eq!((t3, left), (None, 0));
        let names: Vec<String> = p1
            .iter()
            .chain(&p2)
            .chain(&p3)
            .map(|o| meta_str(o, "name").to_owned())
            .collect();
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        // No limit: everything, no token.
        let (p, t, _) = page(all, 0, None, 7);
        assert_eq!((p.len(), t), (5, None));
    }

    #[test]
    fn forged_tokens_are_bad_requests() {
        for t in [
            "zz",
            "abc",
            &hex(b"{}"),
            &hex(br#"{"v":"meta.k8s.io/v1","rv":0}"#),
        ] {
            assert!(
                matches!(Continue::decode(t), Err(ApiError::BadRequest(_))),
                "{t}"
            );
        }
    }
}
