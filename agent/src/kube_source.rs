//! The agent's input from Kubernetes, turned into [`Desired`]: only what admins and the
//! operator own is believed.
//!
//! - Which IPs: a Service's `status.loadBalancer.ingress` (the status subresource: tenants
//!   cannot write it; the API server drops status sent with the object), for Services of
//!   `type: LoadBalancer` only, and only IPs inside an [`Eip`] (cluster-scoped, admins only).
//!   An ingress IP outside every Eip is another load balancer's, or forged: ignored.
//! - BGP or Layer2: the Eip's `spec.protocol`. A BGP IP is delivered locally on every node (a
//!   node that is not a next hop simply receives nothing for it).
//! - For a Layer2 IP, who may answer: the operator's assignment ConfigMap in Berth's own
//!   namespace ([`berth_api::layer2`]), never an annotation; the interface is the Eip's. A
//!   Layer2 IP without an assignment is answered by nobody until the operator writes one.
//!
//! Annotations and labels on Services are never read here: a Service carrying Berth's
//! annotations without being Berth's gets nothing (the operator records an Event on it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use berth_api::layer2::{DATA_ASSIGNMENT, DATA_SERVICE, LABEL_LAYER2_ASSIGNMENT};
use berth_api::{Eip, EipProtocol, EipSpec, Layer2Assignment};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use crate::desired::{Desired, Layer2Service};

/// What the agent reads of one Service: its key and the IPs in its status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceView {
    /// `namespace/name`.
    pub key: String,
    /// The IPs of `status.loadBalancer.ingress`.
    pub ips: BTreeSet<IpAddr>,
    /// Problems found (unparsable IP), for the log.
    pub problems: Vec<String>,
}

/// Reads one Service (pure): `None` unless it is `type: LoadBalancer`.
pub fn view(svc: &Service) -> Option<ServiceView> {
    let ty = svc.spec.as_ref().and_then(|s| s.type_.as_deref());
    if ty != Some("LoadBalancer") {
        return None;
    }
    let mut out = ServiceView {
        key: key(svc),
        ..ServiceView::default()
    };
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
                    "{}: status.loadBalancer.ingress holds {ip:?}, which is not an IP",
                    out.key
                )),
            }
        }
    }
    Some(out)
}

/// Reads one assignment ConfigMap (pure): the Service it is for and the assignment, or why
/// it cannot be used.
pub fn assignment(cm: &ConfigMap) -> Result<(String, Layer2Assignment), String> {
    let name = cm.name_any();
    let data = cm.data.as_ref();
    let service = data
        .and_then(|d| d.get(DATA_SERVICE))
        .ok_or_else(|| format!("ConfigMap {name} has no {DATA_SERVICE:?} key"))?;
    let raw = data
        .and_then(|d| d.get(DATA_ASSIGNMENT))
        .ok_or_else(|| format!("ConfigMap {name} has no {DATA_ASSIGNMENT:?} key"))?;
    // The operator names each ConfigMap after its Service; one that does not match is not
    // the operator's (or was edited by hand) and is not believed.
    let (ns, svc) = service.split_once('/').unwrap_or_default();
    if name != berth_api::layer2::configmap_name(ns, svc) {
        return Err(format!(
            "ConfigMap {name} names Service {service:?}, whose assignment would be {}: ignored",
            berth_api::layer2::configmap_name(ns, svc)
        ));
    }
    let a = Layer2Assignment::from_json(raw).map_err(|e| {
        format!("ConfigMap {name}: {DATA_ASSIGNMENT} is not the operator's JSON ({e}); the operator rewrites it, check its log")
    })?;
    Ok((service.clone(), a))
}

/// The agent's input from the Services, pools and assignments it believes (pure;
/// deterministic order). Returns what was ignored and why, for the log.
pub fn desired<'a>(
    services: impl IntoIterator<Item = &'a ServiceView>,
    pools: &BTreeMap<String, EipSpec>,
    assignments: &BTreeMap<String, Layer2Assignment>,
) -> (Desired, Vec<String>) {
    let mut d = Desired::default();
    let mut ignored = Vec::new();
    for v in services {
        // Layer2 IPs of this Service by interface (from the pool, not from the assignment).
        let mut layer2: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for ip in &v.ips {
            let Some((pool, spec)) = pools
                .iter()
                .find(|(_, spec)| spec.contains(*ip) == Some(true))
            else {
                ignored.push(format!(
                    "{}: {ip} is in no Eip: not Berth's, nothing done for it",
                    v.key
                ));
                continue;
            };
            match spec.protocol {
                EipProtocol::Bgp => {
                    d.local_ips.insert(*ip);
                }
                EipProtocol::Layer2 => match spec.interface.as_deref() {
                    Some(i) if !i.trim().is_empty() => {
                        layer2.entry(i.to_owned()).or_default().push(*ip)
                    }
                    _ => ignored.push(format!(
                        "{}: {ip} is in layer2 Eip {pool}, which names no spec.interface",
                        v.key
                    )),
                },
            }
        }
        if layer2.is_empty() {
            continue;
        }
        let Some(a) = assignments.get(&v.key) else {
            ignored.push(format!(
                "{}: no Layer2 assignment from the operator yet: nobody answers for {:?}",
                v.key,
                layer2.values().flatten().collect::<Vec<_>>()
            ));
            continue;
        };
        let assigned: BTreeSet<IpAddr> = a.ips.iter().filter_map(|s| s.parse().ok()).collect();
        for (interface, ips) in layer2 {
            let (ips, unassigned): (Vec<IpAddr>, Vec<IpAddr>) =
                ips.into_iter().partition(|ip| assigned.contains(ip));
            if !unassigned.is_empty() {
                ignored.push(format!(
                    "{}: {unassigned:?} not in the operator's assignment yet: nobody answers for them",
                    v.key
                ));
            }
            if ips.is_empty() {
                continue;
            }
            d.layer2.push(Layer2Service {
                service: v.key.clone(),
                ips,
                interface,
                candidates: a.nodes.iter().cloned().collect(),
            });
        }
    }
    d.layer2
        .sort_by(|a, b| (&a.service, &a.interface).cmp(&(&b.service, &b.interface)));
    (d, ignored)
}

/// One watched resource's objects by key, with the watcher's relist semantics: a relist
/// replaces everything at once when it is complete.
struct Table<V> {
    live: BTreeMap<String, V>,
    relist: Option<BTreeMap<String, V>>,
    listed: bool,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            live: BTreeMap::new(),
            relist: None,
            listed: false,
        }
    }
}

impl<V: PartialEq> Table<V> {
    /// Applies one watch event; `read` gives the key and the value to keep (`None`: the
    /// object is not of interest). Returns whether the live view changed.
    fn apply<K>(
        &mut self,
        ev: watcher::Event<K>,
        read: impl Fn(&K) -> (String, Option<V>),
    ) -> bool {
        match ev {
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(o) => {
                if let (Some(m), (k, Some(v))) = (self.relist.as_mut(), read(&o)) {
                    m.insert(k, v);
                }
                false
            }
            watcher::Event::InitDone => {
                self.live = self.relist.take().unwrap_or_default();
                self.listed = true;
                true
            }
            watcher::Event::Apply(o) => match read(&o) {
                (k, Some(v)) => {
                    if self.live.get(&k) == Some(&v) {
                        false
                    } else {
                        self.live.insert(k, v);
                        true
                    }
                }
                (k, None) => self.live.remove(&k).is_some(),
            },
            watcher::Event::Delete(o) => self.live.remove(&read(&o).0).is_some(),
        }
    }
}

enum Input {
    Services(Result<watcher::Event<Service>, watcher::Error>),
    Pools(Result<watcher::Event<Eip>, watcher::Error>),
    Assignments(Result<watcher::Event<ConfigMap>, watcher::Error>),
}

/// Watches Services (all namespaces), Eips, and the operator's assignment ConfigMaps in
/// `namespace`, and publishes the resulting [`Desired`] on `tx`: the first time once all
/// three are listed, then on every change. Watch errors are logged with the resource and
/// retried with back-off; the last good state stays published.
pub async fn run(client: Client, namespace: String, tx: watch::Sender<Option<Desired>>) {
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(Input::Services);
    let pools = watcher(Api::<Eip>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(Input::Pools);
    let assignments = watcher(
        Api::<ConfigMap>::namespaced(client, &namespace),
        watcher::Config::default().labels(&format!("{LABEL_LAYER2_ASSIGNMENT}=true")),
    )
    .default_backoff()
    .map(Input::Assignments);
    let mut inputs =
        futures::stream::select_all([services.boxed(), pools.boxed(), assignments.boxed()]);
    let mut svc_table: Table<ServiceView> = Table::default();
    let mut pool_table: Table<EipSpec> = Table::default();
    let mut assignment_table: Table<Layer2Assignment> = Table::default();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    while let Some(input) = inputs.next().await {
        let changed = match input {
            Input::Services(Ok(ev)) => svc_table.apply(ev, |s: &Service| {
                let v = view(s);
                if let Some(v) = &v {
                    for p in &v.problems {
                        tracing::warn!("{p}");
                    }
                }
                (key(s), v)
            }),
            Input::Pools(Ok(ev)) => {
                pool_table.apply(ev, |e: &Eip| (e.name_any(), Some(e.spec.clone())))
            }
            Input::Assignments(Ok(ev)) => {
                assignment_table.apply(ev, |cm: &ConfigMap| match assignment(cm) {
                    Ok((service, a)) => (service, Some(a)),
                    Err(why) => {
                        tracing::warn!("{why}");
                        (cm.name_any(), None)
                    }
                })
            }
            Input::Services(Err(e)) => {
                watch_failed("services", "list/watch services (all namespaces)", &e)
            }
            Input::Pools(Err(e)) => watch_failed("eips.berth.dev", "list/watch eips.berth.dev", &e),
            Input::Assignments(Err(e)) => watch_failed(
                "configmaps",
                &format!("list/watch configmaps in namespace {namespace}"),
                &e,
            ),
        };
        let all_listed = svc_table.listed && pool_table.listed && assignment_table.listed;
        if !(changed && all_listed) {
            continue;
        }
        let (d, ignored) = desired(
            svc_table.live.values(),
            &pool_table.live,
            &assignment_table.live,
        );
        // Each reason once while it lasts, not on every event.
        let now: BTreeSet<String> = ignored.into_iter().collect();
        for why in now.difference(&reported) {
            tracing::info!("ignored: {why}");
        }
        reported = now;
        tx.send_if_modified(|cur| {
            if cur.as_ref() == Some(&d) {
                false
            } else {
                *cur = Some(d);
                true
            }
        });
    }
}

/// The gossip seeds of a cluster (pure): every other Node's InternalIP of `advertise`'s
/// family, at `advertise`'s port, sorted.
pub fn node_seeds<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    me: &str,
    advertise: SocketAddr,
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = nodes
        .into_iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .flat_map(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse::<IpAddr>().ok())
                .filter(|ip| ip.is_ipv4() == advertise.is_ipv4())
                .map(|ip| SocketAddr::new(ip, advertise.port()))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether the Node's `Ready` condition is `True` (its kubelet reports in).
pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether a joining agent sees every node it should before claiming IPs: each Ready node
/// (other than itself) that is a Layer2 candidate must be in its alive set. A node that is
/// Ready but whose agent is not seen yet may own IPs this agent would otherwise claim.
pub fn full_view(
    alive: &BTreeSet<String>,
    ready: &BTreeSet<String>,
    candidates: &BTreeSet<String>,
    me: &str,
) -> bool {
    ready
        .iter()
        .filter(|n| n.as_str() != me && candidates.contains(*n))
        .all(|n| alive.contains(n))
}

/// Watches Nodes and publishes [`node_seeds`] on `tx` whenever they change (the first time
/// once the Nodes are listed), so the gossip needs no static seed list in a real cluster, and
/// the names of the Ready Nodes on `ready` (the universe a joining agent waits to see).
pub async fn watch_node_seeds(
    client: Client,
    me: String,
    advertise: SocketAddr,
    tx: watch::Sender<Option<Vec<SocketAddr>>>,
    ready: watch::Sender<BTreeSet<String>>,
) {
    let mut events = std::pin::pin!(
        watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff()
    );
    let mut table: Table<(Vec<SocketAddr>, bool)> = Table::default();
    while let Some(ev) = events.next().await {
        let changed = match ev {
            Ok(ev) => table.apply(ev, |n: &Node| {
                (
                    n.name_any(),
                    Some((node_seeds([n], &me, advertise), node_ready(n))),
                )
            }),
            Err(e) => watch_failed("nodes", "list/watch nodes", &e),
        };
        if !(changed && table.listed) {
            continue;
        }
        let names: BTreeSet<String> = table
            .live
            .iter()
            .filter(|(_, (_, r))| *r)
            .map(|(n, _)| n.clone())
            .collect();
        ready.send_if_modified(|cur| {
            let changed = *cur != names;
            *cur = names;
            changed
        });
        let mut seeds: Vec<SocketAddr> =
            table.live.values().flat_map(|(s, _)| s).copied().collect();
        seeds.sort();
        seeds.dedup();
        tx.send_if_modified(|cur| {
            if cur.as_ref() == Some(&seeds) {
                false
            } else {
                *cur = Some(seeds);
                true
            }
        });
    }
}

fn watch_failed(resource: &str, verbs: &str, e: &watcher::Error) -> bool {
    tracing::warn!(resource, error = %e, "watch failed; retrying with back-off (a 403 means the agent's RBAC lacks {verbs})");
    false
}

fn key(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
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

    fn pools() -> BTreeMap<String, EipSpec> {
        let spec = |v| serde_json::from_value::<EipSpec>(v).unwrap();
        BTreeMap::from([
            (
                "bgp".to_owned(),
                spec(json!({"address": "198.51.100.0/28"})),
            ),
            (
                "l2".to_owned(),
                spec(
                    json!({"address": "10.0.0.240-10.0.0.247", "protocol": "layer2", "interface": "eth0"}),
                ),
            ),
            (
                "l2v6".to_owned(),
                spec(
                    json!({"address": "fd00::240/124", "protocol": "layer2", "interface": "eth1"}),
                ),
            ),
        ])
    }

    fn assigned(ips: &[&str], nodes: &[&str]) -> Layer2Assignment {
        Layer2Assignment {
            ips: ips.iter().map(|s| s.to_string()).collect(),
            interface: "forged0".into(),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn lb(name: &str, ips: &[&str]) -> Service {
        let ingress: Vec<_> = ips.iter().map(|i| json!({"ip": i})).collect();
        svc(json!({"metadata": {"name": name, "namespace": "demo"},
            "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": ingress}}}))
    }

    #[test]
    fn only_load_balancer_services_are_read_and_annotations_are_not() {
        // A tenant's ClusterIP Service dressed as Berth's: ignored whatever it says.
        let forged = svc(
            json!({"metadata": {"name": "x", "namespace": "t", "annotations": {
                "berth.dev/allocated-pool": "l2",
                "berth.dev/layer2": r#"{"ips":["10.0.0.1"],"interface":"eth0","nodes":["n1"]}"#}},
            "spec": {"type": "ClusterIP"},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.241"}]}}}),
        );
        assert_eq!(view(&forged), None);
        let v = view(&lb("web", &["198.51.100.3", "nope"])).unwrap();
        assert_eq!(v.key, "demo/web");
        assert_eq!(v.ips.len(), 1);
        assert_eq!(v.problems.len(), 1);
        assert!(v.problems[0].contains("demo/web"), "{:?}", v.problems);
    }

    #[test]
    fn bgp_ips_are_local_everywhere_and_ips_outside_every_pool_are_ignored() {
        // 10.0.0.1 is the subnet's gateway: in no Eip, so nothing is done for it even on a
        // LoadBalancer Service (another controller's, or a status written around Berth).
        let v = view(&lb("web", &["198.51.100.3", "10.0.0.1"])).unwrap();
        let (d, ignored) = desired([&v], &pools(), &BTreeMap::new());
        assert_eq!(
            d.local_ips,
            BTreeSet::from(["198.51.100.3".parse::<IpAddr>().unwrap()])
        );
        assert!(d.layer2.is_empty());
        assert_eq!(ignored.len(), 1);
        assert!(ignored[0].contains("10.0.0.1 is in no Eip"), "{ignored:?}");
    }

    #[test]
    fn layer2_needs_the_status_the_pool_and_the_operators_assignment() {
        let v = view(&lb("office", &["10.0.0.241", "fd00::241"])).unwrap();
        // Without an assignment nobody answers, and the IPs are not local anywhere.
        let (d, ignored) = desired([&v], &pools(), &BTreeMap::new());
        assert!(d.local_ips.is_empty() && d.layer2.is_empty());
        assert!(ignored[0].contains("no Layer2 assignment"), "{ignored:?}");

        // The assignment names candidates; IPs come from the status, the interface from the
        // pool, whatever the assignment says. An assigned IP the status does not hold (the
        // gateway) is never answered.
        let a = BTreeMap::from([(
            "demo/office".to_owned(),
            assigned(&["10.0.0.241", "fd00::241", "10.0.0.1"], &["n1", "n2"]),
        )]);
        let (d, _) = desired([&v], &pools(), &a);
        assert!(
            d.local_ips.is_empty(),
            "Layer2 IPs are local only on their owner"
        );
        assert_eq!(d.layer2.len(), 2);
        assert_eq!(d.layer2[0].interface, "eth0");
        assert_eq!(d.layer2[0].ips, ["10.0.0.241".parse::<IpAddr>().unwrap()]);
        assert_eq!(d.layer2[1].interface, "eth1");
        assert_eq!(d.layer2[1].ips, ["fd00::241".parse::<IpAddr>().unwrap()]);
        for l2 in &d.layer2 {
            assert_eq!(l2.service, "demo/office");
            assert_eq!(
                l2.candidates.iter().cloned().collect::<Vec<_>>(),
                ["n1", "n2"]
            );
        }

        // An assignment for another Service gives this one nothing.
        let other = BTreeMap::from([("demo/other".to_owned(), assigned(&["10.0.0.241"], &["n1"]))]);
        assert!(desired([&v], &pools(), &other).0.layer2.is_empty());
    }

    #[test]
    fn assignments_are_read_from_the_operators_configmap() {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "berth-l2.demo.office", "namespace": "berth-system"},
            "data": {"service": "demo/office",
                     "assignment": r#"{"ips":["10.0.0.241"],"interface":"eth0","nodes":["n1"]}"#}
        }))
        .unwrap();
        let (service, a) = assignment(&cm).unwrap();
        assert_eq!(service, "demo/office");
        assert_eq!(a.nodes, ["n1"]);
        let broken: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "berth-l2.demo.x"}, "data": {"service": "demo/x", "assignment": "eth0"}
        }))
        .unwrap();
        assert!(assignment(&broken).unwrap_err().contains("berth-l2.demo.x"));
        let misnamed: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "berth-l2.demo.other"},
            "data": {"service": "demo/office",
                     "assignment": r#"{"ips":["10.0.0.241"],"interface":"eth0","nodes":["n1"]}"#}
        }))
        .unwrap();
        assert!(assignment(&misnamed).unwrap_err().contains("ignored"));
    }

    #[test]
    fn desired_is_ordered_whatever_the_input_order() {
        let a = view(&lb("a", &["10.0.0.241"])).unwrap();
        let b = view(&lb("b", &["10.0.0.242"])).unwrap();
        let asg = BTreeMap::from([
            ("demo/a".to_owned(), assigned(&["10.0.0.241"], &["n1"])),
            ("demo/b".to_owned(), assigned(&["10.0.0.242"], &["n2"])),
        ]);
        assert_eq!(
            desired([&a, &b], &pools(), &asg).0,
            desired([&b, &a], &pools(), &asg).0
        );
    }

    #[test]
    fn seeds_are_the_other_nodes_internal_ips_of_the_gossip_family() {
        let node = |name: &str, addrs: serde_json::Value| -> Node {
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"addresses": addrs}}))
            .unwrap()
        };
        let nodes = [
            node(
                "n1",
                json!([{"type": "InternalIP", "address": "10.0.0.11"}]),
            ),
            node(
                "n2",
                json!([{"type": "Hostname", "address": "n2"},
                       {"type": "ExternalIP", "address": "203.0.113.2"},
                       {"type": "InternalIP", "address": "fd00::12"},
                       {"type": "InternalIP", "address": "10.0.0.12"}]),
            ),
            node("n3", json!([])),
            node(
                "n4",
                json!([{"type": "InternalIP", "address": "not-an-ip"}]),
            ),
        ];
        let v4: SocketAddr = "10.0.0.11:7946".parse().unwrap();
        assert_eq!(
            node_seeds(&nodes, "n1", v4),
            ["10.0.0.12:7946".parse::<SocketAddr>().unwrap()],
            "itself, other families, external IPs and unparsable addresses are left out"
        );
        let v6: SocketAddr = "[fd00::11]:7000".parse().unwrap();
        assert_eq!(
            node_seeds(&nodes, "n1", v6),
            ["[fd00::12]:7000".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn readiness_and_the_full_view_a_joiner_waits_for() {
        let node = |conditions: serde_json::Value| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n"},
                "status": {"conditions": conditions}}))
            .unwrap()
        };
        assert!(node_ready(&node(json!([
            {"type": "MemoryPressure", "status": "False"},
            {"type": "Ready", "status": "True"}]))));
        assert!(!node_ready(&node(
            json!([{"type": "Ready", "status": "Unknown"}])
        )));
        assert!(!node_ready(&node(json!([]))));
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let ready = set(&["n1", "n2", "n3", "gpu1"]);
        let candidates = set(&["n1", "n2", "n3", "n4"]);
        // n3 is Ready and a candidate but not seen yet: not a full view.
        assert!(!full_view(&set(&["n1", "n2"]), &ready, &candidates, "n1"));
        // Seen: full (gpu1 is no candidate, n4 not Ready: neither is waited for).
        assert!(full_view(
            &set(&["n1", "n2", "n3"]),
            &ready,
            &candidates,
            "n1"
        ));
        // Alone in a one-node cluster: nothing to wait for.
        assert!(full_view(&set(&["n1"]), &set(&["n1"]), &candidates, "n1"));
    }

    #[test]
    fn a_relist_replaces_the_table_only_when_complete() {
        let mut t: Table<u32> = Table::default();
        let read = |v: &(String, u32)| (v.0.clone(), Some(v.1));
        assert!(!t.apply(watcher::Event::Init, read));
        assert!(!t.apply(watcher::Event::InitApply(("a".into(), 1)), read));
        assert!(!t.listed);
        assert!(t.apply(watcher::Event::InitDone, read));
        assert!(t.listed);
        assert!(
            !t.apply(watcher::Event::Apply(("a".into(), 1)), read),
            "no change"
        );
        assert!(t.apply(watcher::Event::Apply(("a".into(), 2)), read));
        assert!(t.apply(watcher::Event::Apply(("b".into(), 1)), read));
        // A relist that no longer holds "a": it goes when the relist is done.
        assert!(!t.apply(watcher::Event::Init, read));
        assert!(!t.apply(watcher::Event::InitApply(("b".into(), 1)), read));
        assert_eq!(t.live.len(), 2);
        assert!(t.apply(watcher::Event::InitDone, read));
        assert_eq!(t.live.keys().collect::<Vec<_>>(), ["b"]);
        assert!(t.apply(watcher::Event::Delete(("b".into(), 1)), read));
        assert!(t.live.is_empty());
    }
}
