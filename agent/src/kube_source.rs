//! The agent's input from Kubernetes: Berth's Services, watched, turned into [`Desired`].
//!
//! A Service is Berth's here when the operator recorded the pool it allocated from
//! ([`ANNOTATION_ALLOCATED_POOL`]); the agent never decides that itself, so it needs no copy
//! of the operator's class settings. Every IP in its `status.loadBalancer.ingress` is delivered
//! locally on every node (a node that is not a next hop simply receives nothing for it),
//! except Layer2 IPs: the operator's [`ANNOTATION_LAYER2`] names them with their candidate
//! nodes, and only the elected owner delivers (and answers for) each.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use berth_api::layer2::Layer2Assignment;
use berth_api::names::{ANNOTATION_ALLOCATED_POOL, ANNOTATION_LAYER2};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use crate::desired::{Desired, Layer2Service};

/// What one Service contributes, or why part of it was ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceView {
    /// IPs to deliver locally.
    pub ips: BTreeSet<IpAddr>,
    /// Its Layer2 part, if any.
    pub layer2: Option<Layer2Service>,
    /// Problems found (bad annotation, unparsable IP), for the log.
    pub problems: Vec<String>,
}

/// Reads one Service (pure).
pub fn view(svc: &Service) -> Option<ServiceView> {
    let annotations = svc.metadata.annotations.as_ref()?;
    annotations.get(ANNOTATION_ALLOCATED_POOL)?;
    let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
    let mut out = ServiceView::default();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for i in ingress.into_iter().flatten() {
        if let Some(ip) = &i.ip {
            match ip.parse() {
                Ok(ip) => {
                    out.ips.insert(ip);
                }
                Err(_) => out.problems.push(format!(
                    "{key}: status.loadBalancer.ingress holds {ip:?}, which is not an IP"
                )),
            }
        }
    }
    if let Some(raw) = annotations.get(ANNOTATION_LAYER2) {
        match Layer2Assignment::from_annotation(raw) {
            Ok(a) => {
                let mut ips = Vec::new();
                for ip in &a.ips {
                    match ip.parse::<IpAddr>() {
                        Ok(ip) => ips.push(ip),
                        Err(_) => out.problems.push(format!(
                            "{key}: annotation {ANNOTATION_LAYER2} lists {ip:?}, which is not an IP"
                        )),
                    }
                }
                // A Layer2 IP is delivered only where it is owned: the kernel answers ARP for
                // every local route, so a route on every candidate would make them all answer.
                for ip in &ips {
                    out.ips.remove(ip);
                }
                out.layer2 = Some(Layer2Service {
                    service: key.clone(),
                    ips,
                    interface: a.interface,
                    candidates: a.nodes.into_iter().collect(),
                });
            }
            Err(e) => out.problems.push(format!(
                "{key}: annotation {ANNOTATION_LAYER2} is not the operator's JSON ({e}); \
                 it is rewritten by the operator, check the operator's log"
            )),
        }
    }
    Some(out)
}

/// The agent's input from all Berth Services' views (pure; deterministic order).
pub fn desired<'a>(views: impl IntoIterator<Item = &'a ServiceView>) -> Desired {
    let mut d = Desired::default();
    for v in views {
        d.local_ips.extend(v.ips.iter().copied());
        if let Some(l2) = &v.layer2 {
            d.layer2.push(l2.clone());
        }
    }
    d.layer2.sort_by(|a, b| a.service.cmp(&b.service));
    d
}

/// Watches Services and publishes the resulting [`Desired`] on `tx` until the watch ends.
/// Watch errors are logged and retried with back-off; the last good state stays published.
pub async fn run(client: Client, tx: watch::Sender<Desired>) {
    let api: Api<Service> = Api::all(client);
    let mut views: BTreeMap<String, ServiceView> = BTreeMap::new();
    let mut init: Option<BTreeMap<String, ServiceView>> = None;
    let stream = watcher(api, watcher::Config::default());
    let mut stream = std::pin::pin!(kube::runtime::WatchStreamExt::default_backoff(stream));
    while let Some(ev) = stream.next().await {
        let changed = match ev {
            Ok(watcher::Event::Init) => {
                init = Some(BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(svc)) => {
                if let (Some(m), Some(v)) = (init.as_mut(), view(&svc)) {
                    log_problems(&v);
                    m.insert(key(&svc), v);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                views = init.take().unwrap_or_default();
                // Always published, so a waiting agent learns the first list arrived even
                // when it holds nothing for this node.
                tx.send_replace(desired(views.values()));
                false
            }
            Ok(watcher::Event::Apply(svc)) => {
                let k = key(&svc);
                match view(&svc) {
                    Some(v) => {
                        log_problems(&v);
                        views.insert(k, v);
                    }
                    None => {
                        views.remove(&k);
                    }
                }
                true
            }
            Ok(watcher::Event::Delete(svc)) => views.remove(&key(&svc)).is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "watching Services failed; retrying (check the agent's RBAC: list/watch services)");
                false
            }
        };
        if changed {
            let d = desired(views.values());
            tx.send_if_modified(|cur| {
                if *cur == d {
                    false
                } else {
                    *cur = d;
                    true
                }
            });
        }
    }
}

fn key(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

fn log_problems(v: &ServiceView) {
    for p in &v.problems {
        tracing::warn!("{p}");
    }
}

/// Records ownership moves as Events on the Service, so `kubectl describe svc` shows which
/// node answers ARP/NDP and since when.
pub struct OwnershipEvents {
    client: Client,
    recorder: Recorder,
    node: String,
}

impl OwnershipEvents {
    /// Events reported as `berth-agent` on `node`.
    pub fn new(client: Client, node: &str) -> Self {
        let reporter = Reporter {
            controller: "berth-agent".into(),
            instance: Some(node.to_owned()),
        };
        OwnershipEvents {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            node: node.to_owned(),
        }
    }

    /// This node took over `ip` of `service` (`ns/name`). Failures are logged, never fatal:
    /// the announcement matters more than its Event.
    pub async fn took_over(&self, service: &str, ip: IpAddr) {
        let Some((ns, name)) = service.split_once('/') else {
            return;
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let svc = match api.get(name).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(service, error = %e, "no Event: the Service could not be read");
                return;
            }
        };
        let event = Event {
            type_: EventType::Normal,
            reason: "Layer2Owner".into(),
            note: Some(format!("node {} now answers ARP/NDP for {ip}", self.node)),
            action: "Announce".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &svc.object_ref(&())).await {
            tracing::debug!(service, error = %e, "recording the ownership Event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn services_without_the_operators_pool_annotation_are_not_berths() {
        let s = svc(json!({"metadata": {"name": "a", "namespace": "x"},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.5"}]}}}));
        assert_eq!(view(&s), None);
    }

    #[test]
    fn ingress_ips_are_delivered_and_layer2_is_read_from_the_operators_annotation() {
        let s = svc(
            json!({"metadata": {"name": "web", "namespace": "demo", "annotations": {
                "berth.dev/allocated-pool": "lab-l2",
                "berth.dev/layer2": r#"{"ips":["10.0.0.240","fd00::5"],"interface":"eth0","nodes":["n1","n2"]}"#}},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.240"}, {"ip": "fd00::5"}]}}}),
        );
        let v = view(&s).unwrap();
        assert!(v.problems.is_empty());
        let d = desired([&v]);
        assert!(
            d.local_ips.is_empty(),
            "Layer2 IPs are local only on their owner"
        );
        assert_eq!(d.layer2.len(), 1);
        let l2 = &d.layer2[0];
        assert_eq!(l2.service, "demo/web");
        assert_eq!(l2.interface, "eth0");
        assert_eq!(
            l2.candidates.iter().cloned().collect::<Vec<_>>(),
            ["n1", "n2"]
        );
        assert_eq!(
            l2.ips,
            [
                "10.0.0.240".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_bad_annotation_is_reported_and_the_ips_still_delivered() {
        let s = svc(
            json!({"metadata": {"name": "web", "namespace": "demo", "annotations": {
                "berth.dev/allocated-pool": "p", "berth.dev/layer2": "eth0"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.9"}, {"ip": "nope"}]}}}),
        );
        let v = view(&s).unwrap();
        assert_eq!(v.ips.len(), 1);
        assert_eq!(v.layer2, None);
        assert_eq!(v.problems.len(), 2);
        assert!(v.problems[0].contains("demo/web"), "{:?}", v.problems);
    }

    #[test]
    fn desired_is_ordered_whatever_the_input_order() {
        let mk = |n: &str| ServiceView {
            ips: BTreeSet::new(),
            layer2: Some(Layer2Service {
                service: n.into(),
                ..Default::default()
            }),
            problems: vec![],
        };
        let (a, b) = (mk("a/x"), mk("b/y"));
        assert_eq!(desired([&a, &b]), desired([&b, &a]));
    }
}
