//! In-memory indexes the controllers keep beside kube-runtime's stores, so one Service's
//! reconcile reads only what concerns it: its EndpointSlices by Service, the Nodes already
//! read into [`NodeView`]s. Fed from watch events; pure and tested without an API server.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_api::names::LABEL_SERVICE_NAME;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;

use crate::ipam::ServiceKey;
use crate::nexthops::{NodeView, SliceView, from_node};

/// What the next-hop rules read of each EndpointSlice, sorted by slice name. A Vec, not a
/// map: most Services have one slice, and a map's node per Service cost 8 MB at 10,000.
type Slices = Vec<(String, SliceView)>;

/// EndpointSlices (as [`SliceView`]s) by the Service they belong to (label
/// `kubernetes.io/service-name`).
#[derive(Debug, Default)]
pub struct SliceIndex {
    by_service: BTreeMap<ServiceKey, Slices>,
    /// Slices seen during a relist, swapped in when it completes.
    relist: Option<BTreeMap<ServiceKey, Slices>>,
    /// Whether a list completed before (the first one changes everything: the Service
    /// controller's own first list covers that).
    listed: bool,
    /// Services whose slices the last relist changed (a watch gap's changes), to reconcile.
    relisted: Vec<ServiceKey>,
}

fn owner(slice: &EndpointSlice) -> Option<(ServiceKey, String)> {
    let ns = slice.metadata.namespace.clone()?;
    let svc = slice
        .metadata
        .labels
        .as_ref()?
        .get(LABEL_SERVICE_NAME)?
        .clone();
    Some((ServiceKey::new(ns, svc), slice.metadata.name.clone()?))
}

/// Sets slice `name` to `view`; false when it already was.
fn upsert(slices: &mut Slices, name: String, view: SliceView) -> bool {
    match slices.binary_search_by(|(n, _)| n.cmp(&name)) {
        Ok(i) if slices[i].1 == view => false,
        Ok(i) => {
            slices[i].1 = view;
            true
        }
        Err(i) => {
            slices.insert(i, (name, view));
            true
        }
    }
}

impl SliceIndex {
    /// Applies one watch event; returns the Service whose slices changed, if any: a change
    /// of what the next hops do not read (Pod addresses, ports) changes nothing.
    pub fn apply(&mut self, event: &Event<EndpointSlice>) -> Option<ServiceKey> {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                None
            }
            Event::InitApply(s) => {
                let (key, name) = owner(s)?;
                if let Some(r) = self.relist.as_mut() {
                    upsert(r.entry(key).or_default(), name, SliceView::from(s));
                }
                None
            }
            Event::InitDone => {
                if let Some(r) = self.relist.take() {
                    if self.listed || !self.by_service.is_empty() {
                        let keys: std::collections::BTreeSet<&ServiceKey> =
                            self.by_service.keys().chain(r.keys()).collect();
                        self.relisted = keys
                            .into_iter()
                            .filter(|k| self.by_service.get(*k) != r.get(*k))
                            .cloned()
                            .collect();
                    }
                    self.by_service = r;
                    self.listed = true;
                }
                None
            }
            Event::Apply(s) => {
                let (key, name) = owner(s)?;
                let view = SliceView::from(s);
                let slices = self.by_service.entry(key.clone()).or_default();
                upsert(slices, name, view).then_some(key)
            }
            Event::Delete(s) => {
                let (key, name) = owner(s)?;
                if let Some(m) = self.by_service.get_mut(&key) {
                    m.retain(|(n, _)| *n != name);
                    if m.is_empty() {
                        self.by_service.remove(&key);
                    }
                }
                Some(key)
            }
        }
    }

    /// The Services whose slices the last relist changed (made during a watch gap: no Apply
    /// or Delete named them); each is to be reconciled. Empty after the first list.
    pub fn take_relisted(&mut self) -> Vec<ServiceKey> {
        std::mem::take(&mut self.relisted)
    }

    /// The slices of one Service.
    pub fn of(&self, service: &ServiceKey) -> Vec<SliceView> {
        self.by_service
            .get(service)
            .map(|m| m.iter().map(|(_, v)| v.clone()).collect())
            .unwrap_or_default()
    }

    /// Number of Services with slices.
    pub fn services(&self) -> usize {
        self.by_service.len()
    }
}

/// Every Node's [`NodeView`] by name, kept from the Node watch's events. A kubelet heartbeat
/// costs reading that one Node: rebuilding every view per event cost the scale bench 60 % of a
/// core at 1,000 Nodes heart-beating every 10 s, with nothing to reconcile.
#[derive(Debug, Default)]
pub struct NodeIndex {
    views: BTreeMap<String, NodeView>,
    /// Views seen during a relist, swapped in when it completes.
    relist: Option<BTreeMap<String, NodeView>>,
}

impl NodeIndex {
    /// Applies one watch event; true when a view the decisions read changed (readiness,
    /// schedulability, labels, InternalIPs), false for a heartbeat or any other change.
    pub fn apply(&mut self, event: &Event<Node>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(n) => {
                if let Some(r) = self.relist.as_mut() {
                    let view = from_node(n);
                    r.insert(view.name.clone(), view);
                }
                false
            }
            Event::InitDone => match self.relist.take() {
                Some(r) if r != self.views => {
                    self.views = r;
                    true
                }
                _ => false,
            },
            Event::Apply(n) => {
                let view = from_node(n);
                if self.views.get(&view.name) == Some(&view) {
                    return false;
                }
                self.views.insert(view.name.clone(), view);
                true
            }
            Event::Delete(n) => {
                let name = n.metadata.name.as_deref().unwrap_or_default();
                self.views.remove(name).is_some()
            }
        }
    }

    /// Every view, sorted by name (as [`node_views`] makes them).
    pub fn views(&self) -> Arc<Vec<NodeView>> {
        Arc::new(self.views.values().cloned().collect())
    }
}

/// Every Node as the next-hop rules read it, shared by every reconcile without copying.
pub fn node_views<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Arc<Vec<NodeView>> {
    let mut v: Vec<NodeView> = nodes.into_iter().map(from_node).collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Arc::new(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn slice(ns: &str, svc: &str, name: &str) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name, "labels": {LABEL_SERVICE_NAME: svc}},
            "addressType": "IPv4",
            "endpoints": [],
        }))
        .unwrap()
    }

    #[test]
    fn a_kubelet_heartbeat_changes_no_node_view_and_readiness_does() {
        let node = |ready: &str, beat: &str, alloc: &str| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "n1", "labels": {"rack": "a"}, "resourceVersion": beat},
                "status": {
                    "conditions": [{"type": "Ready", "status": ready,
                                    "lastHeartbeatTime": beat, "reason": "KubeletReady"}],
                    "addresses": [{"type": "InternalIP", "address": "10.0.0.11"}],
                    "allocatable": {"cpu": alloc},
                }
            }))
            .unwrap()
        };
        let before = node("True", "2026-12-03T10:00:00Z", "4");
        let beat = node("True", "2026-12-03T10:00:10Z", "3900m");
        assert_eq!(node_views([&before]), node_views([&beat]));
        let down = node("False", "2026-12-03T10:00:20Z", "4");
        assert_ne!(node_views([&before]), node_views([&down]));
    }

    fn node(name: &str, ready: &str, beat: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {
                "conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": beat}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.11"}],
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_node_index_changes_with_what_berth_reads_and_not_with_heartbeats() {
        let mut idx = NodeIndex::default();
        let t = |s: u32| format!("2026-12-03T10:00:{s:02}Z");
        // The first list.
        assert!(!idx.apply(&Event::Init));
        assert!(!idx.apply(&Event::InitApply(node("b", "True", &t(0)))));
        assert!(!idx.apply(&Event::InitApply(node("a", "True", &t(0)))));
        assert!(idx.apply(&Event::InitDone), "the first list is a change");
        let names: Vec<_> = idx.views().iter().map(|v| v.name.clone()).collect();
        assert_eq!(names, ["a", "b"], "sorted as node_views sorts");
        // Heartbeats change nothing; readiness does, once.
        assert!(!idx.apply(&Event::Apply(node("a", "True", &t(10)))));
        assert!(idx.apply(&Event::Apply(node("a", "False", &t(20)))));
        assert!(!idx.apply(&Event::Apply(node("a", "False", &t(30)))));
        assert_eq!(
            *idx.views(),
            *node_views([&node("a", "False", &t(0)), &node("b", "True", &t(0))])
        );
        // A new Node, a deleted one, and deleting one never seen.
        assert!(idx.apply(&Event::Apply(node("c", "True", &t(0)))));
        assert!(idx.apply(&Event::Delete(node("c", "True", &t(0)))));
        assert!(!idx.apply(&Event::Delete(node("zz", "True", &t(0)))));
        // A relist that finds what the index holds is no change; one that misses a Node is.
        idx.apply(&Event::Init);
        idx.apply(&Event::InitApply(node("a", "False", &t(40))));
        idx.apply(&Event::InitApply(node("b", "True", &t(40))));
        assert_eq!(idx.views().len(), 2, "old views kept during the relist");
        assert!(!idx.apply(&Event::InitDone));
        idx.apply(&Event::Init);
        idx.apply(&Event::InitApply(node("b", "True", &t(50))));
        assert!(idx.apply(&Event::InitDone));
        assert_eq!(idx.views().len(), 1);
    }

    #[test]
    fn slices_follow_their_service_through_changes_and_relists() {
        let mut idx = SliceIndex::default();
        let web = ServiceKey::new("shop", "web");
        assert_eq!(
            idx.apply(&Event::Apply(slice("shop", "web", "web-a"))),
            Some(web.clone())
        );
        idx.apply(&Event::Apply(slice("shop", "web", "web-b")));
        idx.apply(&Event::Apply(slice("shop", "db", "db-a")));
        assert_eq!(idx.of(&web).len(), 2);
        // A change the next hops do not read (a Pod address, a new resourceVersion) is none.
        let mut moved = slice("shop", "web", "web-b");
        moved.metadata.resource_version = Some("7".into());
        moved.endpoints = vec![
            serde_json::from_value(
                serde_json::json!({"addresses": ["10.244.0.9"], "nodeName": "n1"}),
            )
            .unwrap(),
        ];
        assert_eq!(idx.apply(&Event::Apply(moved.clone())), Some(web.clone()));
        moved.endpoints[0].addresses = vec!["10.244.0.10".into()];
        moved.metadata.resource_version = Some("8".into());
        assert_eq!(idx.apply(&Event::Apply(moved)), None);
        assert_eq!(
            idx.apply(&Event::Delete(slice("shop", "web", "web-a"))),
            Some(web.clone())
        );
        assert_eq!(idx.of(&web).len(), 1);
        // A relist replaces everything only once it is complete.
        idx.apply(&Event::Init);
        idx.apply(&Event::InitApply(slice("shop", "db", "db-a")));
        assert_eq!(idx.of(&web).len(), 1, "old view kept during the relist");
        idx.apply(&Event::InitDone);
        assert!(idx.of(&web).is_empty());
        assert_eq!(idx.services(), 1);
        // What changed in the gap is told once: web's slices went, db's stayed as they were.
        assert_eq!(idx.take_relisted(), std::slice::from_ref(&web));
        assert!(idx.take_relisted().is_empty());
        // The first list of a new index is no change to tell (every Service is reconciled
        // at the start anyway).
        let mut fresh = SliceIndex::default();
        fresh.apply(&Event::Init);
        fresh.apply(&Event::InitApply(slice("shop", "db", "db-a")));
        fresh.apply(&Event::InitDone);
        assert!(fresh.take_relisted().is_empty());
        // A slice without the label belongs to nobody.
        let mut orphan = slice("shop", "x", "x-a");
        orphan.metadata.labels = None;
        assert_eq!(idx.apply(&Event::Apply(orphan)), None);
    }
}
