//! One announcer per interface: answers ARP requests and Neighbor Solicitations for the IPs
//! this node owns, and announces IPs it takes over.
//!
//! The owned set lives in a `watch` channel: every request is checked against its current
//! value, so the moment [`Announcer::set_owned`] drops an IP, no further answer for it leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use berth_packet_socket::{AsyncPacketSocket, ETH_P_ARP, ETH_P_IPV6, Instruction, PacketSocket};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::interface::Interface;
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

/// Kernel-side filter for the ARP socket: only ARP requests (`op` = 1) are queued.
const ARP_FILTER: [Instruction; 6] = [
    Instruction {
        code: 0x28,
        jt: 0,
        jf: 0,
        k: 12,
    }, // ldh [12]      EtherType
    Instruction {
        code: 0x15,
        jt: 0,
        jf: 3,
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
        jt: 0,
        jf: 1,
        k: 1,
    }, // jeq request
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

/// Kernel-side filter for the IPv6 socket: only ICMPv6 Neighbor Solicitations without
/// extension headers are queued, not the interface's data traffic.
const NS_FILTER: [Instruction; 8] = [
    Instruction {
        code: 0x28,
        jt: 0,
        jf: 0,
        k: 12,
    }, // ldh [12]      EtherType
    Instruction {
        code: 0x15,
        jt: 0,
        jf: 5,
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
        jf: 3,
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
        jt: 0,
        jf: 1,
        k: 135,
    }, // jeq NS
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
    task: JoinHandle<()>,
}

impl Announcer {
    /// Opens the interface's packet sockets and starts answering (for nothing yet).
    pub fn start(interface: Interface, metrics: Arc<Metrics>) -> std::io::Result<Announcer> {
        let arp_socket = PacketSocket::open(interface.index, ETH_P_ARP)?;
        arp_socket.attach_filter(&ARP_FILTER)?;
        let nd_socket = PacketSocket::open(interface.index, ETH_P_IPV6)?;
        nd_socket.attach_filter(&NS_FILTER)?;
        nd_socket.set_all_multicast(interface.index)?;
        let arp_fd = AsyncPacketSocket::new(arp_socket)?;
        let nd_fd = AsyncPacketSocket::new(nd_socket)?;
        let (owned, owned_rx) = watch::channel(BTreeSet::new());
        let again = Arc::new(Notify::new());
        let groups = Groups::new(interface.index, &interface.name);
        let task = tokio::spawn(run(
            Io {
                arp: arp_fd,
                nd: nd_fd,
                mac: interface.mac,
                metrics,
                interface: interface.name.clone(),
                groups: std::sync::Mutex::new(groups),
            },
            owned_rx,
            again.clone(),
        ));
        Ok(Announcer {
            interface,
            owned,
            again,
            task,
        })
    }

    /// The interface it answers on.
    pub fn interface(&self) -> &Interface {
        &self.interface
    }

    /// Answers for exactly `ips` from now on; IPs new to the set are announced at once (then
    /// repeated, see [`ANNOUNCE_AT`]), IPs gone from it are no longer answered.
    pub fn set_owned(&self, ips: BTreeSet<IpAddr>) {
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

    fn announce(&self, ip: IpAddr) {
        let frame = match ip {
            IpAddr::V4(a) => arp::gratuitous(a, self.mac),
            IpAddr::V6(a) => ndp::unsolicited(a, self.mac),
        };
        if self.send(ip, &frame) {
            self.metrics
                .gratuitous
                .get_or_create(&Metrics::ip(ip))
                .inc();
        }
    }

    /// Handles one received frame: answers it when it asks for an owned IP.
    fn handle(&self, frame: &[u8], owned: &BTreeSet<IpAddr>) {
        let (ip, answer) = if let Some(req) = arp::parse_request(frame) {
            let ip = IpAddr::V4(req.target);
            if !owned.contains(&ip) || req.sender_mac == self.mac {
                return;
            }
            if req.is_gratuitous() {
                // Someone else announces an IP we own: count it, never answer it.
                self.metrics.conflicts.get_or_create(&Metrics::ip(ip)).inc();
                tracing::warn!(%ip, mac = %req.sender_mac, "another host announces an IP this node owns");
                return;
            }
            (ip, arp::reply(&req, self.mac))
        } else if let Some(ns) = ndp::parse_solicitation(frame) {
            let ip = IpAddr::V6(ns.target);
            if !owned.contains(&ip) || ns.source_mac == self.mac {
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

async fn run(io: Io, mut owned: watch::Receiver<BTreeSet<IpAddr>>, again: Arc<Notify>) {
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    // Read by the receive paths; `owned` itself is watched for changes.
    let reader = owned.clone();
    let mut announced: BTreeSet<IpAddr> = BTreeSet::new();
    // (when, ip): announcements still to send.
    let mut pending: Vec<(Instant, IpAddr)> = Vec::new();
    let schedule = |pending: &mut Vec<(Instant, IpAddr)>, ips: &mut dyn Iterator<Item = IpAddr>| {
        let now = Instant::now();
        for ip in ips {
            pending.retain(|(_, p)| *p != ip);
            pending.extend(ANNOUNCE_AT.iter().map(|d| (now + *d, ip)));
        }
    };
    loop {
        let next = pending.iter().map(|(t, _)| *t).min();
        tokio::select! {
            // The owned set is borrowed per frame: an ownership change between two frames
            // takes effect for the second.
            r = io.arp.recv_all(&mut buf, |f| io.handle(f, &reader.borrow())) => {
                if let Err(e) = r {
                    tracing::debug!(interface = %io.interface, error = %e, "ARP receive failed");
                }
            }
            r = io.nd.recv_all(&mut buf2, |f| io.handle(f, &reader.borrow())) => {
                if let Err(e) = r {
                    tracing::debug!(interface = %io.interface, error = %e, "IPv6 receive failed");
                }
            }
            r = owned.changed() => {
                if r.is_err() {
                    return;
                }
                let now: BTreeSet<IpAddr> = owned.borrow_and_update().clone();
                let gained: Vec<IpAddr> = now.difference(&announced).copied().collect();
                if let Ok(mut g) = io.groups.lock() {
                    g.follow(&now);
                }
                // Takeover: the first announcement goes out before anything else happens.
                for ip in &gained {
                    io.announce(*ip);
                }
                let start = Instant::now();
                pending.retain(|(_, ip)| now.contains(ip));
                for ip in gained {
                    pending.extend(ANNOUNCE_AT.iter().skip(1).map(|d| (start + *d, ip)));
                }
                announced = now;
            }
            () = again.notified() => {
                let all: Vec<IpAddr> = owned.borrow().iter().copied().collect();
                schedule(&mut pending, &mut all.into_iter());
            }
            () = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                let current = owned.borrow().clone();
                let due: Vec<IpAddr> = pending.iter().filter(|(t, _)| *t <= now).map(|(_, ip)| *ip).collect();
                pending.retain(|(t, _)| *t > now);
                for ip in due {
                    // Never announce an IP lost since it was scheduled.
                    if current.contains(&ip) {
                        io.announce(ip);
                    }
                }
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
