//! Local routes against a real kernel, in a private network namespace: rules and routes appear
//! and disappear as reconciled, traffic to a reconciled IP is delivered to a wildcard socket,
//! other owners' entries survive, and leftovers of an earlier run are cleaned up.
//!
//! Needs root (CAP_SYS_ADMIN for `unshare(CLONE_NEWNET)`, CAP_NET_ADMIN inside). The namespace
//! belongs to one test thread only and vanishes with it: nothing is left behind, even when an
//! assertion fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use berth_agent::routes::{BERTH_PROTOCOL, Changes, LocalRoutes, RoutesConfig};
use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkUnspec};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Why this machine cannot run the test, if it cannot (panics instead when `CI` is set, as
/// `berth_e2e::lab_unavailable` does: CI must run it).
fn netns_unavailable() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let why = (!root).then(|| "needs root (a private network namespace)".to_owned());
    if let Some(w) = &why
        && std::env::var_os("CI").is_some()
    {
        panic!("this test {w}, and CI must run it");
    }
    why
}

/// Runs `body` on a new thread moved into a fresh network namespace with `lo` up, on a
/// current-thread runtime (so every socket, netlink included, lives in that namespace).
fn in_fresh_netns<F, Fut>(body: F)
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let t = std::thread::spawn(move || {
        // The network namespace is per thread: only this thread moves.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            handle
                .link()
                .set(LinkUnspec::new_with_index(1).up().build())
                .execute()
                .await
                .expect("set lo up");
            body(handle).await;
        });
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

/// (destination, table, priority, protocol) of rules.
type RuleSet = BTreeSet<(IpAddr, u32, u32, u8)>;
/// (destination, table, rtm_type, protocol) of routes.
type RouteSet = BTreeSet<(IpAddr, u32, u8, u8)>;

/// (destination, table, priority, protocol) of every rule with a destination.
async fn rules(h: &Handle) -> RuleSet {
    let mut out = BTreeSet::new();
    for v in [IpVersion::V4, IpVersion::V6] {
        let dump: Vec<RuleMessage> = h.rule().get(v).execute().try_collect().await.unwrap();
        for m in dump {
            let mut dst = None;
            let mut table = u32::from(m.header.table);
            let mut prio = 0;
            let mut proto = 0;
            for a in &m.attributes {
                match a {
                    RuleAttribute::Destination(ip) => dst = Some(*ip),
                    RuleAttribute::Table(t) => table = *t,
                    RuleAttribute::Priority(p) => prio = *p,
                    RuleAttribute::Protocol(p) => proto = u8::from(*p),
                    _ => {}
                }
            }
            if let Some(ip) = dst {
                out.insert((ip, table, prio, proto));
            }
        }
    }
    out
}

/// (destination, table, type, protocol) of every route outside the kernel's own tables, and
/// of Berth's routes in table `local`.
async fn routes(h: &Handle) -> RouteSet {
    let mut out = BTreeSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut q = RouteMessage::default();
        q.header.address_family = family;
        let dump: Vec<RouteMessage> = h.route().get(q).execute().try_collect().await.unwrap();
        for m in dump {
            let mut dst = None;
            let mut table = u32::from(m.header.table);
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some((*ip).into()),
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
                        dst = Some((*ip).into());
                    }
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if let Some(ip) = dst
                && (!(253..=255).contains(&table) || u8::from(m.header.protocol) == BERTH_PROTOCOL)
            {
                out.insert((
                    ip,
                    table,
                    u8::from(m.header.kind),
                    u8::from(m.header.protocol),
                ));
            }
        }
    }
    out
}

/// The rules and routes Berth should hold for exactly `ips` in `cfg`.
fn expected(ips: &[IpAddr], cfg: RoutesConfig) -> (RuleSet, RouteSet) {
    (
        ips.iter()
            .filter(|ip| ip.is_ipv6())
            .map(|&ip| (ip, cfg.table, cfg.priority, BERTH_PROTOCOL))
            .collect(),
        ips.iter()
            .map(|&ip| {
                let table = if ip.is_ipv4() { 255 } else { cfg.table };
                (ip, table, RTN_LOCAL, BERTH_PROTOCOL)
            })
            .collect(),
    )
}

/// Berth's entries only (protocol 66).
async fn berths(h: &Handle) -> (RuleSet, RouteSet) {
    let r = rules(h)
        .await
        .into_iter()
        .filter(|e| e.3 == BERTH_PROTOCOL)
        .collect();
    let t = routes(h)
        .await
        .into_iter()
        .filter(|e| e.3 == BERTH_PROTOCOL)
        .collect();
    (r, t)
}

/// Whether a UDP datagram sent to `ip` reaches `sock`, bound to the wildcard address: proof
/// that the kernel delivers packets for `ip` locally. Without a route the send itself fails
/// (the namespace has no other route), so the negative answer needs no timeout.
///
/// The sender binds to loopback: IPv4 refuses an unbound sender whose route picks the
/// destination itself as source when that address is only in a non-`local` table (see the
/// module docs of `berth_agent::routes`).
async fn delivered(sock: &UdpSocket, ip: IpAddr) -> bool {
    let port = sock.local_addr().unwrap().port();
    let from: SocketAddr = if ip.is_ipv4() {
        "127.0.0.1:0".parse().unwrap()
    } else {
        "[::1]:0".parse().unwrap()
    };
    let c = UdpSocket::bind(from).await.unwrap();
    let payload = format!("to {ip}");
    if c.send_to(payload.as_bytes(), (ip, port)).await.is_err() {
        return false;
    }
    let mut buf = [0; 64];
    // A hang guard only: loopback delivery is immediate.
    let (n, _) = tokio::time::timeout(Duration::from_secs(30), sock.recv_from(&mut buf))
        .await
        .expect("a datagram sent over loopback arrives")
        .unwrap();
    assert_eq!(&buf[..n], payload.as_bytes());
    true
}

/// `rtm_type` of a `local` route.
const RTN_LOCAL: u8 = 2;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn set(ips: &[IpAddr]) -> BTreeSet<IpAddr> {
    ips.iter().copied().collect()
}

#[test]
fn reconcile_installs_local_delivery_and_removes_only_berths_entries() {
    if let Some(why) = netns_unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    in_fresh_netns(|h| async move {
        let cfg = RoutesConfig::default();
        let (a, b, c) = (ip("192.0.2.10"), ip("192.0.2.11"), ip("2001:db8::c"));
        let v4 = UdpSocket::bind("0.0.0.0:0").await.unwrap();
        let v6 = UdpSocket::bind("[::]:0").await.unwrap();
        assert!(
            !delivered(&v4, a).await,
            "A must not be local before Berth routes it"
        );

        let mut lr = LocalRoutes::connect(cfg).await.unwrap();
        let ch = lr.reconcile(&set(&[a, b])).await.unwrap();
        assert_eq!(
            ch,
            Changes {
                added: vec![a, b],
                removed: vec![]
            }
        );
        assert_eq!(berths(&h).await, expected(&[a, b], cfg));
        assert!(delivered(&v4, a).await, "A is delivered locally");
        assert!(delivered(&v4, b).await, "B is delivered locally");

        // Idempotent.
        assert!(lr.reconcile(&set(&[a, b])).await.unwrap().is_empty());
        assert_eq!(berths(&h).await, expected(&[a, b], cfg));

        // A goes, an IPv6 IP comes. IPv6 needs nothing special in a fresh namespace: `lo` up
        // has ::1 (disable_ipv6 is 0 there), and a route, unlike an address, has no DAD.
        let ch = lr.reconcile(&set(&[b, c])).await.unwrap();
        assert_eq!(
            ch,
            Changes {
                added: vec![c],
                removed: vec![a]
            }
        );
        assert_eq!(berths(&h).await, expected(&[b, c], cfg));
        assert!(!delivered(&v4, a).await, "A no longer delivered");
        assert!(delivered(&v6, c).await, "C (IPv6) is delivered locally");
        // IPv6: a TCP listener on [::] accepts a connection to C, from an unbound client.
        let l6 = TcpListener::bind("[::]:0").await.unwrap();
        let port = l6.local_addr().unwrap().port();
        let mut client = TcpStream::connect((c, port)).await.unwrap();
        let (mut server, _) = l6.accept().await.unwrap();
        assert_eq!(server.local_addr().unwrap().ip(), c);
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        // IPv4: a TCP listener on 0.0.0.0 accepts a connection to B and answers from B (the
        // route is in table local, so B is a valid source address).
        let l4 = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = l4.local_addr().unwrap().port();
        let mut client = TcpStream::connect((b, port)).await.unwrap();
        let (mut server, _) = l4.accept().await.unwrap();
        assert_eq!(server.local_addr().unwrap().ip(), b);
        client.write_all(b"pong").await.unwrap();
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");

        // Someone else's rule and route, in Berth's table even, with their own protocol and
        // priority.
        let other = ip("192.0.2.99");
        let mut rule = h
            .rule()
            .add()
            .v4()
            .destination_prefix("192.0.2.99".parse().unwrap(), 32);
        rule = rule
            .table_id(cfg.table)
            .priority(1500)
            .action(RuleAction::ToTable);
        rule.message_mut()
            .attributes
            .push(RuleAttribute::Protocol(RouteProtocol::Static));
        rule.execute().await.unwrap();
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.destination_prefix_length = 32;
        route.header.protocol = RouteProtocol::Static;
        route.header.scope = RouteScope::Host;
        route.header.kind = RouteType::Local;
        route.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet("192.0.2.99".parse().unwrap())),
            RouteAttribute::Table(cfg.table),
            RouteAttribute::Oif(1),
        ];
        h.route().add(route).execute().await.unwrap();

        // A second run (the first crashed: no remove_all) with another table and priority
        // leaves entries; a third run with the original configuration removes them and the
        // first run's leftovers on its first reconcile.
        let old = RoutesConfig {
            table: 2431,
            priority: 999,
        };
        drop(lr);
        let mut crashed = LocalRoutes::connect(old).await.unwrap();
        // Its own first reconcile already removes the first run's entries (another table).
        let ch = crashed.reconcile(&set(&[a])).await.unwrap();
        assert_eq!(
            ch,
            Changes {
                added: vec![a],
                removed: vec![b, c]
            }
        );
        assert_eq!(berths(&h).await, expected(&[a], old));
        drop(crashed);

        let mut fresh = LocalRoutes::connect(cfg).await.unwrap();
        let ch = fresh.reconcile(&set(&[b])).await.unwrap();
        assert_eq!(
            ch,
            Changes {
                added: vec![b],
                removed: vec![a]
            }
        );
        assert_eq!(berths(&h).await, expected(&[b], cfg));
        assert!(!delivered(&v4, a).await, "the stale run's A is gone");
        assert!(delivered(&v4, b).await);

        // Clean shutdown: nothing of Berth's, the other owner's entries untouched.
        let ch = fresh.remove_all().await.unwrap();
        assert_eq!(
            ch,
            Changes {
                added: vec![],
                removed: vec![b]
            }
        );
        assert_eq!(berths(&h).await, (BTreeSet::new(), BTreeSet::new()));
        assert!(
            rules(&h).await.contains(&(other, cfg.table, 1500, 4)),
            "foreign rule kept"
        );
        assert!(
            routes(&h).await.contains(&(other, cfg.table, RTN_LOCAL, 4)),
            "foreign route kept"
        );
        assert!(delivered(&v4, other).await, "foreign entries still work");
        assert!(fresh.remove_all().await.unwrap().is_empty());
    });
}

#[test]
fn half_present_ip_is_repaired() {
    if let Some(why) = netns_unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    in_fresh_netns(|h| async move {
        let cfg = RoutesConfig {
            table: 100,
            priority: 10,
        };
        let a = ip("2001:db8::77");
        let mut lr = LocalRoutes::connect(cfg).await.unwrap();
        lr.reconcile(&set(&[a])).await.unwrap();
        // Someone deletes Berth's rule by hand.
        let dump: Vec<RuleMessage> = h
            .rule()
            .get(IpVersion::V6)
            .execute()
            .try_collect()
            .await
            .unwrap();
        let ours = dump
            .into_iter()
            .find(|m| {
                m.attributes
                    .contains(&RuleAttribute::Protocol(RouteProtocol::from(
                        BERTH_PROTOCOL,
                    )))
            })
            .unwrap();
        h.rule().del(ours).execute().await.unwrap();
        assert!(berths(&h).await.0.is_empty());

        let ch = lr.reconcile(&set(&[a])).await.unwrap();
        assert_eq!(
            ch,
            Changes {
                added: vec![a],
                removed: vec![]
            }
        );
        assert_eq!(berths(&h).await, expected(&[a], cfg));
        lr.remove_all().await.unwrap();
        assert_eq!(berths(&h).await, (BTreeSet::new(), BTreeSet::new()));
    });
}
