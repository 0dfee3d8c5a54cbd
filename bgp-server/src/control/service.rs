//! The `berth.bgp.v1.Speaker` gRPC service: validates, checks the generation, persists, then
//! publishes the new settings and routes to the speaker. It never talks to peers itself: the
//! sessions diff the published state against what each peer holds, so resending the same state
//! sends nothing.

use std::sync::Arc;
use std::time::Instant;

use berth_proto::v1;
use ipnet::IpNet;
use prost::Message;
use prost::bytes::Bytes;
use tokio::sync::{Mutex, watch};
use tonic::codegen::{BoxFuture, http};
use tonic::{Request, Response, Status};

use super::apply::{self as lean, Converted, RoutesDigest};
use super::convert::{self, InvalidArgument};
use super::store::Store;
use crate::config::SpeakerConfig;
use crate::fsm::State;
use crate::metrics::Metrics;
use crate::rib::{Desired, Interner, Paths, Snapshot};
use crate::session::SessionEvent;
use crate::speaker::{Health, Listeners, StatusBoard};

/// The readiness source of a persisted state that could not be used at start.
pub const PERSISTED: &str = "persisted state";

/// What the speaker runs now.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The generation of the last accepted state; 0 before any.
    pub generation: u64,
    /// Global settings and peers (its `routes` are always empty: routes live in `desired`).
    pub settings: Arc<SpeakerConfig>,
    /// The routes.
    pub desired: Arc<Desired>,
    /// Changes journaled since the last full save.
    pub journaled: usize,
    /// What decided the routes, when they are exactly an Apply's (or the state file's): an
    /// Apply with the same routes then skips converting them. `None` after an UpdateRoutes.
    pub routes_digest: Option<RoutesDigest>,
}

/// Journaled changes after which the next one writes the whole state instead (and empties the
/// journal): bounds both the journal's size and the replay at start.
const COMPACT_AFTER: usize = 1000;

/// An Apply message from which the heap's free pages are handed back to the kernel afterwards,
/// in bytes (about 30,000 routes), or in routes changed. Its message and the sessions'
/// encoding of the change are transient, and glibc would keep them resident until the next
/// such change; so would the operator's resync, whose routes are not even converted.
const RELEASE_AFTER_BYTES: usize = 1 << 20;
const RELEASE_AFTER_ROUTES: usize = 1000;

/// How long after such a change: long enough for the sessions to have sent most of it.
const RELEASE_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

/// When the heap's free pages are next handed back; `None`: no release is scheduled.
static RELEASE_AT: std::sync::Mutex<Option<tokio::time::Instant>> = std::sync::Mutex::new(None);

fn release_at() -> std::sync::MutexGuard<'static, Option<tokio::time::Instant>> {
    RELEASE_AT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hands the heap's free pages back to the kernel [`RELEASE_DELAY`] after the last of a burst
/// of large changes, on the blocking pool (the trim walks the heaps).
fn release_memory_later() {
    if release_at()
        .replace(tokio::time::Instant::now() + RELEASE_DELAY)
        .is_some()
    {
        // The task already waiting sees the later time.
        return;
    }
    tokio::spawn(async {
        /// Clears the schedule however the task ends (a runtime shutting down drops it).
        struct Scheduled;
        impl Drop for Scheduled {
            fn drop(&mut self) {
                release_at().take();
            }
        }
        let scheduled = Scheduled;
        loop {
            let at = {
                let mut next = release_at();
                match *next {
                    Some(at) if tokio::time::Instant::now() < at => at,
                    // Due: cleared in the same step, so a change from now on schedules anew.
                    _ => {
                        next.take();
                        break;
                    }
                }
            };
            tokio::time::sleep_until(at).await;
        }
        std::mem::forget(scheduled);
        let _ = tokio::task::spawn_blocking(berth_heap::release_free_memory).await;
    });
}

/// Runs file work (encoding, fsync) on the blocking pool and waits for it without holding an
/// async worker: the sessions that must put the change on the wire keep running meanwhile
/// (block_in_place held them up for the length of a full save).
async fn off_thread(
    f: impl FnOnce() -> Result<(), super::store::StoreError> + Send + 'static,
) -> Result<(), String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the persisting task failed: {e}")),
    }
}

/// An UpdateRoutes request applied to the routes: the new routes and the prefixes touched.
/// Checked by the same rules as a whole state; field names are the request's.
pub fn update(
    settings: &SpeakerConfig,
    desired: &Desired,
    req: &v1::UpdateRoutesRequest,
) -> Result<(Desired, Vec<IpNet>), InvalidArgument> {
    let groups = convert::next_hop_groups(&req.next_hop_groups, "next_hop_groups")?;
    let mut paths = 0usize;
    for (i, r) in req.upsert.iter().enumerate() {
        convert::count_paths(&mut paths, r, &groups, &format!("upsert[{i}]"))?;
    }
    let upserts = req
        .upsert
        .iter()
        .enumerate()
        .map(|(i, r)| convert::route(i, r, "upsert", &groups))
        .collect::<Result<Vec<_>, _>>()?;
    let mut removes = Vec::with_capacity(req.remove.len());
    for (i, p) in req.remove.iter().enumerate() {
        let field = format!("remove[{i}]");
        let prefix: IpNet = p.parse().map_err(|_| InvalidArgument {
            field: field.clone(),
            why: format!("{p:?} is not a prefix"),
        })?;
        if upserts.iter().any(|u| u.prefix == prefix) {
            return Err(InvalidArgument {
                field,
                why: format!("{prefix} is also in upsert: do one or the other"),
            });
        }
        removes.push(prefix);
    }
    let check = SpeakerConfig {
        routes: upserts,
        peers: Vec::new(),
        ..settings.clone()
    };
    check.validate().map_err(|e| {
        let mut e = convert::api_error(&e);
        if let Some(rest) = e.field.strip_prefix("routes") {
            e.field = format!("upsert{rest}");
        }
        e
    })?;
    // One chunk copied per prefix: the map is persistent, the clone shares everything.
    let mut next = desired.clone();
    let mut touched = removes.clone();
    let mut interned = Interner::default();
    for r in &check.routes {
        touched.push(r.prefix);
        next.insert(r.prefix, crate::config::route_paths(r, &mut interned));
    }
    for p in &removes {
        next.remove(p);
    }
    Ok((next, touched))
}

/// The service, sharing the speaker's channels.
#[derive(Clone)]
pub struct Control {
    applied: Arc<Mutex<Applied>>,
    settings: watch::Sender<Arc<SpeakerConfig>>,
    desired: watch::Sender<Snapshot>,
    store: Option<Store>,
    board: StatusBoard,
    metrics: Arc<Metrics>,
    /// The BGP listener, bound while an Apply is validated.
    listeners: Listeners,
    /// Readiness: an accepted Apply clears a persisted state that could not be used.
    health: Option<Health>,
    /// Accepted changes, for Watch streams.
    events: tokio::sync::broadcast::Sender<v1::StateApplied>,
}

impl Control {
    /// A service that starts from `applied` and publishes on the given channels.
    pub fn new(
        applied: Applied,
        settings: watch::Sender<Arc<SpeakerConfig>>,
        desired: watch::Sender<Snapshot>,
        store: Option<Store>,
        board: StatusBoard,
        metrics: Arc<Metrics>,
        listeners: Listeners,
    ) -> Control {
        Control {
            applied: Arc::new(Mutex::new(applied)),
            settings,
            desired,
            store,
            board,
            metrics,
            listeners,
            health: None,
            events: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// Reports readiness here: an accepted Apply clears the "persisted state" problem.
    pub fn with_health(mut self, health: Health) -> Control {
        self.health = Some(health);
        self
    }

    fn announce(&self, call: &str, generation: u64, routes_changed: usize) {
        // No subscriber is not an error.
        let _ = self.events.send(v1::StateApplied {
            generation,
            call: call.to_owned(),
            routes_changed: u32::try_from(routes_changed).unwrap_or(u32::MAX),
        });
    }

    /// Every peer's current state, as Watch events with no previous state.
    fn session_snapshot(&self) -> Vec<v1::watch_event::Event> {
        self.sessions()
            .into_iter()
            .map(|(peer, (state, last_error))| {
                v1::watch_event::Event::Session(v1::SessionChanged {
                    peer,
                    state,
                    previous_state: String::new(),
                    last_error,
                })
            })
            .collect()
    }

    /// Each peer's (state, last error) now.
    fn sessions(&self) -> std::collections::BTreeMap<String, (String, String)> {
        let board = self.board.peers();
        board
            .iter()
            .map(|(addr, (_, st))| {
                let s = st.borrow();
                (
                    addr.to_string(),
                    (
                        format!("{:?}", s.state),
                        s.last_error.clone().unwrap_or_default(),
                    ),
                )
            })
            .collect()
    }

    fn reject(&self, call: &str, reason: &str, status: Status) -> Status {
        self.metrics.rejected(call, reason);
        status
    }

    fn stale(&self, call: &str, got: u64, have: u64) -> Status {
        self.reject(
            call,
            "stale_generation",
            Status::failed_precondition(format!(
                "generation: {got} is older than the applied {have}; this writer is stale \
                 (another operator replica leads now?): read GetState and resend from there"
            )),
        )
    }

    fn invalid(&self, call: &str, e: &InvalidArgument) -> Status {
        self.reject(
            call,
            "invalid_argument",
            Status::invalid_argument(e.to_string()),
        )
    }

    async fn persist_encoded(&self, call: &str, state: Bytes) -> Result<(), Status> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        off_thread(move || store.save_encoded(&state))
            .await
            .map_err(|e| {
                self.reject(
                    call,
                    "persist_failed",
                    Status::internal(format!("{e}: the state was not applied; fix --state-dir")),
                )
            })
    }

    /// An Apply: the state stays encoded until it is converted route by route against the
    /// applied routes ([`lean::convert`], on the blocking pool: it scales with the table).
    /// A state identical to the applied one (the operator resends the whole table on every
    /// resync) is accepted with its generation and touches neither the disk nor the peers.
    async fn do_apply(&self, req: EncodedApplyRequest) -> Result<v1::ApplyResponse, Status> {
        let Some(encoded) = req.state else {
            return Err(self.invalid(
                "apply",
                &InvalidArgument {
                    field: "state".into(),
                    why: "is required".into(),
                },
            ));
        };
        if encoded.len() >= RELEASE_AFTER_BYTES {
            // Whether it is accepted or refused (a stale replica resending its table), the
            // message is a large transient.
            release_memory_later();
        }
        let mut applied = self.applied.lock().await;
        let base = applied.desired.clone();
        let bytes = encoded.clone();
        let known = applied.routes_digest;
        let converted = tokio::task::spawn_blocking(move || lean::convert(&bytes, &base, known))
            .await
            .map_err(|e| Status::internal(format!("converting the state failed: {e}")))?;
        let Converted {
            generation,
            settings: cfg,
            desired: new_desired,
            changed: routes_changed,
            touched,
            digest,
        } = converted.map_err(|e| self.invalid("apply", &e))?;
        if generation < applied.generation {
            return Err(self.stale("apply", generation, applied.generation));
        }
        let peers_changed = *applied.settings != cfg;
        // What the state needs from the system (the listener, MD5 keys) is checked here, before
        // it is accepted and persisted: a state that cannot run must never be restored at the
        // next start.
        let prepared = self.listeners.prepare(&cfg).map_err(|e| {
            self.reject(
                "apply",
                "cannot_apply",
                Status::failed_precondition(e.to_string()),
            )
        })?;
        if routes_changed > 0 || peers_changed {
            // The client's bytes are the state file's body: nothing is encoded again.
            self.persist_encoded("apply", encoded).await?;
            applied.journaled = 0;
        } else {
            // The file keeps the generation of the last state that changed something: a
            // restarted speaker then reports an older generation, and the writer's next push
            // (a full Apply after any reconnect) brings it level.
            drop(encoded);
        }
        let rebound = prepared.commit();
        applied.generation = generation;
        applied.routes_digest = Some(digest);
        if let Some(h) = &self.health {
            h.set(PERSISTED, None);
            self.metrics.persisted_state_unused.set(0);
        }
        if peers_changed || rebound {
            applied.settings = Arc::new(cfg);
            self.settings.send_replace(applied.settings.clone());
        }
        if routes_changed > 0 {
            applied.desired = Arc::new(new_desired);
            let routes = applied.desired.clone();
            // Few changes: sessions holding the previous version send only those prefixes.
            self.desired.send_modify(|s| {
                *s = match touched {
                    Some(t) => s.next_delta(routes, t),
                    None => s.next(routes),
                }
            });
        }
        self.announce("apply", applied.generation, routes_changed);
        if routes_changed >= RELEASE_AFTER_ROUTES {
            release_memory_later();
        }
        Ok(v1::ApplyResponse {
            generation: applied.generation,
            routes_changed: u32::try_from(routes_changed).unwrap_or(u32::MAX),
            peers_changed,
        })
    }

    async fn do_update(
        &self,
        req: v1::UpdateRoutesRequest,
    ) -> Result<v1::UpdateRoutesResponse, Status> {
        const CALL: &str = "update_routes";
        if req.generation == 0 {
            return Err(self.invalid(
                CALL,
                &InvalidArgument {
                    field: "generation".into(),
                    why: "must be at least 1".into(),
                },
            ));
        }
        let mut applied = self.applied.lock().await;
        if req.generation < applied.generation {
            return Err(self.stale(CALL, req.generation, applied.generation));
        }
        let (next, touched) = update(&applied.settings, &applied.desired, &req)
            .map_err(|e| self.invalid(CALL, &e))?;
        // Peers first (the latency that matters), then the journal, then the answer: a call
        // that was not acknowledged may have reached peers, and the writer retries it.
        applied.generation = req.generation;
        applied.desired = Arc::new(next);
        // The routes are no Apply's now: the next Apply is converted whole.
        applied.routes_digest = None;
        let routes = applied.desired.clone();
        self.desired
            .send_modify(|s| *s = s.next_delta(routes, touched));
        if let Some(store) = self.store.clone() {
            applied.journaled += 1;
            let result = if applied.journaled >= COMPACT_AFTER {
                applied.journaled = 0;
                let (generation, settings, desired) = (
                    applied.generation,
                    applied.settings.clone(),
                    applied.desired.clone(),
                );
                let saved =
                    off_thread(move || store.save(&to_api(generation, &settings, &desired))).await;
                // The whole table was encoded for the file: a large transient.
                release_memory_later();
                saved
            } else {
                let change = req.clone();
                off_thread(move || store.append(&change)).await
            };
            result.map_err(|e| {
                self.reject(
                    CALL,
                    "persist_failed",
                    Status::internal(format!(
                        "{e}: announced but not persisted; fix --state-dir and resend"
                    )),
                )
            })?;
        }
        self.announce(
            "update_routes",
            applied.generation,
            req.upsert.len() + req.remove.len(),
        );
        Ok(v1::UpdateRoutesResponse {
            generation: applied.generation,
        })
    }

    async fn do_get(&self, req: v1::GetStateRequest) -> v1::GetStateResponse {
        let applied = self.applied.lock().await.clone();
        // The routes only when asked for: converting the whole table on every poll made
        // GetState cost seconds with 250,000 routes (a status poll must stay O(peers)).
        let api = if req.include_routes {
            to_api(applied.generation, &applied.settings, &applied.desired)
        } else {
            convert::to_api(applied.generation, &applied.settings)
        };
        let board = self.board.peers();
        let peers = board
            .iter()
            .map(|(addr, (peer, status))| {
                let s = status.borrow();
                v1::PeerState {
                    address: addr.to_string(),
                    asn: peer.asn,
                    state: format!("{:?}", s.state),
                    uptime_seconds: s.established_at.map_or(0, |t| t.elapsed().as_secs()),
                    add_path_ipv4: s.add_path[0],
                    add_path_ipv6: s.add_path[1],
                    paths_announced: s.paths as u64,
                    prefixes_announced: s.prefixes as u64,
                    degraded: if !s.degraded {
                        String::new()
                    } else if s.add_path.iter().any(|a| *a) {
                        "ECMP degraded: the peer's send-max cap is below the next hops".into()
                    } else {
                        "ECMP degraded: peer did not negotiate ADD-PATH".into()
                    },
                    last_error: s.last_error.clone().unwrap_or_default(),
                }
            })
            .collect();
        v1::GetStateResponse {
            generation: applied.generation,
            global: api.global,
            peers,
            route_count: applied.desired.len() as u64,
            routes: api.routes,
            next_hop_groups: api.next_hop_groups,
            reads_next_hop_groups: true,
        }
    }
}

/// The applied state as the API's desired state (what is persisted and what GetState shows).
/// Routes that share next hops name a group (`berth_proto::groups`' rule), so a table of
/// 10,000 routes over 1,000 next hops stays small on disk and in GetState.
pub fn to_api(generation: u64, settings: &SpeakerConfig, desired: &Desired) -> v1::DesiredState {
    let mut api = convert::to_api(generation, settings);
    // Keyed on the model, not on API routes: the whole table's next hops as strings would
    // be several times the table for as long as the grouping takes.
    let key = |paths: &Paths| -> Option<Vec<(std::net::IpAddr, Option<u32>)>> {
        (paths.len() >= 2).then(|| paths.iter().map(|(nh, a)| (nh, a.weight)).collect())
    };
    let names = berth_proto::groups::shared(desired.values().filter_map(key));
    let mut groups: Vec<v1::NextHopGroup> = Vec::with_capacity(names.len());
    let mut defined = std::collections::HashSet::new();
    api.routes = desired
        .iter()
        .map(|(p, paths)| {
            let mut r = route_to_api(p, paths);
            if let Some(name) = key(paths).and_then(|k| names.get(&k)) {
                let next_hops = std::mem::take(&mut r.next_hops);
                if defined.insert(name.as_str()) {
                    groups.push(v1::NextHopGroup {
                        name: name.clone(),
                        next_hops,
                    });
                }
                r.next_hop_group = name.clone();
            }
            r
        })
        .collect();
    api.next_hop_groups = groups;
    api
}

fn route_to_api(prefix: &IpNet, paths: &Paths) -> v1::Route {
    // Communities, large communities and LOCAL_PREF are per route in the API and equal on
    // every path by construction; the weight is per next hop.
    let first = paths.values().next();
    let community = |c: &u32| format!("{}:{}", c >> 16, c & 0xffff);
    v1::Route {
        prefix: prefix.to_string(),
        next_hops: paths
            .iter()
            .map(|(nh, a)| v1::NextHop {
                address: nh.to_string(),
                weight: a.weight.unwrap_or(0),
            })
            .collect(),
        communities: first
            .map(|a| a.communities.iter().map(community).collect())
            .unwrap_or_default(),
        large_communities: first
            .map(|a| {
                a.large_communities
                    .iter()
                    .map(|(g, l1, l2)| v1::LargeCommunity {
                        global_admin: *g,
                        local_data_1: *l1,
                        local_data_2: *l2,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        local_pref: first.and_then(|a| a.local_pref),
        next_hop_group: String::new(),
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[tonic::async_trait]
impl v1::speaker_server::Speaker for Control {
    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<v1::WatchEvent, Status>>;

    async fn watch(
        &self,
        _request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // Subscribed before the first snapshot is taken: no change falls between the two.
        let mut sessions = self.board.subscribe();
        let mut applied = self.events.subscribe();
        let this = self.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            use v1::watch_event::Event;
            let mut out = this.session_snapshot();
            loop {
                for event in out.drain(..) {
                    let e = v1::WatchEvent {
                        unix_millis: now_millis(),
                        event: Some(event),
                    };
                    // A slow client holds this task here; the broadcasts it misses meanwhile
                    // come back as a Resync.
                    if tx.send(Ok(e)).await.is_err() {
                        return; // the client went away
                    }
                }
                let missed = tokio::select! {
                    got = sessions.recv() => match got {
                        Ok(e) => {
                            out.push(Event::Session(session_changed(&e)));
                            continue;
                        }
                        Err(RecvError::Lagged(n)) => {
                            // The snapshot below supersedes the session changes still queued:
                            // start again from now (before the snapshot: none falls between).
                            sessions = sessions.resubscribe();
                            n
                        }
                        Err(RecvError::Closed) => return,
                    },
                    got = applied.recv() => match got {
                        Ok(a) => {
                            out.push(Event::Applied(a));
                            continue;
                        }
                        // The accepted changes still kept follow the resync.
                        Err(RecvError::Lagged(n)) => n,
                        Err(RecvError::Closed) => return,
                    },
                };
                // Missed events: say so, and describe every peer afresh.
                tracing::debug!(missed, "a Watch client fell behind: resync");
                out.push(Event::Resync(v1::Resync { missed }));
                out.extend(this.session_snapshot());
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn apply(
        &self,
        request: Request<v1::ApplyRequest>,
    ) -> Result<Response<v1::ApplyResponse>, Status> {
        // The generated server's path, used in process only: the served one is [`Lean`], which
        // never decodes the whole state. Re-encoded so both take one code path.
        let req = request.into_inner();
        let encoded = EncodedApplyRequest {
            state: req.state.map(|s| Bytes::from(s.encode_to_vec())),
        };
        self.apply_encoded(encoded).await.map(Response::new)
    }

    async fn update_routes(
        &self,
        request: Request<v1::UpdateRoutesRequest>,
    ) -> Result<Response<v1::UpdateRoutesResponse>, Status> {
        let started = Instant::now();
        let out = self.do_update(request.into_inner()).await;
        self.metrics.applied(
            "update_routes",
            out.is_ok(),
            started.elapsed().as_secs_f64(),
        );
        out.map(Response::new)
    }

    async fn get_state(
        &self,
        request: Request<v1::GetStateRequest>,
    ) -> Result<Response<v1::GetStateResponse>, Status> {
        Ok(Response::new(self.do_get(request.into_inner()).await))
    }
}

impl Control {
    /// Apply with its state still encoded, timed and counted.
    pub async fn apply_encoded(
        &self,
        req: EncodedApplyRequest,
    ) -> Result<v1::ApplyResponse, Status> {
        let started = Instant::now();
        let out = self.do_apply(req).await;
        self.metrics
            .applied("apply", out.is_ok(), started.elapsed().as_secs_f64());
        out
    }
}

/// Apply's request as it arrives, with the state left encoded: the same wire format as
/// `berth.bgp.v1.ApplyRequest` (field 1, length-delimited), so clients see no difference.
/// The bytes are a slice of the received message, not a copy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncodedApplyRequest {
    /// The `berth.bgp.v1.DesiredState`, encoded; `None` when the request has none.
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub state: Option<Bytes>,
}

/// The `berth.bgp.v1.Speaker` service as served: Apply decodes into
/// [`EncodedApplyRequest`] (the table is converted route by route, never held twice), every
/// other method is the generated server's.
#[derive(Clone)]
pub struct Lean {
    control: Control,
    generated: v1::speaker_server::SpeakerServer<Control>,
}

impl Lean {
    /// The service over `control`, accepting messages up to [`berth_proto::MAX_MESSAGE_BYTES`].
    pub fn new(control: Control) -> Lean {
        Lean {
            generated: v1::speaker_server::SpeakerServer::new(control.clone())
                .max_decoding_message_size(berth_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(berth_proto::MAX_MESSAGE_BYTES),
            control,
        }
    }
}

/// Apply's handler for the lean path.
struct LeanApply(Control);

impl tonic::server::UnaryService<EncodedApplyRequest> for LeanApply {
    type Response = v1::ApplyResponse;
    type Future = BoxFuture<Response<v1::ApplyResponse>, Status>;

    fn call(&mut self, request: Request<EncodedApplyRequest>) -> Self::Future {
        let control = self.0.clone();
        Box::pin(async move {
            control
                .apply_encoded(request.into_inner())
                .await
                .map(Response::new)
        })
    }
}

impl tonic::server::NamedService for Lean {
    const NAME: &'static str = v1::speaker_server::SERVICE_NAME;
}

impl<B> tonic::codegen::Service<http::Request<B>> for Lean
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != APPLY_PATH {
            return self.generated.call(req);
        }
        let control = self.control.clone();
        Box::pin(async move {
            let codec =
                tonic_prost::ProstCodec::<v1::ApplyResponse, EncodedApplyRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(
                Some(berth_proto::MAX_MESSAGE_BYTES),
                Some(berth_proto::MAX_MESSAGE_BYTES),
            );
            Ok(grpc.unary(LeanApply(control), req).await)
        })
    }
}

/// Apply's HTTP/2 path.
const APPLY_PATH: &str = "/berth.bgp.v1.Speaker/Apply";

/// A session event as Watch reports it.
fn session_changed(e: &SessionEvent) -> v1::SessionChanged {
    let name = |s: Option<State>| s.map_or_else(|| "Removed".to_owned(), |s| format!("{s:?}"));
    v1::SessionChanged {
        peer: e.peer.to_string(),
        state: name(e.state),
        previous_state: e.previous.map(|p| name(Some(p))).unwrap_or_default(),
        last_error: e.last_error.clone().unwrap_or_default(),
    }
}

/// Applied state from a persisted file, when there is a usable one; otherwise why the file
/// there is not used (logged too), or nothing when there is none.
pub fn restore(store: &Store) -> Result<Option<Applied>, String> {
    let encoded = match store.load_encoded() {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::error!(error = %e, "persisted state not used");
            return Err(format!("not used: {e}"));
        }
    };
    // Route by route, as an Apply: a restart never holds the decoded table either.
    let converted = lean::convert(&encoded, &Desired::new(), None);
    drop(encoded);
    match converted {
        Ok(Converted {
            generation,
            settings: cfg,
            desired,
            digest,
            ..
        }) => {
            let mut desired = desired;
            let mut routes_digest = Some(digest);
            let mut generation = generation;
            let (changes, torn) = store.changes();
            if let Some(e) = torn {
                tracing::warn!(error = %e, "journal ends early; the changes before it are used");
            }
            let journaled = changes.len();
            let floor = generation;
            for c in changes.iter().filter(|c| c.generation >= floor) {
                match update(&cfg, &desired, c) {
                    Ok((next, _)) => {
                        desired = next;
                        generation = c.generation;
                        routes_digest = None;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "journaled change refused; stopping the replay");
                        break;
                    }
                }
            }
            // The file's bytes and the conversion's transients are gone now.
            berth_heap::release_free_memory();
            tracing::info!(
                generation,
                routes = desired.len(),
                journaled,
                file = %store.path().display(),
                "announcing the persisted state"
            );
            Ok(Some(Applied {
                generation,
                settings: Arc::new(cfg),
                desired: Arc::new(desired),
                journaled,
                routes_digest,
            }))
        }
        Err(e) => {
            tracing::error!(file = %store.path().display(), error = %e, "persisted state is invalid; ignored");
            Err(format!(
                "{} is invalid ({e}); ignored",
                store.path().display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SpeakerConfig {
        SpeakerConfig {
            asn: 64512,
            router_id: "10.0.0.11".parse().unwrap_or_else(|e| panic!("{e}")),
            listen_port: 0,
            graceful_restart: Default::default(),
            peers: Vec::new(),
            routes: Vec::new(),
        }
    }

    fn hops(addrs: &[&str]) -> Vec<v1::NextHop> {
        addrs
            .iter()
            .map(|a| v1::NextHop {
                address: (*a).into(),
                weight: 0,
            })
            .collect()
    }

    fn route(prefix: String, group: &str, next_hops: Vec<v1::NextHop>) -> v1::Route {
        v1::Route {
            prefix,
            next_hop_group: group.into(),
            next_hops,
            ..Default::default()
        }
    }

    /// 200 routes over 100 next hops in one group, 3 routes with their own: what an
    /// UpdateRoutes for a node going Ready looks like with ADD-PATH.
    fn grouped_update(generation: u64) -> v1::UpdateRoutesRequest {
        let nodes: Vec<String> = (1..=100)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250 + 1))
            .collect();
        let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let mut upsert: Vec<v1::Route> = (0..200)
            .map(|i| route(format!("198.51.100.{i}/32"), "all", Vec::new()))
            .collect();
        upsert.extend((0..3).map(|i| {
            route(
                format!("198.51.101.{i}/32"),
                "",
                hops(&["10.0.0.2", "10.0.0.3"]),
            )
        }));
        v1::UpdateRoutesRequest {
            generation,
            upsert,
            remove: Vec::new(),
            next_hop_groups: vec![v1::NextHopGroup {
                name: "all".into(),
                next_hops: hops(&nodes),
            }],
        }
    }

    #[test]
    fn an_update_resolves_its_groups_and_refuses_an_unknown_one() {
        let (desired, touched) = update(&settings(), &Desired::new(), &grouped_update(1))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(touched.len(), 203);
        let first = desired
            .get(
                &"198.51.100.0/32"
                    .parse::<IpNet>()
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .unwrap_or_else(|| panic!("the grouped route is missing"));
        assert_eq!(first.len(), 100);
        let mut bad = grouped_update(2);
        bad.upsert[5].next_hop_group = "most".into();
        let e = update(&settings(), &desired, &bad).unwrap_err();
        assert_eq!(e.field, "upsert[5].next_hop_group");
    }

    #[test]
    fn the_saved_state_names_shared_next_hops_once_and_restores_whole() {
        let (desired, _) = update(&settings(), &Desired::new(), &grouped_update(1))
            .unwrap_or_else(|e| panic!("{e}"));
        let api = to_api(9, &settings(), &desired);
        assert_eq!(api.routes.len(), 203);
        // The 200 routes share one list, the 3 others another: two groups, no inline hops.
        assert_eq!(api.next_hop_groups.len(), 2);
        assert!(api.routes.iter().all(|r| r.next_hops.is_empty()));
        let mut expanded = api.clone();
        berth_proto::groups::resolve(&mut expanded.routes, &api.next_hop_groups)
            .unwrap_or_else(|e| panic!("{e}"));
        expanded.next_hop_groups.clear();
        assert!(api.encoded_len() * 20 < expanded.encoded_len());
        // Saved (as a compaction saves) and restored (as a start restores).
        let dir = std::env::temp_dir().join(format!("berth-service-groups-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::new(dir.clone());
        store.save(&api).unwrap_or_else(|e| panic!("{e}"));
        let restored = restore(&store);
        let _ = std::fs::remove_dir_all(&dir);
        let restored = restored
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("nothing restored"));
        assert_eq!(restored.generation, 9);
        assert_eq!(*restored.desired, desired);
    }
}
