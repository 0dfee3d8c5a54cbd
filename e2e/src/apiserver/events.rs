//! core/v1 Events as a view of events.k8s.io/v1 Events: the operator writes the new API
//! (kube-runtime's Recorder), `kubectl describe` reads the old one. A real API server stores
//! both in one place; here lists of core/v1 Events also return the events.k8s.io ones,
//! converted (watches of core/v1 Events do not).

use serde_json::{Map, Value};

/// The core/v1 form of an events.k8s.io/v1 Event.
pub fn to_core(e: &Value) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), "v1".into());
    out.insert("kind".into(), "Event".into());
    let get = |k: &str| e.get(k).cloned();
    for (from, to) in [
        ("metadata", "metadata"),
        ("regarding", "involvedObject"),
        ("related", "related"),
        ("note", "message"),
        ("reason", "reason"),
        ("type", "type"),
        ("action", "action"),
        ("eventTime", "eventTime"),
        ("series", "series"),
        ("reportingController", "reportingComponent"),
        ("reportingInstance", "reportingInstance"),
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
        ("deprecatedCount", "count"),
        ("deprecatedSource", "source"),
    ] {
        if let Some(v) = get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v);
        }
    }
    if !out.contains_key("source")
        && let Some(c) = get("reportingController")
    {
        let mut s = Map::new();
        s.insert("component".into(), c);
        if let Some(h) = get("reportingInstance") {
            s.insert("host".into(), h);
        }
        out.insert("source".into(), Value::Object(s));
    }
    // kubectl describe sorts and shows ages by these; the new API only has eventTime/series.
    let last = e
        .pointer("/series/lastObservedTime")
        .or_else(|| e.get("eventTime"))
        .cloned();
    if let Some(t) = e.get("eventTime").cloned().filter(|t| !t.is_null()) {
        out.entry("firstTimestamp").or_insert(t);
    }
    if let Some(t) = last.filter(|t| !t.is_null()) {
        out.entry("lastTimestamp").or_insert(t);
    }
    if let Some(c) = e.pointer("/series/count").cloned() {
        out.entry("count").or_insert(c);
    } else {
        out.entry("count").or_insert(1.into());
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn new_events_read_as_old_ones() {
        let e = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "demo"},
            "regarding": {"kind": "Service", "name": "web", "namespace": "demo"},
            "note": "assigned 198.51.100.1 from pool lab-bgp", "reason": "IPAllocated",
            "type": "Normal", "eventTime": "2026-11-30T19:52:36.000000Z",
            "reportingController": "berth-operator", "reportingInstance": "berth-operator-0",
            "action": "Reconcile"
        });
        let c = to_core(&e);
        assert_eq!(c["involvedObject"]["name"], "web");
        assert_eq!(c["message"], "assigned 198.51.100.1 from pool lab-bgp");
        assert_eq!(c["source"]["component"], "berth-operator");
        assert_eq!(c["lastTimestamp"], "2026-11-30T19:52:36.000000Z");
        assert_eq!(c["count"], 1);
        assert_eq!(c["apiVersion"], "v1");
    }
}
