//! The Kubernetes-facing layer against a mock API server (tower-test): each test runs a real
//! reconcile and checks the exact requests it sent, and the state it left for the speakers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::{BgpConf, BgpPeer, Eip, names};
use http::{Request, Response};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use super::speaker::{CONDITION_CONFIGURED, peer_status_for_tests, peers_for_tests};
use super::{Context, Settings, Shared, Stores, SyncEvent, service};
use crate::index::{SliceIndex, node_views};
use crate::ipam::{Ipam, PoolSpec, ServiceKey};
use crate::metrics::Metrics;
use crate::routes::RouteTable;
use crate::speakers;

/// One request as the mock API server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Value,
}

/// A test world: the context a reconcile gets, the writers behind its stores, the requests
/// sent and the speaker sync channel.
struct World {
    ctx: Arc<Context>,
    seen: Arc<Mutex<Vec<Seen>>>,
    sync: mpsc::UnboundedReceiver<SyncEvent>,
    /// Services the reconciles asked to be reconciled.
    reconcile: mpsc::UnboundedReceiver<ServiceKey>,
    nodes: Writer<Node>,
    peers: Writer<BgpPeer>,
    /// Secrets the mock API server answers a GET with.
    served: Served,
    confs: Writer<BgpConf>,
    pods: Writer<Pod>,
    namespaces: Writer<k8s_openapi::api::core::v1::Namespace>,
    services: Writer<Service>,
}

fn store<K>() -> (reflector::Store<K>, Writer<K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let w = Writer::default();
    (w.as_reader(), w)
}

/// Secrets the mock API server serves by name: the status code and the body of a GET.
type Served = Arc<Mutex<BTreeMap<String, (u16, Value)>>>;

/// Answers every request the way the API server would for these tests: writes echo the
/// object back (a PATCH of a Service returns a Service), a GET of a Secret in Berth's
/// namespace answers what `secrets` holds for it, everything else is 404.
fn serve(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    secrets: Served,
) {
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_owned();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            seen.lock().unwrap().push(Seen {
                method: method.clone(),
                path: path.clone(),
                body: body.clone(),
            });
            let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "NotFound", "code": 404, "message": "not found"});
            let secret = path
                .strip_prefix("/api/v1/namespaces/berth-system/secrets/")
                .filter(|_| method == "GET")
                .map(|name| secrets.lock().unwrap().get(name).cloned());
            let (code, reply) = if let Some(answer) = secret {
                answer.unwrap_or((404, not_found))
            } else if path.contains("/services/") && method == "GET" {
                // The Service the path names, with a uid made from its name.
                let mut parts = path.rsplit('/');
                let name = parts.next().unwrap_or_default();
                let ns = parts.nth(1).unwrap_or_default();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                                    "resourceVersion": "8"}}),
                )
            } else if path.contains("/services/") {
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "8"}}),
                )
            } else if method == "PATCH" && path.contains("/events/gone.") {
                // An Event the API server let expire.
                (404, not_found)
            } else if method == "POST" || method == "PATCH" {
                (200, body)
            } else {
                (404, not_found)
            };
            let resp = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(resp);
        }
    });
}

fn world(pools: Vec<PoolSpec>, claims_of: &[Service]) -> World {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let served: Served = Arc::default();
    serve(handle, seen.clone(), served.clone());
    let (tx, rx) = mpsc::unbounded_channel();
    let (reconcile_tx, reconcile_rx) = mpsc::unbounded_channel();
    let claims: Vec<_> = claims_of
        .iter()
        .flat_map(|s| crate::convert::claims(s, false))
        .collect();
    let (ipam, _) = Ipam::rebuild(pools, claims);
    let shared = Arc::new(Shared {
        ipam: Mutex::new(ipam),
        routes: Mutex::new(RouteTable::new()),
        pool_errors: Mutex::new(BTreeMap::new()),
        sync: tx,
        eip_dirty: Notify::new(),
        reconcile: reconcile_tx,
        reconciled: Default::default(),
        reconciling: Default::default(),
        waiting: Mutex::new(Default::default()),
        sweep: mpsc::unbounded_channel().0,
        health: Mutex::new(Default::default()),
        slices: Mutex::new(SliceIndex::default()),
        nodes: Mutex::new(Arc::new(Vec::new())),
        metrics: Arc::new(Metrics::default()),
        secrets: Mutex::new(crate::passwords::SecretCache::new()),
        peers_changed: Notify::new(),
    });
    let (nodes, node_w) = store::<Node>();
    let (eips, _eip_w) = store::<Eip>();
    let (confs, conf_w) = store::<BgpConf>();
    let (peers, peer_w) = store::<BgpPeer>();
    let (pods, pod_w) = store::<Pod>();
    let (assignments, _assignment_w) = store::<k8s_openapi::api::core::v1::ConfigMap>();
    let (namespaces, namespace_w) = store::<k8s_openapi::api::core::v1::Namespace>();
    let (services, service_w) = store::<Service>();
    let settings = Settings {
        take_unclassed: false,
        namespace: "berth-system".into(),
        speaker_selector: "app.kubernetes.io/name=berth-bgp-server".into(),
        speaker_port: 50051,
        speaker_tls: None,
        resync: Duration::from_secs(60),
        identity: "berth-operator-0".into(),
        lease_name: "berth-operator".into(),
        lease_duration: Duration::from_secs(15),
    };
    let recorder =
        super::recorder::Recorder::new(client.clone(), "berth-operator", "berth-operator-0");
    let ctx = Arc::new(Context {
        client,
        settings,
        shared,
        stores: Stores {
            nodes,
            eips,
            confs,
            peers,
            pods,
            assignments,
            namespaces,
            services,
        },
        recorder,
    });
    World {
        ctx,
        seen,
        sync: rx,
        reconcile: reconcile_rx,
        nodes: node_w,
        peers: peer_w,
        served,
        confs: conf_w,
        pods: pod_w,
        namespaces: namespace_w,
        services: service_w,
    }
}

impl World {
    /// Serves Secret `name` in Berth's namespace with this data (base64 values).
    fn serve_secret(&self, name: &str, data: Value) {
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "berth-system"}, "data": data});
        self.served
            .lock()
            .unwrap()
            .insert(name.to_owned(), (200, secret));
    }

    /// Answers a GET of Secret `name` with this error code, as an API server would.
    fn refuse_secret(&self, name: &str, code: u16) {
        let reason = if code == 403 {
            "Forbidden"
        } else {
            "InternalError"
        };
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": reason, "code": code,
            "message": format!("secrets \"{name}\" is forbidden: User \"system:serviceaccount:berth-system:berth-operator\" cannot get resource \"secrets\"")});
        self.served
            .lock()
            .unwrap()
            .insert(name.to_owned(), (code, status));
    }

    /// Reads the Secrets the peers name, as the Secret reader does; true when a password
    /// changed.
    async fn read_secrets(&self) -> bool {
        super::secrets::refresh(
            &self.ctx.client,
            "berth-system",
            &self.ctx.stores.peers,
            &self.ctx.shared,
        )
        .await
    }

    fn namespace(&mut self, name: &str, labels: Value) {
        let n =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
        self.namespaces
            .apply_watcher_event(&watcher::Event::Apply(n));
    }

    /// Ready nodes n1 at 10.0.0.11, n2 at 10.0.0.12, ..., without labels.
    fn add_ready_nodes(&mut self, nodes: usize) {
        for i in 1..=nodes {
            self.add_node(
                &format!("n{i}"),
                &format!("10.0.0.{}", 10 + i),
                true,
                json!({}),
            );
        }
    }

    fn add_node(&mut self, name: &str, ip: &str, ready: bool, labels: Value) {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}],
                "addresses": [{"type": "InternalIP", "address": ip}],
            }
        }))
        .unwrap();
        self.nodes.apply_watcher_event(&watcher::Event::Apply(n));
        let views = node_views(self.ctx.stores.nodes.state().iter().map(|n| &**n));
        *self.ctx.shared.nodes.lock().unwrap() = views;
    }

    fn slice(&self, nodes: &[&str]) {
        let eps: Vec<_> = nodes
            .iter()
            .map(|n| json!({"addresses": ["10.244.0.9"], "nodeName": n, "conditions": {"ready": true}}))
            .collect();
        let s: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web-abcde",
                         "labels": {names::LABEL_SERVICE_NAME: "web"}},
            "addressType": "IPv4",
            "endpoints": eps,
        }))
        .unwrap();
        self.ctx
            .shared
            .slices
            .lock()
            .unwrap()
            .apply(&watcher::Event::Apply(s));
    }

    /// Puts `svc` in the Service store, as the controller's watch would.
    fn store_service(&mut self, svc: &Service) {
        self.services
            .apply_watcher_event(&watcher::Event::Apply(svc.clone()));
    }

    async fn reconcile(&self, svc: Service) {
        service::reconcile(Arc::new(svc), self.ctx.clone())
            .await
            .expect("reconcile");
    }

    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    fn route(&self, ip: &str) -> Vec<String> {
        let ip: IpAddr = ip.parse().unwrap();
        self.ctx
            .shared
            .routes
            .lock()
            .unwrap()
            .get(ip)
            .map(|h| h.iter().map(|h| h.node.clone()).collect())
            .unwrap_or_default()
    }

    fn synced_ips(&mut self) -> Vec<IpAddr> {
        let mut out = Vec::new();
        while let Ok(ev) = self.sync.try_recv() {
            if let SyncEvent::Routes(ips) = ev {
                out.extend(ips);
            }
        }
        out
    }
}

fn pool(name: &str, address: &str) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        address: address.into(),
        default: true,
        ..Default::default()
    }
}

fn web(policy: &str, extra: Value) -> Service {
    let mut v = json!({
        "metadata": {"namespace": "shop", "name": "web", "resourceVersion": "7",
                     "uid": "11111111-2222-3333-4444-555555555555"},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": names::LOAD_BALANCER_CLASS,
                 "externalTrafficPolicy": policy, "ipFamilies": ["IPv4"],
                 "ports": [{"port": 80}]},
    });
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// The Service as the API holds it after a successful allocation of `ip`.
fn allocated(policy: &str, ip: &str) -> Service {
    web(
        policy,
        json!({
            "metadata": {"annotations": {names::ANNOTATION_ALLOCATED_POOL: "blue"}},
            "status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}},
        }),
    )
}

/// One route to `ip` through node n1 (10.0.0.11), as a reconcile gives the route table.
fn via_n1(ip: &str) -> Vec<(IpAddr, Vec<crate::nexthops::NextHop>)> {
    vec![(
        ip.parse().unwrap(),
        vec![crate::nexthops::NextHop {
            node: "n1".into(),
            address: "10.0.0.11".parse().unwrap(),
            weight: None,
        }],
    )]
}

fn events(seen: &[Seen]) -> Vec<(String, String)> {
    seen.iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/events"))
        .map(|s| {
            (
                s.body["reason"].as_str().unwrap_or_default().to_owned(),
                s.body["note"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_new_service_gets_pool_ip_and_an_event_in_that_order_and_no_finalizer() {
    let mut w = world(vec![pool("blue", "198.51.100.8/30")], &[]);
    w.add_node("n1", "10.0.0.11", true, json!({}));
    w.reconcile(web("Cluster", json!({}))).await;
    let seen = w.take();
    let writes: Vec<_> = seen
        .iter()
        .filter(|s| s.path.contains("/services/"))
        .collect();
    assert_eq!(writes.len(), 2, "{seen:#?}");
    assert_eq!(writes[0].method, "PATCH");
    assert_eq!(writes[0].path, "/api/v1/namespaces/shop/services/web");
    let meta = &writes[0].body["metadata"];
    assert!(
        meta["finalizers"].is_null(),
        "no finalizer: a Service deleted after uninstall must not hang"
    );
    assert_eq!(
        meta["annotations"][names::ANNOTATION_ALLOCATED_POOL],
        "blue"
    );
    assert_eq!(
        writes[1].path,
        "/api/v1/namespaces/shop/services/web/status"
    );
    assert_eq!(
        writes[1].body["status"]["loadBalancer"]["ingress"],
        json!([{"ip": "198.51.100.9", "ipMode": "VIP"}])
    );
    assert_eq!(
        events(&seen),
        [(
            "IPAllocated".to_owned(),
            "assigned 198.51.100.9 from pool blue".to_owned()
        )]
    );
    assert_eq!(w.route("198.51.100.9"), ["n1"]);
    assert_eq!(w.synced_ips(), ["198.51.100.9".parse::<IpAddr>().unwrap()]);
}

#[tokio::test]
async fn a_requested_ip_is_given_and_recorded() {
    let mut w = world(vec![pool("blue", "198.51.100.8/29")], &[]);
    w.add_node("n1", "10.0.0.11", true, json!({}));
    w.reconcile(web(
        "Cluster",
        json!({"metadata": {"annotations": {names::ANNOTATION_REQUESTED_IP: "198.51.100.13"}}}),
    ))
    .await;
    let seen = w.take();
    let status = seen.iter().find(|s| s.path.ends_with("/status")).unwrap();
    assert_eq!(
        status.body["status"]["loadBalancer"]["ingress"][0]["ip"],
        "198.51.100.13"
    );
}

#[tokio::test]
async fn an_exhausted_pool_leaves_the_service_pending_with_a_warning_that_says_so() {
    let holder = web("Cluster", json!({}));
    let mut other = allocated("Cluster", "198.51.100.9");
    other.metadata.name = Some("other".into());
    let mut w = world(vec![pool("blue", "198.51.100.9/32")], &[other]);
    w.add_node("n1", "10.0.0.11", true, json!({}));
    w.reconcile(holder).await;
    let seen = w.take();
    assert!(
        !seen.iter().any(|s| s.path.ends_with("/status")),
        "no ingress written: {seen:#?}"
    );
    let ev = events(&seen);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].0, "AllocationFailed");
    assert!(
        ev[0].1.contains("pool blue exhausted: 1 of 1 in use"),
        "{}",
        ev[0].1
    );
    assert!(w.synced_ips().is_empty());
    let pending = |w: &World| {
        w.ctx
            .shared
            .metrics
            .render()
            .lines()
            .find(|l| l.starts_with("berth_services_pending{reason=\"Exhausted\"}"))
            .map(str::to_owned)
    };
    assert_eq!(
        pending(&w).as_deref(),
        Some("berth_services_pending{reason=\"Exhausted\"} 1"),
        "the alerts count it as pending"
    );
    // The holder goes: the pending Service gets the IP and is no longer counted.
    let mut gone = allocated("Cluster", "198.51.100.9");
    gone.metadata.name = Some("other".into());
    gone.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    w.reconcile(gone).await;
    w.reconcile(web("Cluster", json!({}))).await;
    assert_eq!(w.route("198.51.100.9"), ["n1"]);
    assert_eq!(
        pending(&w).as_deref(),
        Some("berth_services_pending{reason=\"Exhausted\"} 0")
    );
}

#[tokio::test]
async fn deletion_of_a_service_with_the_old_finalizer_releases_and_drops_it() {
    let mut svc = allocated("Cluster", "198.51.100.9");
    svc.metadata.finalizers = Some(vec![names::FINALIZER_SERVICE.into()]);
    let mut w = world(
        vec![pool("blue", "198.51.100.8/30")],
        std::slice::from_ref(&svc),
    );
    w.add_node("n1", "10.0.0.11", true, json!({}));
    w.reconcile(svc.clone()).await;
    assert_eq!(w.route("198.51.100.9"), ["n1"]);
    w.take();
    w.synced_ips();

    let mut deleting = svc;
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    w.reconcile(deleting).await;
    let seen = w.take();
    let key = ServiceKey::new("shop", "web");
    assert!(w.ctx.shared.ipam.lock().unwrap().ips_of(&key).is_empty());
    assert!(w.route("198.51.100.9").is_empty());
    assert_eq!(w.synced_ips(), ["198.51.100.9".parse::<IpAddr>().unwrap()]);
    let last = seen
        .iter()
        .rev()
        .find(|s| s.path == "/api/v1/namespaces/shop/services/web")
        .unwrap();
    assert_eq!(last.body["metadata"]["finalizers"], json!([]));
    assert_eq!(last.body["metadata"]["resourceVersion"], "7");
    assert_eq!(events(&seen)[0].0, "IPReleased");
}

#[tokio::test]
async fn a_type_change_releases_the_ip_and_clears_status() {
    let svc = allocated("Cluster", "198.51.100.9");
    let mut w = world(
        vec![pool("blue", "198.51.100.8/30")],
        std::slice::from_ref(&svc),
    );
    w.add_node("n1", "10.0.0.11", true, json!({}));
    let mut cluster_ip = svc;
    cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    w.reconcile(cluster_ip).await;
    let seen = w.take();
    let key = ServiceKey::new("shop", "web");
    assert!(w.ctx.shared.ipam.lock().unwrap().ips_of(&key).is_empty());
    let status = seen.iter().find(|s| s.path.ends_with("/status")).unwrap();
    assert_eq!(
        status.body["status"]["loadBalancer"]["ingress"],
        json!([]),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|s| s.method == "PATCH"
            && s.body["metadata"]["annotations"][names::ANNOTATION_ALLOCATED_POOL].is_null()
            && s.body["metadata"]["annotations"]
                .as_object()
                .is_some_and(|a| a.contains_key(names::ANNOTATION_ALLOCATED_POOL))),
        "the pool annotation is removed: {seen:#?}"
    );
}

/// A Service deleted (no finalizer holds it) is seen gone by the sweep: its IP released,
/// its route withdrawn, its health forgotten; one still present is left alone. The full
/// sweep and the one of Services a watch said were deleted agree.
#[tokio::test]
async fn the_sweep_releases_a_deleted_service() {
    for targeted in [false, true] {
        let svc = allocated("Cluster", "198.51.100.9");
        let mut other = allocated("Cluster", "198.51.100.10");
        other.metadata.name = Some("other".into());
        let mut w = world(
            vec![pool("blue", "198.51.100.8/30")],
            &[svc.clone(), other.clone()],
        );
        w.add_node("n1", "10.0.0.11", true, json!({}));
        w.reconcile(svc).await;
        w.reconcile(other.clone()).await;
        w.synced_ips();
        let kept = ServiceKey::new("shop", "other");
        let web = ServiceKey::new("shop", "web");
        let stored = || vec![Arc::new(other.clone())];
        let none = std::collections::BTreeSet::new();
        let in_store = |k: &ServiceKey| *k == kept;
        let both = [web.clone(), kept.clone()];
        let sweep = |w: &World| {
            if targeted {
                super::service::sweep(&w.ctx, super::service::Scope::These(&both, &in_store))
            } else {
                super::service::sweep(
                    &w.ctx,
                    super::service::Scope::Every {
                        stored: &stored,
                        kept: &none,
                    },
                )
            }
        };
        let gone = sweep(&w);
        assert_eq!(gone, std::slice::from_ref(&web));
        assert!(w.route("198.51.100.9").is_empty());
        assert_eq!(w.route("198.51.100.10"), ["n1"]);
        assert_eq!(w.synced_ips(), ["198.51.100.9".parse::<IpAddr>().unwrap()]);
        assert!(sweep(&w).is_empty());
        // A reconcile that was in its API calls when the Service went writes its routes
        // after the release: the next sweep withdraws them (nothing else would).
        w.ctx
            .shared
            .routes
            .lock()
            .unwrap()
            .set(&web, via_n1("198.51.100.9"));
        assert_eq!(w.route("198.51.100.9"), ["n1"]);
        sweep(&w);
        assert!(
            w.route("198.51.100.9").is_empty(),
            "a stale write-back stays announced"
        );
    }
}

/// An Event repeated within the window raises the first one's series count (one POST, then
/// PATCHes with `series.count` 2, 3); another note is another Event; an Event the API server
/// no longer has (404 on the PATCH: expired) is created again.
#[tokio::test]
async fn a_repeated_event_is_a_series_and_an_expired_one_is_written_again() {
    let w = world(vec![], &[]);
    let svc = web("Cluster", json!({}));
    let reference = svc.object_ref(&());
    let ev = |note: &str| kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: "AllocationFailed".into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    for _ in 0..3 {
        w.ctx
            .recorder
            .publish(&ev("no IP"), &reference)
            .await
            .unwrap();
    }
    w.ctx
        .recorder
        .publish(&ev("other"), &reference)
        .await
        .unwrap();
    let seen = w.take();
    let writes: Vec<(String, Value)> = seen
        .iter()
        .filter(|s| s.path.contains("/events"))
        .map(|s| (s.method.clone(), s.body.clone()))
        .collect();
    let methods: Vec<&str> = writes.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, ["POST", "PATCH", "PATCH", "POST"], "{writes:#?}");
    assert_eq!(writes[1].1["series"]["count"], 2);
    assert_eq!(writes[2].1["series"]["count"], 3);
    assert!(writes[2].1["series"]["lastObservedTime"].is_string());
    let name = writes[0].1["metadata"]["name"].as_str().unwrap();
    assert!(
        seen[1]
            .path
            .ends_with(&format!("/namespaces/shop/events/{name}"))
    );
    assert_eq!(writes[0].1["reportingController"], "berth-operator");
    assert_eq!(writes[0].1["regarding"]["name"], "web");
    assert_ne!(
        writes[3].1["metadata"]["name"],
        writes[0].1["metadata"]["name"]
    );

    let mut gone = svc.clone();
    gone.metadata.name = Some("gone".into());
    let reference = gone.object_ref(&());
    for _ in 0..3 {
        w.ctx
            .recorder
            .publish(&ev("no IP"), &reference)
            .await
            .unwrap();
    }
    let methods: Vec<String> = w
        .take()
        .iter()
        .filter(|s| s.path.contains("/events"))
        .map(|s| s.method.clone())
        .collect();
    assert_eq!(
        methods,
        ["POST", "PATCH", "POST", "PATCH", "POST"],
        "an expired Event is created again, and its repeat patches the new one"
    );
}

/// A release asks for a reconcile of each Service waiting for an IP, and of no other: a
/// deletion is routine, and reconciling every Service for it is a storm at scale. Waiting
/// is what the plan left unmet, also for a Service that holds an IP and asks for another.
#[tokio::test]
async fn a_release_wakes_only_the_services_waiting_for_an_ip() {
    let svc = allocated("Cluster", "198.51.100.9");
    let asking = |name: &str, holds: Option<&str>| {
        let mut s = match holds {
            Some(ip) => allocated("Cluster", ip),
            None => web("Cluster", json!({})),
        };
        s.metadata.name = Some(name.into());
        s.metadata.uid = Some(format!("uid-{name}"));
        s.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(names::ANNOTATION_REQUESTED_IP.into(), "198.51.100.9".into());
        s
    };
    let third = asking("third", Some("198.51.100.11"));
    let mut w = world(
        vec![pool("blue", "198.51.100.8/30")],
        &[svc.clone(), third.clone()],
    );
    w.add_node("n1", "10.0.0.11", true, json!({}));
    w.reconcile(svc).await;
    let mut holder = web("Cluster", json!({}));
    holder.metadata.name = Some("holder".into());
    holder.metadata.uid = Some("uid-holder".into());
    w.reconcile(holder).await;
    // .9 is taken: "second" (nothing held) and "third" (holding .11) wait for it.
    w.reconcile(asking("second", None)).await;
    w.reconcile(third).await;
    let waiting: Vec<String> = w
        .ctx
        .shared
        .waiting
        .lock()
        .unwrap()
        .iter()
        .map(|k| k.name.clone())
        .collect();
    assert_eq!(
        waiting,
        ["second", "third"],
        "holder got an IP and waits for nothing"
    );
    assert!(w.reconcile.try_recv().is_err(), "nothing released yet");
    let present = |k: &ServiceKey| k.name != "web";
    let gone = super::service::sweep(
        &w.ctx,
        super::service::Scope::These(&[ServiceKey::new("shop", "web")], &present),
    );
    assert_eq!(gone, [ServiceKey::new("shop", "web")]);
    super::service::wake_pending(&w.ctx);
    let mut woken = Vec::new();
    while let Ok(k) = w.reconcile.try_recv() {
        woken.push(k.name);
    }
    assert_eq!(woken, ["second", "third"]);
}

/// A world where the `Local` Service shop/web holds 198.51.100.9 from pool blue, with Ready
/// nodes n1, n2, ... (10.0.0.11, 10.0.0.12, ...).
fn local_web(nodes: usize) -> (World, Service) {
    let svc = allocated("Local", "198.51.100.9");
    let mut w = world(
        vec![pool("blue", "198.51.100.8/30")],
        std::slice::from_ref(&svc),
    );
    w.add_ready_nodes(nodes);
    (w, svc)
}

#[tokio::test]
async fn an_endpoint_moving_moves_the_next_hop_with_no_write_to_the_service() {
    let (mut w, svc) = local_web(2);
    w.slice(&["n1"]);
    w.reconcile(svc.clone()).await;
    assert_eq!(w.route("198.51.100.9"), ["n1"]);
    w.take();
    w.synced_ips();

    w.slice(&["n2"]);
    w.reconcile(svc).await;
    assert_eq!(w.route("198.51.100.9"), ["n2"]);
    assert_eq!(w.synced_ips(), ["198.51.100.9".parse::<IpAddr>().unwrap()]);
    let seen = w.take();
    assert!(
        !seen.iter().any(|s| s.path.contains("/services/")),
        "an endpoint move writes nothing to the Service: {seen:#?}"
    );
}

/// An endpoint move of a settled BGP Service is carried out without a reconcile: the route
/// follows, the speakers are told, nothing is written to the API.
#[tokio::test]
async fn an_endpoint_move_of_a_settled_service_needs_no_reconcile() {
    let (mut w, svc) = local_web(3);
    w.store_service(&svc);
    w.slice(&["n1"]);
    w.reconcile(svc.clone()).await;
    assert_eq!(w.route("198.51.100.9"), ["n1"]);
    w.take();
    w.synced_ips();
    let web = ServiceKey::new("shop", "web");

    w.slice(&["n2", "n3"]);
    assert!(service::endpoints_changed(&w.ctx, &web));
    assert_eq!(w.route("198.51.100.9"), ["n2", "n3"]);
    assert_eq!(w.synced_ips(), ["198.51.100.9".parse::<IpAddr>().unwrap()]);
    assert!(w.take().is_empty(), "an endpoint move writes nothing");
    // Nothing moved: nothing told.
    assert!(service::endpoints_changed(&w.ctx, &web));
    assert!(w.synced_ips().is_empty());
}

/// What an endpoint change can bring besides a route goes to the controller: the Service
/// losing its last next hop (the gauge and a NoNextHop Event), another instance under its
/// name, a Service no longer Berth's, a reconcile of it running (its older result would
/// land after), a Service waiting for an IP, one not in the store.
#[tokio::test]
async fn an_endpoint_change_goes_to_a_reconcile_when_more_than_the_route_changes() {
    let (mut w, svc) = local_web(1);
    let web = ServiceKey::new("shop", "web");
    w.slice(&["n1"]);
    assert!(
        !service::endpoints_changed(&w.ctx, &web),
        "not in the store yet"
    );
    w.store_service(&svc);
    w.reconcile(svc.clone()).await;
    w.synced_ips();

    w.slice(&[]);
    assert!(
        !service::endpoints_changed(&w.ctx, &web),
        "no next hop left"
    );
    assert_eq!(w.route("198.51.100.9"), ["n1"], "left to the reconcile");
    w.reconcile(svc.clone()).await;
    assert!(w.route("198.51.100.9").is_empty());
    w.slice(&["n1"]);
    assert!(
        !service::endpoints_changed(&w.ctx, &web),
        "a next hop again: the gauge goes down"
    );

    w.ctx.shared.reconciling.lock().unwrap().insert(web.clone());
    assert!(
        !service::endpoints_changed(&w.ctx, &web),
        "a reconcile runs"
    );
    w.ctx.shared.reconciling.lock().unwrap().clear();
    w.ctx.shared.waiting.lock().unwrap().insert(web.clone());
    assert!(!service::endpoints_changed(&w.ctx, &web), "waits for an IP");
    w.ctx.shared.waiting.lock().unwrap().clear();
    w.reconcile(svc.clone()).await;
    assert!(
        w.ctx.shared.reconciling.lock().unwrap().is_empty(),
        "a reconcile's mark goes with it"
    );
    assert!(service::endpoints_changed(&w.ctx, &web));

    // Deleted and created again under its name: the IPs are the old instance's.
    let mut again = svc.clone();
    again.metadata.uid = Some("another-instance".into());
    w.store_service(&again);
    assert!(!service::endpoints_changed(&w.ctx, &web), "another uid");
    // No longer a load balancer of Berth's.
    let mut cluster_ip = svc.clone();
    cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    w.store_service(&cluster_ip);
    assert!(!service::endpoints_changed(&w.ctx, &web), "not Berth's");
    w.store_service(&svc);
    assert!(service::endpoints_changed(&w.ctx, &web));
}

#[tokio::test]
async fn a_node_going_not_ready_leaves_the_next_hops() {
    let svc = allocated("Cluster", "198.51.100.9");
    let mut w = world(
        vec![pool("blue", "198.51.100.8/30")],
        std::slice::from_ref(&svc),
    );
    w.add_node("n1", "10.0.0.11", true, json!({}));
    w.add_node("n2", "10.0.0.12", true, json!({}));
    w.reconcile(svc.clone()).await;
    assert_eq!(w.route("198.51.100.9"), ["n1", "n2"]);
    w.add_node("n2", "10.0.0.12", false, json!({}));
    w.reconcile(svc).await;
    assert_eq!(w.route("198.51.100.9"), ["n1"]);
}

fn peer(name: &str, address: &str, selector: Option<Value>, secret: Option<&str>) -> BgpPeer {
    let mut spec = json!({"address": address, "peerAsn": 65001});
    if let Some(s) = selector {
        spec["nodeSelector"] = s;
    }
    if let Some(s) = secret {
        spec["passwordSecretRef"] = json!({"name": s, "key": "password"});
    }
    serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "BgpPeer",
        "metadata": {"name": name, "generation": 1}, "spec": spec,
    }))
    .unwrap()
}

fn conf() -> berth_api::BgpConfSpec {
    serde_json::from_value(json!({"asn": 64512})).unwrap()
}

#[tokio::test]
async fn each_replica_gets_the_peers_its_node_matches_with_the_secrets_password() {
    let mut w = world(vec![], &[]);
    w.add_node("n1", "10.0.0.11", true, json!({"rack": "a"}));
    w.add_node("n2", "10.0.0.12", true, json!({"rack": "b"}));
    w.peers.apply_watcher_event(&watcher::Event::Apply(peer(
        "tor-a",
        "10.0.0.1",
        Some(json!({"matchLabels": {"rack": "a"}})),
        Some("bgp-auth"),
    )));
    w.peers.apply_watcher_event(&watcher::Event::Apply(peer(
        "spine", "10.0.9.1", None, None,
    )));
    w.serve_secret("bgp-auth", json!({"password": "czNjcjN0"}));
    assert!(w.read_secrets().await);
    // Only the named Secret, by name: no list or watch of every Secret in the namespace.
    let reads: Vec<(String, String)> = w
        .take()
        .into_iter()
        .filter(|s| s.path.contains("secrets"))
        .map(|s| (s.method, s.path))
        .collect();
    assert_eq!(
        reads,
        [(
            "GET".to_owned(),
            "/api/v1/namespaces/berth-system/secrets/bgp-auth".to_owned()
        )]
    );

    let peers = peers_for_tests(&w.ctx);
    let routes = BTreeMap::new();
    let of = |node: &str| {
        let state = speakers::desired_state(
            1,
            &conf(),
            &super::speaker::replica_for_tests(&w.ctx, node),
            &peers,
            &routes,
        )
        .unwrap();
        state
            .peers
            .iter()
            .map(|p| (p.address.clone(), p.password.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("n1"),
        [
            ("10.0.0.1".to_owned(), "s3cr3t".to_owned()),
            ("10.0.9.1".to_owned(), String::new())
        ]
    );
    assert_eq!(of("n2"), [("10.0.9.1".to_owned(), String::new())]);
}

#[tokio::test]
async fn a_peer_whose_secret_is_missing_is_left_out_and_its_condition_says_what_to_create() {
    let mut w = world(vec![], &[]);
    w.add_node("n1", "10.0.0.11", true, json!({}));
    let p = peer("tor", "10.0.0.1", None, Some("bgp-auth"));
    w.peers
        .apply_watcher_event(&watcher::Event::Apply(p.clone()));
    w.read_secrets().await;
    assert!(peers_for_tests(&w.ctx).is_empty());
    let status = peer_status_for_tests(&w.ctx, &p);
    let c = &status.conditions[0];
    assert_eq!(c.type_, CONDITION_CONFIGURED);
    assert_eq!(c.status, "False");
    assert_eq!(c.reason, "SecretMissing");
    assert!(
        c.message
            .contains("Secret berth-system/bgp-auth (spec.passwordSecretRef) does not exist"),
        "{}",
        c.message
    );

    // With the Secret but without the key: named too.
    w.serve_secret("bgp-auth", json!({"pw": "czNjcjN0"}));
    w.read_secrets().await;
    let c = peer_status_for_tests(&w.ctx, &p).conditions[0].clone();
    assert_eq!(c.reason, "SecretKeyMissing");
    assert!(
        c.message.contains("has no key \"password\""),
        "{}",
        c.message
    );
}

/// A Secret the operator may not read (403: not in the Role's resourceNames) leaves its peer
/// out with a condition naming the Secret and the chart value; the other peers stay. A
/// rotated password is picked up by the next read; an API server error keeps the last one.
#[tokio::test]
async fn a_forbidden_secret_leaves_only_its_peer_out_and_a_rotation_is_picked_up() {
    let mut w = world(vec![], &[]);
    w.add_node("n1", "10.0.0.11", true, json!({}));
    let good = peer("tor-a", "10.0.0.1", None, Some("tor-a-md5"));
    let barred = peer("tor-b", "10.0.0.2", None, Some("tor-b-md5"));
    for p in [&good, &barred] {
        w.peers
            .apply_watcher_event(&watcher::Event::Apply(p.clone()));
    }
    w.serve_secret("tor-a-md5", json!({"password": "b25l"}));
    w.refuse_secret("tor-b-md5", 403);
    assert!(w.read_secrets().await);
    let passwords = |w: &World| -> Vec<(String, String)> {
        peers_for_tests(&w.ctx)
            .into_iter()
            .map(|p| (p.name, p.password.unwrap_or_default()))
            .collect()
    };
    assert_eq!(passwords(&w), [("tor-a".to_owned(), "one".to_owned())]);
    let c = peer_status_for_tests(&w.ctx, &barred).conditions[0].clone();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "SecretForbidden")
    );
    assert!(
        c.message.contains("berth-system/tor-b-md5")
            && c.message.contains("operator.bgpPasswordSecrets"),
        "{}",
        c.message
    );
    assert_eq!(
        peer_status_for_tests(&w.ctx, &good).conditions[0].status,
        "True"
    );

    // Nothing changed: a periodic read says so (no full push).
    assert!(!w.read_secrets().await);
    // Rotated: the next read has it.
    w.serve_secret("tor-a-md5", json!({"password": "dHdv"}));
    assert!(w.read_secrets().await);
    assert_eq!(passwords(&w), [("tor-a".to_owned(), "two".to_owned())]);
    // The API server fails for a while: the key in use stays.
    w.refuse_secret("tor-a-md5", 500);
    assert!(!w.read_secrets().await);
    assert_eq!(passwords(&w), [("tor-a".to_owned(), "two".to_owned())]);
    // Granted at last: tor-b joins.
    w.serve_secret("tor-b-md5", json!({"password": "dGhyZWU="}));
    assert!(w.read_secrets().await);
    assert_eq!(passwords(&w).len(), 2);
}

/// A speaker replica standing in for berth-bgp-server: records the calls it answers.
#[derive(Clone, Default)]
struct FakeSpeaker {
    calls: Arc<Mutex<Vec<String>>>,
    /// Whether it says it reads next-hop groups (a speaker from before them does not).
    reads_groups: bool,
    /// Each Apply's and UpdateRoutes' shape: `(call, groups, routes naming one, next hops
    /// inline)`.
    shapes: Arc<Mutex<Vec<Shape>>>,
    /// With a sender here, Watch is served and the test feeds it; without, UNIMPLEMENTED.
    watch: Arc<Mutex<Option<WatchSender>>>,
    /// Serve Watch (the test takes the stream's sender from `watch` once it is opened).
    serves_watch: bool,
    /// The generation it holds: the last one it accepted, as the real speaker reports it.
    generation: Arc<Mutex<u64>>,
    /// The prefixes it holds, as Apply and UpdateRoutes left them (GetState's route count).
    prefixes: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

type Shape = (&'static str, usize, usize, usize);

/// The sending end of a fake Watch stream.
type WatchSender = mpsc::Sender<Result<berth_proto::v1::WatchEvent, tonic::Status>>;

fn shape(call: &'static str, routes: &[berth_proto::v1::Route], groups: usize) -> Shape {
    (
        call,
        groups,
        routes
            .iter()
            .filter(|r| !r.next_hop_group.is_empty())
            .count(),
        routes.iter().map(|r| r.next_hops.len()).sum(),
    )
}

#[tonic::async_trait]
impl berth_proto::v1::speaker_server::Speaker for FakeSpeaker {
    type WatchStream =
        tokio_stream::wrappers::ReceiverStream<Result<berth_proto::v1::WatchEvent, tonic::Status>>;

    async fn apply(
        &self,
        r: tonic::Request<berth_proto::v1::ApplyRequest>,
    ) -> Result<tonic::Response<berth_proto::v1::ApplyResponse>, tonic::Status> {
        let state = r.into_inner().state.unwrap_or_default();
        self.accept("apply", state.generation)?;
        *self.prefixes.lock().unwrap() = state.routes.iter().map(|r| r.prefix.clone()).collect();
        self.shapes.lock().unwrap().push(shape(
            "apply",
            &state.routes,
            state.next_hop_groups.len(),
        ));
        self.calls.lock().unwrap().push("apply".into());
        Ok(tonic::Response::new(Default::default()))
    }

    async fn update_routes(
        &self,
        r: tonic::Request<berth_proto::v1::UpdateRoutesRequest>,
    ) -> Result<tonic::Response<berth_proto::v1::UpdateRoutesResponse>, tonic::Status> {
        let r = r.into_inner();
        self.accept("update_routes", r.generation)?;
        {
            let mut held = self.prefixes.lock().unwrap();
            held.extend(r.upsert.iter().map(|u| u.prefix.clone()));
            for p in &r.remove {
                held.remove(p);
            }
        }
        self.shapes
            .lock()
            .unwrap()
            .push(shape("update", &r.upsert, r.next_hop_groups.len()));
        let prefixes: Vec<String> = r
            .upsert
            .iter()
            .map(|u| u.prefix.clone())
            .chain(r.remove.iter().cloned())
            .collect();
        self.calls
            .lock()
            .unwrap()
            .push(format!("update {}", prefixes.join(",")));
        Ok(tonic::Response::new(Default::default()))
    }

    async fn get_state(
        &self,
        _r: tonic::Request<berth_proto::v1::GetStateRequest>,
    ) -> Result<tonic::Response<berth_proto::v1::GetStateResponse>, tonic::Status> {
        self.calls.lock().unwrap().push("get_state".into());
        Ok(tonic::Response::new(berth_proto::v1::GetStateResponse {
            generation: *self.generation.lock().unwrap(),
            route_count: self.prefixes.lock().unwrap().len() as u64,
            reads_next_hop_groups: self.reads_groups,
            ..Default::default()
        }))
    }

    async fn watch(
        &self,
        _r: tonic::Request<berth_proto::v1::WatchRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        if !self.serves_watch {
            return Err(tonic::Status::unimplemented("not in this test"));
        }
        self.calls.lock().unwrap().push("watch".into());
        let (tx, rx) = mpsc::channel(16);
        *self.watch.lock().unwrap() = Some(tx);
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

impl FakeSpeaker {
    /// Takes `generation` as the real speaker does: refused with FAILED_PRECONDITION when it
    /// is older than the one held (a stale writer), else held from now on.
    fn accept(&self, call: &str, generation: u64) -> Result<(), tonic::Status> {
        let mut held = self.generation.lock().unwrap();
        if generation < *held {
            self.calls.lock().unwrap().push(format!("{call} refused"));
            return Err(tonic::Status::failed_precondition(format!(
                "generation: {generation} is older than the applied {held}; this writer is stale"
            )));
        }
        *held = generation;
        Ok(())
    }

    /// Serves this fake on `listener` until the task is aborted.
    fn serve(
        &self,
        listener: tokio::net::TcpListener,
    ) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(berth_proto::v1::speaker_server::SpeakerServer::new(
                    self.clone(),
                ))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        )
    }
}

/// A world whose operator dials speakers at `port`, with `nodes` Ready nodes (n1 at
/// 10.0.0.11, n2 at 10.0.0.12, ...) and BgpConf `default` (ASN 64512).
fn speaker_world(port: u16, nodes: u8) -> World {
    let mut w = world(vec![], &[]);
    // The speaker port is a setting: rebuild the context with this test's port.
    Arc::get_mut(&mut w.ctx).unwrap().settings.speaker_port = port;
    w.add_ready_nodes(usize::from(nodes));
    w.confs.apply_watcher_event(&watcher::Event::Apply(
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "BgpConf",
            "metadata": {"name": "default"}, "spec": {"asn": 64512},
        }))
        .unwrap(),
    ));
    w
}

fn speaker_pod(name: &str, ip: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "berth-system",
                     "labels": {"app.kubernetes.io/name": "berth-bgp-server"}},
        "spec": {"nodeName": node, "containers": []},
        "status": {"phase": "Running", "podIP": ip},
    }))
    .unwrap()
}

/// A replica whose address accepts TCP and never answers (a hung node: the kernel completes
/// the handshake, nothing reads) must not hold up another replica: the healthy one gets the
/// full state and then every route change, while the dead one keeps failing on its own.
#[tokio::test]
async fn a_blackholed_replica_does_not_hold_up_the_others() {
    // The healthy replica on 127.0.0.1, the blackhole on 127.0.0.2 at the same port (the
    // operator dials every replica at --speaker-port).
    let healthy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = healthy.local_addr().unwrap().port();
    let blackhole = std::net::TcpListener::bind(("127.0.0.2", port)).unwrap();
    let fake = FakeSpeaker::default();
    let server = fake.serve(healthy);

    let mut w = speaker_world(port, 2);
    // "a-dead" sorts first: a sync that pushed replicas in turn would be stuck on it.
    w.pods
        .apply_watcher_event(&watcher::Event::Apply(speaker_pod(
            "a-dead",
            "127.0.0.2",
            "n2",
        )));
    w.pods
        .apply_watcher_event(&watcher::Event::Apply(speaker_pod(
            "b-live",
            "127.0.0.1",
            "n1",
        )));

    let (tx, rx) = mpsc::unbounded_channel();
    let sync = tokio::spawn(super::speaker::run(w.ctx.clone(), rx));
    tx.send(SyncEvent::Full).unwrap();
    let calls = || fake.calls.lock().unwrap().clone();
    let until = |want: &str| {
        let want = want.to_owned();
        let calls = &calls;
        async move {
            for _ in 0..100 {
                if calls().contains(&want) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }
    };
    assert!(
        until("apply").await,
        "the healthy replica got no Apply: {:?}",
        calls()
    );
    // Route changes keep flowing to it while the other replica never answers.
    for i in 1..=3 {
        let ip: IpAddr = format!("198.51.100.{i}").parse().unwrap();
        w.ctx.shared.routes.lock().unwrap().set(
            &ServiceKey::new("shop", format!("web{i}")),
            vec![(
                ip,
                vec![crate::nexthops::NextHop {
                    node: "n1".into(),
                    address: "10.0.0.11".parse().unwrap(),
                    weight: None,
                }],
            )],
        );
        tx.send(SyncEvent::Routes(vec![ip])).unwrap();
        let want = format!("update 198.51.100.{i}/32");
        assert!(
            until(&want).await,
            "route change {i} did not reach the healthy replica within 5 s: {:?}",
            calls()
        );
    }
    // The alerts see which replica is behind.
    let text = w.ctx.shared.metrics.render();
    assert!(
        text.contains("berth_speaker_in_sync{speaker=\"b-live\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("berth_speaker_in_sync{speaker=\"a-dead\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("berth_speaker_sync_errors_total{speaker=\"b-live\"} 0"),
        "a replica's error counter exists before its first error: {text}"
    );
    sync.abort();
    server.abort();
    drop(blackhole);
}

fn session_event(peer: &str, state: &str, error: &str) -> berth_proto::v1::WatchEvent {
    berth_proto::v1::WatchEvent {
        unix_millis: 0,
        event: Some(berth_proto::v1::watch_event::Event::Session(
            berth_proto::v1::SessionChanged {
                peer: peer.into(),
                state: state.into(),
                previous_state: String::new(),
                last_error: error.into(),
            },
        )),
    }
}

fn applied_event(generation: u64) -> berth_proto::v1::WatchEvent {
    berth_proto::v1::WatchEvent {
        unix_millis: 0,
        event: Some(berth_proto::v1::watch_event::Event::Applied(
            berth_proto::v1::StateApplied {
                generation,
                call: "apply".into(),
                routes_changed: 0,
            },
        )),
    }
}

/// The sessions come from the replica's Watch stream, not from polling: once the stream is
/// open nothing is read until a session changes, then its sessions are read at once. A state
/// the operator did not send (a newer generation: another writer), the stream ending (the
/// speaker restarted), or the speaker holding an older generation than it acknowledged each
/// bring the full state again without waiting for the resync.
#[tokio::test]
async fn the_watch_stream_drives_session_reads_and_full_pushes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = FakeSpeaker {
        reads_groups: true,
        serves_watch: true,
        ..Default::default()
    };
    let server = fake.serve(listener);
    let mut w = speaker_world(port, 1);
    w.pods
        .apply_watcher_event(&watcher::Event::Apply(speaker_pod("s", "127.0.0.1", "n1")));
    let (tx, rx) = mpsc::unbounded_channel();
    let sync = tokio::spawn(super::speaker::run(w.ctx.clone(), rx));
    tx.send(SyncEvent::Full).unwrap();

    let count = |what: &str| {
        fake.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| *c == what)
            .count()
    };
    let until = |what: &'static str, n: usize| {
        let count = &count;
        async move {
            for _ in 0..100 {
                if count(what) >= n {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }
    };
    assert!(
        until("watch", 1).await,
        "no Watch opened: {:?}",
        fake.calls.lock().unwrap()
    );
    let stream = fake.watch.lock().unwrap().clone().unwrap();
    let applies = count("apply");
    let reads = count("get_state");
    // The periodic resync sends nothing to a replica in step whose stream is open (nor does
    // it read: the poll runs every 60 s then, not checked here).
    tx.send(SyncEvent::Resync).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((count("get_state"), count("apply")), (reads, applies));
    // A session came up: its sessions are read now, not at the next 10 s poll.
    stream
        .send(Ok(session_event("10.0.0.1", "Established", "")))
        .await
        .unwrap();
    assert!(
        until("get_state", reads + 1).await,
        "the session change was not read"
    );
    // Going down needs no read (the event says it all), and pushes nothing.
    stream
        .send(Ok(session_event("10.0.0.1", "Idle", "hold timer expired")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((count("get_state"), count("apply")), (reads + 1, applies));
    // Another writer's newer state: the full state again, at once.
    stream.send(Ok(applied_event(u64::MAX / 2))).await.unwrap();
    assert!(
        until("apply", applies + 1).await,
        "divergence brought no full push"
    );
    // The speaker holds an older state than it acknowledged (restarted from its file): the
    // next read finds it and pushes everything.
    *fake.generation.lock().unwrap() = 1;
    stream
        .send(Ok(session_event("10.0.0.1", "Established", "")))
        .await
        .unwrap();
    assert!(
        until("apply", applies + 2).await,
        "a restarted replica got no full push"
    );
    // A route lost on the way (the speaker holds one route fewer than the table gives it):
    // two reads in a row find the same difference and push everything.
    w.ctx
        .shared
        .routes
        .lock()
        .unwrap()
        .set(&ServiceKey::new("shop", "web"), via_n1("198.51.100.1"));
    for _ in 0..2 {
        let reads = count("get_state");
        stream
            .send(Ok(session_event("10.0.0.1", "Established", "")))
            .await
            .unwrap();
        assert!(
            until("get_state", reads + 1).await,
            "the session change was not read"
        );
    }
    assert!(
        until("apply", applies + 3).await,
        "a replica missing a route got no full push"
    );
    assert_eq!(fake.prefixes.lock().unwrap().len(), 1);
    // The stream ends (the process went away): reconnect, full push, a new stream.
    let watches = count("watch");
    drop(stream);
    *fake.watch.lock().unwrap() = None;
    assert!(
        until("apply", applies + 4).await,
        "the stream's end brought no full push: {:?}",
        fake.calls.lock().unwrap()
    );
    assert!(
        until("watch", watches + 1).await,
        "no new Watch after the reconnect"
    );
    sync.abort();
    server.abort();
}

/// Mixed versions during a rollout: a replica from before next-hop groups (its GetState does
/// not say it reads them) gets every route's next hops inline, in the full state and in route
/// changes, while a current replica gets the shared list once.
#[tokio::test]
async fn a_replica_from_before_next_hop_groups_gets_every_next_hop_inline() {
    let current = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = current.local_addr().unwrap().port();
    let old = tokio::net::TcpListener::bind(("127.0.0.3", port))
        .await
        .unwrap();
    let new_fake = FakeSpeaker {
        reads_groups: true,
        ..Default::default()
    };
    let old_fake = FakeSpeaker::default();
    let servers = [new_fake.serve(current), old_fake.serve(old)];

    let mut w = speaker_world(port, 2);
    w.pods
        .apply_watcher_event(&watcher::Event::Apply(speaker_pod(
            "new",
            "127.0.0.1",
            "n1",
        )));
    w.pods
        .apply_watcher_event(&watcher::Event::Apply(speaker_pod(
            "old",
            "127.0.0.3",
            "n2",
        )));
    // Three Cluster Services over both nodes: one shared list of two next hops.
    let both = || {
        ["10.0.0.11", "10.0.0.12"]
            .iter()
            .enumerate()
            .map(|(i, a)| crate::nexthops::NextHop {
                node: format!("n{}", i + 1),
                address: a.parse().unwrap(),
                weight: None,
            })
            .collect::<Vec<_>>()
    };
    let set = |i: u8| {
        let ip: IpAddr = format!("198.51.100.{i}").parse().unwrap();
        w.ctx.shared.routes.lock().unwrap().set(
            &ServiceKey::new("shop", format!("web{i}")),
            vec![(ip, both())],
        );
        ip
    };
    for i in 1..=3 {
        set(i);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let sync = tokio::spawn(super::speaker::run(w.ctx.clone(), rx));
    tx.send(SyncEvent::Full).unwrap();
    // Waits for a call of `want`'s kind, then checks every such call so far is `want`.
    let seen = |fake: &FakeSpeaker, want: Shape| {
        let shapes = fake.shapes.clone();
        async move {
            for _ in 0..100 {
                let now: Vec<Shape> = shapes.lock().unwrap().clone();
                let of_kind: Vec<Shape> = now.into_iter().filter(|s| s.0 == want.0).collect();
                if !of_kind.is_empty() {
                    return of_kind
                        .iter()
                        .all(|s| *s == want)
                        .then_some(())
                        .ok_or(of_kind);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(Vec::new())
        }
    };
    assert_eq!(seen(&new_fake, ("apply", 1, 3, 0)).await, Ok(()));
    assert_eq!(seen(&old_fake, ("apply", 0, 0, 6)).await, Ok(()));
    // Two more Services on both nodes: a route change of two routes.
    let changed = vec![set(4), set(5)];
    tx.send(SyncEvent::Routes(changed)).unwrap();
    assert_eq!(seen(&new_fake, ("update", 1, 2, 0)).await, Ok(()));
    assert_eq!(seen(&old_fake, ("update", 0, 0, 4)).await, Ok(()));
    // Neither serves Watch: the periodic resync sends them the full state (a replica with
    // an open stream gets nothing: the_watch_stream_drives_session_reads_and_full_pushes).
    let applies = || {
        old_fake
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| *c == "apply")
            .count()
    };
    let before = applies();
    tx.send(SyncEvent::Resync).unwrap();
    let mut resent = false;
    for _ in 0..100 {
        if applies() > before {
            resent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resent, "the resync sent nothing to a replica without Watch");
    sync.abort();
    for s in servers {
        s.abort();
    }
}

/// One bad BgpPeer (an address another peer already has, passive while the speakers never
/// listen, an over-long password) is left out with `Configured=False` naming the field and
/// the other object; the good peer is still in every replica's desired state, which the
/// speaker would otherwise refuse whole.
#[tokio::test]
async fn a_bad_bgppeer_is_left_out_and_the_others_stay_configured() {
    let mut w = world(vec![], &[]);
    w.add_node("n1", "10.0.0.11", true, json!({}));
    w.confs.apply_watcher_event(&watcher::Event::Apply(
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "BgpConf",
            "metadata": {"name": "default"}, "spec": {"asn": 64512, "listenPort": 0},
        }))
        .unwrap(),
    ));
    let mut first = peer("tor", "10.0.0.1", None, None);
    first.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().unwrap(),
    ));
    let mut copy = peer("tor-copy", "10.0.0.1", None, None);
    copy.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-02-01T00:00:00Z".parse().unwrap(),
    ));
    let mut waiting = peer("waits", "10.0.0.3", None, None);
    waiting.spec.passive = true;
    let long = peer("long-pw", "10.0.0.4", None, Some("long"));
    w.serve_secret(
        "long",
        json!({"password": k8s_openapi::ByteString(vec![b'x'; 81])}),
    );
    for p in [&first, &copy, &waiting, &long] {
        w.peers
            .apply_watcher_event(&watcher::Event::Apply(p.clone()));
    }
    w.read_secrets().await;
    let names: Vec<String> = peers_for_tests(&w.ctx)
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(names, ["tor"]);
    let state = speakers::desired_state(
        1,
        &serde_json::from_value(json!({"asn": 64512, "listenPort": 0})).unwrap(),
        &super::speaker::replica_for_tests(&w.ctx, "n1"),
        &peers_for_tests(&w.ctx),
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(state.peers.len(), 1);
    let condition = |p: &BgpPeer| peer_status_for_tests(&w.ctx, p).conditions[0].clone();
    assert_eq!(condition(&first).status, "True");
    let c = condition(&copy);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "DuplicateAddress")
    );
    assert!(c.message.contains("BgpPeer tor"), "{}", c.message);
    let c = condition(&waiting);
    assert_eq!(c.reason, "PassiveWithoutListener");
    let c = condition(&long);
    assert_eq!(c.reason, "SecretKeyInvalid");
    assert!(c.message.contains("81 bytes"), "{}", c.message);
}

/// The operator's own status writes (same generation) change nothing that would make it
/// reconcile everything; a spec change, a new object or a deletion does.
#[test]
fn status_writes_are_not_spec_changes() {
    let (store, mut w) = store::<Eip>();
    let eip = |generation: i64, usage: &str| -> Eip {
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Eip",
            "metadata": {"name": "blue", "generation": generation},
            "spec": {"address": "10.0.0.0/28"},
            "status": {"usage": usage, "poolSize": "14"},
        }))
        .unwrap()
    };
    w.apply_watcher_event(&watcher::Event::Apply(eip(1, "0")));
    let first = super::generations(&store);
    w.apply_watcher_event(&watcher::Event::Apply(eip(1, "5")));
    assert_eq!(
        super::generations(&store),
        first,
        "a status write is no change"
    );
    w.apply_watcher_event(&watcher::Event::Apply(eip(2, "5")));
    assert_ne!(super::generations(&store), first, "a spec edit is");
    let edited = super::generations(&store);
    w.apply_watcher_event(&watcher::Event::Delete(eip(2, "5")));
    assert_ne!(super::generations(&store), edited, "so is a deletion");
}

#[test]
fn event_notes_fit_the_apis_limit() {
    assert_eq!(super::event_note("short"), "short");
    let long = "é".repeat(700); // 1,400 bytes, two per character
    let cut = super::event_note(&long);
    assert!(cut.len() <= 1024, "{}", cut.len());
    assert!(cut.ends_with(" [...]"));
    assert!(long.starts_with(cut.trim_end_matches(" [...]")));
}

/// BgpConf's status says which replicas run its current generation, and names the others
/// with their error.
#[test]
fn bgpconf_status_names_the_replicas_that_run_it() {
    use super::speaker::conf_status_for_tests as status;
    let ready = |s: &berth_api::BgpConfStatus| {
        let c = &s.conditions[0];
        (c.status.clone(), c.reason.clone(), c.message.clone())
    };
    let all = status(
        Some(3),
        &[("bgp-0", Some(3), None), ("bgp-1", Some(3), None)],
    );
    assert_eq!(all.observed_generation, Some(3));
    let (st, reason, msg) = ready(&all);
    assert_eq!((st.as_str(), reason.as_str()), ("True", "Applied"));
    assert!(msg.contains("bgp-0, bgp-1"), "{msg}");
    let (st, reason, msg) = ready(&status(
        Some(4),
        &[
            ("bgp-0", Some(4), None),
            ("bgp-1", Some(3), Some("no answer within 75 s")),
        ],
    ));
    assert_eq!((st.as_str(), reason.as_str()), ("False", "SpeakersBehind"));
    assert!(msg.contains("applied by 1 of 2 speakers (bgp-0)"), "{msg}");
    assert!(msg.contains("bgp-1 (no answer within 75 s)"), "{msg}");
    assert_eq!(ready(&status(Some(1), &[])).1, "NoSpeakers");
}

#[test]
fn a_pool_in_use_keeps_its_finalizer_until_its_last_service_goes() {
    use super::eip::{FinalizerStep, finalizer_step};
    assert_eq!(finalizer_step(false, false, 0), FinalizerStep::Add);
    assert_eq!(finalizer_step(false, true, 3), FinalizerStep::Keep);
    assert_eq!(finalizer_step(true, true, 2), FinalizerStep::Keep, "held");
    assert_eq!(finalizer_step(true, true, 0), FinalizerStep::Remove);
    assert_eq!(finalizer_step(true, false, 0), FinalizerStep::Keep);
}

/// A Service that never had a next hop (every node NotReady from the start) is told so once,
/// and counted while it lasts; a second reconcile says nothing new; a Ready node ends it.
#[tokio::test]
async fn no_next_hop_is_said_once_also_for_a_service_that_never_had_one() {
    let svc = allocated("Cluster", "198.51.100.9");
    let mut w = world(
        vec![pool("blue", "198.51.100.8/30")],
        std::slice::from_ref(&svc),
    );
    w.add_node("n1", "10.0.0.11", false, json!({}));
    let no_next_hop = |w: &World| {
        events(&w.seen.lock().unwrap())
            .iter()
            .filter(|(r, _)| r == "NoNextHop")
            .count()
    };
    w.reconcile(svc.clone()).await;
    assert_eq!(no_next_hop(&w), 1);
    assert!(
        w.ctx
            .shared
            .metrics
            .render()
            .contains("berth_services_without_next_hop 1")
    );
    w.reconcile(svc.clone()).await;
    assert_eq!(no_next_hop(&w), 1, "said once, not on every reconcile");
    w.add_node("n1", "10.0.0.11", true, json!({}));
    w.reconcile(svc).await;
    assert_eq!(w.route("198.51.100.9"), ["n1"]);
    assert!(
        w.ctx
            .shared
            .metrics
            .render()
            .contains("berth_services_without_next_hop 0")
    );
}

/// The speaker mTLS files are read at each connection: what is on disk now is used, so a
/// rotated certificate needs no restart; a missing file names the flag.
#[test]
fn tls_files_are_read_anew_at_each_connection() {
    let dir = std::env::temp_dir().join(format!("berth-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = super::TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        server_name: "berth-bgp-server".into(),
    };
    assert!(files.load().unwrap_err().contains("--speaker-ca"));
    for (f, v) in [
        (&files.ca, "ca-1"),
        (&files.cert, "cert-1"),
        (&files.key, "key-1"),
    ] {
        std::fs::write(f, v).unwrap();
    }
    assert_eq!(files.load().unwrap().cert, b"cert-1");
    std::fs::write(&files.cert, "cert-2").unwrap();
    assert_eq!(files.load().unwrap().cert, b"cert-2");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pool `team-a` (not default) for the Namespaces labelled `team: a`.
fn team_a_pool() -> PoolSpec {
    let mut team = pool("team-a", "198.51.100.64/30");
    team.default = false;
    team.namespace_selector = Some(crate::ipam::Selector {
        match_labels: [("team".to_owned(), "a".to_owned())].into(),
        requirements: vec![],
    });
    team
}

/// A pool with a `namespaceSelector` serves Services of the Namespaces whose labels match,
/// read from the Namespace objects; others get the default pool.
#[tokio::test]
async fn a_namespace_selector_pool_serves_only_matching_namespaces() {
    let mut w = world(vec![pool("blue", "198.51.100.8/30"), team_a_pool()], &[]);
    w.add_node("n1", "10.0.0.11", true, json!({}));
    w.namespace("shop", json!({"team": "b"}));
    let mut other = web("Cluster", json!({}));
    other.metadata.name = Some("other".into());
    w.reconcile(other).await;
    assert_eq!(
        w.route("198.51.100.9"),
        ["n1"],
        "team b's Service: the default pool"
    );
    w.namespace("shop", json!({"team": "a"}));
    w.reconcile(web("Cluster", json!({}))).await;
    assert_eq!(
        w.route("198.51.100.65"),
        ["n1"],
        "team a's Service: the selected pool"
    );
}

/// A Service whose Namespace the watch has not delivered yet is not planned with empty
/// labels (a namespaceSelector pool would refuse it, another pool would hand it an IP it
/// keeps): it is requeued, nothing is written, and once the Namespace is seen it gets the
/// selected pool's IP.
#[tokio::test]
async fn a_service_in_an_unseen_namespace_waits_for_it() {
    let mut w = world(vec![pool("blue", "198.51.100.8/30"), team_a_pool()], &[]);
    w.add_node("n1", "10.0.0.11", true, json!({}));
    let action = service::reconcile(Arc::new(web("Cluster", json!({}))), w.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(service::NAMESPACE_WAIT)
    );
    assert!(w.take().is_empty(), "nothing written while it waits");
    let key = ServiceKey::new("shop", "web");
    assert!(w.ctx.shared.ipam.lock().unwrap().ips_of(&key).is_empty());
    w.namespace("shop", json!({"team": "a"}));
    w.reconcile(web("Cluster", json!({}))).await;
    assert_eq!(
        w.ctx.shared.ipam.lock().unwrap().ips_of(&key),
        ["198.51.100.65".parse::<IpAddr>().unwrap()]
    );
}

/// The older of two Services sharing an IP is edited onto the newer's port: the collision
/// is found at its reconcile, the Event is recorded on the newer Service, and nothing is
/// written to either Service (no IP moves).
#[tokio::test]
async fn a_colliding_sharing_edit_is_an_event_on_the_newer_service_and_moves_nothing() {
    let svc = |name: &str, created: &str, port: u16| {
        let mut s = allocated("Cluster", "198.51.100.9");
        s.metadata.name = Some(name.into());
        s.metadata.uid = Some(format!("uid-{name}"));
        s.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            created.parse().unwrap(),
        ));
        s.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(names::ANNOTATION_SHARING_KEY.into(), "k".into());
        s.spec.as_mut().unwrap().ports = Some(vec![k8s_openapi::api::core::v1::ServicePort {
            port: i32::from(port),
            ..Default::default()
        }]);
        s
    };
    let older = svc("older", "2026-01-01T00:00:00Z", 80);
    let newer = svc("newer", "2026-02-01T00:00:00Z", 443);
    let mut w = world(
        vec![pool("blue", "198.51.100.8/30")],
        &[older.clone(), newer.clone()],
    );
    w.add_node("n1", "10.0.0.11", true, json!({}));
    w.reconcile(older.clone()).await;
    w.reconcile(newer.clone()).await;
    w.take();

    let edited = svc("older", "2026-01-01T00:00:00Z", 443);
    w.reconcile(edited).await;
    let seen = w.take();
    let writes: Vec<_> = seen
        .iter()
        .filter(|s| s.path.contains("/services/") && s.method != "GET")
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    let posted: Vec<_> = seen
        .iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/events"))
        .collect();
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0].body["reason"], "SharingConflict");
    assert_eq!(posted[0].body["regarding"]["name"], "newer");
    // With its uid: `kubectl describe svc newer` selects Events by it.
    assert_eq!(posted[0].body["regarding"]["uid"], "uid-newer");
    assert_eq!(posted[0].body["type"], "Warning");
    assert!(
        posted[0].body["note"]
            .as_str()
            .unwrap()
            .contains("port 443/TCP is already used on 198.51.100.9 by shop/older"),
        "{}",
        posted[0].body["note"]
    );
    let key = |n: &str| ServiceKey::new("shop", n);
    let ipam = w.ctx.shared.ipam.lock().unwrap();
    assert_eq!(ipam.ips_of(&key("older")), ipam.ips_of(&key("newer")));
}

/// What the watch task decides per Node event: a kubelet heartbeat (new resourceVersion,
/// lastHeartbeatTime, allocatable) reconciles no Service; readiness, an exclusion label or
/// an address does. Counted over a burst of 100 heartbeats of 10 nodes.
#[tokio::test]
async fn node_heartbeats_reconcile_no_service() {
    let mut w = world(vec![], &[]);
    let node = |name: &str, ready: &str, beat: u32, labels: Value, ip: &str| -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "resourceVersion": beat.to_string()},
            "status": {
                "conditions": [{"type": "Ready", "status": ready,
                                "lastHeartbeatTime": format!("2026-01-01T00:{:02}:{:02}Z", beat / 60 % 60, beat % 60),
                                "reason": "KubeletReady"}],
                "addresses": [{"type": "InternalIP", "address": ip}],
                "allocatable": {"cpu": format!("{}m", 1000 + beat)},
            }
        }))
        .unwrap()
    };
    // One Node event as the watch task sees it: 1 when it reconciles every Service, and the
    // views every reconcile reads then follow the store.
    let mut index = crate::index::NodeIndex::default();
    let mut event = |w: &mut World, n: Node| -> u32 {
        let ev = watcher::Event::Apply(n);
        w.nodes.apply_watcher_event(&ev);
        let changed = super::nodes_changed(&ev, &mut index, &w.ctx.shared);
        assert_eq!(
            *w.ctx.shared.nodes.lock().unwrap(),
            node_views(w.ctx.stores.nodes.state().iter().map(|n| &**n)),
            "the published views are the store's"
        );
        u32::from(changed)
    };
    let mut reconciles = 0;
    for i in 0..10 {
        reconciles += event(
            &mut w,
            node(
                &format!("n{i}"),
                "True",
                0,
                json!({}),
                &format!("10.0.0.{}", 10 + i),
            ),
        );
    }
    assert_eq!(reconciles, 10, "each new node is a change");
    reconciles = 0;
    for beat in 1..=10 {
        for i in 0..10 {
            reconciles += event(
                &mut w,
                node(
                    &format!("n{i}"),
                    "True",
                    beat,
                    json!({}),
                    &format!("10.0.0.{}", 10 + i),
                ),
            );
        }
    }
    assert_eq!(reconciles, 0, "100 heartbeats, no reconcile");
    reconciles += event(&mut w, node("n3", "False", 11, json!({}), "10.0.0.13"));
    reconciles += event(
        &mut w,
        node(
            "n4",
            "True",
            11,
            json!({"node.kubernetes.io/exclude-from-external-load-balancers": ""}),
            "10.0.0.14",
        ),
    );
    reconciles += event(&mut w, node("n5", "True", 11, json!({}), "10.0.0.99"));
    assert_eq!(
        reconciles, 3,
        "readiness, exclusion and address changes each reconcile"
    );
}

/// A watch that fell behind the API server's window (410) is told as a relist, not as a
/// missing RBAC verb or CRD; 403 and 404 keep their hints.
#[test]
fn watch_errors_are_told_by_their_status_code() {
    let status = |code: u16| -> Box<kube::core::Status> {
        Box::new(
            serde_json::from_value(json!({"status": "Failure", "code": code,
                "reason": "x", "message": "m"}))
            .unwrap(),
        )
    };
    let hint =
        |code| super::watch_error_hint(&kube::runtime::watcher::Error::WatchError(status(code)));
    assert!(hint(410).contains("lists again") && !hint(410).contains("RBAC"));
    assert!(hint(403).contains("RBAC"));
    assert!(hint(404).contains("CRD"));
    let listed = kube::runtime::watcher::Error::InitialListFailed(kube::Error::Api(status(403)));
    assert!(super::watch_error_hint(&listed).contains("RBAC"));
}
