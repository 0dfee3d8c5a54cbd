//! The Service controller: rebuilds the IPAM state from every Service's status, then
//! reconciles each Service by carrying out its [`plan`](crate::plan::plan) and recomputing its
//! next hops. An EndpointSlice change recomputes its one Service's next hops (without a
//! reconcile when the Service is settled, [`endpoints_changed`]); a change of what the
//! decisions read of Nodes (readiness, labels, addresses: not heartbeats), of an Eip's or
//! BgpConf's spec (not their status) reconciles them all, a batch at a time
//! ([`bulk_feeder`]; each is cheap when nothing changed: no write, no Event); a release
//! reconciles the Services waiting for an IP ([`wake_pending`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::layer2::{self, DATA_ASSIGNMENT, DATA_SERVICE, LABEL_LAYER2_ASSIGNMENT};
use berth_api::{EipProtocol, Layer2Assignment, names};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Context, Error, SyncEvent};
use crate::announce::{self, Computed};
use crate::convert::{self, claims};
use crate::ipam::{Ipam, ServiceKey};
use crate::nexthops::{NextHop, TrafficPolicy};
use crate::plan::{Finalizer, Plan, Severity, plan_in};

/// Lists every Service and every Eip and rebuilds the IPAM engine from their claims. Claims
/// that conflict are reported as Warnings on the later Service; nothing is moved for it (a
/// claim colliding with an older holder keeps its status IP, see `plan`).
pub async fn rebuild(ctx: &Context) -> Result<Vec<Service>, Error> {
    let api: Api<Service> = Api::all(ctx.client.clone());
    let mut all = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        all.extend(page.items);
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => params = params.continue_token(&c),
            _ => break,
        }
    }
    let pools: Vec<_> = ctx
        .stores
        .eips
        .state()
        .iter()
        .filter_map(|e| convert::pool_spec(e).ok())
        .collect();
    let claims: Vec<_> = all
        .iter()
        .flat_map(|s| claims(s, ctx.settings.take_unclassed))
        .collect();
    let n = claims.len();
    let (ipam, report) = Ipam::rebuild(pools, claims);
    info!(
        services = all.len(),
        claims = n,
        conflicts = report.conflicts.len(),
        unpooled = report.unpooled.len(),
        "IPAM state rebuilt from Service status"
    );
    for c in &report.conflicts {
        warn!(%c, "claim refused at rebuild");
        if let Some(svc) = all.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(c.service.namespace.as_str())
                && s.metadata.name.as_deref() == Some(c.service.name.as_str())
        }) {
            publish(
                ctx,
                svc,
                EventType::Warning,
                "IPConflict",
                match c.reason {
                    // Nothing moves: it keeps the IP in its status, and its reconcile says
                    // which Service collides and what to change (SharingConflict).
                    crate::ipam::ConflictReason::Share(_) => format!(
                        "{c}; the older Service keeps it, this one is not given another IP (nothing moves): make the two shareable again or move one of them"
                    ),
                    crate::ipam::ConflictReason::SecondOfFamily(held) => format!(
                        "{c}; the Service keeps {held}, and its status is rewritten to show only that"
                    ),
                },
            )
            .await;
        }
    }
    ctx.shared.metrics.pools(&ipam);
    if let Ok(mut held) = ctx.shared.ipam.lock() {
        *held = ipam;
    }
    super::eip::sync_pools(ctx);
    Ok(all)
}

/// Fills the route table from the rebuilt state, before any speaker is told anything.
pub fn prime_routes(ctx: &Context, services: &[Service]) {
    let mut n = 0;
    for svc in services {
        let key = ServiceKey::new(svc.namespace().unwrap_or_default(), svc.name_any());
        let held = ctx
            .shared
            .ipam
            .lock()
            .map(|i| i.ips_of(&key).to_vec())
            .unwrap_or_default();
        if held.is_empty() {
            continue;
        }
        let c = compute(svc, &held, ctx);
        if let Ok(mut t) = ctx.shared.routes.lock() {
            t.set(&key, c.bgp);
            n += 1;
        }
    }
    info!(services = n, "routes computed from the rebuilt state");
}

/// Service reconciles running at once. Unbounded, a start or a reconcile of everything ran
/// all 10,000 Services of the scale bench at once: each held its computed next hops (1,000
/// for a `Cluster` Service) across its API calls, and each call opened its own connection to
/// the API server, so the operator peaked at 924 MB. Reconciles are short (one status patch
/// at most), so a few at a time keep the API server as busy as it lets one client be.
pub const RECONCILE_CONCURRENCY: u16 = 16;

/// Runs the controller until it stops.
pub async fn run(
    ctx: Arc<Context>,
    writer: kube::runtime::reflector::store::Writer<Service>,
    slice_events: impl Stream<Item = Result<EndpointSlice, watcher::Error>> + Send + 'static,
    assignment_events: impl Stream<Item = Result<ConfigMap, watcher::Error>> + Send + 'static,
    all: mpsc::UnboundedReceiver<()>,
    one: mpsc::UnboundedReceiver<ServiceKey>,
    sweeps: mpsc::UnboundedReceiver<SweepRequest>,
) -> anyhow::Result<()> {
    let api: Api<Service> = Api::all(ctx.client.clone());
    // Our own reflector (its store is `ctx.stores.services`), so the sweep waits on the same
    // store the controller reconciles from being filled (the sweep must never take an
    // unlisted Service for a deleted one).
    let store = ctx.stores.services.clone();
    let (listed_tx, listed) = tokio::sync::watch::channel(false);
    let sweep_tx = ctx.shared.sweep.clone();
    let services = watcher(api, watcher::Config::default())
        .modify(crate::service::stored)
        .default_backoff()
        .reflect(writer)
        .inspect(move |e| match e {
            Ok(watcher::Event::InitDone) => {
                listed_tx.send_replace(true);
                // A relist's deletions name no object: everything is looked at.
                let _ = sweep_tx.send(SweepRequest::Everything);
            }
            Ok(watcher::Event::Delete(s)) => {
                let key = ServiceKey::new(s.namespace().unwrap_or_default(), s.name_any());
                let _ = sweep_tx.send(SweepRequest::Deleted(key));
            }
            _ => {}
        })
        .applied_objects();
    let controller = Controller::for_stream(services, store.clone())
        .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY));
    tokio::spawn(sweeper(ctx.clone(), store.clone(), listed, sweeps));
    tokio::spawn(bulk_feeder(
        {
            let store = store.clone();
            move || {
                store
                    .state()
                    .iter()
                    .map(|s| ServiceKey::new(s.namespace().unwrap_or_default(), s.name_any()))
                    .collect()
            }
        },
        all,
        ctx.shared.reconcile.clone(),
        ctx.shared.reconciled.clone(),
    ));
    controller
        .watches_stream(slice_events, |slice| {
            let ns = slice.metadata.namespace.clone();
            slice
                .labels()
                .get(names::LABEL_SERVICE_NAME)
                .map(|svc| ObjectRef::<Service>::new(svc).within(ns.as_deref().unwrap_or("")))
        })
        .watches_stream(assignment_events, |cm| {
            let service = cm.data.as_ref()?.get(DATA_SERVICE)?;
            let (ns, name) = service.split_once('/')?;
            Some(ObjectRef::<Service>::new(name).within(ns))
        })
        .reconcile_on({
            let mut one = one;
            futures::stream::poll_fn(move |cx| one.poll_recv(cx))
                .map(|k: ServiceKey| service_ref(&k))
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
    Ok(())
}

/// Finished Service reconciles, counted, with a wake-up for whoever waits on the count.
#[derive(Default)]
pub struct Progress {
    count: std::sync::atomic::AtomicU64,
    notify: tokio::sync::Notify,
}

impl Progress {
    /// One more reconcile finished.
    pub fn done(&self) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.notify.notify_waiters();
    }

    /// Reconciles finished so far.
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until at least `n` reconciles have finished.
    pub async fn reached(&self, n: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() >= n {
                return;
            }
            notified.await;
        }
    }
}

/// Requests of a reconcile of every Service handed to the controller at once.
pub const BULK_BATCH: usize = 64;

/// How long the feed waits for a batch to be worked off before it sends the next anyway (a
/// Service already queued is reconciled once for two requests, so a batch can finish
/// short).
const BULK_PATIENCE: Duration = Duration::from_secs(1);

/// Carries out each "reconcile every Service" (a Node, pool, BgpConf or Namespace change, a
/// relist of the assignments) a batch at a time: the next batch goes when half of this one
/// is done. Handed over at once, 10,000 requests sat in the controller's queue, each with
/// two copies of its object reference, ~7 MB at the peak. A request during a pass keeps the
/// rest of the pass first and puts every other Service in the store after it (those done
/// already, and those created meanwhile): every Service is reconciled after the latest
/// request, and none waits behind a stream of them.
pub async fn bulk_feeder(
    keys: impl Fn() -> Vec<ServiceKey>,
    mut all: mpsc::UnboundedReceiver<()>,
    tx: mpsc::UnboundedSender<ServiceKey>,
    progress: Arc<Progress>,
) {
    let mut queue: std::collections::VecDeque<ServiceKey> = Default::default();
    loop {
        if queue.is_empty() {
            if all.recv().await.is_none() {
                return;
            }
            while all.try_recv().is_ok() {}
            queue = keys().into();
            continue;
        }
        if all.try_recv().is_ok() {
            while all.try_recv().is_ok() {}
            // The rest of this pass first, then every other Service as the store has them
            // now (those done already, and those created since the pass began).
            let unsent: std::collections::BTreeSet<ServiceKey> = queue.iter().cloned().collect();
            queue.extend(keys().into_iter().filter(|k| !unsent.contains(k)));
        }
        let start = progress.count();
        let batch = queue.len().min(BULK_BATCH);
        for k in queue.drain(..batch) {
            if tx.send(k).is_err() {
                return;
            }
        }
        let _ = tokio::time::timeout(
            BULK_PATIENCE,
            progress.reached(start + (batch as u64).div_ceil(2)),
        )
        .await;
    }
}

fn error_policy(_svc: Arc<Service>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(%err, "Service reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Reconciles one Service.
#[tracing::instrument(skip_all, fields(service = %format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())))]
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let _running = Running::mark(
        &ctx,
        ServiceKey::new(svc.namespace().unwrap_or_default(), svc.name_any()),
    );
    let result = reconcile_inner(&svc, &ctx).await;
    ctx.shared.reconciled.done();
    ctx.shared
        .metrics
        .reconciled("service", start.elapsed().as_secs_f64(), result.is_err());
    result
}

/// A Service's mark in [`super::Shared::reconciling`] while its reconcile runs; removed
/// when dropped (also when the reconcile fails or is cancelled).
struct Running<'a> {
    ctx: &'a Context,
    key: ServiceKey,
}

impl<'a> Running<'a> {
    fn mark(ctx: &'a Context, key: ServiceKey) -> Self {
        if let Ok(mut r) = ctx.shared.reconciling.lock() {
            r.insert(key.clone());
        }
        Running { ctx, key }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Ok(mut r) = self.ctx.shared.reconciling.lock() {
            r.remove(&self.key);
        }
    }
}

/// An EndpointSlice change of a settled Service, carried out without a reconcile: its next
/// hops are computed again and the speakers told what changed. A settled Service is in the
/// store and not being deleted, holds its IPs and waits for none, announces over BGP only
/// (a Layer2 assignment may move: an API write), has no node without an address of its
/// family (said in an Event) and neither starts nor stops having no next hop (a gauge and
/// an Event). Anything else returns false, and the change goes to the controller for a
/// reconcile, as does one of a Service whose reconcile is running (the controller runs it
/// after; computed now, it could be overwritten by that reconcile's older result). The
/// `reconciling` lock is held throughout, so no reconcile starts meanwhile.
///
/// An endpoint change is the most frequent event in a cluster: through the controller it
/// cost a queue with a millisecond timer, a spawned task and a plan of the Service.
pub fn endpoints_changed(ctx: &Context, key: &ServiceKey) -> bool {
    match endpoints_only(ctx, key) {
        Ok(()) => {
            ctx.shared.metrics.endpoint_update();
            true
        }
        Err(why) => {
            tracing::debug!(service = %key, why, "endpoint change left to a reconcile");
            false
        }
    }
}

/// [`endpoints_changed`]; `Err` says why a reconcile is needed.
fn endpoints_only(ctx: &Context, key: &ServiceKey) -> Result<(), &'static str> {
    let reconciling = ctx
        .shared
        .reconciling
        .lock()
        .map_err(|_| "a lock is poisoned")?;
    if reconciling.contains(key) {
        return Err("its reconcile is running");
    }
    if ctx.shared.waiting.lock().map_or(true, |w| w.contains(key)) {
        return Err("it waits for an IP");
    }
    let svc = ctx
        .stores
        .services
        .get(&service_ref(key))
        .ok_or("not in the store")?;
    if svc.metadata.deletion_timestamp.is_some() {
        return Err("being deleted");
    }
    if !crate::service::is_ours(&svc, ctx.settings.take_unclassed) {
        return Err("not Berth's (any more)");
    }
    let (held, uid) = ctx
        .shared
        .ipam
        .lock()
        .map(|i| (i.ips_of(key).to_vec(), i.uid_of(key).map(str::to_owned)))
        .map_err(|_| "a lock is poisoned")?;
    if held.is_empty() {
        return Err("holds no IP");
    }
    // Deleted and created again under the same name: the IPs are the old instance's.
    if uid.is_some() && uid.as_deref() != svc.metadata.uid.as_deref() {
        return Err("another instance of the name holds the IPs");
    }
    // It had Layer2 IPs: its assignment and gauge go with a reconcile.
    let layer2_before = ctx.shared.health.lock().map_or(1, |h| h.of(key).layer2_ips);
    if layer2_before != 0 || current_assignment(ctx, key).is_some() {
        return Err("a Layer2 assignment to update or remove");
    }
    let c = compute(&svc, &held, ctx);
    if c.layer2.is_some() {
        return Err("Layer2 IPs (the assignment may move)");
    }
    if !c.missing.is_empty() {
        return Err("nodes without an address (an Event)");
    }
    let none_now = c.bgp.iter().any(|(_, h)| h.is_empty());
    let none_before = ctx
        .shared
        .health
        .lock()
        .map_or(!none_now, |h| h.of(key).without_next_hop);
    if none_now != none_before {
        return Err("starts or stops having no next hop (the gauge, an Event)");
    }
    let changed = ctx
        .shared
        .routes
        .lock()
        .map(|mut table| table.set(key, c.bgp))
        .map_err(|_| "a lock is poisoned")?;
    if !changed.is_empty() {
        let _ = ctx.shared.sync.send(SyncEvent::Routes(changed));
    }
    drop(reconciling);
    // Deleted since the store was read above (a sweep in between, on another thread, would
    // have missed these routes): the sweeper looks again, as after a reconcile.
    if ctx.stores.services.get(&service_ref(key)).is_none() {
        let _ = ctx.shared.sweep.send(SweepRequest::Check(key.clone()));
    }
    Ok(())
}

/// How soon a Service whose Namespace is not in the watch yet is looked at again.
pub const NAMESPACE_WAIT: Duration = Duration::from_secs(1);

async fn reconcile_inner(svc: &Service, ctx: &Context) -> Result<Action, Error> {
    let plan = {
        let Ok(mut ipam) = ctx.shared.ipam.lock() else {
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        let namespace = svc.metadata.namespace.as_deref().and_then(|ns| {
            ctx.stores
                .namespaces
                .get(&kube::runtime::reflector::ObjectRef::new(ns))
        });
        // A Service in a Namespace the watch has not delivered yet (just created): planned
        // with no labels, a pool's namespaceSelector would refuse it, or a lower-priority
        // pool would hand it an IP it keeps. It waits for its Namespace instead.
        if namespace.is_none()
            && svc.metadata.deletion_timestamp.is_none()
            && ipam.pools().any(|p| p.spec().namespace_selector.is_some())
            && ipam
                .ips_of(&crate::ipam::ServiceKey::new(
                    svc.namespace().unwrap_or_default(),
                    svc.name_any(),
                ))
                .is_empty()
        {
            info!(
                namespace = svc.metadata.namespace.as_deref().unwrap_or_default(),
                "the Service's Namespace is not in the watch yet; retrying in 1 s"
            );
            return Ok(Action::requeue(NAMESPACE_WAIT));
        }
        let namespace_labels = namespace
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        let p = plan_in(
            svc,
            ctx.settings.take_unclassed,
            &namespace_labels,
            &mut ipam,
        );
        if p.notes
            .iter()
            .any(|n| matches!(n.reason, "IPAllocated" | "IPReleased"))
        {
            ctx.shared.metrics.pools(&ipam);
        }
        // Marked while the engine is locked: a release after this wakes it, one before it
        // was seen by this plan.
        let waits = p.pending.is_some()
            || p.notes
                .iter()
                .any(|n| matches!(n.reason, "AllocationFailed" | "SharingConflict"));
        if let Ok(mut w) = ctx.shared.waiting.lock() {
            if waits {
                w.insert(p.key.clone());
            } else {
                w.remove(&p.key);
            }
        }
        p
    };
    let changed_ipam = plan
        .notes
        .iter()
        .any(|n| matches!(n.reason, "IPAllocated" | "IPReleased"));
    if !plan.ours {
        // Agents stop answering before the IP is released.
        set_assignment(ctx, &plan.key, None).await?;
        if let Ok(mut health) = ctx.shared.health.lock() {
            health.remove(&plan.key);
            ctx.shared.metrics.services(health.totals());
        }
    }
    carry_out(svc, &plan, ctx).await?;
    if changed_ipam {
        ctx.shared.eip_dirty.notify_one();
    }
    if plan.notes.iter().any(|n| n.reason == "IPReleased") {
        wake_pending(ctx);
    }
    let routes = if plan.ours {
        next_hops_of(svc, &plan, ctx).await?
    } else {
        Vec::new()
    };
    let changed = match ctx.shared.routes.lock() {
        Ok(mut table) => table.set(&plan.key, routes),
        Err(_) => Vec::new(),
    };
    if !changed.is_empty() {
        let _ = ctx.shared.sync.send(SyncEvent::Routes(changed));
    }
    // Deleted while this reconcile was in its API calls, its routes and assignment were
    // written after the release: the sweeper looks again. Read after the writes above: a
    // deletion the store shows later is swept after them by the watch's own request. Read
    // here, not in the sweeper, because every endpoint change ends here.
    if plan.ours && ctx.stores.services.get(&service_ref(&plan.key)).is_none() {
        let _ = ctx.shared.sweep.send(SweepRequest::Check(plan.key.clone()));
    }
    // Only Berth's own Services wait for something; another's (NotBerths) is said once per
    // change of it, not every minute.
    // A Service waiting whose Event went on another one (the newer of two that collide)
    // waits all the same.
    let failed = plan.ours
        && (plan.pending.is_some() || plan.notes.iter().any(|n| n.severity == Severity::Warning));
    // A Service still waiting for an IP is retried even without a trigger, in case the
    // pool it waits for frees up by a path we do not watch.
    Ok(if failed {
        Action::requeue(Duration::from_secs(60))
    } else {
        Action::await_change()
    })
}

/// Writes the plan: annotation, status, Events, and last the removal of an old finalizer.
async fn carry_out(svc: &Service, plan: &Plan, ctx: &Context) -> Result<(), Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PatchParams::default();
    let mut finalizers: Vec<String> = svc.finalizers().to_vec();
    if plan.finalizer == Finalizer::Keep
        && let Some(v) = &plan.allocated_pool
    {
        let meta = json!({ "annotations": { names::ANNOTATION_ALLOCATED_POOL: v } });
        api.patch(&name, &pp, &Patch::Merge(json!({ "metadata": meta })))
            .await?;
    }
    if let Some(ips) = &plan.ingress {
        let ingress: Vec<_> = ips
            .iter()
            .map(|ip| json!({ "ip": ip.to_string(), "ipMode": "VIP" }))
            .collect();
        api.patch_status(
            &name,
            &pp,
            &Patch::Merge(json!({ "status": { "loadBalancer": { "ingress": ingress } } })),
        )
        .await?;
    }
    for note in &plan.notes {
        publish(
            ctx,
            svc,
            event_type(note),
            note.reason,
            note.message.clone(),
        )
        .await;
    }
    for (other, note) in &plan.elsewhere {
        // With its uid, or `kubectl describe` (which selects Events by the involved object's
        // uid) would not show the Event on that Service.
        let others: Api<Service> = Api::namespaced(ctx.client.clone(), &other.namespace);
        let found = tokio::time::timeout(Duration::from_secs(10), others.get_opt(&other.name))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let reference = match found {
            Some(o) => o.object_ref(&()),
            None => ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                namespace: Some(other.namespace.clone()),
                name: Some(other.name.clone()),
                ..Default::default()
            },
        };
        publish_on(
            ctx,
            &reference,
            event_type(note),
            note.reason,
            note.message.clone(),
        )
        .await;
    }
    if plan.finalizer == Finalizer::Remove {
        finalizers.retain(|f| f != names::FINALIZER_SERVICE);
        let mut meta = json!({
            "resourceVersion": svc.resource_version(),
            "finalizers": finalizers,
        });
        if let Some(v) = &plan.allocated_pool {
            meta["annotations"] = json!({ names::ANNOTATION_ALLOCATED_POOL: v });
        }
        if svc.metadata.deletion_timestamp.is_none() {
            meta["annotations"][names::ANNOTATION_LAYER2] = serde_json::Value::Null;
        }
        match api
            .patch(&name, &pp, &Patch::Merge(json!({ "metadata": meta })))
            .await
        {
            Ok(_) => {}
            // Gone already: nothing left to release.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn event_type(note: &crate::plan::Note) -> EventType {
    match note.severity {
        Severity::Normal => EventType::Normal,
        Severity::Warning => EventType::Warning,
    }
}

/// Records an Event on the Service; a failure is logged, never fatal (the status tells the
/// same story).
async fn publish(ctx: &Context, svc: &Service, t: EventType, reason: &str, note: String) {
    publish_on(ctx, &svc.object_ref(&()), t, reason, note).await;
}

/// Records an Event on the object `reference` names.
async fn publish_on(
    ctx: &Context,
    reference: &ObjectReference,
    t: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_: t,
        reason: reason.to_owned(),
        note: Some(super::event_note(&note)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, reference).await {
        warn!(%e, reason, "could not record Event");
    }
}

/// Computes the next hops of `held` IPs of `svc` from the indexes; reads only this
/// Service's EndpointSlices.
pub fn compute(svc: &Service, held: &[IpAddr], ctx: &Context) -> Computed {
    let conf = ctx.stores.confs.get(&ObjectRef::new(names::BGPCONF_NAME));
    let nodes = ctx
        .shared
        .nodes
        .lock()
        .map(|n| n.clone())
        .unwrap_or_default();
    let key = ServiceKey::new(svc.namespace().unwrap_or_default(), svc.name_any());
    let slices = ctx
        .shared
        .slices
        .lock()
        .map(|i| i.of(&key))
        .unwrap_or_default();
    let layer2_interface = |ip: IpAddr| {
        let pool = ctx
            .shared
            .ipam
            .lock()
            .ok()
            .and_then(|i| i.pool_of(ip).map(str::to_owned))?;
        let eip = ctx.stores.eips.get(&ObjectRef::new(&pool))?;
        (eip.spec.protocol == EipProtocol::Layer2)
            .then(|| eip.spec.interface.clone().unwrap_or_default())
    };
    announce::compute(
        svc,
        held,
        conf.as_deref().map(|c| &c.spec),
        &nodes,
        &slices,
        layer2_interface,
    )
}

/// The Layer2 assignment of `key` as the operator last wrote it (from the store).
fn current_assignment(ctx: &Context, key: &ServiceKey) -> Option<String> {
    let name = layer2::configmap_name(&key.namespace, &key.name);
    ctx.stores
        .assignments
        .get(&ObjectRef::new(&name).within(&ctx.settings.namespace))
        .and_then(|cm| cm.data.as_ref()?.get(DATA_ASSIGNMENT).cloned())
}

/// Writes (or, for `None`, deletes) the Layer2 assignment ConfigMap of `key` in Berth's
/// namespace, only when it differs from what the store holds: no API call when nothing
/// changed.
async fn set_assignment(
    ctx: &Context,
    key: &ServiceKey,
    wanted: Option<&Layer2Assignment>,
) -> Result<(), Error> {
    let wanted = wanted.map(Layer2Assignment::to_json);
    if current_assignment(ctx, key) == wanted {
        return Ok(());
    }
    let name = layer2::configmap_name(&key.namespace, &key.name);
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    match wanted {
        Some(value) => {
            let cm = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": name,
                    "namespace": ctx.settings.namespace,
                    "labels": {
                        LABEL_LAYER2_ASSIGNMENT: "true",
                        "app.kubernetes.io/managed-by": names::MANAGED_BY,
                    },
                },
                "data": { DATA_SERVICE: key.to_string(), DATA_ASSIGNMENT: value },
            });
            api.patch(
                &name,
                &PatchParams::apply("berth-operator").force(),
                &Patch::Apply(cm),
            )
            .await?;
        }
        None => match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        },
    }
    Ok(())
}

/// The BGP routes of a Service's IPs; for its Layer2 IPs, the assignment ConfigMap is
/// written instead.
async fn next_hops_of(
    svc: &Service,
    plan: &Plan,
    ctx: &Context,
) -> Result<Vec<(IpAddr, Vec<NextHop>)>, Error> {
    let c = compute(svc, &plan.held, ctx);
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    if svc.metadata.deletion_timestamp.is_none() {
        set_assignment(ctx, &plan.key, c.layer2.as_ref()).await?;
    }
    // Earlier versions kept the assignment in this annotation; nothing reads it now.
    if svc.annotations().contains_key(names::ANNOTATION_LAYER2) {
        let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "metadata": { "annotations": { names::ANNOTATION_LAYER2: null } } }),
            ),
        )
        .await?;
    }
    let none_now = c.bgp.iter().any(|(_, h)| h.is_empty())
        || c.layer2.as_ref().is_some_and(|l| l.nodes.is_empty());
    // Said once when it starts (also for a Service that never had a route), not on every
    // reconcile while it lasts; counted while it lasts.
    let layer2_ips = c
        .layer2
        .as_ref()
        .filter(|l| !l.nodes.is_empty())
        .map_or(0, |l| l.ips.len());
    let started = match ctx.shared.health.lock() {
        Ok(mut health) => {
            let now = crate::health::Health {
                pending: plan.pending,
                without_next_hop: none_now,
                layer2_ips,
            };
            let before = health.update(&plan.key, |h| *h = now.clone());
            if before != now {
                ctx.shared.metrics.services(health.totals());
            }
            none_now && !before.without_next_hop
        }
        Err(_) => false,
    };
    if started {
        let why = match c.policy {
            TrafficPolicy::Local => {
                "no Ready node holds a ready endpoint of this Service (externalTrafficPolicy: Local)"
            }
            TrafficPolicy::Cluster => "no node is Ready, schedulable and not excluded",
        };
        publish(
            ctx,
            svc,
            EventType::Warning,
            "NoNextHop",
            format!("nothing announced for this Service's IPs: {why}"),
        )
        .await;
    }
    if !c.missing.is_empty() {
        publish(
            ctx,
            svc,
            EventType::Warning,
            "NodeWithoutAddress",
            format!(
                "nodes {} have no InternalIP of the Service IP's family and are left out",
                c.missing.join(", ")
            ),
        )
        .await;
    }
    Ok(c.bgp)
}

/// After a release: each Service waiting for an IP (its last plan left a request unmet) is
/// reconciled, as it may get the freed one now. Only those: at 10,000 Services a reconcile
/// of all per deletion is a storm.
pub fn wake_pending(ctx: &Context) {
    let pending: Vec<ServiceKey> = ctx
        .shared
        .waiting
        .lock()
        .map(|w| w.iter().cloned().collect())
        .unwrap_or_default();
    for k in pending {
        let _ = ctx.shared.reconcile.send(k);
    }
}

/// The reference the Service store knows `key`'s Service by.
fn service_ref(key: &ServiceKey) -> ObjectRef<Service> {
    ObjectRef::new(&key.name).within(&key.namespace)
}

/// The keys of `stored` as (namespace, name), borrowed: a full sweep looks up 10,000 of them,
/// and cloning and sorting every key took 30 ms of the runtime's thread.
fn present_keys(stored: &[Arc<Service>]) -> std::collections::HashSet<(&str, &str)> {
    stored
        .iter()
        .map(|s| {
            (
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default(),
            )
        })
        .collect()
}

/// Which Services a sweep looks at.
pub enum Scope<'a> {
    /// Every Service the engine, the route table or the health gauges know, against the
    /// stored Services (read with the engine locked) and the `kept` keys.
    Every {
        /// The Services in the store now.
        stored: &'a dyn Fn() -> Vec<Arc<Service>>,
        /// Keys taken as present whatever the store says (their assignment is still there).
        kept: &'a std::collections::BTreeSet<ServiceKey>,
    },
    /// Only these (a watch said they were deleted), against the store.
    These(&'a [ServiceKey], &'a dyn Fn(&ServiceKey) -> bool),
}

/// Services the engine holds IPs for but the API no longer has (deleted: Services carry no
/// finalizer, so a deletion is seen only as their absence): released, their routes
/// withdrawn, so nothing leaks. What is present is read with the engine locked: a Service
/// allocated just before is in the store already (reconciles run on stored objects), so it
/// is never taken for gone.
pub fn sweep(ctx: &Context, scope: Scope<'_>) -> Vec<ServiceKey> {
    let Ok(mut ipam) = ctx.shared.ipam.lock() else {
        return Vec::new();
    };
    let mut absent: std::collections::BTreeSet<ServiceKey> = Default::default();
    match scope {
        Scope::Every { stored, kept } => {
            let stored = stored();
            let present = present_keys(&stored);
            let mut look = |k: &ServiceKey| {
                if !present.contains(&(k.namespace.as_str(), k.name.as_str()))
                    && !kept.contains(k)
                    && !absent.contains(k)
                {
                    absent.insert(k.clone());
                }
            };
            ipam.services().for_each(&mut look);
            if let Ok(t) = ctx.shared.routes.lock() {
                t.services().for_each(&mut look);
            }
            if let Ok(h) = ctx.shared.health.lock() {
                h.services().for_each(&mut look);
            }
        }
        Scope::These(keys, present) => {
            absent.extend(keys.iter().filter(|k| !present(k)).cloned());
        }
    }
    let gone: Vec<ServiceKey> = absent
        .iter()
        .filter(|k| !ipam.ips_of(k).is_empty())
        .cloned()
        .collect();
    for k in &gone {
        ipam.release(k);
    }
    if !gone.is_empty() {
        ctx.shared.metrics.pools(&ipam);
    }
    // Routes of vanished Services too, not only of those the engine holds: a reconcile that
    // was in its API calls when its Service went writes its routes after the release, and
    // nothing else would ever withdraw them.
    if let Ok(mut t) = ctx.shared.routes.lock() {
        for k in &absent {
            let changed = t.remove(k);
            if !changed.is_empty() {
                let _ = ctx.shared.sync.send(SyncEvent::Routes(changed));
            }
        }
    }
    if let Ok(mut w) = ctx.shared.waiting.lock() {
        for k in &absent {
            w.remove(k);
        }
    }
    if let Ok(mut health) = ctx.shared.health.lock() {
        for k in &absent {
            health.remove(k);
        }
        ctx.shared.metrics.services(health.totals());
    }
    gone
}

/// How long after its deletion a Service is looked at once more: a reconcile that was in its
/// API calls when the Service went writes its routes after the first release.
const SWEEP_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// How often every Service is looked at, besides each deletion and relist: the backstop for
/// anything the two above miss. A full sweep costs about 50 ms at 10,000 Services (it ran
/// every second before, and was half of the operator's CPU in the scale bench).
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What the sweeper is asked to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SweepRequest {
    /// The Service watch reported this Service deleted: swept now and [`SWEEP_AGAIN_AFTER`]
    /// later.
    Deleted(ServiceKey),
    /// A reconcile of this Service wrote its routes or assignment: swept if the Service is
    /// gone by now (deleted while the reconcile was in its API calls).
    Check(ServiceKey),
    /// A relist ended (its deletions name no object): every Service.
    Everything,
}

/// Sorts one request into the keys to sweep now, the keys to sweep again later and whether
/// to sweep everything.
fn take(
    request: SweepRequest,
    keys: &mut Vec<ServiceKey>,
    again: &mut std::collections::VecDeque<(tokio::time::Instant, ServiceKey)>,
    everything: &mut bool,
) {
    match request {
        SweepRequest::Deleted(k) => {
            again.push_back((tokio::time::Instant::now() + SWEEP_AGAIN_AFTER, k.clone()));
            keys.push(k);
        }
        SweepRequest::Check(k) => keys.push(k),
        SweepRequest::Everything => *everything = true,
    }
}

/// Releases what deleted Services still hold: each Service the watch says was deleted at
/// once and [`SWEEP_AGAIN_AFTER`] later, one whose reconcile ended after its deletion, every
/// Service after each relist and every [`FULL_SWEEP_EVERY`].
async fn sweeper(
    ctx: Arc<Context>,
    store: kube::runtime::reflector::Store<Service>,
    mut listed: tokio::sync::watch::Receiver<bool>,
    mut requests: mpsc::UnboundedReceiver<SweepRequest>,
) {
    if listed.wait_for(|l| *l).await.is_err() {
        warn!("the Service watch ended before its first list: deleted Services are not released");
        return;
    }
    info!(every = ?FULL_SWEEP_EVERY, "releasing the IPs of deleted Services as they go");
    let in_store = |k: &ServiceKey| store.get(&service_ref(k)).is_some();
    let mut again: std::collections::VecDeque<(tokio::time::Instant, ServiceKey)> =
        Default::default();
    let mut full = tokio::time::interval(FULL_SWEEP_EVERY);
    full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut these = Vec::new();
        let mut everything = false;
        let next_again = again.front().map(|(at, _)| *at);
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else { return };
                take(request, &mut these, &mut again, &mut everything);
                // Deletions come in bursts (a namespace deleted): one sweep for them all.
                while let Ok(request) = requests.try_recv() {
                    take(request, &mut these, &mut again, &mut everything);
                }
            }
            _ = full.tick() => everything = true,
            _ = async {
                match next_again {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = tokio::time::Instant::now();
                while again.front().is_some_and(|(at, _)| *at <= now) {
                    these.extend(again.pop_front().map(|(_, k)| k));
                }
            }
        }
        if everything {
            // A relist's sweep counts as the periodic one.
            full.reset();
        }
        these.retain(|k| !in_store(k));
        these.sort();
        these.dedup();
        if these.is_empty() && !everything {
            continue;
        }
        // Assignments of vanished Services go first: agents stop answering before the IP is
        // released and handed to a waiting Service.
        let orphans: Vec<ServiceKey> = if everything {
            let stored = store.state();
            let present = present_keys(&stored);
            ctx.stores
                .assignments
                .state()
                .iter()
                .filter_map(|cm| cm.data.as_ref()?.get(DATA_SERVICE).cloned())
                .filter_map(|s| {
                    let (ns, name) = s.split_once('/')?;
                    Some(ServiceKey::new(ns.to_owned(), name.to_owned()))
                })
                .filter(|k| !present.contains(&(k.namespace.as_str(), k.name.as_str())))
                .collect()
        } else {
            these
                .iter()
                .filter(|k| current_assignment(&ctx, k).is_some())
                .cloned()
                .collect()
        };
        // A Service whose assignment could not be removed keeps its IP for now (released
        // to another, it would be answered for twice); the others go on.
        let mut held_back = std::collections::BTreeSet::new();
        for k in orphans {
            match set_assignment(&ctx, &k, None).await {
                Ok(()) => {
                    info!(service = %k, "removed the Layer2 assignment of a Service that no longer exists")
                }
                Err(e) => {
                    warn!(service = %k, %e, namespace = %ctx.settings.namespace,
                        "could not remove an orphaned Layer2 assignment; its IP stays held until it is \
                         (check the operator's RBAC: delete on ConfigMaps in that namespace)");
                    if !again.iter().any(|(_, q)| *q == k) {
                        again.push_back((
                            tokio::time::Instant::now() + SWEEP_AGAIN_AFTER,
                            k.clone(),
                        ));
                    }
                    held_back.insert(k);
                }
            }
        }
        let gone = if everything {
            sweep(
                &ctx,
                Scope::Every {
                    stored: &|| store.state(),
                    kept: &held_back,
                },
            )
        } else {
            these.retain(|k| !held_back.contains(k));
            sweep(&ctx, Scope::These(&these, &in_store))
        };
        if !gone.is_empty() {
            ctx.shared.eip_dirty.notify_one();
            wake_pending(&ctx);
        }
        for k in &gone {
            info!(service = %k, "released the IPs of a deleted Service");
        }
    }
}

#[cfg(test)]
mod sweep_requests {
    use super::*;

    /// A burst of requests as the sweeper drains it: a relist among deletions is kept (the
    /// full sweep runs), each deletion is swept now and queued for its second look, and a
    /// check is swept now only.
    #[tokio::test]
    async fn a_relist_in_a_burst_of_deletions_is_kept() {
        let key = |n: &str| ServiceKey::new("shop", n);
        let mut these = Vec::new();
        let mut again = std::collections::VecDeque::new();
        let mut everything = false;
        for r in [
            SweepRequest::Deleted(key("a")),
            SweepRequest::Everything,
            SweepRequest::Check(key("c")),
            SweepRequest::Deleted(key("b")),
        ] {
            take(r, &mut these, &mut again, &mut everything);
        }
        assert!(everything);
        assert_eq!(these, [key("a"), key("c"), key("b")]);
        let queued: Vec<&ServiceKey> = again.iter().map(|(_, k)| k).collect();
        assert_eq!(queued, [&key("a"), &key("b")]);
        let now = tokio::time::Instant::now();
        assert!(
            again
                .iter()
                .all(|(at, _)| *at > now && *at <= now + SWEEP_AGAIN_AFTER)
        );
    }
}

#[cfg(test)]
mod bulk {
    use super::*;

    /// Lets the feeder run until it waits.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<ServiceKey>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(k) = rx.try_recv() {
            out.push(k.name);
        }
        out
    }

    /// A reconcile of everything goes a batch at a time: the next batch when half of one is
    /// done, or after the patience runs out; a request in the middle of a pass sends the
    /// Services already done again, after the rest.
    #[tokio::test(start_paused = true)]
    async fn a_reconcile_of_everything_is_paced_and_a_new_request_redoes_what_was_done() {
        let names: Vec<String> = (0..200).map(|i| format!("s{i:03}")).collect();
        let stored = Arc::new(std::sync::Mutex::new(names.clone()));
        let keys = {
            let stored = stored.clone();
            move || {
                stored
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|n| ServiceKey::new("shop", n))
                    .collect()
            }
        };
        let (all_tx, all_rx) = mpsc::unbounded_channel();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let progress = Arc::new(Progress::default());
        let feeder = tokio::spawn(bulk_feeder(keys, all_rx, tx, progress.clone()));

        settle().await;
        assert!(drain(&mut rx).is_empty(), "nothing asked yet");
        all_tx.send(()).unwrap();
        all_tx.send(()).unwrap();
        settle().await;
        let first = drain(&mut rx);
        assert_eq!(first, names[..BULK_BATCH], "one batch, in order");

        // Not half done: nothing more.
        for _ in 0..BULK_BATCH / 2 - 1 {
            progress.done();
        }
        settle().await;
        assert!(
            drain(&mut rx).is_empty(),
            "sent before half the batch was done"
        );
        progress.done();
        settle().await;
        assert_eq!(drain(&mut rx), names[BULK_BATCH..2 * BULK_BATCH]);

        // No progress at all (requests merged in the controller's queue): the next batch
        // goes after the patience.
        tokio::time::advance(BULK_PATIENCE / 2).await;
        settle().await;
        assert!(drain(&mut rx).is_empty());
        tokio::time::advance(BULK_PATIENCE).await;
        settle().await;
        let third = drain(&mut rx);
        assert_eq!(third, names[2 * BULK_BATCH..3 * BULK_BATCH]);

        // A Service created during the pass, then a new request: the 8 not sent yet, then
        // the 192 sent before it and the new one.
        stored.lock().unwrap().push("s200".into());
        all_tx.send(()).unwrap();
        let mut rest = Vec::new();
        while rest.len() < 201 {
            for _ in 0..BULK_BATCH {
                progress.done();
            }
            settle().await;
            let got = drain(&mut rx);
            assert!(got.len() <= BULK_BATCH, "more than a batch at once");
            rest.extend(got);
        }
        let mut expected: Vec<String> = names[3 * BULK_BATCH..].to_vec();
        expected.extend_from_slice(&names[..3 * BULK_BATCH]);
        expected.push("s200".into());
        assert_eq!(rest, expected);
        for _ in 0..BULK_BATCH {
            progress.done();
        }
        settle().await;
        assert!(drain(&mut rx).is_empty(), "a pass ends");
        drop(all_tx);
        tokio::time::timeout(Duration::from_secs(5), feeder)
            .await
            .expect("the feeder ends with its requests")
            .unwrap();
    }
}
