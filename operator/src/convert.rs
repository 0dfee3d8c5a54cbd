//! Kubernetes objects read into the operator's pure types: an Eip into a [`PoolSpec`], a
//! `LabelSelector` into a [`Selector`], a Service's status into the [`Claim`]s the IPAM
//! rebuild starts from. Pure, and tolerant: what cannot be read is reported, never unwrapped.

use std::collections::BTreeSet;
use std::net::IpAddr;

use berth_api::{Eip, names};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::ipam::{Claim, PoolSpec, Requirement, Selector};
use crate::service::{Intent, intent};

/// A label selector the operator cannot evaluate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct SelectorError {
    /// The field holding the selector.
    pub field: String,
    /// What is wrong and what to write instead.
    pub why: String,
}

/// Reads a `LabelSelector`; `field` names it in errors (`spec.serviceSelector`).
pub fn selector(sel: &LabelSelector, field: &str) -> Result<Selector, SelectorError> {
    let mut out = Selector {
        match_labels: sel.match_labels.clone().unwrap_or_default(),
        requirements: Vec::new(),
    };
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
        let req = match e.operator.as_str() {
            "In" => Requirement::In(e.key.clone(), values),
            "NotIn" => Requirement::NotIn(e.key.clone(), values),
            "Exists" => Requirement::Exists(e.key.clone()),
            "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
            other => {
                return Err(SelectorError {
                    field: format!("{field}.matchExpressions[{i}].operator"),
                    why: format!("{other:?} is not In, NotIn, Exists or DoesNotExist"),
                });
            }
        };
        out.requirements.push(req);
    }
    Ok(out)
}

/// An Eip as a pool spec. Errors name the Eip's field.
pub fn pool_spec(eip: &Eip) -> Result<PoolSpec, SelectorError> {
    let s = &eip.spec;
    let sel = |v: &Option<LabelSelector>, field: &str| {
        v.as_ref()
            .map(|s| selector(s, field))
            .transpose()
            .map_err(|e| SelectorError {
                field: format!(
                    "Eip {}: {}",
                    eip.metadata.name.as_deref().unwrap_or(""),
                    e.field
                ),
                why: e.why,
            })
    };
    Ok(PoolSpec {
        name: eip.metadata.name.clone().unwrap_or_default(),
        address: s.address.clone(),
        excludes: s.excludes.clone(),
        use_network_and_broadcast: s.use_network_and_broadcast,
        disabled: s.disable,
        default: s.default,
        priority: s.priority,
        namespaces: s.namespaces.as_ref().map(|n| n.iter().cloned().collect()),
        namespace_selector: sel(&s.namespace_selector, "spec.namespaceSelector")?,
        service_selector: sel(&s.service_selector, "spec.serviceSelector")?,
    })
}

/// The IPs a Service's `status.loadBalancer.ingress` lists, in order; entries that are not
/// IP addresses (a hostname) are skipped.
pub fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| i.ip.as_deref())
                .filter_map(|ip| ip.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What a Service's status claims, for the rebuild at start-up and at leader hand-over. A
/// Service that is no longer Berth's, or whose spec Berth cannot read, still claims what its
/// status lists while Berth's marks are on it (the `berth.dev/allocated-pool` annotation, or
/// the finalizer earlier versions added): its IPs must not be handed to anyone else before
/// the controller has released them.
pub fn claims(svc: &Service, take_unclassed: bool) -> Vec<Claim> {
    let ips = ingress_ips(svc);
    if ips.is_empty() {
        return Vec::new();
    }
    let pool = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(names::ANNOTATION_ALLOCATED_POOL))
        .cloned();
    let ours_by_finalizer = pool.is_some()
        || svc
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == names::FINALIZER_SERVICE);
    let holder = match intent(svc, take_unclassed) {
        Ok(Intent::Ours(reqs)) => reqs.into_iter().next().map(|r| r.holder),
        _ if ours_by_finalizer => Some(crate::ipam::Holder {
            uid: svc.metadata.uid.clone().unwrap_or_default(),
            ..crate::ipam::Holder::new(crate::ipam::ServiceKey::new(
                svc.metadata.namespace.clone().unwrap_or_default(),
                svc.metadata.name.clone().unwrap_or_default(),
            ))
        }),
        _ => None,
    };
    let Some(holder) = holder else {
        return Vec::new();
    };
    ips.into_iter()
        .map(|ip| Claim {
            holder: holder.clone(),
            ip,
            // A dual-stack Service records "v4pool,v6pool": each IP names its own.
            pool: pool.as_deref().and_then(|p| pool_for(p, ip)),
        })
        .collect()
}

/// The pool recorded for `ip` in the `berth.dev/allocated-pool` value: one name, or one per
/// family as `ip=pool` pairs separated by commas.
fn pool_for(recorded: &str, ip: IpAddr) -> Option<String> {
    let parts: Vec<&str> = recorded.split(',').map(str::trim).collect();
    for p in &parts {
        if let Some((a, pool)) = p.split_once('=')
            && a.parse::<IpAddr>().ok() == Some(ip)
        {
            return Some(pool.to_owned());
        }
    }
    match parts.as_slice() {
        [single] if !single.contains('=') && !single.is_empty() => Some((*single).to_owned()),
        _ => None,
    }
}

/// The `berth.dev/allocated-pool` value for a Service's allocations: one pool name when every
/// IP came from one pool, else `ip=pool` pairs.
pub fn allocated_pool_value(allocs: &[(IpAddr, String)]) -> Option<String> {
    let first = allocs.first()?;
    if allocs.iter().all(|(_, p)| *p == first.1) {
        return Some(first.1.clone());
    }
    Some(
        allocs
            .iter()
            .map(|(ip, p)| format!("{ip}={p}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn svc(yaml: &str) -> Service {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn selectors_read_every_operator_and_name_a_bad_one() {
        let sel: LabelSelector = serde_yaml_ng::from_str(
            "matchLabels: {a: b}\nmatchExpressions:\n- {key: c, operator: In, values: [x]}\n- {key: d, operator: DoesNotExist}\n",
        )
        .unwrap();
        let s = selector(&sel, "spec.serviceSelector").unwrap();
        let labels = [("a", "b"), ("c", "x")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert!(s.matches(&labels));
        let bad: LabelSelector =
            serde_yaml_ng::from_str("matchExpressions:\n- {key: c, operator: Gt}\n").unwrap();
        let e = selector(&bad, "spec.serviceSelector").unwrap_err();
        assert_eq!(e.field, "spec.serviceSelector.matchExpressions[0].operator");
    }

    #[test]
    fn claims_carry_the_recorded_pool_per_ip() {
        let s = svc(r#"
metadata:
  name: web
  namespace: shop
  annotations: {berth.dev/allocated-pool: "10.0.0.5=blue,fd00::5=green"}
  finalizers: [berth.dev/release-ip]
spec: {type: LoadBalancer, loadBalancerClass: berth.dev/berth, ipFamilies: [IPv4, IPv6]}
status: {loadBalancer: {ingress: [{ip: 10.0.0.5}, {ip: "fd00::5"}, {hostname: x.example}]}}
"#);
        let c = claims(&s, false);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].pool.as_deref(), Some("blue"));
        assert_eq!(c[1].pool.as_deref(), Some("green"));
        assert_eq!(c[0].holder.service.to_string(), "shop/web");
    }

    #[test]
    fn a_service_no_longer_ours_still_claims_while_our_finalizer_is_on_it() {
        let mut s = svc(r#"
metadata: {name: web, namespace: shop, finalizers: [berth.dev/release-ip]}
spec: {type: ClusterIP}
status: {loadBalancer: {ingress: [{ip: 10.0.0.5}]}}
"#);
        assert_eq!(claims(&s, false).len(), 1);
        s.metadata.finalizers = None;
        assert!(claims(&s, false).is_empty());
    }

    #[test]
    fn allocated_pool_value_is_short_for_one_pool() {
        let a: IpAddr = "10.0.0.5".parse().unwrap();
        let b: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(
            allocated_pool_value(&[(a, "blue".into()), (b, "blue".into())]).as_deref(),
            Some("blue")
        );
        let v = allocated_pool_value(&[(a, "blue".into()), (b, "green".into())]).unwrap();
        assert_eq!(v, "10.0.0.5=blue,fd00::5=green");
        assert_eq!(pool_for(&v, b).as_deref(), Some("green"));
        assert_eq!(pool_for("blue", b).as_deref(), Some("blue"));
    }
}
