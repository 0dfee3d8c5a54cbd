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
pub mod service;
pub mod speaker;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::{BgpConf, BgpPeer, Eip};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};

use crate::index::{SliceIndex, node_views};
use crate::ipam::{Ipam, PoolEditError};
use crate::metrics::Metrics;
use crate::nexthops::NodeView;
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
    pub speaker_tls: Option<berth_proto::ClientTls>,
    /// Full resync of every speaker and status at least this often.
    pub resync: Duration,
    /// This replica's identity (Pod name): the Lease holder and the Event reporter.
    pub identity: String,
    /// The Lease's name.
    pub lease_name: String,
    /// How long a Lease lasts without renewal.
    pub lease_duration: Duration,
}

/// What changed for the speakers.
#[derive(Debug, Clone)]
pub enum SyncEvent {
    /// These IPs' routes changed.
    Routes(Vec<std::net::IpAddr>),
    /// Peers, global settings or replicas may have changed: push everything.
    Full,
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
    /// EndpointSlices by Service.
    pub slices: Mutex<SliceIndex>,
    /// Nodes as the next-hop rules read them.
    pub nodes: Mutex<Arc<Vec<NodeView>>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
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
    /// Secrets in Berth's namespace.
    pub secrets: Store<Secret>,
    /// The Layer2 assignment ConfigMaps the operator wrote in Berth's namespace.
    pub assignments: Store<ConfigMap>,
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
    pub recorder: kube::runtime::events::Recorder,
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

/// A reflector for `api`, run as a task; its store, and a stream of the objects it touched
/// (for triggers).
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// Runs the operator's controllers until one of them fails or the Lease is lost.
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let (sync_tx, sync_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        ipam: Mutex::new(Ipam::new()),
        routes: Mutex::new(RouteTable::new()),
        pool_errors: Mutex::new(BTreeMap::new()),
        sync: sync_tx,
        eip_dirty: Notify::new(),
        slices: Mutex::new(SliceIndex::default()),
        nodes: Mutex::new(Arc::new(Vec::new())),
        metrics: metrics.clone(),
    });
    let ns = settings.namespace.clone();
    let (nodes, node_events) =
        reflect(Api::<Node>::all(client.clone()), watcher::Config::default());
    // EndpointSlices are indexed by Service, not kept in a store: a reconcile reads only its
    // own. The index task forwards each changed slice to the Service controller.
    let (slices_ready_tx, mut slices_ready) = tokio::sync::watch::channel(false);
    let (slice_tx, slice_rx) = mpsc::unbounded_channel::<EndpointSlice>();
    let slice_task = {
        let shared = shared.clone();
        let mut events = watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(berth_api::names::LABEL_SERVICE_NAME),
        )
        .default_backoff()
        .boxed();
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                let Ok(ev) = ev else { continue };
                let changed = shared.slices.lock().ok().and_then(|mut i| i.apply(&ev));
                match ev {
                    watcher::Event::InitDone => {
                        let _ = slices_ready_tx.send(true);
                    }
                    watcher::Event::Apply(s) | watcher::Event::Delete(s) if changed.is_some() => {
                        let _ = slice_tx.send(s);
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
    let (secrets, secret_events) = reflect(
        Api::<Secret>::namespaced(client.clone(), &ns),
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
    // touched ConfigMap names its Service.
    let (assignment_tx, assignment_rx) = mpsc::unbounded_channel::<ConfigMap>();
    let assignment_task = tokio::spawn(async move {
        let mut events = std::pin::pin!(assignment_events);
        while let Some(ev) = events.next().await {
            if let Ok(cm) = ev {
                let _ = assignment_tx.send(cm);
            }
        }
    });
    let stores = Stores {
        nodes,
        eips,
        confs,
        peers,
        pods,
        secrets,
        assignments,
    };

    // Node, pool and BGP-settings changes touch every Service; peers, pods and Secrets only
    // the speakers.
    let (all_tx, all_rx) = mpsc::unbounded_channel::<()>();
    let drive = {
        let shared = shared.clone();
        let all_tx = all_tx.clone();
        let nodes_store = stores.nodes.clone();
        let node_shared = shared.clone();
        let node_nudge = node_events.filter_map(move |e| {
            let views = node_views(nodes_store.state().iter().map(|n| &**n));
            if let Ok(mut n) = node_shared.nodes.lock() {
                *n = views;
            }
            async move { e.ok().map(|_| ()) }
        });
        let eip_nudge = eip_events.filter_map(|e| async move { e.ok().map(|_| ()) });
        let conf_nudge = conf_events.filter_map(|e| async move { e.ok().map(|_| ()) });
        let speaker_nudge = futures::stream::select_all([
            peer_events
                .filter_map(|e| async move { e.ok().map(|_| ()) })
                .boxed(),
            pod_events
                .filter_map(|e| async move { e.ok().map(|_| ()) })
                .boxed(),
            secret_events
                .filter_map(|e| async move { e.ok().map(|_| ()) })
                .boxed(),
        ]);
        async move {
            let mut everyone = futures::stream::select_all([
                node_nudge.boxed(),
                eip_nudge.map(|()| ()).boxed(),
                conf_nudge.boxed(),
            ]);
            let mut speakers = speaker_nudge;
            loop {
                tokio::select! {
                    Some(()) = everyone.next() => {
                        let _ = all_tx.send(());
                        let _ = shared.sync.send(SyncEvent::Full);
                        shared.eip_dirty.notify_one();
                    }
                    Some(()) = speakers.next() => {
                        let _ = shared.sync.send(SyncEvent::Full);
                    }
                    else => return,
                }
            }
        }
    };
    let drive = tokio::spawn(drive);

    for (what, ready) in [
        ("nodes", stores.nodes.wait_until_ready().await.is_ok()),
        (
            "endpointslices",
            slices_ready.wait_for(|r| *r).await.is_ok(),
        ),
        ("eips", stores.eips.wait_until_ready().await.is_ok()),
        ("bgpconfs", stores.confs.wait_until_ready().await.is_ok()),
        ("bgppeers", stores.peers.wait_until_ready().await.is_ok()),
        ("pods", stores.pods.wait_until_ready().await.is_ok()),
        ("secrets", stores.secrets.wait_until_ready().await.is_ok()),
        (
            "configmaps",
            stores.assignments.wait_until_ready().await.is_ok(),
        ),
    ] {
        if !ready {
            return Err(Error::StoreNotReady(what).into());
        }
    }

    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "berth-operator".into(),
            instance: Some(settings.identity.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: settings.clone(),
        shared: shared.clone(),
        stores: stores.clone(),
        recorder,
    });

    // The rebuild happens before the first allocation: every IP in a Service's status is
    // held again before any Service is looked at.
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
    let services = service::run(ctx.clone(), slice_events, assignment_events, all_rx);
    tokio::select! {
        r = services => r,
        r = speakers => Err(anyhow::anyhow!("speaker sync stopped: {r:?}")),
        r = eip_status => Err(anyhow::anyhow!("Eip status writer stopped: {r:?}")),
        r = drive => Err(anyhow::anyhow!("watches stopped: {r:?}")),
        r = slice_task => Err(anyhow::anyhow!("EndpointSlice watch stopped: {r:?}")),
        r = assignment_task => Err(anyhow::anyhow!("ConfigMap watch stopped: {r:?}")),
    }
}
