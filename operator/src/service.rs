//! What a Service asks of Berth, read from the Kubernetes object: whether it is Berth's at all,
//! and if so which families, pool, requested IPs, sharing key, ports and traffic policy. Pure;
//! errors name the field or annotation and say what to write instead, so the controller can
//! put them in an Event as they are.

use std::collections::BTreeSet;
use std::net::IpAddr;

use berth_api::names;
use k8s_openapi::api::core::v1::Service;

use crate::ipam::{Family, Holder, Labels, Port, Protocol, Request, ServiceKey, TrafficPolicy};

/// Whether Berth handles a Service, and what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Not Berth's: not `type: LoadBalancer`, another class, or unclassed without
    /// `--take-unclassed`. Anything Berth holds for it must be released.
    NotOurs,
    /// Berth's: one request per family, in the Service's `ipFamilies` order.
    Ours(Vec<Request>),
}

/// Input on a Service that Berth cannot act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct IntentError {
    /// The field or annotation.
    pub field: String,
    /// What is wrong and what to write instead.
    pub why: String,
}

fn err(field: impl Into<String>, why: impl Into<String>) -> IntentError {
    IntentError {
        field: field.into(),
        why: why.into(),
    }
}

/// The annotation `kubectl apply` writes: a copy of the whole object as applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A Service as the operator's store keeps it: without what no decision reads. At 10,000
/// Services the store is the largest part of the operator's memory, and a real API server's
/// Service carries more than the scale bench's (a cluster IP, node ports, the last applied
/// copy of the whole object, defaults). Kept: metadata but `managedFields` and the last
/// applied copy; the status; of the spec, what [`intent`] reads (type, class, families,
/// requested IP, ports and protocols, traffic policy, and the selector of a `Local`
/// Service); of a Service that is not a `LoadBalancer`, only its type and class (its
/// reconcile only cleans up).
pub fn stored(svc: &mut Service) {
    svc.metadata.managed_fields = None;
    if let Some(a) = svc.metadata.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
    let Some(spec) = svc.spec.as_mut() else {
        return;
    };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        *spec = k8s_openapi::api::core::v1::ServiceSpec {
            type_: spec.type_.take(),
            load_balancer_class: spec.load_balancer_class.take(),
            ..Default::default()
        };
        return;
    }
    if spec.external_traffic_policy.as_deref() != Some("Local") {
        spec.selector = None;
    }
    spec.cluster_ip = None;
    spec.cluster_ips = None;
    spec.external_ips = None;
    spec.external_name = None;
    spec.health_check_node_port = None;
    spec.internal_traffic_policy = None;
    spec.load_balancer_source_ranges = None;
    spec.session_affinity = None;
    spec.session_affinity_config = None;
    spec.traffic_distribution = None;
    for p in spec.ports.iter_mut().flatten() {
        p.name = None;
        p.node_port = None;
        p.target_port = None;
        p.app_protocol = None;
    }
}

/// Whether `svc` is Berth's to serve: a `LoadBalancer` of Berth's class (or of none, with
/// `take_unclassed`).
pub fn is_ours(svc: &Service, take_unclassed: bool) -> bool {
    let Some(spec) = &svc.spec else {
        return false;
    };
    spec.type_.as_deref() == Some("LoadBalancer")
        && match spec.load_balancer_class.as_deref() {
            Some(names::LOAD_BALANCER_CLASS) => true,
            None => take_unclassed,
            Some(_) => false,
        }
}

/// Reads a Service. `take_unclassed`: handle LoadBalancer Services without a class.
pub fn intent(svc: &Service, take_unclassed: bool) -> Result<Intent, IntentError> {
    intent_in(svc, take_unclassed, &Labels::new())
}

/// [`intent`] with the labels of the Service's Namespace, which pools' `namespaceSelector`
/// is matched against.
pub fn intent_in(
    svc: &Service,
    take_unclassed: bool,
    namespace_labels: &Labels,
) -> Result<Intent, IntentError> {
    let Some(spec) = &svc.spec else {
        return Ok(Intent::NotOurs);
    };
    if !is_ours(svc, take_unclassed) {
        return Ok(Intent::NotOurs);
    }
    match spec.load_balancer_class.as_deref() {
        Some(names::LOAD_BALANCER_CLASS) => {}
        None if take_unclassed => {}
        _ => return Ok(Intent::NotOurs),
    }
    let meta = &svc.metadata;
    let key = ServiceKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    );
    let annotations = meta.annotations.clone().unwrap_or_default();
    let annotation = |name: &str| {
        annotations
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    // Berth's annotation, else the first of the replaced load balancers' (a Service handed
    // over from MetalLB or OpenELB asks for the same thing without being edited), with the
    // name of the annotation used, for error messages.
    let requested_by = |ours: &str, foreign: &[&str]| {
        std::iter::once(ours)
            .chain(foreign.iter().copied())
            .find_map(|name| annotation(name).map(|v| (name.to_owned(), v)))
    };

    let families = families(
        spec.ip_families.as_deref().unwrap_or_default(),
        spec.ip_family_policy.as_deref(),
    )?;

    // Requested IPs: the annotation, else the deprecated field; at most one per family.
    let (source, raw) = match requested_by(
        names::ANNOTATION_REQUESTED_IP,
        &names::FOREIGN_IP_ANNOTATIONS,
    ) {
        Some((name, v)) => (format!("annotation {name}"), v),
        None => (
            "spec.loadBalancerIP".to_owned(),
            spec.load_balancer_ip.clone().unwrap_or_default(),
        ),
    };
    let mut requested: Vec<IpAddr> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ip: IpAddr = part.parse().map_err(|_| {
            err(
                &source,
                format!("{part:?} is not an IP address (write e.g. 10.0.0.5 or 10.0.0.5,fd00::5)"),
            )
        })?;
        if requested.iter().any(|r| r.is_ipv4() == ip.is_ipv4()) {
            return Err(err(
                &source,
                format!("two {} addresses: give at most one per family", fam(ip)),
            ));
        }
        if !families.iter().any(|f| (*f == Family::V4) == ip.is_ipv4()) {
            return Err(err(
                &source,
                format!(
                    "{ip} is {} but the Service's ipFamilies do not include it",
                    fam(ip)
                ),
            ));
        }
        requested.push(ip);
    }

    let ports = spec
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                other => {
                    return Err(err(
                        format!("spec.ports[{i}].protocol"),
                        format!("{other:?} is not TCP, UDP or SCTP"),
                    ));
                }
            };
            let port = u16::try_from(p.port).map_err(|_| {
                err(
                    format!("spec.ports[{i}].port"),
                    format!("{} is not 1-65535", p.port),
                )
            })?;
            Ok(Port { port, protocol })
        })
        .collect::<Result<BTreeSet<Port>, IntentError>>()?;

    let policy = match spec.external_traffic_policy.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    // Local-policy Services share an IP only with the same backends: the selector, canonical.
    // Only theirs: a `Cluster` Service's is not read (nor kept in the store, see `stored`).
    let backend = match policy {
        TrafficPolicy::Local => spec
            .selector
            .as_ref()
            .map(|s| {
                s.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        TrafficPolicy::Cluster => String::new(),
    };
    let created = meta
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    let holder = Holder {
        service: key,
        sharing_key: requested_by(
            names::ANNOTATION_SHARING_KEY,
            &names::FOREIGN_SHARING_ANNOTATIONS,
        )
        .map(|(_, v)| v),
        ports,
        policy,
        backend,
        created,
        uid: meta.uid.clone().unwrap_or_default(),
    };
    let pool =
        requested_by(names::ANNOTATION_POOL, &names::FOREIGN_POOL_ANNOTATIONS).map(|(_, v)| v);
    let labels = meta.labels.clone().unwrap_or_default();
    Ok(Intent::Ours(
        families
            .into_iter()
            .map(|family| Request {
                holder: holder.clone(),
                family,
                pool: pool.clone(),
                requested: requested
                    .iter()
                    .copied()
                    .find(|ip| ip.is_ipv4() == (family == Family::V4)),
                namespace_labels: namespace_labels.clone(),
                service_labels: labels.clone(),
            })
            .collect(),
    ))
}

fn fam(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// The families to allocate: `ipFamilies` as Kubernetes filled it in (a single-stack
/// Service lists one; `PreferDualStack`/`RequireDualStack` list both on a dual-stack cluster).
fn families(ip_families: &[String], policy: Option<&str>) -> Result<Vec<Family>, IntentError> {
    let mut out = Vec::new();
    for (i, f) in ip_families.iter().enumerate() {
        let family = match f.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            other => {
                return Err(err(
                    format!("spec.ipFamilies[{i}]"),
                    format!("{other:?} is not IPv4 or IPv6"),
                ));
            }
        };
        if !out.contains(&family) {
            out.push(family);
        }
    }
    if out.is_empty() {
        // Older API servers leave it empty on single-stack IPv4 clusters.
        out.push(Family::V4);
    }
    if policy == Some("RequireDualStack") && out.len() < 2 {
        return Err(err(
            "spec.ipFamilyPolicy",
            "RequireDualStack needs both IPv4 and IPv6 in spec.ipFamilies",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
