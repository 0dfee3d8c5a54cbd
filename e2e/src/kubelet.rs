//! The lab's kubelet: the workloads `helm install` of `charts/berth` created (Deployments,
//! StatefulSets, DaemonSets, read back from the API server) become Pods on the lab's nodes,
//! and each container starts **from its Pod spec**: command and args, env (values and downward-API fields) with `$(VAR)`
//! expansion, Secret/ConfigMap/emptyDir/hostPath volumes, the node's network namespace for
//! `hostNetwork`, and the user, groups, capabilities and no-new-privs of its securityContext
//! (through `setpriv`, so the kernel enforces them). Nothing about how a binary is started is
//! written here: a flag, port, path, volume or capability the chart gets wrong fails the lab.
//!
//! [`schedule`] and the functions that read a Pod spec are pure (unit-tested below); the lab
//! (`crate::lab`) does the I/O: Pod objects, volume files, processes.
//!
//! Where the lab differs from a kubelet, because its "nodes" share one filesystem and one
//! kernel, and why each difference cannot hide a chart bug:
//! - **Mount paths are rewritten**, in command, args and env, to a directory per Pod volume
//!   (hostPath: per node). A path the chart passes that no volume mounts stays as it is and
//!   is then missing, as it would be in the container.
//! - **The ServiceAccount token** reaches the process as a kubeconfig (`KUBECONFIG`) holding
//!   that ServiceAccount's token, instead of the in-cluster files; a Pod with
//!   `automountServiceAccountToken: false` gets none.
//! - Not enforced: `readOnlyRootFilesystem`, resources, seccomp, tolerations.

use std::collections::BTreeMap;

use serde_json::Value;

/// A lab node as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The Node's name.
    pub name: String,
    /// Its InternalIP (also the Pod IP of hostNetwork Pods).
    pub addr: String,
    /// Its labels (for `nodeSelector`).
    pub labels: BTreeMap<String, String>,
}

/// A Pod to run: where, and its spec as rendered.
#[derive(Debug, Clone)]
pub struct PodPlan {
    /// The Pod's name (StatefulSet: `name-N`; Deployment: `name-N`; DaemonSet: `name-node`).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The workload it belongs to, `Kind/name`.
    pub workload: String,
    /// The node it runs on.
    pub node: String,
    /// The template's labels.
    pub labels: serde_json::Map<String, Value>,
    /// The template's Pod spec with `nodeName` set.
    pub spec: Value,
}

impl PodPlan {
    /// Whether the Pod uses the node's network namespace.
    pub fn host_network(&self) -> bool {
        self.spec["hostNetwork"].as_bool().unwrap_or(false)
    }

    /// The containers of the Pod (init containers are not run: the chart has none).
    pub fn containers(&self) -> Vec<&Value> {
        self.spec["containers"]
            .as_array()
            .map(|c| c.iter().collect())
            .unwrap_or_default()
    }

    /// Whether the Pod gets its ServiceAccount's token.
    pub fn automount_token(&self) -> bool {
        self.spec["automountServiceAccountToken"]
            .as_bool()
            .unwrap_or(true)
    }

    /// Its ServiceAccount (`default` when unset).
    pub fn service_account(&self) -> String {
        self.spec["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_owned()
    }

    /// The Pod object the kubelet's Pod would be in the API (status is written separately).
    pub fn object(&self) -> Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": self.labels,
                "annotations": {"berth.dev/lab-workload": self.workload},
            },
            "spec": self.spec,
        })
    }

    /// The group that owns the Pod's volume files and is added to its processes' groups
    /// (`securityContext.fsGroup`), as the kubelet applies it.
    pub fn fs_group(&self) -> Option<u32> {
        self.spec["securityContext"]["fsGroup"]
            .as_u64()
            .and_then(|g| u32::try_from(g).ok())
    }
}

/// Places every Pod of the rendered workloads on `nodes`: a Deployment's and a StatefulSet's
/// replicas on distinct eligible nodes in order (the chart's anti-affinity), a DaemonSet on
/// every eligible node. Eligible: the Pod's `nodeSelector` matches the node's labels.
pub fn schedule(objects: &[Value], nodes: &[NodeInfo]) -> Result<Vec<PodPlan>, String> {
    let mut pods = Vec::new();
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet") {
            continue;
        }
        let name = o["metadata"]["name"]
            .as_str()
            .ok_or_else(|| format!("a rendered {kind} has no metadata.name"))?;
        let namespace = o["metadata"]["namespace"].as_str().unwrap_or("default");
        let template = &o["spec"]["template"];
        let spec = template["spec"].clone();
        if spec["containers"].as_array().is_none_or(Vec::is_empty) {
            return Err(format!(
                "{kind}/{name}: spec.template.spec.containers is empty"
            ));
        }
        let selector = spec["nodeSelector"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let eligible: Vec<&NodeInfo> = nodes
            .iter()
            .filter(|n| {
                selector
                    .iter()
                    .all(|(k, v)| n.labels.get(k).map(String::as_str) == v.as_str())
            })
            .collect();
        let labels = template["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let place = |pod: String, node: &NodeInfo| {
            let mut spec = spec.clone();
            spec["nodeName"] = Value::String(node.name.clone());
            PodPlan {
                name: pod,
                namespace: namespace.to_owned(),
                workload: format!("{kind}/{name}"),
                node: node.name.clone(),
                labels: labels.clone(),
                spec,
            }
        };
        if kind == "DaemonSet" {
            pods.extend(
                eligible
                    .iter()
                    .map(|n| place(format!("{name}-{}", n.name), n)),
            );
            continue;
        }
        let replicas = o["spec"]["replicas"].as_u64().unwrap_or(1);
        let replicas = usize::try_from(replicas).map_err(|e| e.to_string())?;
        if replicas > eligible.len() {
            return Err(format!(
                "{kind}/{name}: {replicas} replicas but only {} eligible lab nodes (nodeSelector {:?}); set fewer replicas in examples/lab/chart/values.yaml",
                eligible.len(),
                selector
            ));
        }
        for (i, node) in eligible.iter().take(replicas).enumerate() {
            pods.push(place(format!("{name}-{i}"), node));
        }
    }
    Ok(pods)
}

/// The downward-API fields a Pod's env can read, and their values.
#[derive(Debug, Clone)]
pub struct PodFields {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `spec.nodeName`.
    pub node: String,
    /// `status.podIP`.
    pub pod_ip: String,
    /// `status.hostIP`.
    pub host_ip: String,
    /// `spec.serviceAccountName`.
    pub service_account: String,
}

impl PodFields {
    fn get(&self, path: &str) -> Option<&str> {
        Some(match path {
            "metadata.name" => &self.name,
            "metadata.namespace" => &self.namespace,
            "spec.nodeName" => &self.node,
            "status.podIP" | "status.podIPs" => &self.pod_ip,
            "status.hostIP" | "status.hostIPs" => &self.host_ip,
            "spec.serviceAccountName" => &self.service_account,
            _ => return None,
        })
    }
}

/// A container's env in order, values resolved (downward API, `$(VAR)` of earlier entries).
/// A source the lab cannot resolve is an error naming it.
pub fn env(container: &Value, fields: &PodFields) -> Result<Vec<(String, String)>, String> {
    let cname = container["name"].as_str().unwrap_or("?");
    let mut out: Vec<(String, String)> = Vec::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"]
            .as_str()
            .ok_or_else(|| format!("container {cname}: an env entry has no name"))?;
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &out)
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            fields
                .get(path)
                .ok_or_else(|| {
                    format!("container {cname}: env {name} reads fieldRef {path}, which the lab's kubelet does not provide")
                })?
                .to_owned()
        } else if e.get("valueFrom").is_some() {
            return Err(format!(
                "container {cname}: env {name} has a valueFrom the lab's kubelet does not support: {}",
                e["valueFrom"]
            ));
        } else {
            String::new()
        };
        out.retain(|(k, _)| k != name);
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

/// Kubernetes' `$(VAR)` expansion in command, args and env values: a defined variable is
/// replaced, an undefined one left as written, `$$` is a literal `$`.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let var = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == var) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[i..i + 2 + end + 1]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A volume mount of a container: the path in the container and the volume's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `mountPath`.
    pub path: String,
    /// The volume.
    pub volume: String,
}

/// The container's volume mounts.
pub fn mounts(container: &Value) -> Vec<Mount> {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some(Mount {
                path: m["mountPath"].as_str()?.trim_end_matches('/').to_owned(),
                volume: m["name"].as_str()?.to_owned(),
            })
        })
        .collect()
}

/// `s` with every mount path (longest first, whole path components only) replaced by the
/// directory that stands for it in the lab.
pub fn rewrite_paths(s: &str, to: &[(String, String)]) -> String {
    let mut order: Vec<&(String, String)> = to.iter().collect();
    order.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    'scan: while i < s.len() {
        for (path, dir) in &order {
            if path.is_empty() || !s[i..].starts_with(path.as_str()) {
                continue;
            }
            // A path starts at the string's start or after a separator, and ends at a
            // component boundary: `/run/berth` must not rewrite `/run/berth-agent`.
            let starts = i == 0 || matches!(s.as_bytes()[i - 1], b'=' | b':' | b',' | b' ');
            let end = i + path.len();
            let ends = end == s.len() || matches!(s.as_bytes()[end], b'/' | b',' | b' ' | b':');
            if starts && ends {
                out.push_str(dir);
                i = end;
                continue 'scan;
            }
        }
        let c = s[i..].chars().next().unwrap_or_default();
        out.push(c);
        i += c.len_utf8().max(1);
    }
    out
}

/// The `setpriv` options that give a container's process the user, groups, capabilities and
/// no-new-privs its securityContext (and the Pod's) asks for.
pub fn setpriv_args(pod: &PodPlan, container: &Value) -> Vec<String> {
    let psc = &pod.spec["securityContext"];
    let csc = &container["securityContext"];
    let pick = |k: &str| csc[k].as_u64().or_else(|| psc[k].as_u64());
    let uid = pick("runAsUser").unwrap_or(0);
    let gid = pick("runAsGroup").unwrap_or(0);
    let mut a = vec![format!("--reuid={uid}"), format!("--regid={gid}")];
    let mut groups: Vec<u64> = psc["supplementalGroups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    groups.extend(pod.fs_group().map(u64::from));
    if groups.is_empty() {
        a.push("--clear-groups".into());
    } else {
        let g: Vec<String> = groups.iter().map(u64::to_string).collect();
        a.push(format!("--groups={}", g.join(",")));
    }
    let drops: Vec<String> = csc["capabilities"]["drop"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(cap_name)
        .collect();
    let adds: Vec<String> = csc["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(cap_name)
        .collect();
    // A container runtime's default set, when ALL is not dropped (containerd's list).
    let mut caps: Vec<String> = if drops.iter().any(|d| d == "all") {
        Vec::new()
    } else {
        [
            "chown",
            "dac_override",
            "fsetid",
            "fowner",
            "mknod",
            "net_raw",
            "setgid",
            "setuid",
            "setfcap",
            "setpcap",
            "net_bind_service",
            "sys_chroot",
            "kill",
            "audit_write",
        ]
        .iter()
        .map(|c| (*c).to_owned())
        .filter(|c| !drops.contains(c))
        .collect()
    };
    caps.extend(adds);
    let set: String = caps.iter().map(|c| format!(",+{c}")).collect();
    a.push(format!("--bounding-set=-all{set}"));
    a.push("--inh-caps=-all".into());
    if csc["allowPrivilegeEscalation"].as_bool() == Some(false) {
        a.push("--no-new-privs".into());
    }
    a
}

/// `NET_ADMIN` / `CAP_NET_ADMIN` → `net_admin` (setpriv's spelling).
fn cap_name(c: &str) -> String {
    c.trim_start_matches("CAP_").to_ascii_lowercase()
}

/// An HTTP probe: path and port number (named ports resolved from the container's ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// The request path.
    pub path: String,
    /// The port.
    pub port: u16,
}

/// The container's `readinessProbe` or `livenessProbe` (`kind`) when it is an HTTP GET.
pub fn http_probe(container: &Value, kind: &str) -> Result<Option<HttpProbe>, String> {
    let probe = &container[kind]["httpGet"];
    if probe.is_null() {
        return Ok(None);
    }
    let cname = container["name"].as_str().unwrap_or("?");
    let port = match &probe["port"] {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(name) => container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok()),
        _ => None,
    }
    .ok_or_else(|| {
        format!(
            "container {cname}: {kind}.httpGet.port {} names no port of the container",
            probe["port"]
        )
    })?;
    Ok(Some(HttpProbe {
        path: probe["path"].as_str().unwrap_or("/").to_owned(),
        port,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nodes() -> Vec<NodeInfo> {
        ["node1", "node2", "node3"]
            .iter()
            .enumerate()
            .map(|(i, n)| NodeInfo {
                name: (*n).to_owned(),
                addr: format!("10.0.0.1{}", i + 1),
                labels: [("kubernetes.io/hostname".to_owned(), (*n).to_owned())].into(),
            })
            .collect()
    }

    fn workload(kind: &str, replicas: u64, node_selector: Value) -> Value {
        json!({"kind": kind, "metadata": {"name": "w", "namespace": "ns"}, "spec": {
            "replicas": replicas,
            "template": {"metadata": {"labels": {"app": "w"}}, "spec": {
                "nodeSelector": node_selector,
                "containers": [{"name": "c", "command": ["/bin/c"]}]}}}})
    }

    #[test]
    fn workloads_become_pods_on_eligible_nodes() {
        let pods = schedule(
            &[
                workload("Deployment", 2, json!({})),
                workload("StatefulSet", 1, json!({"kubernetes.io/hostname": "node3"})),
                workload("DaemonSet", 0, json!({})),
                json!({"kind": "Service", "metadata": {"name": "s"}}),
            ],
            &nodes(),
        )
        .unwrap();
        let placed: Vec<(String, String)> = pods
            .iter()
            .map(|p| (p.name.clone(), p.node.clone()))
            .collect();
        assert_eq!(
            placed,
            [
                ("w-0", "node1"),
                ("w-1", "node2"),
                ("w-0", "node3"),
                ("w-node1", "node1"),
                ("w-node2", "node2"),
                ("w-node3", "node3"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        assert_eq!(pods[0].spec["nodeName"], "node1");
        assert_eq!(pods[0].labels["app"], "w");
    }

    #[test]
    fn more_replicas_than_nodes_is_refused() {
        let err = schedule(&[workload("StatefulSet", 4, json!({}))], &nodes()).unwrap_err();
        assert!(err.contains("4 replicas but only 3"), "{err}");
    }

    #[test]
    fn env_resolves_the_downward_api_and_expands_earlier_vars() {
        let c = json!({"name": "c", "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "LISTEN", "value": "$(POD_IP):50051"},
        ]});
        let f = PodFields {
            name: "p".into(),
            namespace: "ns".into(),
            node: "node1".into(),
            pod_ip: "10.0.0.11".into(),
            host_ip: "10.0.0.11".into(),
            service_account: "sa".into(),
        };
        let e = env(&c, &f).unwrap();
        assert_eq!(e[2], ("LISTEN".into(), "10.0.0.11:50051".into()));
        assert_eq!(e[1].1, "node1");
        let bad = json!({"name": "c", "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}]});
        assert!(env(&bad, &f).unwrap_err().contains("metadata.uid"));
        let secret = json!({"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]});
        assert!(env(&secret, &f).unwrap_err().contains("secretKeyRef"));
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let env = vec![("A".to_owned(), "1".to_owned())];
        assert_eq!(expand("--x=$(A):$(B)", &env), "--x=1:$(B)");
        assert_eq!(expand("$$(A) $", &env), "$(A) $");
    }

    #[test]
    fn paths_are_rewritten_only_at_component_boundaries() {
        let to = vec![
            ("/run/berth".to_owned(), "/lab/p/run".to_owned()),
            ("/etc/berth/tls".to_owned(), "/lab/p/tls".to_owned()),
        ];
        assert_eq!(
            rewrite_paths("--tls-cert=/etc/berth/tls/tls.crt", &to),
            "--tls-cert=/lab/p/tls/tls.crt"
        );
        assert_eq!(
            rewrite_paths("--grpc-socket=/run/berth/bgp.sock", &to),
            "--grpc-socket=/lab/p/run/bgp.sock"
        );
        assert_eq!(rewrite_paths("/run/berth-agent", &to), "/run/berth-agent");
        assert_eq!(
            rewrite_paths("--x=/other/run/berth", &to),
            "--x=/other/run/berth"
        );
    }

    #[test]
    fn setpriv_follows_the_security_context() {
        let pod = PodPlan {
            name: "p".into(),
            namespace: "ns".into(),
            workload: "Deployment/p".into(),
            node: "node1".into(),
            labels: Default::default(),
            spec: json!({"securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532}}),
        };
        let c = json!({"securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}});
        assert_eq!(
            setpriv_args(&pod, &c),
            [
                "--reuid=65532",
                "--regid=65532",
                "--groups=65532",
                "--bounding-set=-all,+net_admin",
                "--inh-caps=-all",
                "--no-new-privs"
            ]
        );
    }

    #[test]
    fn named_probe_ports_resolve() {
        let c = json!({"name": "c", "ports": [{"name": "metrics", "containerPort": 9472}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "web"}}});
        assert_eq!(
            http_probe(&c, "readinessProbe").unwrap(),
            Some(HttpProbe {
                path: "/readyz".into(),
                port: 9472
            })
        );
        assert!(http_probe(&c, "livenessProbe").unwrap_err().contains("web"));
        assert_eq!(http_probe(&c, "startupProbe").unwrap(), None);
    }
}
