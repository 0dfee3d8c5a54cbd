//! What the Service controller does for one Service, decided without the API: allocate or
//! release through the IPAM engine, and say what the Service's status, finalizer and
//! annotation must become and which Events to record. The controller only carries the
//! [`Plan`] out, so every path here is tested in memory.
//!
//! Rules:
//! - An IP, once held, stays: a later error in the Service's annotations is reported, never
//!   answered by taking the IP away (only the user's delete, type or class change releases).
//! - The finalizer goes on before the IP is written, and comes off only after the release.
//! - A family the Service stops asking for (`ipFamilies` narrowed) is released alone.

use std::net::IpAddr;

use berth_api::names;
use k8s_openapi::api::core::v1::Service;

use crate::convert::{allocated_pool_value, ingress_ips};
use crate::ipam::{AllocError, Family, Ipam, Labels, ServiceKey};
use crate::service::{Intent, intent_in};

/// Whether an Event is routine or needs the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Something was done.
    Normal,
    /// Something could not be done; the note says what to change.
    Warning,
}

/// One Event to record on the Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub severity: Severity,
    /// CamelCase reason, as `kubectl describe` shows it.
    pub reason: &'static str,
    /// The sentence a user reads.
    pub message: String,
}

impl Note {
    fn normal(reason: &'static str, message: String) -> Self {
        Note {
            severity: Severity::Normal,
            reason,
            message,
        }
    }
    fn warning(reason: &'static str, message: String) -> Self {
        Note {
            severity: Severity::Warning,
            reason,
            message,
        }
    }
}

/// The fate of `berth.dev/release-ip`, the finalizer earlier versions put on every Service:
/// none is added any more (a Service deleted while the operator is gone, after `helm
/// uninstall`, must not hang in Terminating; a vanished Service's IPs are released by the
/// sweep), and the one a Service still carries is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finalizer {
    /// It has none: nothing to write.
    Keep,
    /// Remove it (after the release, when the Service is being deleted).
    Remove,
}

/// What to write for one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The Service.
    pub key: ServiceKey,
    /// Finalizer change.
    pub finalizer: Finalizer,
    /// The `status.loadBalancer.ingress` IPs to write; `None`: leave the status alone.
    pub ingress: Option<Vec<IpAddr>>,
    /// The `berth.dev/allocated-pool` annotation: `Some(None)` removes it.
    pub allocated_pool: Option<Option<String>>,
    /// Events to record.
    pub notes: Vec<Note>,
    /// Events to record on other Services: of two that collide on an IP after a sharing
    /// edit, the newer one is told, whichever of them was reconciled.
    pub elsewhere: Vec<(ServiceKey, Note)>,
    /// The IPs the Service holds afterwards (routes follow these).
    pub held: Vec<IpAddr>,
    /// Whether the Service is Berth's (next hops are computed only then).
    pub ours: bool,
    /// Why a family the Service asks for got no IP ([`crate::ipam::AllocError::reason`]);
    /// `None` when it holds an IP of every family it asks for.
    pub pending: Option<&'static str>,
}

/// The pending reason of a Service whose spec cannot be read (next to
/// [`crate::ipam::AllocError::REASONS`]).
pub const INVALID_SERVICE: &str = "InvalidService";

/// Decides for one Service. `ipam` is changed (allocations, releases) as decided.
pub fn plan(svc: &Service, take_unclassed: bool, ipam: &mut Ipam) -> Plan {
    plan_in(svc, take_unclassed, &Labels::new(), ipam)
}

/// [`plan`] with the labels of the Service's Namespace (for pools' `namespaceSelector`).
pub fn plan_in(
    svc: &Service,
    take_unclassed: bool,
    namespace_labels: &Labels,
    ipam: &mut Ipam,
) -> Plan {
    let key = ServiceKey::new(
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    let has_finalizer = svc
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == names::FINALIZER_SERVICE);
    let recorded_pool = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(names::ANNOTATION_ALLOCATED_POOL))
        .cloned();
    let status_ips = ingress_ips(svc);
    let deleting = svc.metadata.deletion_timestamp.is_some();
    let mut notes = Vec::new();
    let mut elsewhere = Vec::new();

    // The engine holds IPs for another instance of this name: that Service was deleted and
    // this one created since (faster than the sweep noticed). It is a new holder: what the
    // old one held is released, and this one asks afresh.
    let uid = svc.metadata.uid.as_deref().unwrap_or_default();
    if !uid.is_empty()
        && ipam
            .uid_of(&key)
            .is_some_and(|held_by| !held_by.is_empty() && held_by != uid)
    {
        let released = ipam.release(&key);
        notes.push(Note::normal(
            "IPReleased",
            format!(
                "released {}: held by the earlier Service of this name, which was deleted",
                list(&released)
            ),
        ));
    }

    let intent = if deleting {
        Ok(Intent::NotOurs)
    } else {
        intent_in(svc, take_unclassed, namespace_labels)
    };
    let requests = match intent {
        Ok(Intent::Ours(reqs)) => reqs,
        Ok(Intent::NotOurs) => {
            let released = ipam.release(&key);
            if !released.is_empty() {
                let why = if deleting {
                    "the Service is being deleted"
                } else {
                    "the Service is no longer Berth's (type, loadBalancerClass or settings changed)"
                };
                notes.push(Note::normal(
                    "IPReleased",
                    format!("released {}: {why}", list(&released)),
                ));
            }
            // Our status entries go when we let go; a Service of another class is not ours
            // to touch unless we held its IPs.
            let clear_status = has_finalizer || !released.is_empty();
            // Berth's own annotations on a Service Berth never held: written by someone
            // else (a tenant forging a claim, or a copy-paste). Nothing acts on them; say so.
            if !clear_status && !deleting {
                let forged: Vec<&str> =
                    [names::ANNOTATION_ALLOCATED_POOL, names::ANNOTATION_LAYER2]
                        .into_iter()
                        .filter(|a| {
                            svc.metadata
                                .annotations
                                .as_ref()
                                .is_some_and(|m| m.contains_key(*a))
                        })
                        .collect();
                if !forged.is_empty() {
                    notes.push(Note::warning(
                        "NotBerths",
                        format!(
                            "annotation {} is written by Berth's operator on its own Services; \
                             this Service is not Berth's (it needs type LoadBalancer and \
                             loadBalancerClass {}), so no IP is assigned, announced or \
                             answered for it: remove the annotation",
                            forged.join(" and "),
                            names::LOAD_BALANCER_CLASS
                        ),
                    ));
                }
            }
            return Plan {
                key,
                finalizer: if has_finalizer {
                    Finalizer::Remove
                } else {
                    Finalizer::Keep
                },
                ingress: (clear_status && !status_ips.is_empty() && !deleting).then(Vec::new),
                allocated_pool: (clear_status && recorded_pool.is_some() && !deleting)
                    .then_some(None),
                notes,
                elsewhere,
                held: Vec::new(),
                ours: false,
                pending: None,
            };
        }
        Err(e) => {
            // Unreadable input: keep what is held, say what to fix.
            notes.push(Note::warning(
                "InvalidService",
                format!("{e}; the Service keeps the IPs it has"),
            ));
            let held = ipam.ips_of(&key).to_vec();
            return Plan {
                key,
                finalizer: if has_finalizer {
                    Finalizer::Remove
                } else {
                    Finalizer::Keep
                },
                ingress: None,
                allocated_pool: None,
                pending: held.is_empty().then_some(INVALID_SERVICE),
                notes,
                elsewhere,
                held,
                ours: true,
            };
        }
    };

    // Families no longer asked for are released alone.
    let wanted: Vec<Family> = requests.iter().map(|r| r.family).collect();
    for ip in ipam.ips_of(&key).to_vec() {
        if !wanted.contains(&Family::of(ip)) && ipam.release_ip(&key, ip) {
            notes.push(Note::normal(
                "IPReleased",
                format!(
                    "released {ip}: spec.ipFamilies no longer includes {}",
                    Family::of(ip)
                ),
            ));
        }
    }

    let mut allocs: Vec<(IpAddr, String)> = Vec::new();
    // What the status shows afterwards: the IPs held, and a status IP kept although another
    // Service holds it now (a sharing edit seen only after a restart: nothing moves).
    let mut shown: Vec<IpAddr> = Vec::new();
    let mut pending = None;
    for req in &requests {
        let before = ipam
            .ips_of(&key)
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == req.family);
        // The IP the Service's status already shows comes first: the engine may not hold it
        // (a Service written by the previous leader after this one's rebuild, a Service
        // restored with its status), and handing out another would move a working IP.
        let from_status = status_ips
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == req.family)
            .filter(|_| before.is_none() && req.requested.is_none());
        let kept = from_status.map(|ip| {
            let mut preferred = req.clone();
            preferred.requested = Some(ip);
            match ipam.allocate(&preferred) {
                // Held by a Service it may no longer share with: this one is not moved
                // elsewhere; the newer of the two is told.
                Err(AllocError::Share(_)) => ipam.collision_at(ip, &req.holder).map(|()| None),
                r => r.map(Some).or(Ok(None)),
            }
        });
        let result = match kept {
            Some(Ok(Some(a))) => Ok(a),
            Some(Err(e)) => Err(e),
            _ => ipam.allocate(req),
        };
        match result {
            Ok(a) => {
                if before.is_none() {
                    notes.push(Note::normal(
                        "IPAllocated",
                        format!("assigned {} from pool {}", a.ip, a.pool),
                    ));
                }
                shown.push(a.ip);
                allocs.push((a.ip, a.pool));
            }
            Err(e) => {
                if before.is_none() {
                    pending.get_or_insert(e.reason());
                }
                match &e {
                    AllocError::SharingEdit { newer, .. } => {
                        let note = Note::warning("SharingConflict", e.to_string());
                        if *newer == key {
                            notes.push(note);
                        } else {
                            elsewhere.push((newer.clone(), note));
                        }
                        // Its status IP stays (nothing moves), held or not.
                        if before.is_none()
                            && let Some(ip) = from_status
                        {
                            shown.push(ip);
                        }
                    }
                    _ => notes.push(Note::warning("AllocationFailed", e.to_string())),
                }
                // An IP still held (e.g. a requested IP that differs) stays in use.
                if let Some(ip) = before {
                    let pool = ipam.pool_of(ip).unwrap_or_default().to_owned();
                    shown.push(ip);
                    allocs.push((ip, pool));
                }
            }
        }
    }
    let held: Vec<IpAddr> = allocs.iter().map(|(ip, _)| *ip).collect();
    let pool_value = allocated_pool_value(
        &allocs
            .iter()
            .filter(|(_, p)| !p.is_empty())
            .cloned()
            .collect::<Vec<_>>(),
    );
    Plan {
        key,
        finalizer: if has_finalizer {
            Finalizer::Remove
        } else {
            Finalizer::Keep
        },
        ingress: (status_ips != shown).then_some(shown),
        allocated_pool: (pool_value != recorded_pool).then_some(pool_value),
        notes,
        elsewhere,
        held,
        ours: true,
        pending,
    }
}

fn list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
