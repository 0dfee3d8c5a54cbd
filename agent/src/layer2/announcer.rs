//! One announcer per interface: answers ARP requests and Neighbor Solicitations for the IPs
//! this node owns, and announces IPs it takes over.
//!
//! The owned set lives in a `watch` channel and in the task's [`Arbiter`], which every request
//! is checked against: the moment [`Announcer::set_owned`] drops an IP, or another node that
//! outranks this one claims it on the segment, no further answer for it leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_packet_socket::{AsyncPacketSocket, ETH_P_ARP, ETH_P_IPV6, Instruction, PacketSocket};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::arbiter::{Action, Arbiter};
use super::interface::Interface;
use super::stall::{self, Stall};
use super::{Mac, arp, ndp};
use crate::metrics::Metrics;

/// When announcements go out after a takeover, from the takeover: one at once, then repeats
/// in case the first was lost or a switch was still learning.
pub const ANNOUNCE_AT: [Duration; 4] = [
    Duration::from_millis(0),
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(1000),
];

/// Kernel-side filter for the ARP socket: only ARP requests (`op` = 1, to answer) and
/// replies (`op` = 2: other hosts claiming an IP, answers to our probes) are queued.
const ARP_FILTER: [Instruction; 7] = [
    Instruction {
        code: 0x28,
        jt: 0,
        jf: 0,
        k: 12,
    }, // ldh [12]      EtherType
    Instruction {
        code: 0x15,
        jt: 0,
        jf: 4,
        k: 0x0806,
    }, // jeq ARP
    Instruction {
        code: 0x28,
        jt: 0,
        jf: 0,
        k: 20,
    }, // ldh [20]      ARP op
    Instruction {
        code: 0x15,
        jt: 1,
        jf: 0,
        k: 1,
    }, // jeq request
    Instruction {
        code: 0x15,
        jt: 0,
        jf: 1,
        k: 2,
    }, // jeq reply
    Instruction {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0xffff,
    }, // ret accept
    Instruction {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0,
    }, // ret drop
];

/// Kernel-side filter for the IPv6 socket: only ICMPv6 Neighbor Solicitations (to answer) and
/// Advertisements (claims by others, answers to our probes) without extension headers are
/// queued, not the interface's data traffic.
const ND_FILTER: [Instruction; 9] = [
    Instruction {
        code: 0x28,
        jt: 0,
        jf: 0,
        k: 12,
    }, // ldh [12]      EtherType
    Instruction {
        code: 0x15,
        jt: 0,
        jf: 6,
        k: 0x86dd,
    }, // jeq IPv6
    Instruction {
        code: 0x30,
        jt: 0,
        jf: 0,
        k: 20,
    }, // ldb [20]      next header
    Instruction {
        code: 0x15,
        jt: 0,
        jf: 4,
        k: 58,
    }, // jeq ICMPv6
    Instruction {
        code: 0x30,
        jt: 0,
        jf: 0,
        k: 54,
    }, // ldb [54]      ICMPv6 type
    Instruction {
        code: 0x15,
        jt: 1,
        jf: 0,
        k: 135,
    }, // jeq NS
    Instruction {
        code: 0x15,
        jt: 0,
        jf: 1,
        k: 136,
    }, // jeq NA
    Instruction {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0xffff,
    }, // ret accept
    Instruction {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0,
    }, // ret drop
];

/// Answers for the owned IPs on one interface until dropped or stopped.
pub struct Announcer {
    interface: Interface,
    owned: watch::Sender<BTreeSet<IpAddr>>,
    again: Arc<Notify>,
    grew: Arc<Notify>,
    grew_with_change: Arc<AtomicBool>,
    yielded: watch::Receiver<BTreeSet<IpAddr>>,
    task: JoinHandle<()>,
}

impl Announcer {
    /// Opens the interface's packet sockets and starts answering (for nothing yet).
    /// `yields_changed` is notified whenever the set of IPs yielded to another MAC on the
    /// segment changes (see [`Announcer::yielded`]).
    pub fn start(
        interface: Interface,
        metrics: Arc<Metrics>,
        yields_changed: Arc<Notify>,
    ) -> std::io::Result<Announcer> {
        let arp_socket = PacketSocket::open(interface.index, ETH_P_ARP, &ARP_FILTER)?;
        let nd_socket = PacketSocket::open(interface.index, ETH_P_IPV6, &ND_FILTER)?;
        nd_socket.set_all_multicast(interface.index)?;
        let arp_fd = AsyncPacketSocket::new(arp_socket)?;
        let nd_fd = AsyncPacketSocket::new(nd_socket)?;
        let (owned, owned_rx) = watch::channel(BTreeSet::new());
        let (yielded_tx, yielded) = watch::channel(BTreeSet::new());
        let again = Arc::new(Notify::new());
        let grew = Arc::new(Notify::new());
        let grew_with_change = Arc::new(AtomicBool::new(false));
        let groups = Groups::new(interface.index, &interface.name);
        let task = tokio::spawn(run(
            Io {
                arp: arp_fd,
                nd: nd_fd,
                mac: interface.mac,
                metrics,
                interface: interface.name.clone(),
                groups: std::sync::Mutex::new(groups),
                arbiter: Mutex::new(Arbiter::new(interface.mac)),
                owned: owned_rx.clone(),
                yielded: yielded_tx,
                yields_changed,
                stall: Mutex::new(Stall::new(Instant::now())),
            },
            owned_rx,
            again.clone(),
            grew.clone(),
            grew_with_change.clone(),
        ));
        Ok(Announcer {
            interface,
            owned,
            again,
            grew,
            grew_with_change,
            yielded,
            task,
        })
    }

    /// The interface it answers on.
    pub fn interface(&self) -> &Interface {
        &self.interface
    }

    /// Answers for exactly `ips` from now on (less those yielded to another MAC on the
    /// segment); IPs new to the set are announced at once (then repeated, see
    /// [`ANNOUNCE_AT`]), IPs gone from it are no longer answered.
    ///
    /// `grew`: the membership gained a node with this change; IPs taken then are defended, not
    /// yielded, for a moment (their previous owner is alive and about to drop them).
    pub fn set_owned(&self, ips: BTreeSet<IpAddr>, grew: bool) {
        // Stored before the set, so the task reads it with the change it belongs to.
        self.grew_with_change
            .store(grew, std::sync::atomic::Ordering::SeqCst);
        self.owned.send_if_modified(|cur| {
            if *cur == ips {
                false
            } else {
                *cur = ips;
                true
            }
        });
    }

    /// Announces every owned IP again (after a membership change: a node that came back may
    /// still have the IP in its neighbours' caches).
    pub fn announce_again(&self) {
        self.again.notify_one();
    }

    /// The membership view gained a node (a partition healed): every yield ends and the
    /// election alone decides again. Call after [`Announcer::set_owned`] with the new plan.
    pub fn view_grew(&self) {
        self.grew.notify_one();
    }

    /// The owned IPs yielded to a higher-ranked MAC seen on the segment: not answered, and
    /// their local routes should go.
    pub fn yielded(&self) -> BTreeSet<IpAddr> {
        self.yielded.borrow().clone()
    }

    /// Stops answering at once.
    pub fn stop(self) {
        self.owned.send_replace(BTreeSet::new());
        self.task.abort();
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Io {
    /// Solicited-node memberships of the owned IPv6 IPs.
    groups: std::sync::Mutex<Groups>,
    arp: AsyncPacketSocket,
    nd: AsyncPacketSocket,
    mac: Mac,
    metrics: Arc<Metrics>,
    interface: String,
    /// Who answers when another MAC claims an owned IP. Only this task touches it, never
    /// across an await: the lock is never contended (a `Mutex` only because the task's
    /// future must be `Send`).
    arbiter: Mutex<Arbiter>,
    /// The owned set as last sent by [`Announcer::set_owned`].
    owned: watch::Receiver<BTreeSet<IpAddr>>,
    /// The arbiter's yielded set, published for the routes.
    yielded: watch::Sender<BTreeSet<IpAddr>>,
    yields_changed: Arc<Notify>,
    /// Silent for a moment after this process was stalled (see [`stall`]).
    stall: Mutex<Stall>,
}

impl Io {
    fn send(&self, ip: IpAddr, frame: &[u8]) -> bool {
        let fd = match ip {
            IpAddr::V4(_) => &self.arp,
            IpAddr::V6(_) => &self.nd,
        };
        match fd.send(frame) {
            Ok(()) => true,
            Err(e) => {
                self.metrics.send_errors.inc();
                tracing::debug!(interface = %self.interface, %ip, error = %e, "sending failed");
                false
            }
        }
    }

    /// Whether `ip` is answered now: in the owned set as last sent (read at once, not when
    /// the task gets to the change) and not yielded.
    fn answers(&self, ip: IpAddr) -> bool {
        self.owned.borrow().contains(&ip)
            && !lock(&self.arbiter).is_yielded(ip)
            && !lock(&self.stall).paused(Instant::now())
    }

    /// Announces `ip`: gratuitous ARP in request and reply form, or one unsolicited NA.
    fn announce(&self, ip: IpAddr) {
        if lock(&self.stall).paused(Instant::now()) {
            return;
        }
        let frames: Vec<Vec<u8>> = match ip {
            IpAddr::V4(a) => arp::announcement(a, self.mac).into(),
            IpAddr::V6(a) => vec![ndp::unsolicited(a, self.mac)],
        };
        for frame in frames {
            if self.send(ip, &frame) {
                self.metrics
                    .gratuitous
                    .get_or_create(&Metrics::ip(ip))
                    .inc();
            }
        }
    }

    /// Carries out the arbiter's decisions; `pending` gets the repeats of a reclaim's
    /// announcement.
    fn act(&self, actions: impl IntoIterator<Item = Action>, pending: &mut Vec<(Instant, IpAddr)>) {
        let mut changed = false;
        for action in actions {
            match action {
                Action::Yield { ip, winner } => {
                    changed = true;
                    self.metrics.yields.get_or_create(&Metrics::ip(ip)).inc();
                    tracing::warn!(interface = %self.interface, %ip, %winner, "another node answers this IP and outranks this one on the segment: yielding (gossip partition?)");
                }
                Action::Defend(ip) => {
                    self.metrics.defences.get_or_create(&Metrics::ip(ip)).inc();
                    tracing::info!(interface = %self.interface, %ip, "defending an IP another MAC announced");
                    self.announce(ip);
                }
                Action::Probe(ip) => {
                    let frame = match ip {
                        IpAddr::V4(a) => arp::probe(a, self.mac),
                        IpAddr::V6(a) => ndp::probe(a, self.mac),
                    };
                    self.send(ip, &frame);
                }
                Action::Reclaim(ip) => {
                    changed = true;
                    self.metrics.reclaims.get_or_create(&Metrics::ip(ip)).inc();
                    tracing::info!(interface = %self.interface, %ip, "answering a yielded IP again");
                    self.announce(ip);
                    let now = Instant::now();
                    pending.retain(|(_, p)| *p != ip);
                    pending.extend(ANNOUNCE_AT.iter().skip(1).map(|d| (now + *d, ip)));
                }
            }
        }
        if changed {
            self.publish();
        }
    }

    fn publish(&self) {
        let y = lock(&self.arbiter).yielded();
        if self.yielded.send_if_modified(|cur| {
            let changed = *cur != y;
            *cur = y;
            changed
        }) {
            self.yields_changed.notify_one();
        }
    }

    /// Handles one received frame: answers it when it asks for an IP this node answers, and
    /// hands claims of owned IPs by other MACs to the arbiter.
    fn handle(&self, frame: &[u8], pending: &mut Vec<(Instant, IpAddr)>) {
        let claim = if let Some(c) = arp::parse_claim(frame) {
            Some((IpAddr::V4(c.ip), c.mac))
        } else {
            ndp::parse_advertisement(frame).map(|a| (IpAddr::V6(a.target), a.mac))
        };
        if let Some((ip, mac)) = claim {
            if mac == self.mac {
                return;
            }
            let action = lock(&self.arbiter).claimed(ip, mac, Instant::now());
            if action.is_some() || self.answers(ip) {
                // Another host announces an IP we own (a partition, or a foreign host).
                self.metrics.conflicts.get_or_create(&Metrics::ip(ip)).inc();
            }
            self.act(action, pending);
            return;
        }
        let (ip, answer) = if let Some(req) = arp::parse_request(frame) {
            let ip = IpAddr::V4(req.target);
            if !self.answers(ip) || req.sender_mac == self.mac {
                return;
            }
            (ip, arp::reply(&req, self.mac))
        } else if let Some(ns) = ndp::parse_solicitation(frame) {
            let ip = IpAddr::V6(ns.target);
            if !self.answers(ip) || ns.source_mac == self.mac {
                return;
            }
            (ip, ndp::answer(&ns, self.mac))
        } else {
            return;
        };
        self.metrics.requests.get_or_create(&Metrics::ip(ip)).inc();
        if self.send(ip, &answer) {
            self.metrics.replies.get_or_create(&Metrics::ip(ip)).inc();
        }
    }
}

/// Locks a mutex of this task; a panic elsewhere while it was held (there is none: nothing
/// in the critical sections panics) leaves a usable value, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn run(
    io: Io,
    mut owned: watch::Receiver<BTreeSet<IpAddr>>,
    again: Arc<Notify>,
    grew: Arc<Notify>,
    grew_with_change: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    let mut announced: BTreeSet<IpAddr> = BTreeSet::new();
    // (when, ip): announcements still to send. Shared by the receive paths (a reclaim
    // schedules its repeats) and the timers; never borrowed across an await.
    let pending: Mutex<Vec<(Instant, IpAddr)>> = Mutex::new(Vec::new());
    // Shows the task runs; a late tick means the process was stalled (see `stall`).
    let mut beat = tokio::time::interval(stall::BEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = {
            let p = lock(&pending);
            let announce = p.iter().map(|(t, _)| *t).min();
            let probe = lock(&io.arbiter).next_deadline();
            let resume = lock(&io.stall).resume_at();
            announce.into_iter().chain(probe).chain(resume).min()
        };
        tokio::select! {
            _ = beat.tick() => {
                if lock(&io.stall).beat(Instant::now()) {
                    tracing::warn!(interface = %io.interface, hold = ?stall::HOLD,
                        "this agent was stalled (paused or starved of CPU): silent for a moment so the node that covered for it drops its IPs, then announcing them again");
                }
            }
            // The arbiter is consulted per frame: an ownership change between two frames
            // takes effect for the second.
            r = io.arp.recv_all(&mut buf, |f| io.handle(f, &mut lock(&pending))) => {
                if let Err(e) = r {
                    tracing::debug!(interface = %io.interface, error = %e, "ARP receive failed");
                }
            }
            r = io.nd.recv_all(&mut buf2, |f| io.handle(f, &mut lock(&pending))) => {
                if let Err(e) = r {
                    tracing::debug!(interface = %io.interface, error = %e, "IPv6 receive failed");
                }
            }
            r = owned.changed() => {
                if r.is_err() {
                    return;
                }
                let now: BTreeSet<IpAddr> = owned.borrow_and_update().clone();
                let grown = grew_with_change.load(std::sync::atomic::Ordering::SeqCst);
                lock(&io.arbiter).set_owned(&now, grown, Instant::now());
                io.publish();
                let gained: Vec<IpAddr> = now.difference(&announced).copied().collect();
                if let Ok(mut g) = io.groups.lock() {
                    g.follow(&now);
                }
                // Takeover: the first announcement goes out before anything else happens.
                for ip in &gained {
                    io.announce(*ip);
                }
                let start = Instant::now();
                let mut p = lock(&pending);
                p.retain(|(_, ip)| now.contains(ip));
                for ip in gained {
                    p.extend(ANNOUNCE_AT.iter().skip(1).map(|d| (start + *d, ip)));
                }
                announced = now;
            }
            () = again.notified() => {
                let all: Vec<IpAddr> = owned.borrow().iter().copied().collect();
                let now = Instant::now();
                let mut p = lock(&pending);
                for ip in all {
                    p.retain(|(_, q)| *q != ip);
                    p.extend(ANNOUNCE_AT.iter().map(|d| (now + *d, ip)));
                }
            }
            () = grew.notified() => {
                // The owned set main sent before this notification is already in the watch:
                // apply it first, so only IPs still elected are reclaimed.
                let current: BTreeSet<IpAddr> = owned.borrow().clone();
                lock(&io.arbiter).set_owned(&current, true, Instant::now());
                let actions = lock(&io.arbiter).view_grew(Instant::now());
                io.act(actions, &mut lock(&pending));
                io.publish();
            }
            () = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                let due: Vec<IpAddr> = {
                    let mut p = lock(&pending);
                    let due = p.iter().filter(|(t, _)| *t <= now).map(|(_, ip)| *ip).collect();
                    p.retain(|(t, _)| *t > now);
                    due
                };
                for ip in due {
                    // Never announce an IP lost or yielded since it was scheduled.
                    if io.answers(ip) {
                        io.announce(ip);
                    }
                }
                // The silence after a stall is over: announce everything owned again (a
                // client may have followed the node that covered for this one).
                let resumed = {
                    let mut st = lock(&io.stall);
                    let over = st.resume_at().is_some_and(|t| t <= now) && !st.paused(now);
                    if over {
                        st.resumed();
                    }
                    over
                };
                if resumed {
                    let all: Vec<IpAddr> = io.owned.borrow().iter().copied().collect();
                    let mut p = lock(&pending);
                    for ip in all {
                        if io.answers(ip) {
                            io.announce(ip);
                        }
                        p.retain(|(_, q)| *q != ip);
                        p.extend(ANNOUNCE_AT.iter().skip(1).map(|d| (now + *d, ip)));
                    }
                }
                let actions = lock(&io.arbiter).tick(now);
                io.act(actions, &mut lock(&pending));
            }
        }
    }
}

/// The solicited-node multicast groups of the owned IPv6 IPs, joined through an ordinary UDP
/// socket: the kernel then sends MLD reports for them, so a switch doing MLD snooping forwards
/// the Neighbor Solicitations for our IPs to this port (the packet socket's all-multicast mode
/// only opens the NIC's filter, it reports nothing). Several IPs can share one group
/// (same low 24 bits): joined once, left with the last of them.
struct Groups {
    socket: Option<std::net::UdpSocket>,
    index: u32,
    joined: BTreeMap<Ipv6Addr, usize>,
}

impl Groups {
    fn new(index: u32, interface: &str) -> Groups {
        let socket = std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))
            .map_err(|e| {
                // No IPv6 on this node: nothing to join, IPv4 is unaffected.
                tracing::debug!(interface, error = %e, "no IPv6 socket: MLD reports disabled");
            })
            .ok();
        Groups {
            socket,
            index,
            joined: BTreeMap::new(),
        }
    }

    /// Joins the groups of `owned`'s IPv6 IPs, leaves the others.
    fn follow(&mut self, owned: &BTreeSet<IpAddr>) {
        let Some(socket) = &self.socket else { return };
        let mut want: BTreeMap<Ipv6Addr, usize> = BTreeMap::new();
        for ip in owned {
            if let IpAddr::V6(v6) = ip {
                *want.entry(ndp::solicited_node(*v6)).or_default() += 1;
            }
        }
        for group in self.joined.keys().filter(|g| !want.contains_key(g)) {
            if let Err(e) = socket.leave_multicast_v6(group, self.index) {
                tracing::debug!(%group, error = %e, "leaving a solicited-node group failed");
            }
        }
        for group in want.keys().filter(|g| !self.joined.contains_key(g)) {
            if let Err(e) = socket.join_multicast_v6(group, self.index) {
                tracing::warn!(%group, error = %e, "joining a solicited-node group failed: switches with MLD snooping may not forward Neighbor Solicitations here");
            }
        }
        self.joined = want;
    }
}
