//! `meta.k8s.io/v1` Tables, what `kubectl get` asks for (`Accept: ...;as=Table;...`): CRD
//! printer columns, the usual Service columns, NAME and AGE for everything else.

use serde_json::{Value, json};

use super::object::{at_path, human_duration, meta_str, parse_rfc3339};
use super::resources::{Column, ResourceType};

/// Whether the `Accept` header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .any(|a| a.split(';').any(|p| p.trim() == "as=Table"))
}

fn col(name: &str, type_: &str, priority: i64, description: &str) -> Column {
    Column {
        name: name.into(),
        type_: type_.into(),
        format: String::new(),
        description: description.into(),
        priority,
        json_path: String::new(),
    }
}

fn age(obj: &Value, now: i64) -> Value {
    match parse_rfc3339(meta_str(obj, "creationTimestamp")) {
        Some(t) => json!(human_duration(now - t)),
        None => json!("<unknown>"),
    }
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Columns as `kubectl get svc` shows them.
fn service_cells(svc: &Value, now: i64) -> Vec<Value> {
    let spec = svc.get("spec").cloned().unwrap_or(json!({}));
    let s = |k: &str| spec.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let ty = if s("type").is_empty() {
        "ClusterIP".into()
    } else {
        s("type")
    };
    let mut external = strings(spec.get("externalIPs"));
    let external = match ty.as_str() {
        "LoadBalancer" => {
            let ingress: Vec<String> = svc
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|i| {
                            i.get("ip")
                                .or_else(|| i.get("hostname"))
                                .and_then(Value::as_str)
                        })
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            external.splice(0..0, ingress);
            if external.is_empty() {
                "<pending>".into()
            } else {
                external.join(",")
            }
        }
        "ExternalName" => s("externalName"),
        _ => none_if_empty(external.join(",")),
    };
    let ports: Vec<String> = spec
        .get("ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    let port = p.get("port").map(Value::to_string).unwrap_or_default();
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) if np != 0 => format!("{port}:{np}/{proto}"),
                        _ => format!("{port}/{proto}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let selector = spec
        .get("selector")
        .and_then(Value::as_object)
        .map(|m| {
            let mut v: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            v.sort();
            v.join(",")
        })
        .unwrap_or_default();
    vec![
        json!(meta_str(svc, "name")),
        json!(ty),
        json!(none_if_empty(s("clusterIP"))),
        json!(external),
        json!(none_if_empty(ports.join(","))),
        age(svc, now),
        json!(none_if_empty(selector)),
    ]
}

/// Columns as `kubectl get events` shows them (either Event API).
fn event_cells(e: &Value, now: i64) -> Vec<Value> {
    let core = if e.get("apiVersion").and_then(Value::as_str) == Some("events.k8s.io/v1") {
        super::events::to_core(e)
    } else {
        e.clone()
    };
    let s = |p: &str| {
        core.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let seen = [
        "/lastTimestamp",
        "/eventTime",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .find_map(|p| parse_rfc3339(&s(p)))
    .map(|t| human_duration(now - t))
    .unwrap_or_else(|| "<unknown>".into());
    vec![
        json!(seen),
        json!(s("/type")),
        json!(s("/reason")),
        json!(format!(
            "{}/{}",
            s("/involvedObject/kind").to_lowercase(),
            s("/involvedObject/name")
        )),
        json!(s("/message")),
        json!(meta_str(e, "name")),
    ]
}

/// A CRD printer column's cell (missing values are null, which kubectl prints as `<none>`).
fn column_cell(c: &Column, obj: &Value, now: i64) -> Value {
    // Only simple paths (`.a.b`, `.a[0].b`); filters like `[?(@.x=="y")]` give null.
    if c.json_path.contains('?') || c.json_path.contains('*') {
        return Value::Null;
    }
    match at_path(obj, &c.json_path) {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) if c.type_ == "date" => match parse_rfc3339(s) {
            Some(t) => json!(human_duration(now - t)),
            None => json!(s),
        },
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => v.clone(),
        Some(v) => json!(v.to_string()),
    }
}

/// The Table for `objects` of type `rt`.
pub fn table(rt: &ResourceType, objects: &[Value], rv: u64, now: i64) -> Value {
    let name_col = Column {
        format: "name".into(),
        ..col(
            "Name",
            "string",
            0,
            "Name must be unique within a namespace.",
        )
    };
    let is_service = rt.group.is_empty() && rt.kind == "Service";
    let is_event = rt.kind == "Event";
    let columns: Vec<Column> = if is_event {
        vec![
            col(
                "Last Seen",
                "string",
                0,
                "Time since the event was last seen.",
            ),
            col("Type", "string", 0, "Normal or Warning."),
            col("Reason", "string", 0, "Why the event happened."),
            col("Object", "string", 0, "The object the event is about."),
            col("Message", "string", 0, "What happened."),
            Column {
                priority: 1,
                ..name_col
            },
        ]
    } else if is_service {
        vec![
            name_col,
            col("Type", "string", 0, "The type of the service."),
            col("Cluster-IP", "string", 0, "The IP address of the service."),
            col(
                "External-IP",
                "string",
                0,
                "The external IP addresses of the service.",
            ),
            col("Port(s)", "string", 0, "The ports of the service."),
            col("Age", "string", 0, "Time since creation."),
            col(
                "Selector",
                "string",
                1,
                "The label selector of the service.",
            ),
        ]
    } else if !rt.columns.is_empty() {
        let mut v = vec![name_col];
        v.extend(rt.columns.iter().cloned());
        v
    } else {
        vec![name_col, col("Age", "date", 0, "Time since creation.")]
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells = if is_event {
                event_cells(o, now)
            } else if is_service {
                service_cells(o, now)
            } else if !rt.columns.is_empty() {
                let mut c = vec![json!(meta_str(o, "name"))];
                c.extend(rt.columns.iter().map(|col| column_cell(col, o, now)));
                c
            } else {
                vec![json!(meta_str(o, "name")), age(o, now)]
            };
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                },
            })
        })
        .collect();
    let defs: Vec<Value> = columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                // Ages are rendered here, so kubectl gets text.
                "type": if c.type_ == "date" { "string" } else { c.type_.as_str() },
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": rv.to_string() },
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::Registry;

    #[test]
    fn kubectl_accept_header_asks_for_a_table() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }

    #[test]
    fn service_rows_read_like_kubectl() {
        let r = Registry::builtin();
        let Some(rt) = r.find("", "v1", "services") else {
            unreachable!("services are built in")
        };
        let svc = json!({
            "metadata": {"name": "web", "namespace": "demo", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
                     "ports": [{"port": 8080, "nodePort": 30000, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}
        });
        let t = table(
            rt,
            &[svc],
            7,
            parse_rfc3339("2026-01-01T00:00:30Z").unwrap_or(0),
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "web",
                "LoadBalancer",
                "10.96.0.10",
                "198.51.100.1",
                "8080:30000/TCP",
                "30s",
                "app=web"
            ])
        );
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "demo");
    }
}
