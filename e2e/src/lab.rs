//! The lab: the whole of Berth on one machine. Network namespaces for a router (FRR, or
//! BIRD 2), three nodes, a client and a control plane; the in-memory API server (a test
//! double, see [`crate::apiserver`]) in the control-plane namespace; Berth installed from
//! its chart by the README's `helm install`, and the lab's kubelet
//! ([`crate::kubelet`]) runs each workload's Pods from their rendered Pod spec (two operator
//! replicas in Pod namespaces of their own, the bgp-server StatefulSet's replica on node1,
//! an agent on every node).
//!
//! ```text
//!                 client (10.1.0.2) ── router (10.1.0.1 | br0 10.0.0.1, FRR AS 64513)
//!                      └─ eth1 10.0.0.50 ─┐            │ bridge br0 10.0.0.0/24
//!        ctl 10.0.0.100 (API server)  node1 .11 (speaker, agent)  node2 .12 (agent)  node3 .13 (agent)
//!        operator Pods 10.0.0.101, .102
//! ```
//!
//! The host reaches the API server through a forwarder on 127.0.0.1 (`kubectl` works from the
//! host with the kubeconfig the lab writes, as the admin); the namespaces reach it at
//! 10.0.0.100:6443 (HTTPS). The API server enforces RBAC and CRD admission: the lab runs the
//! README's install commands (`helm install` through Helm's SDK, `scripts/helm`) with
//! `examples/lab/chart/values.yaml`, and each Pod runs with its ServiceAccount's token.
//! Everything is removed on failure, on Ctrl-C, and by `lab down`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bird::Bird;
use crate::frr::{Frr, wait_for};
use crate::kubelet;
use crate::netns::{Lab, run};
use crate::pki;

/// The nodes: name and address on the bridge.
pub const NODES: [(&str, &str); 3] = [
    ("node1", "10.0.0.11"),
    ("node2", "10.0.0.12"),
    ("node3", "10.0.0.13"),
];
/// The router's address on the nodes' bridge.
pub const ROUTER: &str = "10.0.0.1";
/// The control plane's address (API server, operator).
pub const CONTROL: &str = "10.0.0.100";
/// The API server's port inside the lab.
pub const API_PORT: u16 = 6443;
/// The client's address behind the router.
pub const CLIENT: &str = "10.1.0.2";
/// The client's address on the nodes' bridge (for Layer2 IPs).
pub const CLIENT_L2: &str = "10.0.0.50";
/// The port every node's demo server answers on with its node name.
pub const SERVICE_PORT: u16 = 8080;

/// Which router the lab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterKind {
    /// FRR (zebra + bgpd).
    Frr,
    /// BIRD 2.
    Bird,
}

/// Where and how to build the lab.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Namespace name prefix (`blab` for the `lab` binary; tests add their PID).
    pub prefix: String,
    /// Configs, logs, certificates, kubeconfigs.
    pub dir: PathBuf,
    /// The router.
    pub router: RouterKind,
    /// Where the Berth binaries are.
    pub bin_dir: PathBuf,
    /// The repository root (for `config/crd/` and `examples/`).
    pub repo: PathBuf,
    /// The host port of the API server forwarder.
    pub host_port: u16,
    /// Changes the chart's rendered RBAC objects before the lab applies them (tests take a
    /// verb away to see the component refused); `None` applies them as rendered.
    pub rbac_edit: Option<fn(&mut Vec<serde_json::Value>)>,
}

impl Spec {
    fn bin(&self, name: &str) -> String {
        self.bin_dir.join(name).display().to_string()
    }

    /// The kubeconfig for the host (`kubectl --kubeconfig ...`), with the admin's token.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The lab's values for the chart.
    pub fn values(&self) -> PathBuf {
        self.repo.join("examples/lab/chart/values.yaml")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }
}

/// The router as the lab drives it.
pub enum Router {
    /// FRR.
    Frr(Frr),
    /// BIRD.
    Bird(Bird),
}

/// A lab that is up.
pub struct Running {
    /// Namespaces and processes (removed on drop unless kept).
    pub lab: Lab,
    /// How it was built.
    pub spec: Spec,
    /// The router.
    pub router: Router,
    /// Namespace names.
    pub ns: Namespaces,
    /// The in-memory API server's PID.
    pub apiserver: u32,
    /// The Pods the lab's kubelet runs, in the order the chart renders their workloads.
    pub pods: Vec<PodRun>,
    /// The chart's workloads (Deployments, StatefulSets, DaemonSets) as installed.
    pub chart: Vec<serde_json::Value>,
    /// Pods whose readiness probe still answered 503 when `up` returned, with the probe.
    pub unready: Vec<String>,
}

/// A Pod the lab's kubelet runs.
#[derive(Debug, Clone)]
pub struct PodRun {
    /// What it runs and where (see [`kubelet::schedule`]).
    pub plan: kubelet::PodPlan,
    /// Its network namespace (the node's for hostNetwork Pods).
    pub netns: String,
    /// Its Pod IP.
    pub ip: String,
    /// Its node's IP.
    pub host_ip: String,
    launches: Vec<Launch>,
    /// The PIDs of its containers' processes, in container order.
    pub pids: Vec<u32>,
}

impl PodRun {
    /// Whether the Pod belongs to the chart's `component` (`operator`, `bgp-server`, `agent`).
    pub fn is(&self, component: &str) -> bool {
        self.plan
            .labels
            .get("app.kubernetes.io/component")
            .and_then(|v| v.as_str())
            == Some(component)
    }

    /// The container port named `name` (e.g. `metrics`) of its first container.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.plan.containers().first().and_then(|c| {
            c["ports"]
                .as_array()?
                .iter()
                .find(|p| p["name"].as_str() == Some(name))?["containerPort"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
        })
    }

    /// Its log (the first container's).
    pub fn log(&self) -> PathBuf {
        self.launches
            .first()
            .map(|l| l.log.clone())
            .unwrap_or_default()
    }
}

/// The lab's namespace names.
#[derive(Debug, Clone)]
pub struct Namespaces {
    /// The router.
    pub router: String,
    /// The nodes, in [`NODES`] order.
    pub nodes: Vec<String>,
    /// The client.
    pub client: String,
    /// The control plane.
    pub control: String,
}

/// How to start one of Berth's processes, kept so tests can restart it.
#[derive(Debug, Clone)]
pub struct Launch {
    ns: String,
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Launch {
    fn start(&self, lab: &mut Lab) -> Result<u32, String> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // Restarts append to the same log.
        let log = self.log.with_extension(format!(
            "{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        ));
        let log = if self.log.exists() {
            log
        } else {
            self.log.clone()
        };
        lab.spawn_env(&self.ns, &self.program, &args, &env, &log)
    }
}

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// Builds the namespaces and links.
fn topology(lab: &mut Lab) -> Result<Namespaces, String> {
    let router = lab.namespace("r")?;
    lab.bridge(&router, "br0", &[&format!("{ROUTER}/24"), "fd00:10::1/64"])?;
    let mut nodes = Vec::new();
    for (i, (_, addr)) in NODES.iter().enumerate() {
        let node = lab.namespace(&format!("n{}", i + 1))?;
        lab.plug(
            &router,
            "br0",
            &format!("p{}", i + 1),
            &node,
            "eth0",
            &[&format!("{addr}/24")],
        )?;
        lab.exec(&node, "ip", &["route", "add", "default", "via", ROUTER])?;
        nodes.push(node);
    }
    let control = lab.namespace("ctl")?;
    lab.plug(
        &router,
        "br0",
        "pctl",
        &control,
        "eth0",
        &[&format!("{CONTROL}/24")],
    )?;
    lab.exec(&control, "ip", &["route", "add", "default", "via", ROUTER])?;
    let client = lab.namespace("c")?;
    lab.link(
        &router,
        "to-c",
        &["10.1.0.1/24"],
        &client,
        "eth0",
        &[&format!("{CLIENT}/24")],
    )?;
    lab.plug(
        &router,
        "br0",
        "pc",
        &client,
        "eth1",
        &[&format!("{CLIENT_L2}/24")],
    )?;
    // Traffic to BGP IPs goes through the router; the bridge only carries Layer2 IPs.
    lab.exec(
        &client,
        "ip",
        &["route", "add", "default", "via", "10.1.0.1"],
    )?;
    for sysctl in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.fib_multipath_hash_policy=1",
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.br0.send_redirects=0",
    ] {
        lab.exec(&router, "sysctl", &["-q", "-w", sysctl])?;
    }
    Ok(Namespaces {
        router,
        nodes,
        client,
        control,
    })
}

/// The router's FRR configuration: the file docs/routers.md shows users, written for the
/// lab's addresses (router [`ROUTER`], speaker on the first node).
fn frr_conf() -> String {
    include_str!("../../docs/routers/frr-lab.conf").to_owned()
}

/// The same for BIRD.
fn bird_conf() -> String {
    include_str!("../../docs/routers/bird-lab.conf").to_owned()
}

/// A kubeconfig for `server` (HTTPS, its CA in `ca`) with a bearer token.
fn kubeconfig(server: &str, ca: &Path, token: &str) -> String {
    let ca = ca.display();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: berth-lab
  cluster: {{server: \"{server}\", certificate-authority: \"{ca}\"}}
users:
- name: berth-lab
  user: {{token: \"{token}\"}}
contexts:
- name: berth-lab
  context: {{cluster: berth-lab, user: berth-lab}}
current-context: berth-lab
"
    )
}

/// Whether the API server answers `/readyz` through the host's forwarder (kubectl: TLS).
fn api_answers(spec: &Spec) -> bool {
    TcpStream::connect(format!("127.0.0.1:{}", spec.host_port)).is_ok()
        && kubectl(spec, &["--request-timeout=2s", "get", "--raw", "/readyz"]).is_ok()
}

/// Runs `kubectl` against the lab from the host.
pub fn kubectl(spec: &Spec, args: &[&str]) -> Result<String, String> {
    let kc = spec.kubeconfig().display().to_string();
    let mut all = vec!["--kubeconfig", kc.as_str()];
    all.extend_from_slice(args);
    run("kubectl", &all)
}

/// Brings the lab up. On any failure everything built so far is removed (the returned
/// error says which step failed and where its log is).
pub fn up(spec: Spec) -> Result<Running, String> {
    for b in [
        "fake-apiserver",
        "berth-operator",
        "berth-bgp-server",
        "lab",
    ] {
        if !spec.bin_dir.join(b).exists() {
            return Err(format!(
                "{b} is not built in {}: run `cargo build --workspace` first",
                spec.bin_dir.display()
            ));
        }
    }
    std::fs::create_dir_all(&spec.dir).map_err(e)?;
    // kubectl must reach this lab, not another one still holding the port.
    let host_addr = format!("127.0.0.1:{}", spec.host_port);
    if TcpStream::connect(&host_addr).is_ok() {
        return Err(format!(
            "{host_addr} is already in use (another lab?): run `lab down`, or pick another --api-port"
        ));
    }
    let mut lab = Lab::fixed(&spec.prefix);
    let ns = topology(&mut lab)?;

    // The cluster's CA and the API server's serving certificate (kubectl sends tokens only
    // over TLS). The speaker's and the operator's mTLS material is the chart's own (its
    // Secrets, generated at render time), mounted into their Pods.
    let pki_dir = spec.dir.join("pki");
    let ca = pki::Ca::new("berth-lab-ca")?;
    let api_leaf = ca.issue(&[CONTROL, "127.0.0.1", "localhost"], true)?;
    let (api_cert, api_key, ca_pem) = pki::write(&pki_dir, "apiserver", &ca, &api_leaf)?;

    let router = match spec.router {
        RouterKind::Frr => Router::Frr(Frr::start(&mut lab, &ns.router, &spec.dir, &frr_conf())?),
        RouterKind::Bird => {
            Router::Bird(Bird::start(&mut lab, &ns.router, &spec.dir, &bird_conf())?)
        }
    };

    // The API server, in the control-plane namespace; the host reaches it through a Unix
    // socket (filesystem paths cross network namespaces) and a forwarder on loopback. The
    // kubeconfig comes first: the readiness probe is kubectl.
    // With authentication and RBAC on: kubectl from the host is the admin, each component
    // gets its ServiceAccount's token and exactly what the chart's RBAC grants it.
    let api_addr = format!("{CONTROL}:{API_PORT}");
    let crds = spec.repo.join("config/crd").display().to_string();
    let admin_token = pki::random_hex(32)?;
    let admin_token_file = spec.dir.join("admin.token");
    std::fs::write(&admin_token_file, &admin_token).map_err(e)?;
    let apiserver = lab.spawn(
        &ns.control,
        &spec.bin("fake-apiserver"),
        &[
            "--listen",
            &api_addr,
            "--crds",
            &crds,
            "--admin-token-file",
            &admin_token_file.display().to_string(),
            "--tls-cert",
            &api_cert.display().to_string(),
            "--tls-key",
            &api_key.display().to_string(),
        ],
        &spec.dir.join("apiserver.log"),
    )?;
    let sock = spec.socket().display().to_string();
    let _ = std::fs::remove_file(&sock);
    let lab_bin = spec.bin("lab");
    lab.spawn(
        &ns.control,
        &lab_bin,
        &[
            "forward",
            "--listen",
            &format!("unix:{sock}"),
            "--to",
            &api_addr,
        ],
        &spec.dir.join("forward-ctl.log"),
    )?;
    lab.spawn_here(
        &lab_bin,
        &[
            "forward",
            "--listen",
            &host_addr,
            "--to",
            &format!("unix:{sock}"),
        ],
        &spec.dir.join("forward-host.log"),
    )?;
    std::fs::write(
        spec.kubeconfig(),
        kubeconfig(&format!("https://{host_addr}"), &ca_pem, &admin_token),
    )
    .map_err(e)?;
    wait_for(Duration::from_secs(20), || api_answers(&spec).then_some(())).ok_or_else(|| {
        format!(
            "the API server did not answer on {host_addr}: see {}",
            spec.dir.join("apiserver.log").display()
        )
    })?;

    install_as_the_readme_says(&spec)?;
    apply_examples(&spec)?;
    edit_rbac(&spec)?;
    // The workloads as the API server holds them (the controllers' and kubelet's view).
    let got = kubectl(
        &spec,
        &[
            "get",
            "deployments,statefulsets,daemonsets",
            "-n",
            NAMESPACE,
            "-o",
            "json",
        ],
    )?;
    let workloads: serde_json::Value = serde_json::from_str(&got).map_err(e)?;
    let chart: Vec<serde_json::Value> = workloads["items"].as_array().cloned().unwrap_or_default();

    // The kubelet: every Pod of the rendered workloads, started from its Pod spec.
    let nodes: Vec<kubelet::NodeInfo> = NODES
        .iter()
        .map(|(name, addr)| kubelet::NodeInfo {
            name: (*name).to_owned(),
            addr: (*addr).to_owned(),
            labels: [("kubernetes.io/hostname".to_owned(), (*name).to_owned())].into(),
        })
        .collect();
    let plans = kubelet::schedule(&chart, &nodes)?;
    let mut pods = Vec::new();
    let mut tokens = std::collections::BTreeMap::new();
    let mut pod_nets = 0u8;
    for plan in plans {
        let i = NODES
            .iter()
            .position(|(n, _)| *n == plan.node)
            .ok_or_else(|| format!("pod {} was placed on unknown node {}", plan.name, plan.node))?;
        let host_ip = NODES[i].1.to_owned();
        let (netns, ip) = if plan.host_network() {
            (ns.nodes[i].clone(), host_ip.clone())
        } else {
            // Its own network namespace on the nodes' bridge, as a CNI would give it.
            pod_nets += 1;
            let ip = format!("{POD_NET}{}", 100 + pod_nets);
            let netns = lab.namespace(&format!("pod{pod_nets}"))?;
            lab.plug(
                &ns.router,
                "br0",
                &format!("pp{pod_nets}"),
                &netns,
                "eth0",
                &[&format!("{ip}/24")],
            )?;
            lab.exec(&netns, "ip", &["route", "add", "default", "via", ROUTER])?;
            (netns, ip)
        };
        let pod = start_pod(
            &mut lab,
            &spec,
            &api_addr,
            &ca_pem,
            &mut tokens,
            plan,
            netns,
            ip,
            host_ip,
        )?;
        pods.push(pod);
    }
    let unready = probe_pods(
        &lab,
        &spec,
        &pods.iter().collect::<Vec<_>>(),
        Duration::from_secs(30),
    )?;

    // The "Pods": one server per node answering with the node's name.
    for (i, (name, _)) in NODES.iter().enumerate() {
        lab.spawn(
            &ns.nodes[i],
            "python3",
            &["-c", SERVER, name, &SERVICE_PORT.to_string()],
            &spec.dir.join(format!("server-{name}.log")),
        )?;
    }

    Ok(Running {
        lab,
        spec,
        router,
        ns,
        apiserver,
        pods,
        chart,
        unready,
    })
}

/// The first three octets of the bridge's subnet; Pods without hostNetwork get `.101` on.
const POD_NET: &str = "10.0.0.";

/// Starts one Pod: its volumes as files, its Pod object and status in the API, then each
/// container from its spec (see [`kubelet`]).
#[allow(clippy::too_many_arguments)]
fn start_pod(
    lab: &mut Lab,
    spec: &Spec,
    api_addr: &str,
    ca: &Path,
    tokens: &mut std::collections::BTreeMap<String, String>,
    plan: kubelet::PodPlan,
    netns: String,
    ip: String,
    host_ip: String,
) -> Result<PodRun, String> {
    let pod_dir = spec.dir.join("pods").join(&plan.name);
    std::fs::create_dir_all(&pod_dir).map_err(e)?;
    let volumes = materialise_volumes(spec, &plan, &pod_dir)?;

    let object = pod_dir.join("pod.json");
    std::fs::write(&object, plan.object().to_string()).map_err(e)?;
    kubectl(
        spec,
        &[
            "apply",
            "--server-side",
            "-f",
            &object.display().to_string(),
        ],
    )?;
    set_pod_status(spec, &plan, &ip, &host_ip, false)?;

    let fields = kubelet::PodFields {
        name: plan.name.clone(),
        namespace: plan.namespace.clone(),
        node: plan.node.clone(),
        pod_ip: ip.clone(),
        host_ip: host_ip.clone(),
        service_account: plan.service_account(),
    };
    // The ServiceAccount's token, as the kubelet would mount it (see kubelet's module doc).
    let kubeconfig = if plan.automount_token() {
        let sa = plan.service_account();
        let token = match tokens.get(&sa) {
            Some(t) => t.clone(),
            None => {
                let t = kubectl(
                    spec,
                    &[
                        "create",
                        "token",
                        &sa,
                        "-n",
                        &plan.namespace,
                        "--duration=48h",
                    ],
                )?
                .trim()
                .to_owned();
                tokens.insert(sa.clone(), t.clone());
                t
            }
        };
        let path = pod_dir.join("kubeconfig");
        std::fs::write(
            &path,
            kubeconfig(&format!("https://{api_addr}"), ca, &token),
        )
        .map_err(e)?;
        Some(path.display().to_string())
    } else {
        None
    };

    let containers = plan.containers();
    let mut launches = Vec::new();
    for c in &containers {
        let cname = c["name"].as_str().unwrap_or("?");
        let mut env = kubelet::env(c, &fields)?;
        let to: Vec<(String, String)> = kubelet::mounts(c)
            .into_iter()
            .map(|m| {
                volumes
                    .get(&m.volume)
                    .map(|dir| (m.path.clone(), dir.display().to_string()))
                    .ok_or_else(|| {
                        format!(
                            "pod {}: container {cname} mounts volume {} that the Pod does not declare",
                            plan.name, m.volume
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let fix = |s: &str, env: &[(String, String)]| {
            kubelet::rewrite_paths(&kubelet::expand(s, env), &to)
        };
        for (_, v) in &mut env {
            *v = kubelet::rewrite_paths(v, &to);
        }
        let strings = |k: &str| -> Vec<String> {
            c[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .map(|a| fix(a, &env))
                .collect()
        };
        let command = strings("command");
        let args = strings("args");
        let entry = command.first().ok_or_else(|| {
            format!(
                "pod {}: container {cname} has no command (the lab runs the chart's command, not an image entrypoint)",
                plan.name
            )
        })?;
        let base = Path::new(entry)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let binary = spec.bin_dir.join(&base);
        if !binary.exists() {
            return Err(format!(
                "pod {}: container {cname} runs {entry}, and no {base} is built in {}",
                plan.name,
                spec.bin_dir.display()
            ));
        }
        let mut argv = kubelet::setpriv_args(&plan, c);
        argv.push("--".into());
        argv.push(binary.display().to_string());
        argv.extend(command.iter().skip(1).cloned());
        argv.extend(args);
        if let Some(kc) = &kubeconfig {
            env.push(("KUBECONFIG".into(), kc.clone()));
        }
        let log = if containers.len() == 1 {
            spec.dir.join(format!("{}.log", plan.name))
        } else {
            spec.dir.join(format!("{}-{cname}.log", plan.name))
        };
        launches.push(Launch {
            ns: netns.clone(),
            program: "setpriv".into(),
            args: argv,
            env,
            log,
        });
    }
    let mut pids = Vec::new();
    for l in &launches {
        pids.push(l.start(lab)?);
    }
    Ok(PodRun {
        plan,
        netns,
        ip,
        host_ip,
        launches,
        pids,
    })
}

/// Writes a Pod's volumes: Secrets and ConfigMaps read back from the API server (as the
/// kubelet reads them) with their `defaultMode` and, with `fsGroup`, that group as owner;
/// emptyDir per Pod; hostPath per node. Returns each volume's directory.
fn materialise_volumes(
    spec: &Spec,
    plan: &kubelet::PodPlan,
    pod_dir: &Path,
) -> Result<std::collections::BTreeMap<String, PathBuf>, String> {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    for v in plan.spec["volumes"].as_array().into_iter().flatten() {
        let name = v["name"]
            .as_str()
            .ok_or_else(|| format!("pod {}: a volume has no name", plan.name))?;
        let dir = if let Some(path) = v["hostPath"]["path"].as_str() {
            spec.dir
                .join("nodes")
                .join(&plan.node)
                .join(path.trim_start_matches('/'))
        } else {
            pod_dir.join("volumes").join(name)
        };
        std::fs::create_dir_all(&dir).map_err(e)?;
        let (source, kind) = if v.get("secret").is_some() {
            (&v["secret"], "secret")
        } else if v.get("configMap").is_some() {
            (&v["configMap"], "configmap")
        } else if v.get("emptyDir").is_some() {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(e)?;
            out.insert(name.to_owned(), dir);
            continue;
        } else if v.get("hostPath").is_some() {
            out.insert(name.to_owned(), dir);
            continue;
        } else {
            return Err(format!(
                "pod {}: volume {name} is of a kind the lab's kubelet does not mount: {v}",
                plan.name
            ));
        };
        let object_name = source["secretName"]
            .as_str()
            .or_else(|| source["name"].as_str())
            .ok_or_else(|| format!("pod {}: volume {name} names no {kind}", plan.name))?;
        let got = kubectl(
            spec,
            &[
                "get",
                kind,
                object_name,
                "-n",
                &plan.namespace,
                "-o",
                "json",
            ],
        )
        .map_err(|x| format!("pod {}: volume {name}: {x}", plan.name))?;
        let object: serde_json::Value = serde_json::from_str(&got).map_err(e)?;
        let mode = source["defaultMode"].as_u64().unwrap_or(0o644) as u32;
        for (key, value) in object["data"].as_object().into_iter().flatten() {
            let text = value.as_str().unwrap_or_default();
            let bytes = if kind == "secret" {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|x| format!("{kind} {object_name} key {key}: {x}"))?
            } else {
                text.as_bytes().to_vec()
            };
            let file = dir.join(key);
            std::fs::write(&file, bytes).map_err(e)?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).map_err(e)?;
            if let Some(g) = plan.fs_group() {
                std::os::unix::fs::chown(&file, Some(0), Some(g)).map_err(e)?;
            }
        }
        out.insert(name.to_owned(), dir);
    }
    Ok(out)
}

/// Writes a Pod's status as the kubelet reports it.
fn set_pod_status(
    spec: &Spec,
    plan: &kubelet::PodPlan,
    ip: &str,
    host_ip: &str,
    ready: bool,
) -> Result<(), String> {
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": host_ip,
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    }});
    kubectl(
        spec,
        &[
            "patch",
            "pod",
            &plan.name,
            "-n",
            &plan.namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
    )?;
    Ok(())
}

/// Runs every container's readiness and liveness probe (HTTP GET at the Pod IP, on the port
/// the chart names) until all answer 200 or `timeout` passes, marking each Pod Ready when its
/// probes pass. A probe that gets no HTTP answer or a 404 is a chart bug (a port or path the
/// binary does not serve): an error. One answering 503 by then leaves its Pod NotReady, as a
/// kubelet would; its name and reason are returned.
fn probe_pods(
    lab: &Lab,
    spec: &Spec,
    pods: &[&PodRun],
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let deadline = std::time::Instant::now() + timeout;
    let mut pending: Vec<&PodRun> = pods.to_vec();
    let mut last: std::collections::BTreeMap<String, String> = Default::default();
    loop {
        let mut still = Vec::new();
        for pod in pending {
            let mut ok = true;
            for c in pod.plan.containers() {
                for kind in ["readinessProbe", "livenessProbe"] {
                    let Some(probe) = kubelet::http_probe(c, kind)? else {
                        continue;
                    };
                    let url = format!("http://{}:{}{}", pod.ip, probe.port, probe.path);
                    let code = lab
                        .exec(
                            &pod.netns,
                            "curl",
                            &[
                                "-s",
                                "-o",
                                "/dev/null",
                                "-w",
                                "%{http_code}",
                                "--max-time",
                                "2",
                                &url,
                            ],
                        )
                        .unwrap_or_else(|_| "000".into());
                    if code.trim() != "200" {
                        ok = false;
                        last.insert(
                            pod.plan.name.clone(),
                            format!("{kind} GET {url} answered {}", code.trim()),
                        );
                    }
                }
            }
            if ok {
                set_pod_status(spec, &pod.plan, &pod.ip, &pod.host_ip, true)?;
                last.remove(&pod.plan.name);
            } else {
                still.push(pod);
            }
        }
        pending = still;
        if pending.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut unready = Vec::new();
    for pod in pending {
        let why = last.get(&pod.plan.name).cloned().unwrap_or_default();
        if !why.ends_with(" 503") {
            return Err(format!(
                "pod {}: {why} (a port or path the binary does not serve?): see {}",
                pod.plan.name,
                pod.log().display()
            ));
        }
        unready.push(format!("{}: {why}", pod.plan.name));
    }
    Ok(unready)
}

/// The agents' gossip (membership) port.
pub const GOSSIP_PORT: u16 = 7946;

/// The next hops (`via a.b.c.d`) of an `ip route show` output, sorted.
pub fn next_hops(ip_route_output: &str) -> Vec<String> {
    let mut hops: Vec<String> = ip_route_output
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect();
    hops.sort();
    hops
}

/// Answers every connection with the node's name (argv 1) on port argv 2, on every address.
pub const SERVER: &str = "import socket,sys
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', int(sys.argv[2]))); s.listen(256)
while True:
    c,_=s.accept()
    try: c.sendall(sys.argv[1].encode())
    except Exception: pass
    c.close()";

/// Opens N connections to ip:port, each from its own source port (the kernel picks a free
/// one, so the router's L4 hash spreads them); prints `name=count ...` and, on standard
/// error, why each failed connection failed.
// A source port chosen here instead (a random base, as before) could be held by another
// socket in the client's namespace: bind failed with EADDRINUSE and the probe counted a
// connection Berth never saw (the hand-over test's 1-in-7 failure).
pub const CONNECT: &str = "import socket,sys,collections
ip,port,n=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]); seen=collections.Counter()
for i in range(n):
    s=socket.socket(); s.settimeout(1)
    try:
        s.connect((ip, port)); seen[s.recv(16).decode() or 'empty']+=1
    except Exception as e:
        seen['error']+=1; sys.stderr.write(f'{ip}:{port}: {type(e).__name__}: {e}\\n')
    s.close()
print(' '.join(f'{k}={v}' for k,v in sorted(seen.items())))";

/// The release the lab renders (the name the chart's objects are prefixed with).
pub const RELEASE: &str = "berth";
/// The namespace the lab installs into.
pub const NAMESPACE: &str = "berth-system";

/// The commands of the README's "Install" section (its first `sh` block), one per line,
/// `\` continuations joined, split into words (the block has no quoting).
pub fn readme_install_commands(readme: &str) -> Result<Vec<Vec<String>>, String> {
    let section = readme
        .split("\n## Install\n")
        .nth(1)
        .ok_or("README.md has no \"## Install\" section")?;
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .ok_or("README.md's Install section has no ```sh block")?;
    let joined = block.replace("\\\n", " ");
    Ok(joined
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter(|w| !w.is_empty())
        .collect())
}

/// Installs Berth with the README's install commands, run as written: `kubectl` against the
/// lab, `helm` through `scripts/helm` (Helm's own SDK: `helm install` resolves CRDs, stores
/// the release as a Secret, applies every object), with the lab's values file added.
fn install_as_the_readme_says(spec: &Spec) -> Result<(), String> {
    let readme = std::fs::read_to_string(spec.repo.join("README.md")).map_err(e)?;
    let kc = spec.kubeconfig().display().to_string();
    for argv in readme_install_commands(&readme)? {
        let args: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
        match argv[0].as_str() {
            "kubectl" => {
                kubectl(spec, &args)?;
            }
            "helm" => {
                let values = spec.values().display().to_string();
                let mut all = args.clone();
                all.extend(["-f", &values, "--kubeconfig", &kc]);
                helm(spec, &all).map_err(|x| format!("the README's `{}`: {x}", argv.join(" ")))?;
            }
            other => {
                return Err(format!(
                    "the README's install block runs `{other}`, which the lab cannot run: keep it to kubectl and helm"
                ));
            }
        }
    }
    Ok(())
}

/// Runs `scripts/helm` from the repository's root (the README's paths are relative to it).
fn helm(spec: &Spec, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(spec.repo.join("scripts/helm"))
        .args(args)
        .current_dir(&spec.repo)
        .output()
        .map_err(|x| format!("scripts/helm: {x}"))?;
    if !out.status.success() {
        return Err(format!(
            "helm {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies [`Spec::rbac_edit`] to the installed chart's Roles and ClusterRoles (an admin
/// editing them before the Pods start).
fn edit_rbac(spec: &Spec) -> Result<(), String> {
    let Some(edit) = spec.rbac_edit else {
        return Ok(());
    };
    let got = kubectl(
        spec,
        &[
            "get",
            "clusterroles,roles",
            "-A",
            "-l",
            &format!("app.kubernetes.io/instance={RELEASE}"),
            "-o",
            "json",
        ],
    )?;
    let list: serde_json::Value = serde_json::from_str(&got).map_err(e)?;
    let mut objects: Vec<serde_json::Value> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut o| {
            if let Some(m) = o["metadata"].as_object_mut() {
                for k in [
                    "resourceVersion",
                    "uid",
                    "managedFields",
                    "creationTimestamp",
                ] {
                    m.remove(k);
                }
            }
            o
        })
        .collect();
    edit(&mut objects);
    let file = spec.dir.join("rbac-edited.json");
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(&file, list.to_string()).map_err(e)?;
    kubectl(spec, &["replace", "-f", &file.display().to_string()])?;
    Ok(())
}

/// Helm's uninstall order by kind (helm's `releaseutil.UninstallOrder`, the kinds the chart
/// has); kinds not listed go last.
const UNINSTALL_ORDER: [&str; 17] = [
    "Service",
    "StatefulSet",
    "Deployment",
    "DaemonSet",
    "RoleBinding",
    "Role",
    "ClusterRoleBinding",
    "ClusterRole",
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "PodDisruptionBudget",
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
    "CustomResourceDefinition",
    "Namespace",
];

/// The refusals (401 and 403) the lab's API server has served so far, one message a line.
pub fn refusals(spec: &Spec) -> Result<Vec<String>, String> {
    let out = kubectl(spec, &["get", "--raw", "/debug/berth/refusals"])?;
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).map_err(e)?;
    Ok(v.iter()
        .map(|r| {
            format!(
                "{} {}: {}",
                r["code"],
                r["user"].as_str().unwrap_or(""),
                r["message"].as_str().unwrap_or("")
            )
        })
        .collect())
}

/// Applies `examples/lab/*.yaml` with kubectl (server-side apply), then writes the status of
/// the objects whose status the cluster itself would set (the Nodes).
fn apply_examples(spec: &Spec) -> Result<(), String> {
    let dir = spec.repo.join("examples/lab");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|x| format!("{}: {x}", dir.display()))?
        .filter_map(|f| f.ok().map(|f| f.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for f in &files {
        let path = f.display().to_string();
        kubectl(
            spec,
            &["apply", "--server-side", "--force-conflicts", "-f", &path],
        )?;
    }
    for (name, addr) in NODES {
        let status = format!(
            r#"{{"status":{{"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"lab node"}}],"addresses":[{{"type":"InternalIP","address":"{addr}"}},{{"type":"Hostname","address":"{name}"}}]}}}}"#
        );
        kubectl(
            spec,
            &[
                "patch",
                "node",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status,
            ],
        )?;
    }
    Ok(())
}

impl Running {
    /// The first ingress IP of a Service, once it has one.
    pub fn service_ip(&self, ns: &str, name: &str, timeout: Duration) -> Option<String> {
        wait_for(timeout, || {
            kubectl(
                &self.spec,
                &[
                    "get",
                    "svc",
                    name,
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={.status.loadBalancer.ingress[0].ip}",
                ],
            )
            .ok()
            .filter(|ip| !ip.trim().is_empty())
            .map(|ip| ip.trim().to_owned())
        })
    }

    /// The router kernel's route for `ip`, one line per next hop (`via a.b.c.d`).
    pub fn router_next_hops(&self, ip: &str) -> Vec<String> {
        let out = self
            .lab
            .exec(&self.ns.router, "ip", &["route", "show", ip])
            .unwrap_or_default();
        next_hops(&out)
    }

    /// The router's route for `ip` as `ip route` prints it.
    pub fn router_route(&self, ip: &str) -> String {
        self.lab
            .exec(&self.ns.router, "ip", &["route", "show", ip])
            .unwrap_or_default()
    }

    /// Which MACs answer ARP who-has `ip` (IPv4) on the nodes' segment, asked from the
    /// client's interface there: `(mac, replies)`, sorted by MAC.
    pub fn who_answers_arp(&self, ip: &str) -> Result<Vec<(String, usize)>, String> {
        let out = self.lab.exec(
            &self.ns.client,
            "python3",
            &[
                "-c",
                crate::layer2::PROBE,
                "arp",
                "eth1",
                ip,
                CLIENT_L2,
                "1",
            ],
        )?;
        Ok(out
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(m, n)| (m.to_owned(), n.parse().unwrap_or(0)))
            .collect())
    }

    /// The MAC of `ifname` in namespace `ns`.
    pub fn mac(&self, ns: &str, ifname: &str) -> Result<String, String> {
        self.lab
            .exec(ns, "cat", &[&format!("/sys/class/net/{ifname}/address")])
            .map(|m| m.trim().to_owned())
    }

    /// Opens `n` connections from the client to ip:port; counts by answering node.
    pub fn connect(&self, ip: &str, port: u16, n: usize) -> String {
        self.lab
            .exec(
                &self.ns.client,
                "python3",
                &["-c", CONNECT, ip, &port.to_string(), &n.to_string()],
            )
            .unwrap_or_else(|x| x)
            .trim()
            .to_owned()
    }

    /// The Pods of the chart's `component` (`operator`, `bgp-server`, `agent`).
    pub fn pods_of(&self, component: &str) -> Vec<&PodRun> {
        self.pods.iter().filter(|p| p.is(component)).collect()
    }

    /// The log of every Pod of `component`, concatenated (restarts included).
    pub fn log_of(&self, component: &str) -> String {
        let mut out = String::new();
        for p in self.pods_of(component) {
            let stem = p.plan.name.clone();
            let mut files: Vec<PathBuf> = std::fs::read_dir(&self.spec.dir)
                .into_iter()
                .flatten()
                .filter_map(|f| f.ok().map(|f| f.path()))
                .filter(|f| {
                    f.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{stem}.")))
                })
                .collect();
            files.sort();
            for f in files {
                out.push_str(&std::fs::read_to_string(f).unwrap_or_default());
            }
        }
        out
    }

    /// Stops (SIGTERM, as the kubelet does) every container of the component's Pods.
    pub fn stop(&mut self, component: &str) {
        for p in self.pods.iter_mut().filter(|p| p.is(component)) {
            for pid in std::mem::take(&mut p.pids) {
                self.lab.terminate(pid);
            }
        }
    }

    /// Starts the component's Pods that are stopped, from the same Pod spec.
    pub fn start(&mut self, component: &str) -> Result<(), String> {
        for p in self.pods.iter_mut().filter(|p| p.is(component)) {
            if p.pids.is_empty() {
                for l in &p.launches {
                    p.pids.push(l.start(&mut self.lab)?);
                }
            }
        }
        Ok(())
    }

    /// A rollout of the operator: each replica stopped (SIGTERM) and started again in turn,
    /// the next once the restarted one answers its readiness probe.
    pub fn restart_operator(&mut self) -> Result<(), String> {
        let names: Vec<String> = self
            .pods_of("operator")
            .iter()
            .map(|p| p.plan.name.clone())
            .collect();
        for name in names {
            let Some(i) = self.pods.iter().position(|p| p.plan.name == name) else {
                continue;
            };
            for pid in std::mem::take(&mut self.pods[i].pids) {
                self.lab.terminate(pid);
            }
            let launches = self.pods[i].launches.clone();
            for l in &launches {
                let pid = l.start(&mut self.lab)?;
                self.pods[i].pids.push(pid);
            }
            let unready = probe_pods(
                &self.lab,
                &self.spec,
                &[&self.pods[i]],
                Duration::from_secs(30),
            )?;
            if !unready.is_empty() {
                return Err(format!("after a restart: {}", unready.join("; ")));
            }
        }
        Ok(())
    }

    /// Kills the speaker with SIGKILL (a crash).
    pub fn crash_speaker(&mut self) {
        for p in self.pods.iter_mut().filter(|p| p.is("bgp-server")) {
            for pid in std::mem::take(&mut p.pids) {
                self.lab.kill(pid);
            }
        }
    }

    /// Starts the speaker again (after [`Running::crash_speaker`]).
    pub fn start_speaker(&mut self) -> Result<(), String> {
        self.start("bgp-server")
    }

    /// `helm uninstall` (Helm's SDK, `scripts/helm`): Helm deletes the release's objects in
    /// its order; the lab's kubelet then stops (SIGTERM) the Pods whose workload is gone, in
    /// that order too, and removes their Pod objects, as the garbage collector would.
    pub fn uninstall(&mut self) -> Result<(), String> {
        let kc = self.spec.kubeconfig().display().to_string();
        run(
            &self.spec.repo.join("scripts/helm").display().to_string(),
            &[
                "uninstall",
                RELEASE,
                "--namespace",
                NAMESPACE,
                "--kubeconfig",
                &kc,
            ],
        )?;
        let rank = |w: &str| {
            let kind = w.split('/').next().unwrap_or_default();
            UNINSTALL_ORDER
                .iter()
                .position(|k| *k == kind)
                .unwrap_or(UNINSTALL_ORDER.len())
        };
        let mut order: Vec<usize> = (0..self.pods.len()).collect();
        order.sort_by_key(|i| rank(&self.pods[*i].plan.workload));
        for i in order {
            let (kind, name) = self.pods[i]
                .plan
                .workload
                .split_once('/')
                .map(|(k, n)| (k.to_ascii_lowercase(), n.to_owned()))
                .unwrap_or_default();
            if kubectl(&self.spec, &["get", &kind, &name, "-n", NAMESPACE]).is_ok() {
                return Err(format!("{kind}/{name} is still there after helm uninstall"));
            }
            for pid in std::mem::take(&mut self.pods[i].pids) {
                self.lab.terminate(pid);
            }
            let pod = self.pods[i].plan.name.clone();
            kubectl(
                &self.spec,
                &["delete", "pod", &pod, "-n", NAMESPACE, "--wait=false"],
            )?;
        }
        Ok(())
    }

    /// Runs kubectl against this lab.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        kubectl(&self.spec, args)
    }

    /// Every request the API server refused so far (see [`refusals`]).
    pub fn refusals(&self) -> Result<Vec<String>, String> {
        refusals(&self.spec)
    }

    /// What `lab status` prints.
    pub fn report(&self) -> String {
        report(&self.spec, Some(self))
    }
}

/// The lab in words and tables: pools, Services, peers, the router's routes and where 100
/// connections from the client land.
pub fn report(spec: &Spec, running: Option<&Running>) -> String {
    let mut out = String::new();
    let mut section = |title: &str, body: Result<String, String>| {
        out.push_str(&format!("== {title}\n"));
        match body {
            Ok(b) => out.push_str(&b),
            Err(x) => out.push_str(&format!("(unavailable: {x})\n")),
        }
        out.push('\n');
    };
    section(
        "Address pools (kubectl get eip)",
        kubectl(spec, &["get", "eip"]),
    );
    section(
        "BGP peers (kubectl get bgppeer)",
        kubectl(spec, &["get", "bgppeer"]),
    );
    section(
        "Services (kubectl get svc -A -o wide)",
        kubectl(spec, &["get", "svc", "-A", "-o", "wide"]),
    );
    let ips = kubectl(
        spec,
        &[
            "get",
            "svc",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.status.loadBalancer.ingress[*].ip}{\"\\n\"}{end}",
        ],
    )
    .unwrap_or_default();
    let router_ns = format!("{}-r", spec.prefix);
    let client_ns = format!("{}-c", spec.prefix);
    for ip in ips.split_whitespace() {
        let route = run("ip", &["-n", &router_ns, "route", "show", ip]).unwrap_or_default();
        section(
            &format!("The router's route to {ip} (ip route show {ip})"),
            Ok(if route.trim().is_empty() {
                "(none: the IP is not announced, or it is a Layer2 IP on the bridge)\n".to_owned()
            } else {
                route
            }),
        );
        let landed = run(
            "ip",
            &[
                "netns",
                "exec",
                &client_ns,
                "python3",
                "-c",
                CONNECT,
                ip,
                &SERVICE_PORT.to_string(),
                "100",
            ],
        );
        section(
            &format!("100 connections from the client to {ip}:{SERVICE_PORT} landed on"),
            landed,
        );
    }
    let _ = running;
    out
}

/// The state the `lab` binary keeps between `up` and `down`: PIDs outside the namespaces.
pub fn save_pids(spec: &Spec, pids: &[u32]) -> Result<(), String> {
    let text: Vec<String> = pids.iter().map(u32::to_string).collect();
    std::fs::write(spec.dir.join("pids"), text.join("\n")).map_err(e)
}

/// Removes a lab by name: processes in its namespaces and those recorded in `pids`, the
/// namespaces, the socket. Safe to run when nothing is left.
pub fn down(spec: &Spec) -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(pids) = std::fs::read_to_string(spec.dir.join("pids")) {
        for pid in pids.split_whitespace() {
            if run("kill", &["-KILL", pid]).is_ok() {
                removed.push(format!("process {pid}"));
            }
        }
    }
    let list = run("ip", &["netns", "list"]).unwrap_or_default();
    let prefix = format!("{}-", spec.prefix);
    for ns in list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
    {
        for pid in run("ip", &["netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
        {
            let _ = run("kill", &["-KILL", pid]);
        }
        if run("ip", &["netns", "del", ns]).is_ok() {
            removed.push(format!("namespace {ns}"));
        }
    }
    let _ = std::fs::remove_file(spec.socket());
    let _ = std::fs::remove_file(spec.dir.join("pids"));
    removed
}

/// Copies bytes between two endpoints (`host:port` or `unix:/path`) for every connection.
pub async fn forward(listen: &str, to: &str) -> std::io::Result<()> {
    use tokio::io::{AsyncRead, AsyncWrite};
    trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
    async fn connect(to: &str) -> std::io::Result<Box<dyn Io>> {
        Ok(match to.strip_prefix("unix:") {
            Some(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
            None => Box::new(tokio::net::TcpStream::connect(to).await?),
        })
    }
    enum L {
        Unix(tokio::net::UnixListener),
        Tcp(tokio::net::TcpListener),
    }
    let l = match listen.strip_prefix("unix:") {
        Some(p) => L::Unix(tokio::net::UnixListener::bind(p)?),
        None => L::Tcp(tokio::net::TcpListener::bind(listen).await?),
    };
    loop {
        let inbound: Box<dyn Io> = match &l {
            L::Unix(l) => Box::new(l.accept().await?.0),
            L::Tcp(l) => Box::new(l.accept().await?.0),
        };
        let to = to.to_owned();
        tokio::spawn(async move {
            let mut inbound = inbound;
            if let Ok(mut out) = connect(&to).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
    }
}

/// The directory holding this executable (where cargo puts every workspace binary).
pub fn own_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/debug"))
}

/// One request to the lab's API server from the host, as the admin (HTTPS with the lab's CA,
/// the admin's bearer token); returns the HTTP status. Without kubectl, so that the benches
/// time the cluster, not kubectl's start-up.
pub fn http(
    spec: &Spec,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Result<u16, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    let ca = spec.dir.join("pki/ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca).map_err(|x| format!("{}: {x}", ca.display()))? {
        roots
            .add(c.map_err(|x| format!("{}: {x}", ca.display()))?)
            .map_err(e)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(e)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").map_err(e)?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).map_err(e)?;
    let token = std::fs::read_to_string(spec.dir.join("admin.token")).map_err(e)?;
    let addr = format!("127.0.0.1:{}", spec.host_port);
    let tcp = TcpStream::connect(&addr).map_err(|x| format!("{addr}: {x}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(e)?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(e)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: lab\r\nAuthorization: Bearer {}\r\nContent-Type: {content_type}\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token.trim(),
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(e)?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).map_err(e)?;
    let code = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} {path}: not an HTTP answer"))?;
    // Drain the rest so the server is not cut off mid-write.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(code)
}

/// Latency percentiles of a sample, in milliseconds.
fn percentiles(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms ({} runs)",
        at(0.5),
        at(0.99),
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN),
        v.len()
    )
}

impl Running {
    /// The next hops the router's kernel holds for `ip` right now (one `ip` call).
    fn hops_now(&self, ip: &str) -> Vec<String> {
        self.router_next_hops(ip)
    }

    /// Waits until the router's kernel route for `ip` has exactly `want` next hops (sorted);
    /// returns when it did, or `None` after `timeout`.
    fn until_hops(
        &self,
        ip: &str,
        want: &[String],
        timeout: Duration,
    ) -> Option<std::time::Instant> {
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if self.hops_now(ip) == want {
                return Some(std::time::Instant::now());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    /// `lab bench`: with `background` Services announced, the time from creating a Service
    /// (the API call) to the router's kernel holding its route with every next hop, and from
    /// an endpoint change to the next-hop change, `reps` times each.
    pub fn bench(&self, background: usize, reps: usize) -> Result<String, String> {
        let spec = &self.spec;
        let pool = "apiVersion: berth.dev/v1alpha1
kind: Eip
metadata: {name: bench}
spec: {address: 198.18.0.0/20}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench}
";
        let f = spec.dir.join("bench-pool.yaml");
        std::fs::write(&f, pool).map_err(e)?;
        kubectl(
            spec,
            &["apply", "--server-side", "-f", &f.display().to_string()],
        )?;
        let all: Vec<String> = {
            let mut v: Vec<String> = NODES.iter().map(|(_, a)| (*a).to_owned()).collect();
            v.sort();
            v
        };
        let service = |name: &str, ip: &str, policy: &str| {
            format!(
                r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}","namespace":"bench","annotations":{{"berth.dev/pool":"bench","berth.dev/ip":"{ip}"}}}},"spec":{{"type":"LoadBalancer","loadBalancerClass":"berth.dev/berth","externalTrafficPolicy":"{policy}","ports":[{{"port":8080}}]}}}}"#
            )
        };
        let ip_of = |i: usize| format!("198.18.{}.{}", i / 250, i % 250 + 1);

        // The background: `background` Services, all announced before measuring.
        let start = std::time::Instant::now();
        for i in 0..background {
            let code = http(
                spec,
                "POST",
                "/api/v1/namespaces/bench/services",
                "application/json",
                &service(&format!("bg-{i}"), &ip_of(i), "Cluster"),
            )?;
            if code != 201 && code != 200 {
                return Err(format!("creating Service bench/bg-{i}: HTTP {code}"));
            }
        }
        if background > 0
            && self
                .until_hops(&ip_of(background - 1), &all, Duration::from_secs(300))
                .is_none()
        {
            return Err(format!(
                "{background} background Services were not all announced within 300 s"
            ));
        }
        let loaded = start.elapsed();

        let mut create = Vec::new();
        for r in 0..reps {
            let i = background + r;
            let ip = ip_of(i);
            let t0 = std::time::Instant::now();
            let code = http(
                spec,
                "POST",
                "/api/v1/namespaces/bench/services",
                "application/json",
                &service(&format!("probe-{r}"), &ip, "Cluster"),
            )?;
            if code != 201 && code != 200 {
                return Err(format!("creating Service bench/probe-{r}: HTTP {code}"));
            }
            let t1 = self
                .until_hops(&ip, &all, Duration::from_secs(30))
                .ok_or_else(|| format!("probe-{r} ({ip}) never reached the router"))?;
            create.push((t1 - t0).as_secs_f64() * 1e3);
        }

        // Endpoint moves: one Local Service whose only endpoint hops between nodes.
        let mover_ip = ip_of(background + reps);
        let slice = |node: &str, addr: &str| {
            format!(
                r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"mover-x","namespace":"bench","labels":{{"kubernetes.io/service-name":"mover"}}}},"addressType":"IPv4","endpoints":[{{"addresses":["{addr}"],"nodeName":"{node}","conditions":{{"ready":true}}}}]}}"#
            )
        };
        http(
            spec,
            "POST",
            "/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices",
            "application/json",
            &slice(NODES[0].0, NODES[0].1),
        )?;
        http(
            spec,
            "POST",
            "/api/v1/namespaces/bench/services",
            "application/json",
            &service("mover", &mover_ip, "Local"),
        )?;
        self.until_hops(&mover_ip, &[NODES[0].1.to_owned()], Duration::from_secs(30))
            .ok_or_else(|| format!("mover ({mover_ip}) never reached the router"))?;
        let mut moves = Vec::new();
        for r in 0..reps {
            let (node, addr) = NODES[(r + 1) % NODES.len()];
            let t0 = std::time::Instant::now();
            let code = http(
                spec,
                "PATCH",
                "/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices/mover-x",
                "application/merge-patch+json",
                &slice(node, addr),
            )?;
            if code != 200 {
                return Err(format!("patching EndpointSlice bench/mover-x: HTTP {code}"));
            }
            let t1 = self
                .until_hops(&mover_ip, &[addr.to_owned()], Duration::from_secs(30))
                .ok_or_else(|| format!("the next hop of mover never moved to {node}"))?;
            moves.push((t1 - t0).as_secs_f64() * 1e3);
        }
        Ok(format!(
            "{background} background Services announced in {:.1} s\nService created -> router kernel route with {} next hops: {}\nendpoint moved -> router kernel next hop moved: {}\n",
            loaded.as_secs_f64(),
            all.len(),
            percentiles(create),
            percentiles(moves)
        ))
    }
}
