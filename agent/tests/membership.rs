//! Membership over loopback UDP: convergence, crash detection, graceful leave, restart, keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use berth_agent::membership::{Membership, MembershipConfig, MembershipMetrics, Timing};
use tokio::sync::watch;

/// Generous bound for anything to happen: the tests prove behaviour, not speed.
const PATIENCE: Duration = Duration::from_secs(10);
const KEY: &[u8] = b"berth-test-membership-key-0123456789";

type Alive = watch::Receiver<BTreeSet<String>>;

fn config(node: &str, listen: SocketAddr, seeds: Vec<SocketAddr>, key: &[u8]) -> MembershipConfig {
    MembershipConfig {
        node: node.to_string(),
        listen,
        advertise: listen,
        seeds,
        key: key.to_vec(),
        timing: Timing::fast(),
        metrics: MembershipMetrics::default(),
        generation_file: None,
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start(cfg: MembershipConfig) -> (Membership, Alive) {
    Membership::start(cfg).await.unwrap()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Waits until `rx` holds `want`; returns how long it took, or panics after [`PATIENCE`].
async fn wait_for(rx: &mut Alive, want: &BTreeSet<String>, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        if *rx.borrow_and_update() == *want {
            return started.elapsed();
        }
        let left = PATIENCE.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("{what}: still {:?}, wanted {want:?}", *rx.borrow()),
        }
    }
}

/// Three members, b and c joining through a.
async fn three() -> [(Membership, Alive); 3] {
    let a = start(config("a", any_port(), vec![], KEY)).await;
    let seed = a.0.identity().addr;
    let b = start(config("b", any_port(), vec![seed], KEY)).await;
    let c = start(config("c", any_port(), vec![seed, any_port()], KEY)).await;
    let mut all = [a, b, c];
    for (m, rx) in &mut all {
        let name = m.identity().name.clone();
        wait_for(rx, &set(&["a", "b", "c"]), &format!("{name} converging")).await;
    }
    all
}

#[tokio::test]
async fn three_members_converge_to_the_same_set() {
    let [(a, _), (b, _), (c, _)] = three().await;
    for m in [&a, &b, &c] {
        assert_eq!(m.metrics().members.get(), 3);
        assert!(m.metrics().datagrams_sent.get() > 0);
        assert!(m.metrics().datagrams_received.get() > 0);
        assert_eq!(m.metrics().auth_failures.get(), 0);
    }
}

#[tokio::test]
async fn a_killed_member_disappears_from_the_others() {
    let [(_a, mut ra), (_b, mut rb), (c, _)] = three().await;
    let killed = Instant::now();
    drop(c); // like SIGKILL: no goodbye
    let want = set(&["a", "b"]);
    wait_for(&mut ra, &want, "a dropping c").await;
    wait_for(&mut rb, &want, "b dropping c").await;
    println!(
        "crash detected by both survivors after {:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn a_graceful_leave_removes_the_member_at_once() {
    // Suspicion so slow that only the leave message can remove c within PATIENCE.
    let slow = Timing {
        suspect_to_down: Duration::from_secs(60),
        ..Timing::fast()
    };
    let mut cfg_a = config("a", any_port(), vec![], KEY);
    cfg_a.timing = slow.clone();
    let (a, mut ra) = start(cfg_a).await;
    let seed = a.identity().addr;
    let mut cfg_b = config("b", any_port(), vec![seed], KEY);
    cfg_b.timing = slow.clone();
    let (_b, mut rb) = start(cfg_b).await;
    let mut cfg_c = config("c", any_port(), vec![seed], KEY);
    cfg_c.timing = slow;
    let (c, mut rc) = start(cfg_c).await;
    for rx in [&mut ra, &mut rb, &mut rc] {
        wait_for(rx, &set(&["a", "b", "c"]), "converging").await;
    }
    let left = Instant::now();
    c.leave().await;
    wait_for(&mut ra, &set(&["a", "b"]), "a dropping c after its leave").await;
    wait_for(&mut rb, &set(&["a", "b"]), "b dropping c after its leave").await;
    println!("leave seen by both after {:?}", left.elapsed());
    drop(a);
}

#[tokio::test]
async fn a_restarted_member_with_the_same_name_rejoins() {
    let [(_a, mut ra), (_b, mut rb), (c, _)] = three().await;
    let c_addr = c.identity().addr;
    let seeds = vec![_a.identity().addr];
    drop(c);
    wait_for(&mut ra, &set(&["a", "b"]), "a dropping c").await;
    wait_for(&mut rb, &set(&["a", "b"]), "b dropping c").await;
    // Same name, same address, new process (the old socket closes once its task is gone).
    let mut restarted = None;
    for _ in 0..50 {
        match Membership::start(config("c", c_addr, seeds.clone(), KEY)).await {
            Ok(m) => {
                restarted = Some(m);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let (_c, mut rc) = restarted.expect("the old socket was never released");
    let all = set(&["a", "b", "c"]);
    wait_for(&mut rc, &all, "restarted c seeing everyone").await;
    wait_for(&mut ra, &all, "a seeing c again").await;
    wait_for(&mut rb, &all, "b seeing c again").await;
}

#[tokio::test]
async fn members_started_in_any_order_converge() {
    // b starts first and points at a's future address; it keeps announcing while alone.
    let a_addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_b, mut rb) = start(config("b", any_port(), vec![a_addr], KEY)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*rb.borrow(), set(&["b"]));
    let (_a, mut ra) = start(config("a", a_addr, vec![], KEY)).await;
    wait_for(&mut ra, &set(&["a", "b"]), "a finding b").await;
    wait_for(&mut rb, &set(&["a", "b"]), "b finding a").await;
}

#[tokio::test]
async fn seeds_given_later_are_used() {
    let (a, mut ra) = start(config("a", any_port(), vec![], KEY)).await;
    let (b, mut rb) = start(config("b", any_port(), vec![], KEY)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*rb.borrow(), set(&["b"]), "no seeds, nobody to join");
    b.set_seeds(vec![b.identity().addr, a.identity().addr])
        .await;
    wait_for(&mut ra, &set(&["a", "b"]), "a finding b").await;
    wait_for(&mut rb, &set(&["a", "b"]), "b finding a").await;
}

#[tokio::test]
async fn a_member_with_another_key_never_joins_and_is_counted() {
    let metrics_a = MembershipMetrics::default();
    let mut cfg_a = config("a", any_port(), vec![], KEY);
    cfg_a.metrics = metrics_a.clone();
    let (a, ra) = start(cfg_a).await;
    let (_b, mut rb) = start(config("b", any_port(), vec![a.identity().addr], KEY)).await;
    wait_for(&mut rb, &set(&["a", "b"]), "b joining").await;
    let (_intruder, ri) = start(config(
        "intruder",
        any_port(),
        vec![a.identity().addr],
        b"another-key-of-sufficient-length",
    ))
    .await;
    let started = Instant::now();
    while metrics_a.auth_failures.get() < 3 {
        assert!(
            started.elapsed() < PATIENCE,
            "a never saw the intruder's datagrams"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Several announce rounds later, still apart.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // (Only the intruder is checked: on a loaded machine b may flap, which is not this test's
    // business.)
    assert!(!ra.borrow().contains("intruder"), "{:?}", *ra.borrow());
    assert_eq!(*ri.borrow(), set(&["intruder"]));
    assert!(metrics_a.auth_failures.get() >= 3);
}

#[tokio::test]
async fn bad_configuration_is_refused_with_a_reason() {
    let short = Membership::start(config("a", any_port(), vec![], b"short")).await;
    let e = short.err().unwrap().to_string();
    assert!(e.contains("at least 16"), "{e}");
    let nameless = Membership::start(config("", any_port(), vec![], KEY)).await;
    assert!(nameless.err().unwrap().to_string().contains("name"));
    let mut cfg = config("a", "0.0.0.0:0".parse().unwrap(), vec![], KEY);
    cfg.advertise = "0.0.0.0:0".parse().unwrap();
    let e = Membership::start(cfg).await.err().unwrap().to_string();
    assert!(e.contains("advertise"), "{e}");
}

/// A loopback "network" of forwarders, one in front of each member, so a member can be cut off
/// (nothing to or from it passes) and reconnected, without root.
struct Net {
    cut: std::sync::Arc<std::sync::Mutex<BTreeSet<SocketAddr>>>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
}

impl Net {
    fn new() -> Self {
        Self {
            cut: Default::default(),
            forwarders: Vec::new(),
        }
    }

    /// Starts a member behind a forwarder; it advertises the forwarder's address.
    async fn member(&mut self, node: &str, seeds: Vec<SocketAddr>) -> (Membership, Alive) {
        let front = tokio::net::UdpSocket::bind(any_port()).await.unwrap();
        let mut cfg = config(node, any_port(), seeds, KEY);
        cfg.advertise = front.local_addr().unwrap();
        let (m, rx) = start(cfg).await;
        let real = m.local_addr();
        let cut = self.cut.clone();
        self.forwarders.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((len, from)) = front.recv_from(&mut buf).await {
                let blocked = {
                    let cut = cut.lock().unwrap();
                    cut.contains(&real) || cut.contains(&from)
                };
                if !blocked {
                    let _ = front.send_to(&buf[..len], real).await;
                }
            }
        }));
        (m, rx)
    }

    fn cut(&self, m: &Membership, cut: bool) {
        let mut set = self.cut.lock().unwrap();
        if cut {
            set.insert(m.local_addr());
        } else {
            set.remove(&m.local_addr());
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for f in &self.forwarders {
            f.abort();
        }
    }
}

#[tokio::test]
async fn a_member_cut_off_and_reconnected_rejoins() {
    let mut net = Net::new();
    let (a, mut ra) = net.member("a", vec![]).await;
    let seed = a.identity().addr;
    let (_b, mut rb) = net.member("b", vec![seed]).await;
    let (c, mut rc) = net.member("c", vec![seed]).await;
    let all = set(&["a", "b", "c"]);
    for rx in [&mut ra, &mut rb, &mut rc] {
        wait_for(rx, &all, "converging through the forwarders").await;
    }
    net.cut(&c, true);
    wait_for(&mut ra, &set(&["a", "b"]), "a dropping the cut-off c").await;
    wait_for(&mut rb, &set(&["a", "b"]), "b dropping the cut-off c").await;
    wait_for(&mut rc, &set(&["c"]), "c seeing nobody").await;
    let healed = Instant::now();
    net.cut(&c, false);
    for rx in [&mut ra, &mut rb, &mut rc] {
        wait_for(rx, &all, "everyone seeing c again after the link is back").await;
    }
    println!("rejoined {:?} after the link came back", healed.elapsed());
}

#[tokio::test]
async fn authenticated_garbage_is_counted_and_harmless() {
    let [(a, mut ra), (_b, _), (_c, _)] = three().await;
    let key = berth_agent::membership::AuthKey::new(KEY).unwrap();
    let sender = tokio::net::UdpSocket::bind(any_port()).await.unwrap();
    let mut junk = 0x9e37_79b9_u32;
    for len in 0..200usize {
        let payload: Vec<u8> = (0..len)
            .map(|_| {
                junk ^= junk << 13;
                junk ^= junk >> 17;
                junk ^= junk << 5;
                junk as u8
            })
            .collect();
        sender
            .send_to(&key.seal(&payload), a.identity().addr)
            .await
            .unwrap();
    }
    let started = Instant::now();
    while a.metrics().protocol_errors.get() < 100 {
        assert!(started.elapsed() < PATIENCE, "the garbage was not rejected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.metrics().auth_failures.get(), 0, "correctly signed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = ra.borrow_and_update().clone();
    assert!(
        now.is_subset(&set(&["a", "b", "c"])),
        "garbage became a member: {now:?}"
    );
    wait_for(&mut ra, &set(&["a", "b", "c"]), "still working").await;
}

/// A member that announces interfaces it cannot answer on is seen with them by the others,
/// then without them, and never leaves their alive set on the way (its IPs elsewhere stay).
#[tokio::test]
async fn an_unable_interface_spreads_without_the_member_leaving() {
    let [(a, _), (b, mut b_alive), (c, mut c_alive)] = three().await;
    let all = set(&["a", "b", "c"]);
    let mut unable = [b.unable(), c.unable()];
    a.unable_handle().set(set(&["eth0"])).await;
    for (i, rx) in unable.iter_mut().enumerate() {
        let seen = tokio::time::timeout(
            PATIENCE,
            rx.wait_for(|u| u.get("a") == Some(&set(&["eth0"]))),
        )
        .await;
        assert!(seen.is_ok(), "member {i} never saw a's unable interface");
    }
    assert_eq!(*b_alive.borrow_and_update(), all);
    assert_eq!(*c_alive.borrow_and_update(), all);
    a.unable_handle().set(BTreeSet::new()).await;
    for (i, rx) in unable.iter_mut().enumerate() {
        let cleared = tokio::time::timeout(PATIENCE, rx.wait_for(|u| !u.contains_key("a"))).await;
        assert!(cleared.is_ok(), "member {i} never saw a able again");
    }
    // Settled: still three, and the rename was never taken for a departure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*b_alive.borrow(), all);
    assert_eq!(*c_alive.borrow(), all);
    assert_eq!(b.metrics().members.get(), 3);
    assert_eq!(a.metrics().rejoins.get(), 0);
}
