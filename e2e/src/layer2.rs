//! A Layer2 segment for the agent's tests and failover bench: a bridge namespace, three node
//! namespaces each running `berth-agent` and a server that answers with the node's name, and
//! a client namespace, all on one Ethernet segment (10.0.0.0/24, fd00::/64).
//!
//! ```text
//!            bridge namespace: br0 (no address, multicast snooping off)
//!        ┌──────────────┬──────────────┬──────────────┬──────────────┐
//!   client .2/::2   n1 .11/::11     n2 .12/::12     n3 .13/::13      EIPs 10.0.0.240, fd00::240
//! ```
//!
//! With [`Gossip::OwnLink`] the agents gossip over a second bridge (`br1`, the nodes' `eth1`,
//! 10.1.0.0/24), so the client-facing link can fail while the membership stays whole.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::netns::{Lab, run};

/// The Layer2 IPv4 EIP.
pub const EIP4: &str = "10.0.0.240";
/// The Layer2 IPv6 EIP.
pub const EIP6: &str = "fd00::240";
/// The client's addresses.
pub const CLIENT4: &str = "10.0.0.2";
/// The client's IPv6 address.
pub const CLIENT6: &str = "fd00::2";
/// The port every node's server answers on with its node name.
pub const PORT: u16 = 8080;
/// Node names, as the agents' candidates list them.
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// Answers every connection with the node's name (argv 1), on every address of both families.
pub const SERVER: &str = "import socket,sys
s=socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('::', int(sys.argv[2]))); s.listen(256)
while True:
    c,_=s.accept()
    try: c.sendall(sys.argv[1].encode())
    except Exception: pass
    c.close()";

/// Asks who has an IP, with ARP (`arp IF IP SRC`) or a Neighbor Solicitation (`ndp IF IP SRC`),
/// three times; prints every MAC that answered within argv 5 seconds as `mac=count`.
pub const PROBE: &str = r#"import socket,sys,struct,time
mode,ifname,target,src,wait=sys.argv[1],sys.argv[2],sys.argv[3],sys.argv[4],float(sys.argv[5])
mac=bytes.fromhex(open(f'/sys/class/net/{ifname}/address').read().strip().replace(':',''))
macs={}
def csum(s6,d6,data):
    d=s6+d6+struct.pack('!I',len(data))+b'\0\0\0\x3a'+data
    if len(d)%2: d+=b'\0'
    t=sum(struct.unpack('!%dH'%(len(d)//2),d))
    while t>>16: t=(t&0xffff)+(t>>16)
    return (~t)&0xffff
if mode=='arp':
    s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(0x0806)); s.bind((ifname,0))
    tip=socket.inet_aton(target)
    frame=b'\xff'*6+mac+b'\x08\x06'+struct.pack('!HHBBH',1,0x0800,6,4,1)+mac+socket.inet_aton(src)+b'\0'*6+tip
    ok=lambda f: f[12:14]==b'\x08\x06' and f[20:22]==b'\x00\x02' and f[28:32]==tip
    who=lambda f: f[22:28]
else:
    s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(0x86dd)); s.bind((ifname,0))
    tgt=socket.inet_pton(socket.AF_INET6,target); s6=socket.inet_pton(socket.AF_INET6,src)
    group=b'\xff\x02'+b'\0'*9+b'\x01\xff'+tgt[13:]
    icmp=struct.pack('!BBHI',135,0,0,0)+tgt+b'\x01\x01'+mac
    icmp=icmp[:2]+struct.pack('!H',csum(s6,group,icmp))+icmp[4:]
    frame=b'\x33\x33'+group[12:]+mac+b'\x86\xdd'+struct.pack('!IHBB',0x60000000,len(icmp),58,255)+s6+group+icmp
    ok=lambda f: len(f)>=78 and f[12:14]==b'\x86\xdd' and f[20]==58 and f[54]==136 and f[62:78]==tgt
    who=lambda f: f[6:12]
for _ in range(3): s.send(frame)
end=time.time()+wait
while True:
    left=end-time.time()
    if left<=0: break
    s.settimeout(left)
    try: f=s.recv(2048)
    except socket.timeout: break
    if ok(f):
        m=who(f).hex(':'); macs[m]=macs.get(m,0)+1
print(' '.join(f'{m}={n}' for m,n in sorted(macs.items())))"#;

/// Connects to argv 1 port argv 2 and prints what the server said (`error` on failure).
pub const CONNECT: &str = "import socket,sys
try:
    s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=float(sys.argv[3])); print(s.recv(16).decode())
except Exception as e: print('error')";

/// Runs argv 4.. (the cut: `ip link set ... down` or `kill -KILL pid`), then starts a TCP
/// connection to argv 1 port argv 2 every 5 ms, without waiting for the earlier ones (each
/// gives up after 20 ms unconnected), until a node other than argv 3 answers; prints the
/// seconds from the cut's completion to that answer, and the node. Overlapping attempts: with
/// one attempt at a time, a SYN sent to the old MAC just before the takeover held the next
/// attempt back for its whole 20 ms timeout, so times came in 25 ms steps.
pub const FAILOVER: &str = "import socket,sys,subprocess,time,select
ip,port,old=sys.argv[1],int(sys.argv[2]),sys.argv[3]
subprocess.run(sys.argv[4:],check=True)
t0=time.monotonic(); fam=socket.AF_INET6 if ':' in ip else socket.AF_INET
connecting={}; reading={}; nxt=t0
while time.monotonic()-t0<30:
    now=time.monotonic()
    if now>=nxt:
        nxt=now+0.005; s=socket.socket(fam); s.setblocking(False)
        if s.connect_ex((ip,port)) in (0,115): connecting[s]=now
        else: s.close()
    for d,limit in ((connecting,0.02),(reading,1.0)):
        for s,st in list(d.items()):
            if now-st>limit: s.close(); del d[s]
    r,w,_=select.select(list(reading),list(connecting),[],max(0.0,nxt-time.monotonic()))
    for s in w:
        del connecting[s]
        if s.getsockopt(socket.SOL_SOCKET,socket.SO_ERROR)==0: reading[s]=time.monotonic()
        else: s.close()
    for s in r:
        del reading[s]
        try: who=s.recv(16).decode()
        except Exception: who=''
        s.close()
        if who and who!=old:
            print(f'{time.monotonic()-t0:.4f} {who}'); sys.exit(0)
print('timeout -'); sys.exit(1)";

/// Asks who has each of argv 5.. every argv 3 seconds for argv 4 seconds, from interface
/// argv 1 (ARP from argv 2's IPv4 address for IPv4 IPs, a Neighbor Solicitation from argv 2's
/// IPv6 address for IPv6 ones: argv 2 is `v4,v6`). Prints `ready` once its sockets are open,
/// then per question and IP `time ip macs` (`-`: no answer; time from `ready`). Only answers to
/// the question count: ARP replies to the client's IPv4 address, solicited Neighbor
/// Advertisements; a gratuitous ARP or unsolicited NA (a takeover's announcement) is not an
/// answer, so an IP handed over within a window shows one MAC, and two MACs mean two nodes
/// answered the same question.
pub const SAMPLER: &str = r#"import socket,sys,struct,time,select
ifname,srcs,every,span,ips=sys.argv[1],sys.argv[2].split(','),float(sys.argv[3]),float(sys.argv[4]),sys.argv[5:]
mac=bytes.fromhex(open(f'/sys/class/net/{ifname}/address').read().strip().replace(':',''))
a=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(0x0806)); a.bind((ifname,0))
n=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(0x86dd)); n.bind((ifname,0))
s4=socket.inet_aton(srcs[0]); s6=socket.inet_pton(socket.AF_INET6,srcs[1])
def csum(d):
    if len(d)%2: d+=b'\0'
    t=sum(struct.unpack('!%dH'%(len(d)//2),d))
    while t>>16: t=(t&0xffff)+(t>>16)
    return (~t)&0xffff
frames=[]; v4={}; v6={}
for ip in ips:
    if ':' in ip:
        tgt=socket.inet_pton(socket.AF_INET6,ip); v6[tgt]=ip
        group=b'\xff\x02'+b'\0'*9+b'\x01\xff'+tgt[13:]
        icmp=struct.pack('!BBHI',135,0,0,0)+tgt+b'\x01\x01'+mac
        icmp=icmp[:2]+struct.pack('!H',csum(s6+group+struct.pack('!I',len(icmp))+b'\0\0\0\x3a'+icmp))+icmp[4:]
        frames.append((n,b'\x33\x33'+group[12:]+mac+b'\x86\xdd'+struct.pack('!IHBB',0x60000000,len(icmp),58,255)+s6+group+icmp))
    else:
        tip=socket.inet_aton(ip); v4[tip]=ip
        frames.append((a,b'\xff'*6+mac+b'\x08\x06'+struct.pack('!HHBBH',1,0x0800,6,4,1)+mac+s4+b'\0'*6+tip))
print('ready',flush=True)
t0=time.monotonic(); out=[]
while time.monotonic()-t0<span:
    sent=time.monotonic(); macs={ip:set() for ip in ips}
    for sock,f in frames: sock.send(f)
    end=sent+every
    while True:
        left=end-time.monotonic()
        if left<=0: break
        r,_,_=select.select([a,n],[],[],left)
        for sock in r:
            f=sock.recv(2048)
            if sock is a and f[12:14]==b'\x08\x06' and f[20:22]==b'\x00\x02' and f[28:32] in v4 and f[38:42]==s4:
                macs[v4[f[28:32]]].add(f[22:28].hex(':'))
            if sock is n and len(f)>=78 and f[12:14]==b'\x86\xdd' and f[20]==58 and f[54]==136 and f[58]&0x40 and f[62:78] in v6 and f[6:12]!=mac:
                macs[v6[f[62:78]]].add(f[6:12].hex(':'))
    for ip in ips: out.append(f"{sent-t0:.3f} {ip} {','.join(sorted(macs[ip])) or '-'}")
print('\n'.join(out),flush=True)"#;

/// One question of a [`Sampler`]: when it was asked, for which IP, and every MAC that
/// answered before the next question.
#[derive(Clone, Debug)]
pub struct Window {
    /// When the question went out.
    pub at: Instant,
    /// The IP asked for.
    pub ip: String,
    /// The MACs that answered (lower case), none if nobody did.
    pub macs: Vec<String>,
}

/// Who answers a set of IPs, asked from the client every few tens of milliseconds for a
/// while ([`SAMPLER`]) while the test injects faults; killed on drop.
pub struct Sampler {
    child: std::process::Child,
    started: Instant,
}

impl Sampler {
    /// Starts asking from namespace `client` (the segment's client addresses) about `ips`
    /// every `every` for `span`; returns once its sockets are open.
    pub fn start(
        client: &str,
        ips: &[&str],
        every: Duration,
        span: Duration,
    ) -> Result<Sampler, String> {
        use std::io::Read;
        let srcs = format!("{CLIENT4},{CLIENT6}");
        let (every, span) = (
            every.as_secs_f64().to_string(),
            span.as_secs_f64().to_string(),
        );
        let mut args = vec![
            "netns", "exec", client, "python3", "-c", SAMPLER, "eth0", &srcs, &every, &span,
        ];
        args.extend_from_slice(ips);
        let mut child = std::process::Command::new("ip")
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the sampler: {e}"))?;
        // Byte by byte: a buffered reader could swallow what follows the first line.
        let mut first = Vec::new();
        if let Some(out) = child.stdout.as_mut() {
            let mut byte = [0u8; 1];
            while first.len() < 64 && matches!(out.read(&mut byte), Ok(1)) && byte[0] != b'\n' {
                first.push(byte[0]);
            }
        }
        let started = Instant::now();
        let first = String::from_utf8_lossy(&first).into_owned();
        if first.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the sampler did not start: {first:?}"));
        }
        Ok(Sampler { child, started })
    }

    /// Waits for the span to end and returns every question, in order.
    pub fn finish(mut self) -> Result<Vec<Window>, String> {
        use std::io::Read;
        let mut text = String::new();
        if let Some(out) = self.child.stdout.as_mut() {
            out.read_to_string(&mut text)
                .map_err(|e| format!("reading the sampler: {e}"))?;
        }
        let _ = self.child.wait();
        let mut windows = Vec::new();
        for line in text.lines() {
            let mut f = line.split(' ');
            let (Some(at), Some(ip), Some(macs)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(at) = at.parse::<f64>() else {
                continue;
            };
            windows.push(Window {
                at: self.started + Duration::from_secs_f64(at),
                ip: ip.to_owned(),
                macs: if macs == "-" {
                    Vec::new()
                } else {
                    macs.split(',').map(str::to_lowercase).collect()
                },
            });
        }
        Ok(windows)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How the agents find each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gossip {
    /// No membership flags: every candidate is taken as alive.
    Off,
    /// SWIM over the client segment (`eth0`, 10.0.0.0/24).
    OnSegment,
    /// SWIM over a link of its own (`eth1` on bridge `br1`, 10.1.0.0/24).
    OwnLink,
}

/// The segment and its processes; everything is removed on drop.
pub struct Segment {
    /// The namespaces and processes.
    pub lab: Lab,
    /// The client's namespace.
    pub client: String,
    /// The bridge's namespace.
    pub bridge: String,
    /// Node namespaces, in [`Segment::names`] order.
    pub nodes: Vec<String>,
    /// Node names ([`NODES`] unless started with [`Segment::start_sized`]).
    pub names: Vec<String>,
    /// Each node's MAC on the segment.
    pub macs: Vec<String>,
    /// The agent's PID on each node (`None` while stopped).
    pub agents: Vec<Option<u32>>,
    /// Configs and logs.
    pub dir: PathBuf,
    agent: String,
    gossip: Gossip,
    restarts: usize,
}

/// The static file every agent reads.
pub fn static_file() -> String {
    format!(
        "localIps: [198.51.100.10]
layer2:
  - service: default/web
    ips: [{EIP4}, \"{EIP6}\"]
    interface: eth0
    candidates: [n1, n2, n3]
"
    )
}

impl Segment {
    /// Builds the segment and starts an agent and a server on each node. `gossip` gives the
    /// agents the membership flags (a key file and each other as seeds).
    pub fn start(name: &str, agent: &str, gossip: bool) -> Result<Segment, String> {
        let how = if gossip {
            Gossip::OnSegment
        } else {
            Gossip::Off
        };
        Segment::start_with(name, agent, how)
    }

    /// Builds the segment with the agents gossiping as `gossip` says.
    pub fn start_with(name: &str, agent: &str, gossip: Gossip) -> Result<Segment, String> {
        let names: Vec<String> = NODES.iter().map(|n| n.to_string()).collect();
        Segment::start_sized(name, agent, gossip, &names, &static_file())
    }

    /// `n` nodes named n1..n`n` (addresses .11 up), every one a candidate of every IP in
    /// `ips` (IPv4 Layer2 IPs of service default/many).
    pub fn start_many(
        name: &str,
        agent: &str,
        n: usize,
        ips: &[String],
    ) -> Result<Segment, String> {
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let file = format!(
            "layer2:
  - service: default/many
    ips: [{}]
    interface: eth0
    candidates: [{}]
",
            ips.join(", "),
            names.join(", ")
        );
        Segment::start_sized(name, agent, Gossip::OnSegment, &names, &file)
    }

    /// Builds the segment with nodes `names` reading `static_yaml`.
    pub fn start_sized(
        name: &str,
        agent: &str,
        gossip: Gossip,
        names: &[String],
        static_yaml: &str,
    ) -> Result<Segment, String> {
        let dir = crate::test_dir(name).map_err(|e| e.to_string())?;
        let mut lab = Lab::new(&format!("{name}-"));
        let bridge = lab.namespace("b")?;
        lab.bridge(&bridge, "br0", &[])?;
        run(
            "ip",
            &[
                "-n",
                &bridge,
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        if gossip == Gossip::OwnLink {
            lab.bridge(&bridge, "br1", &[])?;
        }
        let client = lab.namespace("c")?;
        lab.plug(
            &bridge,
            "br0",
            "pc",
            &client,
            "eth0",
            &[&format!("{CLIENT4}/24"), &format!("{CLIENT6}/64")],
        )?;
        std::fs::write(dir.join("static.yaml"), static_yaml).map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join("gossip.key"),
            "berth-l2-test-key-0123456789abcdef\n",
        )
        .map_err(|e| e.to_string())?;
        let mut nodes = Vec::new();
        let mut macs = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let ns = lab.namespace(n)?;
            let host = 11 + i;
            lab.plug(
                &bridge,
                "br0",
                &format!("p{i}"),
                &ns,
                "eth0",
                &[&format!("10.0.0.{host}/24"), &format!("fd00::{host}/64")],
            )?;
            if gossip == Gossip::OwnLink {
                lab.plug(
                    &bridge,
                    "br1",
                    &format!("g{i}"),
                    &ns,
                    "eth1",
                    &[&format!("10.1.0.{host}/24")],
                )?;
            }
            // Linux drops a link's IPv6 addresses when it goes down (keep_addr_on_down 0):
            // after a link cut and restore the node would keep answering NDP for the EIP
            // but have no address and no route back to the client. Nodes keep theirs.
            lab.exec(
                &ns,
                "sysctl",
                &["-qw", "net.ipv6.conf.eth0.keep_addr_on_down=1"],
            )?;
            let mac = lab
                .exec(&ns, "cat", &["/sys/class/net/eth0/address"])?
                .trim()
                .to_owned();
            lab.spawn(
                &ns,
                "python3",
                &["-c", SERVER, n, &PORT.to_string()],
                &dir.join(format!("server-{n}.log")),
            )?;
            nodes.push(ns);
            macs.push(mac);
        }
        let mut seg = Segment {
            lab,
            client,
            bridge,
            nodes,
            macs,
            agents: vec![None; names.len()],
            names: names.to_vec(),
            dir,
            agent: agent.to_owned(),
            gossip,
            restarts: 0,
        };
        for i in 0..seg.names.len() {
            seg.start_agent(i)?;
        }
        Ok(seg)
    }

    /// The agent's command line on node `i`.
    pub fn agent_args(&self, i: usize) -> Vec<String> {
        let host = 11 + i;
        let mut args = vec![
            "--node-name".to_owned(),
            self.names[i].clone(),
            "--static".to_owned(),
            self.dir.join("static.yaml").display().to_string(),
            "--metrics-listen".to_owned(),
            "127.0.0.1:9474".to_owned(),
            // One per node: the nodes share the host's /run.
            "--state-dir".to_owned(),
            self.dir
                .join(format!("state-{}", self.names[i]))
                .display()
                .to_string(),
        ];
        let net = match self.gossip {
            Gossip::Off => None,
            Gossip::OnSegment => Some("10.0.0"),
            Gossip::OwnLink => Some("10.1.0"),
        };
        if let Some(net) = net {
            args.extend([
                "--gossip-listen".to_owned(),
                format!("{net}.{host}:7946"),
                "--gossip-key-file".to_owned(),
                self.dir.join("gossip.key").display().to_string(),
            ]);
            for j in 0..self.names.len() {
                if j != i {
                    args.extend(["--gossip-seed".to_owned(), format!("{net}.{}:7946", 11 + j)]);
                }
            }
        }
        args
    }

    /// Starts (or restarts) node `i`'s agent.
    pub fn start_agent(&mut self, i: usize) -> Result<(), String> {
        let args = self.agent_args(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.restarts += 1;
        let log = self
            .dir
            .join(format!("agent-{}-{}.log", self.names[i], self.restarts));
        let pid = self.lab.spawn_env(
            &self.nodes[i],
            &self.agent,
            &args,
            &[("RUST_LOG", "info,berth_agent=debug")],
            &log,
        )?;
        self.agents[i] = Some(pid);
        Ok(())
    }

    /// SIGKILLs node `i`'s agent (a crash) and waits for it.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(pid) = self.agents[i].take() {
            self.lab.kill(pid);
        }
    }

    /// SIGTERMs node `i`'s agent (clean shutdown) and waits for it.
    pub fn terminate_agent(&mut self, i: usize) {
        if let Some(pid) = self.agents[i].take() {
            self.lab.terminate(pid);
        }
    }

    /// Berth's rules and routes (protocol 66) on node `i`, one line each.
    pub fn berth_entries(&self, i: usize) -> Vec<String> {
        let ns = &self.nodes[i];
        let mut out = Vec::new();
        for args in [
            ["-4", "route", "show", "table", "all"],
            ["-6", "route", "show", "table", "all"],
            ["-4", "rule", "show", "", ""],
            ["-6", "rule", "show", "", ""],
        ] {
            let mut a = vec!["-n", ns.as_str()];
            a.extend(args.iter().filter(|s| !s.is_empty()));
            if let Ok(text) = run("ip", &a) {
                out.extend(
                    text.lines()
                        .filter(|l| l.contains("proto 66"))
                        .map(str::to_owned),
                );
            }
        }
        out
    }

    /// Takes node `i`'s link down or up.
    pub fn set_link(&self, i: usize, up: bool) -> Result<(), String> {
        run(
            "ip",
            &[
                "-n",
                &self.nodes[i],
                "link",
                "set",
                "eth0",
                if up { "up" } else { "down" },
            ],
        )
        .map(|_| ())
    }

    /// Which MACs answer who-has `ip` (ARP or NDP by its family), with reply counts.
    pub fn who_answers(&self, ip: &str) -> Result<Vec<(String, usize)>, String> {
        self.who_answers_within(ip, Duration::from_secs(1))
    }

    /// Which MACs answer who-has `ip` within `wait` of the question, with reply counts.
    pub fn who_answers_within(
        &self,
        ip: &str,
        wait: Duration,
    ) -> Result<Vec<(String, usize)>, String> {
        let (mode, src) = if ip.contains(':') {
            ("ndp", CLIENT6)
        } else {
            ("arp", CLIENT4)
        };
        let out = self.lab.exec(
            &self.client,
            "python3",
            &[
                "-c",
                PROBE,
                mode,
                "eth0",
                ip,
                src,
                &wait.as_secs_f64().to_string(),
            ],
        )?;
        Ok(out
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(m, n)| (m.to_owned(), n.parse().unwrap_or(0)))
            .collect())
    }

    /// Drops the agents' gossip (UDP 7946, both directions) on every node with an nftables
    /// table of its own (`inet berth_gossip_block`); the client segment stays up. Undone by
    /// [`Segment::heal_gossip`], and by the namespaces' removal on drop.
    pub fn block_gossip(&self) -> Result<(), String> {
        let rules = self.dir.join("block-gossip.nft");
        std::fs::write(
            &rules,
            "table inet berth_gossip_block {
  chain input { type filter hook input priority 0; policy accept; udp dport 7946 drop; udp sport 7946 drop; }
  chain output { type filter hook output priority 0; policy accept; udp dport 7946 drop; udp sport 7946 drop; }
}
",
        )
        .map_err(|e| e.to_string())?;
        let rules = rules.display().to_string();
        for ns in &self.nodes {
            self.lab.exec(ns, "nft", &["-f", &rules])?;
        }
        Ok(())
    }

    /// Removes what [`Segment::block_gossip`] added (nodes without it are skipped).
    pub fn heal_gossip(&self) -> Result<(), String> {
        let mut failed = Vec::new();
        for ns in &self.nodes {
            let has = self
                .lab
                .exec(ns, "nft", &["list", "tables"])
                .unwrap_or_default();
            if has.contains("berth_gossip_block")
                && let Err(e) = self.lab.exec(
                    ns,
                    "nft",
                    &["delete", "table", "inet", "berth_gossip_block"],
                )
            {
                failed.push(e);
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    /// The sum of node `i`'s agent metric series whose line starts with `name` (e.g.
    /// `berth_agent_membership_size`), from its /metrics.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let text = self
            .lab
            .exec(
                &self.nodes[i],
                "python3",
                &[
                    "-c",
                    "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9474/metrics',timeout=2).read().decode())",
                ],
            )
            .ok()?;
        crate::metric_names::sum(&text, name, None)
    }

    /// The MAC in the client's neighbour entry for `ip`, if it has one with an address.
    pub fn client_neighbour(&self, ip: &str) -> Option<String> {
        let out = run("ip", &["-n", &self.client, "neigh", "show", ip]).ok()?;
        let mut words = out.split_whitespace();
        words.by_ref().find(|w| *w == "lladdr")?;
        words.next().map(str::to_owned)
    }

    /// Connects from the client to `ip` and returns the node that answered (`error` if none).
    pub fn connect(&self, ip: &str, timeout: Duration) -> String {
        self.lab
            .exec(
                &self.client,
                "python3",
                &[
                    "-c",
                    CONNECT,
                    ip,
                    &PORT.to_string(),
                    &timeout.as_secs_f64().to_string(),
                ],
            )
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    /// The node index owning `mac`.
    pub fn node_of(&self, mac: &str) -> Option<usize> {
        self.macs.iter().position(|m| m.eq_ignore_ascii_case(mac))
    }

    /// Waits until the client reaches `ip` and returns the node that answered.
    pub fn wait_reachable(&self, ip: &str, limit: Duration) -> Option<String> {
        wait(limit, || {
            Some(self.connect(ip, Duration::from_millis(500))).filter(|n| self.names.contains(n))
        })
    }

    /// Cuts (runs `cut`) and measures, from the client, the time until a node other than
    /// `old` answers on `ip`: `(seconds, node)`.
    pub fn failover(&self, ip: &str, old: &str, cut: &[&str]) -> Result<(f64, String), String> {
        let mut args = vec!["-c", FAILOVER, ip];
        let port = PORT.to_string();
        args.extend([port.as_str(), old]);
        args.extend_from_slice(cut);
        let out = self.lab.exec(&self.client, "python3", &args)?;
        let (secs, node) = out
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("failover probe said {out:?}"))?;
        Ok((
            secs.parse()
                .map_err(|_| format!("failover probe said {out:?}"))?,
            node.to_owned(),
        ))
    }

    /// The path of node `i`'s latest agent log.
    pub fn agent_log(&self, i: usize) -> PathBuf {
        self.dir
            .join(format!("agent-{}-{}.log", self.names[i], self.restarts))
    }

    /// Every agent log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            let mut paths: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for p in paths
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
            {
                out.push_str(&format!("--- {}\n{}\n", p.display(), tail(p, 40)));
            }
        }
        out
    }
}

fn tail(p: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` every 50 ms until it gives a value or `limit` passes.
pub fn wait<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
