//! The Kubernetes-facing layer: reflectors that keep the objects the decisions need, the
//! Service controller that carries out [`crate::plan`], the Eip status writer, the speaker
//! sync and the leader Lease. Kept thin: every decision is made by a pure module and tested
//! there; this layer reads stores, calls them, and writes what they say.
//!
//! State ownership: the IPAM engine and the route table live behind one mutex each in
//! [`Shared`] and are only touched without awaiting while locked. Only the leader runs this
//! layer at all; a replica that loses the Lease exits, and its successor rebuilds from the
//! Services' status before allocating anything.

pub mod eip;
pub mod leader;
pub mod recorder;
pub mod secrets;
pub mod service;
pub mod speaker;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::{BgpConf, BgpPeer, Eip};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};

use crate::index::{NodeIndex, SliceIndex, node_views};
use crate::ipam::{Ipam, PoolEditError, ServiceKey};
use crate::metrics::Metrics;
use crate::nexthops::NodeView;
use crate::passwords::SecretCache;
use crate::routes::RouteTable;

/// How the operator runs; from flags and environment (see `main.rs`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Take LoadBalancer Services without a `loadBalancerClass`.
    pub take_unclassed: bool,
    /// The namespace Berth runs in: its Lease, its speakers, Secrets without a namespace.
    pub namespace: String,
    /// Label selector of the bgp-server Pods.
    pub speaker_selector: String,
    /// The speakers' gRPC port.
    pub speaker_port: u16,
    /// mTLS material for the speakers; `None`: plaintext (loopback labs only).
    pub speaker_tls: Option<TlsFiles>,
    /// Full resync of every speaker without an open Watch stream, and of status, at least
    /// this often.
    pub resync: Duration,
    /// This replica's identity (Pod name): the Lease holder and the Event reporter.
    pub identity: String,
    /// The Lease's name.
    pub lease_name: String,
    /// How long a Lease lasts without renewal.
    pub lease_duration: Duration,
}

/// Where the operator's mTLS material for the speakers lives. The files are read at every
/// connection, so a rotated certificate (a Secret update, cert-manager) is used from the
/// next connection on without a restart.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed the speakers' certificates.
    pub ca: std::path::PathBuf,
    /// This operator's client certificate.
    pub cert: std::path::PathBuf,
    /// Its key.
    pub key: std::path::PathBuf,
    /// The name the speakers' certificates carry.
    pub server_name: String,
}

impl TlsFiles {
    /// Reads the files now.
    pub fn load(&self) -> Result<berth_proto::ClientTls, String> {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).map_err(|e| format!("cannot read {what} {}: {e}", p.display()))
        };
        Ok(berth_proto::ClientTls {
            ca: read(&self.ca, "--speaker-ca")?,
            cert: read(&self.cert, "--speaker-cert")?,
            key: read(&self.key, "--speaker-key")?,
            server_name: self.server_name.clone(),
        })
    }
}

/// What changed for the speakers.
#[derive(Debug, Clone)]
pub enum SyncEvent {
    /// These IPs' routes changed.
    Routes(Vec<std::net::IpAddr>),
    /// Peers, global settings or replicas may have changed: push everything.
    Full,
    /// The periodic resync: the full state only to a replica whose Watch stream is not open
    /// (one that is open shows a restart or another writer, and the route count is compared
    /// at every read, so a replica in step is sent nothing). The sync's own timer sends it;
    /// one sent on the sync channel is passed on the same way.
    Resync,
}

/// State shared by the controllers.
pub struct Shared {
    /// The allocation state.
    pub ipam: Mutex<Ipam>,
    /// What the speakers announce.
    pub routes: Mutex<RouteTable>,
    /// The last edit error of each Eip (its status says so).
    pub pool_errors: Mutex<BTreeMap<String, PoolEditError>>,
    /// To the speaker sync.
    pub sync: mpsc::UnboundedSender<SyncEvent>,
    /// Wakes the Eip status writer.
    pub eip_dirty: Notify,
    /// What the alerts need of each Service (pending, no next hop: said once per episode,
    /// Layer2 IPs).
    pub health: Mutex<crate::health::ServiceHealth>,
    /// Asks for a reconcile of one Service: after a release, each Service waiting for an IP
    /// may get the freed one (not every Service: a deletion is a routine event).
    pub reconcile: mpsc::UnboundedSender<ServiceKey>,
    /// Service reconciles finished so far: paces a reconcile of every Service
    /// ([`service::bulk_feeder`]).
    pub reconciled: Arc<service::Progress>,
    /// Services with a reconcile running: an endpoint change of one of them goes to the
    /// controller, which runs it after ([`service::endpoints_changed`]).
    pub reconciling: Mutex<std::collections::BTreeSet<ServiceKey>>,
    /// Services whose last plan left a request unmet (no IP, a conflicting or taken one).
    pub waiting: Mutex<std::collections::BTreeSet<ServiceKey>>,
    /// Asks the sweeper to release what deleted Services hold.
    pub sweep: mpsc::UnboundedSender<service::SweepRequest>,
    /// EndpointSlices by Service.
    pub slices: Mutex<SliceIndex>,
    /// Nodes as the next-hop rules read them.
    pub nodes: Mutex<Arc<Vec<NodeView>>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The Secrets BgpPeers name, as last read ([`secrets`]).
    pub secrets: Mutex<SecretCache>,
    /// A BgpPeer's spec changed: its Secrets are read again before the speakers are told.
    pub peers_changed: Notify,
}

/// The stores the decisions read.
#[derive(Clone)]
pub struct Stores {
    /// Nodes.
    pub nodes: Store<Node>,
    /// Pools.
    pub eips: Store<Eip>,
    /// The BgpConf singleton.
    pub confs: Store<BgpConf>,
    /// Peers.
    pub peers: Store<BgpPeer>,
    /// bgp-server Pods.
    pub pods: Store<Pod>,
    /// The Layer2 assignment ConfigMaps the operator wrote in Berth's namespace.
    pub assignments: Store<ConfigMap>,
    /// Namespaces: their labels, which pools' `namespaceSelector` matches.
    pub namespaces: Store<Namespace>,
    /// Services, as the Service controller's own watch fills it ([`service::run`]).
    pub services: Store<Service>,
}

/// Everything a reconcile needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Stores.
    pub stores: Stores,
    /// Events.
    pub recorder: recorder::Recorder,
}

/// An error of the Kubernetes-facing layer; reconciles are retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A store's watch ended before it listed anything.
    #[error("the watch of {0} ended before its first list: check RBAC for that resource")]
    StoreNotReady(&'static str),
}

/// A reflector for `api`; its store, and the stream of watch events (already applied to the
/// store when they come out). The events, not just the touched objects: a relist is applied
/// to the store only at its end (`InitDone`), which is when a change made during a watch gap
/// becomes visible, and triggers must look then too. `managedFields` are dropped before the
/// store keeps an object: nothing reads them, and on a real API server they are often the
/// larger part of it.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .modify(|o| kube::ResourceExt::managed_fields_mut(o).clear())
        .default_backoff()
        .reflect(writer);
    (store, stream)
}

/// The API server refuses an Event whose note is longer than 1 KiB (events.k8s.io/v1), and
/// a refused Event says nothing: long notes (a list of Services, a peer's error) are cut at
/// a character boundary with a mark that they were.
pub fn event_note(note: &str) -> String {
    const MAX: usize = 1024;
    if note.len() <= MAX {
        return note.to_owned();
    }
    const MARK: &str = " [...]";
    let mut end = MAX - MARK.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &note[..end])
}

/// Passes a watch event on; an error is logged with the resource and what to check (a
/// 403 is a missing RBAC verb, a 404 a missing CRD), never dropped silently.
fn logged<K>(resource: &'static str, e: Result<K, watcher::Error>) -> Option<K> {
    match e {
        Ok(k) => Some(k),
        Err(err) => {
            let hint = watch_error_hint(&err);
            tracing::warn!(resource, error = %err, "watch failed; retrying with back-off ({hint})");
            None
        }
    }
}

/// What to check for a failed watch, from the API server's status code.
fn watch_error_hint(err: &watcher::Error) -> &'static str {
    let code = match err {
        watcher::Error::WatchError(status) => Some(status.code),
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    };
    match code {
        Some(403) => "the operator's RBAC lacks list/watch on it",
        Some(404) => "its CRD is not installed",
        Some(410) => {
            "the watch fell behind the API server's event window (heavy write load); it lists again, nothing is lost"
        }
        _ => {
            "403 would be missing RBAC list/watch, 404 a missing CRD; otherwise the API server or the network"
        }
    }
}

/// Every Namespace's labels, by name (what the pools' `namespaceSelector` reads).
fn namespace_labels(store: &Store<Namespace>) -> BTreeMap<String, BTreeMap<String, String>> {
    store
        .state()
        .iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                n.metadata.labels.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Names, generations and deletion marks of a store's objects: they change when a spec
/// changes or an object comes or goes, not when only its status is written.
fn generations<K>(store: &Store<K>) -> Vec<(String, Option<i64>, bool)>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let mut v: Vec<_> = store
        .state()
        .iter()
        .map(|o| {
            let m = o.meta();
            (
                m.name.clone().unwrap_or_default(),
                m.generation,
                m.deletion_timestamp.is_some(),
            )
        })
        .collect();
    v.sort();
    v
}

/// One item per change of [`generations`] of `store` seen through its reflector's events.
fn spec_changes<K>(
    resource: &'static str,
    store: Store<K>,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = ()> + Send
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let mut last: Option<Vec<(String, Option<i64>, bool)>> = None;
    events.filter_map(move |e| {
        let ok = logged(resource, e).is_some();
        let now = generations(&store);
        let changed = last.as_ref() != Some(&now);
        last = Some(now);
        async move { (ok && changed).then_some(()) }
    })
}

/// Applies one Node watch event to `index` and, when a view the decisions read changed
/// (readiness, schedulability, exclusion labels, InternalIPs), publishes the views to
/// `shared` and returns true: only then is every Service reconciled. A kubelet heartbeat
/// returns false.
pub fn nodes_changed(event: &watcher::Event<Node>, index: &mut NodeIndex, shared: &Shared) -> bool {
    if !index.apply(event) {
        return false;
    }
    if let Ok(mut n) = shared.nodes.lock() {
        *n = index.views();
    }
    true
}

/// Runs the operator's controllers until one of them fails or the Lease is lost.
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let (sync_tx, sync_rx) = mpsc::unbounded_channel();
    // Node, pool and BGP-settings changes, and releases, reconcile every Service.
    let (all_tx, all_rx) = mpsc::unbounded_channel::<()>();
    let (reconcile_tx, reconcile_rx) = mpsc::unbounded_channel::<ServiceKey>();
    let (sweep_tx, sweep_rx) = mpsc::unbounded_channel::<service::SweepRequest>();
    let shared = Arc::new(Shared {
        ipam: Mutex::new(Ipam::new()),
        routes: Mutex::new(RouteTable::new()),
        pool_errors: Mutex::new(BTreeMap::new()),
        sync: sync_tx,
        eip_dirty: Notify::new(),
        reconcile: reconcile_tx,
        reconciled: Default::default(),
        reconciling: Default::default(),
        waiting: Mutex::new(Default::default()),
        sweep: sweep_tx,
        health: Mutex::new(Default::default()),
        slices: Mutex::new(SliceIndex::default()),
        nodes: Mutex::new(Arc::new(Vec::new())),
        metrics: metrics.clone(),
        secrets: Mutex::new(SecretCache::new()),
        peers_changed: Notify::new(),
    });
    let ns = settings.namespace.clone();
    let (nodes, node_events) =
        reflect(Api::<Node>::all(client.clone()), watcher::Config::default());
    // EndpointSlices are indexed by Service, not kept in a store: a reconcile reads only its
    // own. The index task carries out a settled Service's change itself once the context
    // exists (`service::endpoints_changed`), and forwards every other changed slice to the
    // Service controller.
    let (slices_ready_tx, mut slices_ready) = tokio::sync::watch::channel(false);
    let (slice_tx, slice_rx) = mpsc::unbounded_channel::<EndpointSlice>();
    let endpoint_ctx: Arc<std::sync::OnceLock<Arc<Context>>> = Arc::default();
    let slice_task = {
        let shared = shared.clone();
        let endpoint_ctx = endpoint_ctx.clone();
        let mut events = watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(berth_api::names::LABEL_SERVICE_NAME),
        )
        .default_backoff()
        .boxed();
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                let Some(ev) = logged("endpointslices.discovery.k8s.io", ev) else {
                    continue;
                };
                let changed = shared.slices.lock().ok().and_then(|mut i| i.apply(&ev));
                match ev {
                    watcher::Event::InitDone => {
                        let _ = slices_ready_tx.send(true);
                        // A relist after a watch gap: the Services whose slices changed in it.
                        let relisted = shared
                            .slices
                            .lock()
                            .map(|mut i| i.take_relisted())
                            .unwrap_or_default();
                        for k in relisted {
                            let _ = shared.reconcile.send(k);
                        }
                    }
                    watcher::Event::Apply(s) | watcher::Event::Delete(s) => {
                        let Some(key) = changed else { continue };
                        let done = endpoint_ctx
                            .get()
                            .is_some_and(|ctx| service::endpoints_changed(ctx, &key));
                        if !done {
                            let _ = slice_tx.send(s);
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    let (eips, eip_events) = reflect(Api::<Eip>::all(client.clone()), watcher::Config::default());
    let (confs, conf_events) = reflect(
        Api::<BgpConf>::all(client.clone()),
        watcher::Config::default(),
    );
    let (peers, peer_events) = reflect(
        Api::<BgpPeer>::all(client.clone()),
        watcher::Config::default(),
    );
    let (pods, pod_events) = reflect(
        Api::<Pod>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels(&settings.speaker_selector),
    );
    let (namespaces, namespace_events) = reflect(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    );
    // Only the operator writes these (RBAC keeps tenants out of Berth's namespace); a change
    // by anyone else (an admin deleting one) reconciles its Service, which writes it back.
    let (assignments, assignment_events) = reflect(
        Api::<ConfigMap>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels(&format!(
            "{}=true",
            berth_api::layer2::LABEL_LAYER2_ASSIGNMENT
        )),
    );
    // Consumed from now on (a reflector's store fills only while its stream is polled); each
    // touched ConfigMap names its Service. After a relist, whose deletions name no object,
    // every Service is reconciled (each rewrites its assignment if it went missing).
    let (assignment_tx, assignment_rx) = mpsc::unbounded_channel::<ConfigMap>();
    let assignment_task = {
        let all_tx = all_tx.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(assignment_events);
            while let Some(ev) = events.next().await {
                match logged("configmaps", ev) {
                    Some(
                        watcher::Event::Apply(cm)
                        | watcher::Event::InitApply(cm)
                        | watcher::Event::Delete(cm),
                    ) => {
                        let _ = assignment_tx.send(cm);
                    }
                    Some(watcher::Event::InitDone) => {
                        let _ = all_tx.send(());
                    }
                    Some(watcher::Event::Init) | None => {}
                }
            }
        })
    };
    // Filled by the Service controller's watch once it runs; a reconcile reads it to see
    // whether its Service was deleted meanwhile.
    let (services, service_writer) = reflector::store();
    let stores = Stores {
        nodes,
        eips,
        confs,
        peers,
        pods,
        assignments,
        namespaces,
        services,
    };

    // Node, pool and BGP-settings changes touch every Service; peers and pods only the
    // speakers (a peer change once its Secrets are read again). Namespace label changes touch
    // every Service too (rare; the pools' namespaceSelector is matched against them); other
    // Namespace events nothing.
    let drive = {
        let shared = shared.clone();
        let all_tx = all_tx.clone();
        let eip_store = stores.eips.clone();
        let node_shared = shared.clone();
        // Only what the decisions read (readiness, schedulability, labels, InternalIPs):
        // kubelet status updates that change nothing of it reconcile nothing.
        let mut node_index = NodeIndex::default();
        let node_nudge = node_events.filter_map(move |e| {
            let pass = logged("nodes", e)
                .is_some_and(|e| nodes_changed(&e, &mut node_index, &node_shared));
            async move { pass.then_some(()) }
        });
        // Spec changes, creations and deletions only: the operator's own status writes
        // (after every allocation, every 10 s for peers) must not reconcile everything.
        let eip_nudge = spec_changes("eips.berth.dev", stores.eips.clone(), eip_events);
        let ns_store = stores.namespaces.clone();
        let mut ns_labels_seen = namespace_labels(&ns_store);
        let namespace_nudge = namespace_events.filter_map(move |e| {
            let now = namespace_labels(&ns_store);
            let changed = now != ns_labels_seen;
            ns_labels_seen = now;
            let pass = logged("namespaces", e).is_some() && changed;
            async move { pass.then_some(()) }
        });
        let conf_nudge = spec_changes("bgpconfs.berth.dev", stores.confs.clone(), conf_events);
        let mut peer_nudge =
            spec_changes("bgppeers.berth.dev", stores.peers.clone(), peer_events).boxed();
        let speaker_nudge = pod_events
            .filter_map(|e| async move { logged("pods", e).map(|_| ()) })
            .boxed();
        async move {
            let mut everyone = futures::stream::select_all([
                node_nudge.boxed(),
                eip_nudge.boxed(),
                conf_nudge.boxed(),
                namespace_nudge.boxed(),
            ]);
            let mut speakers = speaker_nudge;
            loop {
                tokio::select! {
                    Some(()) = everyone.next() => {
                        eip::sync_pools_of(&eip_store, &shared);
                        let _ = all_tx.send(());
                        let _ = shared.sync.send(SyncEvent::Full);
                        shared.eip_dirty.notify_one();
                    }
                    Some(()) = speakers.next() => {
                        let _ = shared.sync.send(SyncEvent::Full);
                    }
                    // The Secret reader sends the full state once it has read them.
                    Some(()) = peer_nudge.next() => shared.peers_changed.notify_one(),
                    else => return,
                }
            }
        }
    };
    let drive = tokio::spawn(drive);

    // Its own statement: the guard `wait_for` returns holds the channel's lock, and inside
    // the array below it would live across the other waits, blocking the index task's next
    // `send` (a relist meanwhile), and with it this runtime's only thread.
    let slices_listed = slices_ready.wait_for(|r| *r).await.is_ok();
    for (what, ready) in [
        ("nodes", stores.nodes.wait_until_ready().await.is_ok()),
        ("endpointslices", slices_listed),
        ("eips", stores.eips.wait_until_ready().await.is_ok()),
        ("bgpconfs", stores.confs.wait_until_ready().await.is_ok()),
        ("bgppeers", stores.peers.wait_until_ready().await.is_ok()),
        ("pods", stores.pods.wait_until_ready().await.is_ok()),
        (
            "configmaps",
            stores.assignments.wait_until_ready().await.is_ok(),
        ),
        (
            "namespaces",
            stores.namespaces.wait_until_ready().await.is_ok(),
        ),
    ] {
        if !ready {
            return Err(Error::StoreNotReady(what).into());
        }
    }

    // Every password a peer names is read before the first push: a speaker must never be
    // told a peer without its key (it would connect unsigned).
    secrets::refresh(&client, &ns, &stores.peers, &shared).await;
    let secret_reader = tokio::spawn(secrets::run(
        client.clone(),
        ns.clone(),
        stores.peers.clone(),
        shared.clone(),
    ));

    let recorder = recorder::Recorder::new(client.clone(), "berth-operator", &settings.identity);
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: settings.clone(),
        shared: shared.clone(),
        stores: stores.clone(),
        recorder,
    });

    // The rebuild happens before the first allocation: every IP in a Service's status is
    // held again before any Service is looked at.
    let _ = endpoint_ctx.set(ctx.clone());
    let services_now = service::rebuild(&ctx).await?;
    if let Ok(mut n) = shared.nodes.lock() {
        *n = node_views(stores.nodes.state().iter().map(|n| &**n));
    }
    // Every Service's routes are computed before the first push: a speaker must never be
    // told a partial table (it would withdraw the rest).
    service::prime_routes(&ctx, &services_now);
    drop(services_now);
    metrics.set_ready(true);

    let speakers = tokio::spawn(speaker::run(ctx.clone(), sync_rx));
    let eip_status = tokio::spawn(eip::status_writer(ctx.clone()));
    let slice_events = futures::stream::poll_fn({
        let mut rx = slice_rx;
        move |cx| rx.poll_recv(cx)
    })
    .map(Ok);
    let assignment_events = futures::stream::poll_fn({
        let mut rx = assignment_rx;
        move |cx| rx.poll_recv(cx)
    })
    .map(Ok);
    let services = service::run(
        ctx.clone(),
        service_writer,
        slice_events,
        assignment_events,
        all_rx,
        reconcile_rx,
        sweep_rx,
    );
    tokio::select! {
        r = services => r,
        r = speakers => Err(anyhow::anyhow!("speaker sync stopped: {r:?}")),
        r = eip_status => Err(anyhow::anyhow!("Eip status writer stopped: {r:?}")),
        r = drive => Err(anyhow::anyhow!("watches stopped: {r:?}")),
        r = slice_task => Err(anyhow::anyhow!("EndpointSlice watch stopped: {r:?}")),
        r = assignment_task => Err(anyhow::anyhow!("ConfigMap watch stopped: {r:?}")),
        r = secret_reader => Err(anyhow::anyhow!("BgpPeer Secret reader stopped: {r:?}")),
    }
}
