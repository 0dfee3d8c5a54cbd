//! Metric names as Prometheus sees them: what a `/metrics` scrape exports, and what the
//! chart's PromQL (the Grafana dashboard, the alert rules) reads. A query on a name no binary
//! exports draws an empty panel or never fires; the lab compares both against real scrapes.

use std::collections::BTreeSet;
use std::path::Path;

/// The series names a scrape in the Prometheus/OpenMetrics text format can produce: every
/// sample's name, and from each `# TYPE` line the names its samples take (a family with no
/// sample yet still counts: a labelled counter appears only after its first increment).
pub fn exported(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            out.insert(name.to_owned());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[],
            };
            for s in suffixes {
                out.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The sum of the samples of `name` in a scrape (every label set, or only the lines holding
/// `label`, e.g. `"apply"`); `None` when no sample of it parsed. A value that does not parse
/// is left out.
pub fn sum(exposition: &str, name: &str, label: Option<&str>) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| label.is_none_or(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
}

/// The `berth_*` metric names a PromQL expression (or any text) reads.
pub fn read_by(query: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = query.as_bytes();
    let mut i = 0;
    while let Some(at) = query[i..].find("berth_") {
        let start = i + at;
        let word_start = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let end = query[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(query.len(), |n| start + n);
        if word_start {
            out.insert(query[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// Every PromQL expression of a Grafana dashboard: panel targets (`expr`) at any depth and
/// query variables (`query.query`).
pub fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(q)) => out.push(q.clone()),
                    ("query", serde_json::Value::Object(q)) if q.get("query").is_some() => {
                        if let Some(serde_json::Value::String(q)) = q.get("query") {
                            out.push(q.clone());
                        }
                    }
                    _ => walk(x, out),
                }
            }
        }
        serde_json::Value::Array(xs) => xs.iter().for_each(|x| walk(x, out)),
        _ => {}
    }
}

/// What the chart reads: the dashboard's queries and the alert rules' text, with where each
/// came from, from the chart at `chart` (e.g. `charts/berth`).
pub fn chart_reads(chart: &Path) -> Result<Vec<(String, BTreeSet<String>)>, String> {
    let dash_path = chart.join("dashboards/berth.json");
    let text =
        std::fs::read_to_string(&dash_path).map_err(|e| format!("{}: {e}", dash_path.display()))?;
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", dash_path.display()))?;
    let mut out: Vec<(String, BTreeSet<String>)> = dashboard_queries(&dashboard)
        .into_iter()
        .map(|q| {
            let names = read_by(&q);
            (format!("dashboard: {q}"), names)
        })
        .collect();
    let rules_path = chart.join("templates/prometheusrule.yaml");
    let rules = std::fs::read_to_string(&rules_path)
        .map_err(|e| format!("{}: {e}", rules_path.display()))?;
    out.push(("alert rules".to_owned(), read_by(&rules)));
    Ok(out)
}

/// The names `reads` use that `exported` lacks, each with where it is read.
pub fn unknown(reads: &[(String, BTreeSet<String>)], exported: &BTreeSet<String>) -> Vec<String> {
    reads
        .iter()
        .flat_map(|(r#where, names)| {
            names
                .iter()
                .filter(|n| !exported.contains(*n))
                .map(move |n| format!("{n} (read by {where})"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_familys_samples_by_label_and_says_when_there_are_none() {
        let text = "# TYPE berth_bgp_api_calls counter\n\
                    berth_bgp_api_calls_total{call=\"apply\"} 3\n\
                    berth_bgp_api_calls_total{call=\"update_routes\"} 4\n\
                    berth_bgp_api_calls_totally 100\n\
                    berth_up 1\n";
        assert_eq!(sum(text, "berth_bgp_api_calls_total", None), Some(7.0));
        assert_eq!(
            sum(text, "berth_bgp_api_calls_total", Some("apply")),
            Some(3.0)
        );
        assert_eq!(sum(text, "berth_up", None), Some(1.0));
        assert_eq!(sum(text, "berth_down", None), None);
        assert_eq!(sum("berth_up NaNx\n", "berth_up", None), None);
    }

    #[test]
    fn a_scrape_exports_its_families_with_the_suffixes_their_samples_take() {
        let text = "# HELP berth_reconcile_errors Reconciles that failed.\n\
                    # TYPE berth_reconcile_errors counter\n\
                    # HELP berth_reconcile_duration_seconds Time.\n\
                    # TYPE berth_reconcile_duration_seconds histogram\n\
                    berth_reconcile_duration_seconds_bucket{le=\"0.1\"} 1\n\
                    # TYPE berth_operator_leader gauge\n\
                    berth_operator_leader 1\n\
                    # EOF\n";
        let names = exported(text);
        for n in [
            "berth_reconcile_errors_total",
            "berth_reconcile_duration_seconds_bucket",
            "berth_reconcile_duration_seconds_count",
            "berth_operator_leader",
        ] {
            assert!(names.contains(n), "{n} missing from {names:?}");
        }
        assert!(!names.contains("berth_operator_leader_total"));
        assert!(!names.contains("EOF"));
    }

    #[test]
    fn queries_read_whole_berth_names_only() {
        let q = "max by (pool) (berth_ipam_addresses_in_use{namespace=\"x\"}) \
                 / sum(rate(berth_agent_requests_received_total[5m])) + not_berth_x";
        assert_eq!(
            read_by(q).into_iter().collect::<Vec<_>>(),
            [
                "berth_agent_requests_received_total",
                "berth_ipam_addresses_in_use"
            ]
        );
        assert!(read_by("berth_layer2_ips > 0").contains("berth_layer2_ips"));
    }

    #[test]
    fn dashboard_queries_are_found_in_rows_and_variables() {
        let d = serde_json::json!({
            "panels": [{"type": "row", "panels": [{"targets": [{"expr": "berth_a"}]}]},
                       {"targets": [{"expr": "berth_b"}, {"refId": "B"}]}],
            "templating": {"list": [{"query": {"query": "label_values(berth_c, namespace)"}}]}
        });
        assert_eq!(
            dashboard_queries(&d),
            ["berth_a", "berth_b", "label_values(berth_c, namespace)"]
        );
    }

    #[test]
    fn a_name_no_scrape_has_is_reported_with_its_query() {
        let exported: BTreeSet<String> = ["berth_a".to_owned()].into();
        let reads = vec![(
            "dashboard: berth_a + berth_b".to_owned(),
            read_by("berth_a + berth_b"),
        )];
        assert_eq!(
            unknown(&reads, &exported),
            ["berth_b (read by dashboard: berth_a + berth_b)"]
        );
    }

    #[test]
    fn the_chart_is_readable() {
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/berth");
        let reads = chart_reads(&chart).unwrap();
        assert!(reads.len() > 10, "{reads:?}");
        assert!(reads.iter().all(|(_, n)| !n.is_empty()));
    }
}
