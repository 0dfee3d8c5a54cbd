//! The speaker sync: pushes each bgp-server replica its desired state over gRPC, and reads
//! their sessions back into BgpPeer status and Events.
//!
//! Each replica has a task of its own, with bounded calls (connect and request timeouts,
//! HTTP/2 keepalive), so a replica that is slow or unreachable (node down, Pod still
//! Running) delays only itself: the metric `berth_speaker_sync_errors_total` and the
//! BgpPeer status name it. A replica that is new, reconnected or restarted gets the full
//! state with `Apply`; after that a route
//! change goes out as `UpdateRoutes` with just the changed IPs, so an endpoint change reaches
//! the router as one UPDATE. At every resync interval everything is re-applied to a replica
//! whose Watch stream is not open (the speaker diffs, so an unchanged state sends nothing to
//! the routers); one whose stream is open is sent nothing then.
//!
//! Sessions come from each replica's `Watch` stream as they change (a `SessionDown` Event
//! within the status interval, not at the next poll); the stream ending (the speaker
//! restarted), a state accepted that this operator did not send (a newer generation: another
//! writer), or a replica holding an older generation than it acknowledged means a full push
//! at once.
//!
//! Generations start at the wall clock in microseconds when this operator became leader and
//! count up from there, so a new leader's pushes are never older than its predecessor's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::{BgpPeer, BgpPeerStatus, PeerSession, SessionState, names};
use berth_proto::v1;
use berth_proto::v1::speaker_client::SpeakerClient;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use super::{Context, SyncEvent};
use crate::convert;
use crate::speakers::{self, Peer, Replica};

/// The BgpPeer condition saying whether its configuration could be used.
pub const CONDITION_CONFIGURED: &str = "Configured";

/// One bgp-server replica as found through its Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    pod: String,
    node: String,
    endpoint: String,
}

struct Conn {
    target: Target,
    client: Option<SpeakerClient<Channel>>,
    /// The full state was applied since the connection was made.
    synced: bool,
    /// Last sessions seen, by peer address.
    sessions: BTreeMap<String, v1::PeerState>,
    /// The replica reads next-hop groups (asked before every full push: a replaced Pod may
    /// run another version behind the same address).
    reads_groups: bool,
    /// The generation of the last push made to it (acknowledged or not).
    pushed: u64,
    /// The generation of the last push it acknowledged since the connection was made.
    acked: u64,
    /// No Watch stream from it until the next reconnect (the speaker has none, or opening
    /// one failed): its sessions are polled every [`STATUS_EVERY`] meanwhile.
    no_watch: bool,
    /// The last read's route count and the table's, when they differed: the same pair at
    /// the next read is divergence (a change in flight changes one of the two).
    count_mismatch: Option<(u64, usize)>,
}

/// What the status writer knows of one replica: its sessions as last read, and the sync
/// error while it is out of reach.
#[derive(Debug, Clone)]
struct View {
    target: Target,
    sessions: BTreeMap<String, v1::PeerState>,
    error: Option<String>,
    /// The BgpConf generation this replica last accepted in a full state.
    applied_conf: Option<i64>,
}

impl View {
    fn new(target: &Target) -> Self {
        View {
            target: target.clone(),
            sessions: BTreeMap::new(),
            error: None,
            applied_conf: None,
        }
    }
}

/// The generation of BgpConf `default`, if there is one.
fn conf_generation(ctx: &Context) -> Option<i64> {
    ctx.stores
        .confs
        .get(&ObjectRef::new(names::BGPCONF_NAME))
        .and_then(|c| c.metadata.generation)
}

/// BgpConf `default`'s status from the replicas' views (pure): Ready when every replica
/// accepted its current generation, else which ones did not and why.
fn conf_status(
    generation: Option<i64>,
    views: &BTreeMap<String, View>,
    previous: Option<&berth_api::BgpConfStatus>,
) -> berth_api::BgpConfStatus {
    let runs =
        |v: &View| v.error.is_none() && v.applied_conf.is_some() && v.applied_conf == generation;
    let running: Vec<&str> = views
        .values()
        .filter(|v| runs(v))
        .map(|v| v.target.pod.as_str())
        .collect();
    let behind: Vec<String> = views
        .values()
        .filter(|v| !runs(v))
        .map(|v| match &v.error {
            Some(e) => format!("{} ({e})", v.target.pod),
            None => format!("{} (not applied yet)", v.target.pod),
        })
        .collect();
    let (status, reason, message) = if views.is_empty() {
        (
            "False",
            "NoSpeakers",
            "no running bgp-server replica was found (--speaker-selector in Berth's namespace)"
                .to_owned(),
        )
    } else if behind.is_empty() {
        (
            "True",
            "Applied",
            format!("applied by every speaker: {}", running.join(", ")),
        )
    } else {
        (
            "False",
            "SpeakersBehind",
            format!(
                "applied by {} of {} speakers ({}); not by {}",
                running.len(),
                views.len(),
                running.join(", "),
                behind.join(", ")
            ),
        )
    };
    let since = previous
        .and_then(|p| {
            p.conditions
                .iter()
                .find(|c| c.type_ == names::CONDITION_READY)
        })
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    berth_api::BgpConfStatus {
        observed_generation: generation,
        conditions: vec![Condition {
            type_: names::CONDITION_READY.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: super::event_note(&message),
            observed_generation: generation,
            last_transition_time: since,
        }],
    }
}

/// Shared between the replica tasks and the status writer.
#[derive(Default)]
struct Board {
    views: BTreeMap<String, View>,
    /// Session transitions not yet recorded as Events: (peer address, type, reason, note).
    events: Vec<(String, EventType, &'static str, String)>,
}

impl Board {
    /// The view of `target`'s replica, made when it has none yet.
    fn view(&mut self, target: &Target) -> &mut View {
        self.views
            .entry(target.pod.clone())
            .or_insert_with(|| View::new(target))
    }
}

/// The longest one push or read may take, connection included: an outer bound over the
/// channel's own timeouts, so a replica's task never waits longer whatever the network does.
const CALL_BOUND: Duration = Duration::from_secs(75);
/// How soon a replica whose push failed is tried again; doubled after each failure in a row
/// up to [`RETRY_MAX`].
const RETRY: Duration = Duration::from_secs(2);
/// The longest wait between two tries: a failure that repeats (a desired state over the
/// message limit, a refused certificate) must not rebuild the whole state every 2 s.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The wait before the next try after `failures` failures in a row (at least one).
fn retry_after(failures: u32) -> Duration {
    RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}
/// How often each replica's sessions are read while its Watch stream is not open.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// How often they are read while it is: session changes arrive on the stream as they
/// happen; this refreshes only the counters (prefixes announced) in BgpPeer status.
const WATCHED_STATUS_EVERY: Duration = Duration::from_secs(60);

/// What a replica's Watch stream brought, as the replica's task acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Watched {
    /// A session changed state: its new state and last error. One that came up is read
    /// with GetState at once (for what was negotiated); one that went down needs no read.
    Session {
        peer: String,
        state: String,
        last_error: String,
    },
    /// Events were dropped on the speaker's side: read the sessions again.
    Resync,
    /// Another writer's state was accepted (a generation newer than this operator's last
    /// push): the replica no longer holds what this operator sent.
    Diverged(u64),
    /// Nothing to do (this operator's own pushes, or an empty event).
    Nothing,
}

/// What a Watch event means for a replica whose last push had generation `pushed` (pure).
fn watched(event: v1::WatchEvent, pushed: u64) -> Watched {
    use v1::watch_event::Event;
    match event.event {
        Some(Event::Session(s)) => Watched::Session {
            peer: s.peer,
            state: s.state,
            last_error: s.last_error,
        },
        Some(Event::Resync(_)) => Watched::Resync,
        Some(Event::Applied(a)) if a.generation > pushed => Watched::Diverged(a.generation),
        Some(Event::Applied(_)) | None => Watched::Nothing,
    }
}

/// The next event of a replica's Watch stream, or never while none is open.
async fn next_watched(
    stream: &mut Option<tonic::Streaming<v1::WatchEvent>>,
) -> Result<Option<v1::WatchEvent>, tonic::Status> {
    match stream {
        Some(s) => s.message().await,
        None => std::future::pending().await,
    }
}

/// One replica's task and what it is sent.
struct Worker {
    target: Target,
    tx: mpsc::UnboundedSender<SyncEvent>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the sync until the channel closes: one task per replica, so a slow or unreachable
/// replica delays only itself; this task fans the changes out and writes BgpPeer status.
pub async fn run(ctx: Arc<Context>, mut rx: mpsc::UnboundedReceiver<SyncEvent>) {
    let generation = Arc::new(AtomicU64::new(
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros())
                .unwrap_or(1),
        )
        .unwrap_or(1),
    ));
    let board = Arc::new(Mutex::new(Board::default()));
    let mut workers: BTreeMap<String, Worker> = BTreeMap::new();
    let mut resync = tokio::time::interval(ctx.settings.resync);
    let mut status = tokio::time::interval(STATUS_EVERY);
    loop {
        let mut full = false;
        let mut changed: BTreeSet<IpAddr> = BTreeSet::new();
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                // Everything queued meanwhile goes out in the same round; a resync is passed
                // on as it is (each replica decides).
                let mut resync_asked = false;
                for ev in std::iter::once(ev).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                    match ev {
                        SyncEvent::Resync => resync_asked = true,
                        other => absorb(other, &mut full, &mut changed, true),
                    }
                }
                if resync_asked {
                    refresh_workers(&ctx, &mut workers, &board, &generation);
                    for w in workers.values() {
                        let _ = w.tx.send(SyncEvent::Resync);
                    }
                }
            }
            _ = resync.tick() => {
                refresh_workers(&ctx, &mut workers, &board, &generation);
                for w in workers.values() {
                    let _ = w.tx.send(SyncEvent::Resync);
                }
                continue;
            }
            _ = status.tick() => {
                write_status(&ctx, &board).await;
                continue;
            }
        }
        // Replicas come and go with the bgp-server Pods, whose changes arrive as `Full`:
        // a route change needs no look at the Pods (it cost 2 % of an endpoint change).
        if full || workers.is_empty() {
            refresh_workers(&ctx, &mut workers, &board, &generation);
        }
        let ev = if full {
            SyncEvent::Full
        } else {
            SyncEvent::Routes(changed.into_iter().collect())
        };
        for w in workers.values() {
            let _ = w.tx.send(ev.clone());
        }
    }
    for (pod, w) in workers {
        w.task.abort();
        ctx.shared.metrics.speaker_gone(&pod);
    }
}

/// Starts a task for each new replica, stops the tasks of replicas that are gone or moved.
fn refresh_workers(
    ctx: &Arc<Context>,
    workers: &mut BTreeMap<String, Worker>,
    board: &Arc<Mutex<Board>>,
    generation: &Arc<AtomicU64>,
) {
    let targets: BTreeMap<String, Target> = ctx
        .stores
        .pods
        .state()
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            target(
                p,
                ctx.settings.speaker_port,
                ctx.settings.speaker_tls.is_some(),
            )
        })
        .map(|t| (t.pod.clone(), t))
        .collect();
    workers.retain(|pod, w| {
        let keep = targets.get(pod) == Some(&w.target);
        if !keep {
            w.task.abort();
            ctx.shared.metrics.speaker_gone(pod);
            if let Ok(mut b) = board.lock() {
                b.views.remove(pod);
            }
        }
        keep
    });
    for (pod, t) in targets {
        if workers.contains_key(&pod) {
            continue;
        }
        // Behind until its first full state is accepted; its error counter shows from the
        // start, so the first failure is a rate, not a new series.
        ctx.shared.metrics.set_speaker_in_sync(&pod, false);
        ctx.shared.metrics.speaker_known(&pod);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(replica_task(
            ctx.clone(),
            t.clone(),
            rx,
            board.clone(),
            generation.clone(),
        ));
        workers.insert(
            pod,
            Worker {
                target: t,
                tx,
                task,
            },
        );
    }
}

/// One replica: the full state first (and after any failure), then route deltas. Its
/// sessions come from its Watch stream as they change (read every [`STATUS_EVERY`] while no
/// stream is open, every [`WATCHED_STATUS_EVERY`] for the counters while one is); the stream
/// ending (a restart) or a state this operator did not send means a full push. Every call is
/// bounded by [`CALL_BOUND`].
async fn replica_task(
    ctx: Arc<Context>,
    target: Target,
    mut rx: mpsc::UnboundedReceiver<SyncEvent>,
    board: Arc<Mutex<Board>>,
    generation: Arc<AtomicU64>,
) {
    let pod = target.pod.clone();
    let mut conn = Conn {
        target,
        client: None,
        synced: false,
        sessions: BTreeMap::new(),
        reads_groups: false,
        pushed: 0,
        acked: 0,
        no_watch: false,
        count_mismatch: None,
    };
    let mut changed: BTreeSet<IpAddr> = BTreeSet::new();
    let mut status = tokio::time::interval(STATUS_EVERY);
    let mut watch: Option<tonic::Streaming<v1::WatchEvent>> = None;
    let mut last_read = tokio::time::Instant::now();
    let mut retry_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    let mut failures: u32 = 0;
    // A full push is owed (set by events while not in sync; made at `retry_at`).
    let mut full = false;
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                absorb(ev, &mut full, &mut changed, watch.is_some());
                while let Ok(ev) = rx.try_recv() {
                    absorb(ev, &mut full, &mut changed, watch.is_some());
                }
                if !full && changed.is_empty() && conn.synced {
                    continue; // a resync while in step: nothing to send
                }
                // Out of sync, waiting to retry: the full push at `retry_at` carries these
                // changes too; pushing now would rebuild the whole state on every event.
                if !conn.synced && retry_at.is_some() {
                    continue;
                }
            }
            () = sleep_until(retry_at) => retry_at = None,
            _ = status.tick() => {
                if watch.is_some() && last_read.elapsed() < WATCHED_STATUS_EVERY {
                    continue;
                }
                last_read = tokio::time::Instant::now();
                let r = bounded(read_state(&ctx, &mut conn, &board)).await;
                if let Err(e) = r {
                    failures = failures.saturating_add(1);
                    fail(&ctx, &mut conn, &board, &e, retry_after(failures));
                    watch = None;
                    retry_at.get_or_insert_with(|| tokio::time::Instant::now() + retry_after(failures));
                } else if !conn.synced && retry_at.is_none() {
                    // The read found the replica behind (restarted): push everything now.
                    full = true;
                } else {
                    continue;
                }
            }
            ev = next_watched(&mut watch) => {
                let problem = match ev {
                    Ok(Some(ev)) => match watched(ev, conn.pushed) {
                        Watched::Nothing => continue,
                        // Already known (the snapshot a new stream starts with): no read.
                        Watched::Session { peer, state, .. }
                            if conn.sessions.get(&peer).is_some_and(|p| p.state == state) => continue,
                        Watched::Session { peer, state, last_error } if state != "Established" => {
                            session_left(&mut conn, &board, &peer, &state, &last_error);
                            continue;
                        }
                        Watched::Session { .. } | Watched::Resync => {
                            last_read = tokio::time::Instant::now();
                            match bounded(read_state(&ctx, &mut conn, &board)).await {
                                Ok(()) if conn.synced => continue,
                                // Behind (restarted): the full push below.
                                Ok(()) => {
                                    full = true;
                                    String::new()
                                }
                                Err(e) => e,
                            }
                        }
                        Watched::Diverged(theirs) => {
                            warn!(speaker = %conn.target.pod, theirs, ours = conn.pushed,
                                "the speaker accepted a state this operator did not send; sending the full state again");
                            full = true;
                            String::new()
                        }
                    },
                    Ok(None) => "the speaker ended its Watch stream (restarted or shutting down)".to_owned(),
                    Err(s) if s.code() == tonic::Code::Unimplemented => {
                        conn.no_watch = true;
                        watch = None;
                        continue;
                    }
                    Err(s) => format!("Watch stream from {}: {}", conn.target.endpoint, s.message()),
                };
                if !problem.is_empty() {
                    watch = None;
                    failures = failures.saturating_add(1);
                    fail(&ctx, &mut conn, &board, &problem, retry_after(failures));
                    retry_at.get_or_insert_with(|| tokio::time::Instant::now() + retry_after(failures));
                    continue;
                }
            }
        }
        let generation = generation.fetch_add(1, Ordering::Relaxed) + 1;
        let pushing_full = full || !conn.synced;
        conn.pushed = generation;
        let r = if pushing_full {
            bounded(push_full(&ctx, &mut conn, generation)).await
        } else if !changed.is_empty() {
            bounded(push_routes(&ctx, &mut conn, generation, &changed)).await
        } else {
            Ok(())
        };
        full = false;
        match r {
            Ok(()) => {
                failures = 0;
                changed.clear();
                if conn.synced && watch.is_none() && !conn.no_watch {
                    match bounded_watch(&ctx, &mut conn).await {
                        Ok(Some(w)) => {
                            info!(speaker = %conn.target.pod, "Watch stream open: sessions follow it");
                            watch = Some(w);
                        }
                        Ok(None) => {
                            conn.no_watch = true;
                            info!(speaker = %conn.target.pod,
                                "the speaker has no Watch; reading its sessions every 10 s");
                        }
                        Err(e) => {
                            conn.no_watch = true;
                            warn!(speaker = %conn.target.pod, error = %e,
                                "no Watch stream from the speaker; reading its sessions every 10 s until the next reconnect");
                        }
                    }
                }
                let conf_generation = conf_generation(&ctx);
                if let Ok(mut b) = board.lock() {
                    let v = b.view(&conn.target);
                    v.error = None;
                    if pushing_full {
                        v.applied_conf = conf_generation;
                    }
                }
                if conn.synced {
                    ctx.shared.metrics.set_speaker_in_sync(&pod, true);
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                fail(&ctx, &mut conn, &board, &e, retry_after(failures));
                watch = None;
                // The full state sent on reconnect covers every route changed meanwhile.
                changed.clear();
                retry_at = Some(tokio::time::Instant::now() + retry_after(failures));
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Opens the replica's Watch stream; `None` when the speaker has no Watch (UNIMPLEMENTED).
async fn bounded_watch(
    ctx: &Context,
    conn: &mut Conn,
) -> Result<Option<tonic::Streaming<v1::WatchEvent>>, String> {
    let open = async {
        let mut c = client(ctx, conn).await?;
        match c.watch(v1::WatchRequest {}).await {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
            Err(s) => Err(format!(
                "Watch from {}: {}",
                conn.target.endpoint,
                s.message()
            )),
        }
    };
    tokio::time::timeout(CALL_BOUND, open)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CALL_BOUND.as_secs())))
}

/// A session left Established or changed state short of it (from the Watch stream): the
/// view follows at once and a session that was up becomes a `SessionDown` Event.
fn session_left(conn: &mut Conn, board: &Mutex<Board>, peer: &str, state: &str, error: &str) {
    let was_up = conn
        .sessions
        .get(peer)
        .is_some_and(|p| p.state == "Established");
    if state == "Removed" {
        conn.sessions.remove(peer);
    } else {
        let entry = conn
            .sessions
            .entry(peer.to_owned())
            .or_insert_with(|| v1::PeerState {
                address: peer.to_owned(),
                ..Default::default()
            });
        entry.state = state.to_owned();
        entry.last_error = error.to_owned();
        entry.uptime_seconds = 0;
    }
    let down = (was_up && state != "Removed").then(|| down_event(&conn.target, peer, error));
    if let Ok(mut b) = board.lock() {
        b.events.extend(down);
        let view = b.view(&conn.target);
        view.sessions = conn.sessions.clone();
    }
}

/// The `SessionDown` Event of `target`'s session with `addr`.
fn down_event(
    target: &Target,
    addr: &str,
    error: &str,
) -> (String, EventType, &'static str, String) {
    (
        addr.to_owned(),
        EventType::Warning,
        "SessionDown",
        format!(
            "{} (node {}) lost its session with {addr}: {}",
            target.pod,
            target.node,
            if error.is_empty() {
                "no error reported"
            } else {
                error
            }
        ),
    )
}

async fn bounded(
    call: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(CALL_BOUND, call)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CALL_BOUND.as_secs())))
}

/// A push or read to `conn` failed: drop the connection, count it, and let the BgpPeer
/// status name the replica.
fn fail(ctx: &Context, conn: &mut Conn, board: &Mutex<Board>, error: &str, retry: Duration) {
    warn!(speaker = %conn.target.pod, endpoint = %conn.target.endpoint, error,
        retry_in_seconds = retry.as_secs(),
        "speaker sync failed; reconnecting and resending everything (other replicas are not affected)");
    ctx.shared.metrics.speaker_sync_error(&conn.target.pod);
    ctx.shared
        .metrics
        .set_speaker_in_sync(&conn.target.pod, false);
    conn.client = None;
    conn.synced = false;
    // A reconnect may reach a replaced Pod (same name, same address): ask for Watch again.
    conn.no_watch = false;
    conn.count_mismatch = None;
    if let Ok(mut b) = board.lock() {
        let view = b.view(&conn.target);
        view.error = Some(error.to_owned());
    }
}

/// Adds an event to what the replica's next push carries; `watching`: its Watch stream is
/// open (the periodic resync then sends it nothing).
fn absorb(ev: SyncEvent, full: &mut bool, changed: &mut BTreeSet<IpAddr>, watching: bool) {
    match ev {
        SyncEvent::Full => *full = true,
        SyncEvent::Resync => *full |= !watching,
        SyncEvent::Routes(ips) => changed.extend(ips),
    }
}

fn target(p: &Pod, port: u16, tls: bool) -> Option<Target> {
    let status = p.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let host = match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let scheme = if tls { "https" } else { "http" };
    Some(Target {
        pod: p.name_any(),
        node: p.spec.as_ref()?.node_name.clone()?,
        endpoint: format!("{scheme}://{host}:{port}"),
    })
}

async fn client(ctx: &Context, conn: &mut Conn) -> Result<SpeakerClient<Channel>, String> {
    if let Some(c) = &conn.client {
        return Ok(c.clone());
    }
    let uri = conn.target.endpoint.clone();
    let c = match &ctx.settings.speaker_tls {
        // Read at every connection: a rotated certificate is used from the next one on.
        Some(files) => berth_proto::connect_tls(uri.clone(), &files.load()?).await,
        None => berth_proto::connect_plain(uri.clone()).await,
    }
    .map_err(|e| format!("cannot connect to {uri}: {e}"))?;
    info!(speaker = %conn.target.pod, %uri, "connected to speaker");
    conn.client = Some(c.clone());
    Ok(c)
}

/// The replica's node as the desired state needs it.
fn replica(ctx: &Context, node: &str) -> Replica {
    let view = ctx
        .stores
        .nodes
        .get(&ObjectRef::new(node))
        .map(|n| crate::nexthops::from_node(&n));
    Replica {
        node: node.to_owned(),
        labels: view.as_ref().map(|v| v.labels.clone()).unwrap_or_default(),
        addresses: view.map(|v| v.internal_ips).unwrap_or_default(),
    }
}

/// The BgpPeers with selectors read and passwords resolved; peers whose configuration cannot
/// be used are left out (their `Configured` condition says why).
fn peers(ctx: &Context) -> Vec<Peer> {
    let mut all = ctx.stores.peers.state();
    // Oldest first: of two peers a replica would get for one address, the older keeps it.
    all.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            p.name_any(),
        )
    });
    all.iter().filter_map(|p| resolve(ctx, p).ok()).collect()
}

/// A BgpPeer as the desired state needs it, or the condition reason and message saying what
/// to fix.
fn resolve(ctx: &Context, p: &BgpPeer) -> Result<Peer, (&'static str, String)> {
    let node_selector = match p.spec.node_selector.as_ref() {
        Some(s) => Some(
            convert::selector(s, "spec.nodeSelector")
                .map_err(|e| ("InvalidNodeSelector", e.to_string()))?,
        ),
        None => None,
    };
    let password = match &p.spec.password_secret_ref {
        None => None,
        Some(r) => Some(password(ctx, r)?),
    };
    if let Some(refusal) = password.as_deref().and_then(speakers::password_problem) {
        return Err((refusal.reason, refusal.message));
    }
    // Rules across objects: a peer the speakers would refuse must not take the others down.
    let all: Vec<(String, Option<String>, berth_api::BgpPeerSpec)> = ctx
        .stores
        .peers
        .state()
        .iter()
        .map(|o| {
            (
                o.name_any(),
                o.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string()),
                o.spec.clone(),
            )
        })
        .collect();
    let conf = ctx.stores.confs.get(&ObjectRef::new(names::BGPCONF_NAME));
    if let Some(r) = speakers::refusals(&all, conf.as_ref().map(|c| &c.spec)).remove(&p.name_any())
    {
        return Err((r.reason, r.message));
    }
    Ok(Peer {
        name: p.name_any(),
        spec: p.spec.clone(),
        node_selector,
        password,
    })
}

/// The TCP MD5 password from the referenced Secret, as last read by [`super::secrets`].
fn password(ctx: &Context, r: &berth_api::SecretKeyRef) -> Result<String, (&'static str, String)> {
    let Ok(cache) = ctx.shared.secrets.lock() else {
        return Err((
            "SecretPending",
            "the operator's Secret cache is unavailable (a thread panicked); restart the operator"
                .to_owned(),
        ));
    };
    cache.password(&ctx.settings.namespace, r)
}

/// Writes every route's next hops inline, for a speaker that does not read groups.
fn inline(routes: &mut [v1::Route], groups: &mut Vec<v1::NextHopGroup>) -> Result<(), String> {
    berth_proto::groups::resolve(routes, groups)?;
    groups.clear();
    Ok(())
}

async fn push_full(ctx: &Context, conn: &mut Conn, generation: u64) -> Result<(), String> {
    let Some(conf) = ctx.stores.confs.get(&ObjectRef::new(names::BGPCONF_NAME)) else {
        debug!("no BgpConf named default: nothing to push");
        return Ok(());
    };
    let routes = ctx
        .shared
        .routes
        .lock()
        .map(|t| t.all().clone())
        .unwrap_or_default();
    let state = speakers::desired_state(
        generation,
        &conf.spec,
        &replica(ctx, &conn.target.node),
        &peers(ctx),
        &routes,
    )
    .map_err(|e| e.to_string())?;
    let mut c = client(ctx, conn).await?;
    conn.reads_groups = c
        .get_state(v1::GetStateRequest::default())
        .await
        .map_err(|s| format!("GetState from {}: {}", conn.target.endpoint, s.message()))?
        .into_inner()
        .reads_next_hop_groups;
    let mut state = state;
    if !conn.reads_groups {
        // A speaker from before next-hop groups (a rollout in progress): every route whole.
        inline(&mut state.routes, &mut state.next_hop_groups)?;
    }
    let request = v1::ApplyRequest { state: Some(state) };
    let bytes = prost::Message::encoded_len(&request);
    ctx.shared.metrics.set_apply_bytes(bytes);
    // Sent anyway, the speaker would reset the stream with an opaque HTTP/2 error.
    if bytes > berth_proto::MAX_MESSAGE_BYTES {
        return Err(format!(
            "the desired state is {bytes} bytes, over the control API's limit of {} bytes \
             (next-hop lists that Services share are sent once; this many distinct ones do not \
             fit): fewer next-hop nodes (BgpConf spec.nextHopNodeSelector), or fewer Services \
             with externalTrafficPolicy Local on distinct node sets",
            berth_proto::MAX_MESSAGE_BYTES
        ));
    }
    let r = c
        .apply(request)
        .await
        .map_err(|s| format!("Apply to {}: {}", conn.target.endpoint, s.message()))?
        .into_inner();
    debug!(speaker = %conn.target.pod, generation, routes_changed = r.routes_changed, "applied");
    conn.synced = true;
    conn.acked = generation;
    Ok(())
}

async fn push_routes(
    ctx: &Context,
    conn: &mut Conn,
    generation: u64,
    changed: &BTreeSet<IpAddr>,
) -> Result<(), String> {
    let Some(conf) = ctx.stores.confs.get(&ObjectRef::new(names::BGPCONF_NAME)) else {
        return Ok(());
    };
    let self_mode = conf.spec.ecmp_mode == berth_api::EcmpMode::SelfNextHop;
    let mine = replica(ctx, &conn.target.node).addresses;
    let mut req = match ctx.shared.routes.lock() {
        Ok(table) => speakers::update_request(generation, &table, changed, self_mode, &mine),
        Err(_) => return Err("the route table is unavailable (a thread panicked)".into()),
    };
    if !conn.reads_groups {
        inline(&mut req.upsert, &mut req.next_hop_groups)?;
    }
    let mut c = client(ctx, conn).await?;
    c.update_routes(req)
        .await
        .map_err(|s| format!("UpdateRoutes to {}: {}", conn.target.endpoint, s.message()))?;
    conn.acked = generation;
    Ok(())
}

/// How many routes the replica on `node` should hold now; `None` without a BgpConf.
fn expected_routes(ctx: &Context, node: &str) -> Option<usize> {
    let conf = ctx.stores.confs.get(&ObjectRef::new(names::BGPCONF_NAME))?;
    let self_mode = conf.spec.ecmp_mode == berth_api::EcmpMode::SelfNextHop;
    let mine = replica(ctx, node).addresses;
    let table = ctx.shared.routes.lock().ok()?;
    Some(speakers::announced(table.all(), self_mode, &mine))
}

/// Reads one replica's sessions onto the board; a session that came up or went down since
/// the last read becomes a pending Event on its BgpPeer.
async fn read_state(ctx: &Context, conn: &mut Conn, board: &Mutex<Board>) -> Result<(), String> {
    let mut c = client(ctx, conn).await?;
    let state = c
        .get_state(v1::GetStateRequest::default())
        .await
        .map_err(|s| format!("GetState from {}: {}", conn.target.endpoint, s.message()))?
        .into_inner();
    if conn.synced && state.generation < conn.acked {
        // It acknowledged a newer generation than it holds: it restarted (from its state
        // file, which keeps the last state that changed something) or lost its state.
        warn!(speaker = %conn.target.pod, holds = state.generation, acknowledged = conn.acked,
            "the speaker holds an older state than it acknowledged (restarted?); sending the full state again");
        conn.synced = false;
    } else if conn.synced {
        let mismatch = expected_routes(ctx, &conn.target.node)
            .filter(|n| usize::try_from(state.route_count).ok() != Some(*n))
            .map(|n| (state.route_count, n));
        if mismatch.is_some() && mismatch == conn.count_mismatch {
            // The same difference at two reads in a row: a route change lost on the way (a
            // change in flight at a read changes one of the two numbers by the next).
            info!(speaker = %conn.target.pod, holds = state.route_count, expected = ?mismatch.map(|m| m.1),
                "the speaker's route count differs from the table; sending the full state again");
            conn.synced = false;
            conn.count_mismatch = None;
        } else {
            conn.count_mismatch = mismatch;
        }
    }
    let now: BTreeMap<String, v1::PeerState> = state
        .peers
        .into_iter()
        .map(|p| (p.address.clone(), p))
        .collect();
    let mut events = Vec::new();
    for (addr, p) in &now {
        let was = conn.sessions.get(addr).map(|o| o.state.as_str());
        let up = p.state == "Established";
        let was_up = was == Some("Established");
        if up && !was_up {
            events.push((
                addr.clone(),
                EventType::Normal,
                "SessionEstablished",
                format!(
                    "{} (node {}) established a session with {addr}{}",
                    conn.target.pod,
                    conn.target.node,
                    if p.add_path_ipv4 || p.add_path_ipv6 {
                        ", ADD-PATH negotiated"
                    } else {
                        ""
                    }
                ),
            ));
        } else if was_up && !up {
            events.push(down_event(&conn.target, addr, &p.last_error));
        }
    }
    conn.sessions = now;
    if let Ok(mut b) = board.lock() {
        b.events.extend(events);
        let view = b.view(&conn.target);
        view.sessions = conn.sessions.clone();
        view.error = None;
    }
    Ok(())
}

/// Writes the BgpPeers' status from the board and records the pending session Events.
async fn write_status(ctx: &Context, board: &Mutex<Board>) {
    let (views, events) = match board.lock() {
        Ok(mut b) => (b.views.clone(), std::mem::take(&mut b.events)),
        Err(_) => return,
    };
    if let Some(conf) = ctx.stores.confs.get(&ObjectRef::new(names::BGPCONF_NAME)) {
        let wanted = conf_status(conf.metadata.generation, &views, conf.status.as_ref());
        if conf.status.as_ref() != Some(&wanted) {
            let r = Api::<berth_api::BgpConf>::all(ctx.client.clone())
                .patch_status(
                    names::BGPCONF_NAME,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": wanted })),
                )
                .await;
            ctx.shared.metrics.reconciled("bgpconf", 0.0, r.is_err());
            if let Err(e) = r {
                warn!(%e, "could not write BgpConf status");
            }
        }
    }
    let api: Api<BgpPeer> = Api::all(ctx.client.clone());
    for peer in ctx.stores.peers.state() {
        let wanted = peer_status(ctx, &peer, &views);
        if peer.status.as_ref() != Some(&wanted) {
            let r = api
                .patch_status(
                    &peer.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": wanted })),
                )
                .await;
            ctx.shared.metrics.reconciled("bgppeer", 0.0, r.is_err());
            if let Err(e) = r {
                warn!(peer = %peer.name_any(), %e, "could not write BgpPeer status");
            }
        }
        for (addr, t, reason, note) in events.iter().filter(|e| e.0 == peer.spec.address) {
            let reference: ObjectReference = peer.object_ref(&());
            let ev = Event {
                type_: *t,
                reason: (*reason).to_owned(),
                note: Some(super::event_note(note)),
                action: "Peer".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
                warn!(%e, peer = %addr, "could not record Event");
            }
        }
    }
}

/// A BgpPeer's status from the sessions last read.
fn peer_status(ctx: &Context, peer: &BgpPeer, views: &BTreeMap<String, View>) -> BgpPeerStatus {
    let selector = peer
        .spec
        .node_selector
        .as_ref()
        .and_then(|s| convert::selector(s, "spec.nodeSelector").ok());
    let previous = peer.status.clone().unwrap_or_default();
    let mut sessions = Vec::new();
    for conn in views.values() {
        let r = replica(ctx, &conn.target.node);
        if selector.as_ref().is_some_and(|s| !s.matches(&r.labels)) {
            continue;
        }
        let seen = conn.sessions.get(&peer.spec.address);
        let state = seen
            .and_then(|p| serde_json::from_value::<SessionState>(json!(p.state)).ok())
            .unwrap_or(SessionState::Idle);
        let established_since = match (state, seen) {
            (SessionState::Established, Some(p)) => previous
                .sessions
                .iter()
                .find(|s| s.speaker == conn.target.pod && s.state == SessionState::Established)
                .and_then(|s| s.established_since.clone())
                .or_else(|| {
                    let secs = i64::try_from(p.uptime_seconds).unwrap_or(0);
                    k8s_openapi::jiff::Timestamp::now()
                        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(secs))
                        .ok()
                        .map(Time)
                }),
            _ => None,
        };
        sessions.push(PeerSession {
            speaker: conn.target.pod.clone(),
            node: Some(conn.target.node.clone()),
            state,
            established_since,
            prefixes_announced: seen
                .map(|p| i64::try_from(p.prefixes_announced).unwrap_or(i64::MAX))
                .unwrap_or(0),
            add_path: seen.is_some_and(|p| p.add_path_ipv4 || p.add_path_ipv6),
            // While the operator cannot reach the replica, that is the error to read.
            last_error: match &conn.error {
                Some(e) => Some(format!("the operator cannot reach this speaker: {e}")),
                None => seen.map(|p| p.last_error.clone()).filter(|e| !e.is_empty()),
            },
        });
    }
    let up = sessions
        .iter()
        .filter(|s| s.state == SessionState::Established)
        .count();
    let (status, reason, message) = match resolve(ctx, peer) {
        Ok(_) => (
            "True",
            "Accepted",
            "the peer is configured on every speaker its node selector matches".to_owned(),
        ),
        Err((reason, message)) => ("False", reason, message),
    };
    let since = previous
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_CONFIGURED && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    BgpPeerStatus {
        session_summary: Some(format!("{up}/{}", sessions.len())),
        sessions,
        observed_generation: peer.metadata.generation,
        conditions: vec![Condition {
            type_: CONDITION_CONFIGURED.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: peer.metadata.generation,
            last_transition_time: since,
        }],
    }
}

/// The peers as `push_full` reads them (for the controller tests).
#[cfg(test)]
pub(super) fn peers_for_tests(ctx: &Context) -> Vec<Peer> {
    peers(ctx)
}

/// A replica on `node` (for the controller tests).
#[cfg(test)]
pub(super) fn replica_for_tests(ctx: &Context, node: &str) -> Replica {
    replica(ctx, node)
}

/// A BgpPeer's status with no replica connected (for the controller tests).
#[cfg(test)]
pub(super) fn peer_status_for_tests(ctx: &Context, peer: &BgpPeer) -> BgpPeerStatus {
    peer_status(ctx, peer, &BTreeMap::new())
}

/// BgpConf status from views (for the controller tests).
#[cfg(test)]
pub(super) fn conf_status_for_tests(
    generation: Option<i64>,
    replicas: &[(&str, Option<i64>, Option<&str>)],
) -> berth_api::BgpConfStatus {
    let views = replicas
        .iter()
        .map(|(pod, applied, error)| {
            let mut v = View::new(&Target {
                pod: (*pod).to_owned(),
                node: "n".into(),
                endpoint: String::new(),
            });
            v.applied_conf = *applied;
            v.error = error.map(str::to_owned);
            ((*pod).to_owned(), v)
        })
        .collect();
    conf_status(generation, &views, None)
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    /// Failures in a row wait 2, 4, 8 ... s, never more than a minute: a failure that
    /// repeats (a desired state over the message limit) rebuilds the state at most once a
    /// minute, while a one-off failure is retried after 2 s as before.
    #[test]
    fn retries_back_off_to_a_minute() {
        let secs: Vec<u64> = (1..=8).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_after(u32::MAX), RETRY_MAX);
        assert_eq!(retry_after(0), RETRY);
    }
}
