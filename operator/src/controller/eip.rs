//! Eips: their specs taken into the IPAM engine, and their status written back.

use std::net::IpAddr;
use std::sync::Arc;

use berth_api::{Eip, EipStatus, names};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::Context;
use crate::convert;
use crate::pools::{Facts, status};

/// Brings the engine's pools in line with the Eips in the store. An edit that removes IPs in
/// use is applied to new allocations only (their Services keep them) and is remembered for
/// the status, which names those Services until they are gone or moved.
pub fn sync_pools(ctx: &Context) {
    sync_pools_of(&ctx.stores.eips, &ctx.shared);
}

/// [`sync_pools`] from the store and the shared state alone: the watch task calls it before
/// it asks for a reconcile of every Service, so a Service waiting for a new or grown pool
/// finds it in the engine (pool changes are applied before the reconcile that uses them).
pub fn sync_pools_of(store: &kube::runtime::reflector::Store<Eip>, shared: &super::Shared) {
    let eips = store.state();
    let Ok(mut ipam) = shared.ipam.lock() else {
        return;
    };
    let Ok(mut errors) = shared.pool_errors.lock() else {
        return;
    };
    errors.retain(|name, _| eips.iter().any(|e| &e.name_any() == name));
    for eip in &eips {
        let name = eip.name_any();
        let spec = match convert::pool_spec(eip) {
            // A pool being deleted (held by its finalizer) gives nothing new.
            Ok(mut s) => {
                s.disabled |= eip.metadata.deletion_timestamp.is_some();
                s
            }
            Err(e) => {
                // Admission rejects malformed selectors; one that slips through is logged
                // and the pool left as it was.
                warn!(pool = %name, %e, "Eip not taken in");
                continue;
            }
        };
        if ipam.pool(&name).map(|p| p.spec()) == Some(&spec) {
            // Taken in already; an edit that removed IPs in use stays reported until the
            // Services holding them are gone or moved.
            let affected = ipam.stranded(&name);
            if affected.is_empty() {
                errors.remove(&name);
            } else {
                errors.insert(
                    name.clone(),
                    crate::ipam::PoolEditError::WouldStrand {
                        pool: name,
                        affected,
                    },
                );
            }
            continue;
        }
        match ipam.upsert_pool(spec) {
            Ok(()) => {
                errors.remove(&name);
            }
            Err(e) => {
                errors.insert(name, e);
            }
        }
    }
    let gone: Vec<String> = ipam
        .pools()
        .map(|p| p.name().to_owned())
        .filter(|n| !eips.iter().any(|e| &e.name_any() == n))
        .collect();
    for name in gone {
        let kept = ipam.remove_pool(&name);
        if !kept.is_empty() {
            warn!(pool = %name, held = kept.len(), "pool deleted; its IPs stay with their Services");
        }
    }
    shared.metrics.pools(&ipam);
}

/// The Services holding IPs from pool `name`, as `namespace/name`, sorted.
fn holders(ipam: &crate::ipam::Ipam, name: &str) -> Vec<String> {
    let mut out: Vec<String> = ipam
        .services()
        .filter(|k| {
            ipam.ips_of(k)
                .iter()
                .any(|ip| ipam.pool_of(*ip) == Some(name))
        })
        .map(ToString::to_string)
        .collect();
    out.sort();
    out
}

/// What to do with an Eip's finalizer (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalizerStep {
    /// Nothing to do.
    Keep,
    /// Put it on (a live Eip without it).
    Add,
    /// Take it off (deleted, and no Service holds its IPs any more).
    Remove,
}

/// The finalizer step of an Eip given whether it is being deleted, whether it carries the
/// finalizer, and how many Services hold its IPs.
pub fn finalizer_step(deleting: bool, has_finalizer: bool, held: usize) -> FinalizerStep {
    match (deleting, has_finalizer) {
        (false, false) => FinalizerStep::Add,
        (true, true) if held == 0 => FinalizerStep::Remove,
        _ => FinalizerStep::Keep,
    }
}

/// Adds or removes the pool finalizer of every Eip as [`finalizer_step`] says.
async fn finalizers(ctx: &Context) {
    let api: Api<Eip> = Api::all(ctx.client.clone());
    for eip in ctx.stores.eips.state() {
        let name = eip.name_any();
        let mut list: Vec<String> = eip.finalizers().to_vec();
        let has = list.iter().any(|f| f == names::FINALIZER_POOL);
        let deleting = eip.metadata.deletion_timestamp.is_some();
        // Counted only when it decides something: it walks every Service holding an IP, and
        // this runs every minute.
        let held = if deleting && has {
            ctx.shared
                .ipam
                .lock()
                .map(|i| holders(&i, &name).len())
                .unwrap_or(1)
        } else {
            0
        };
        match finalizer_step(deleting, has, held) {
            FinalizerStep::Keep => continue,
            FinalizerStep::Add => list.push(names::FINALIZER_POOL.to_owned()),
            FinalizerStep::Remove => list.retain(|f| f != names::FINALIZER_POOL),
        }
        // The resourceVersion read makes the list replacement a compare-and-swap.
        let patch = json!({ "metadata": {
            "finalizers": list, "resourceVersion": eip.resource_version() } });
        if let Err(e) = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            warn!(pool = %name, %e, "could not update the Eip's finalizer; retrying at the next change");
        }
    }
}

/// The status every Eip should have now.
pub fn statuses(ctx: &Context) -> Vec<(String, Option<EipStatus>, EipStatus)> {
    let eips = ctx.stores.eips.state();
    // The Node views the next-hop rules read, kept up to date by the Node watch: not every
    // Node converted again.
    let views = ctx
        .shared
        .nodes
        .lock()
        .map(|n| n.clone())
        .unwrap_or_default();
    let node_addresses: Vec<(String, IpAddr)> = views
        .iter()
        .flat_map(|v| v.internal_ips.iter().map(|ip| (v.name.clone(), *ip)))
        .collect();
    let mut defaults: Vec<String> = eips
        .iter()
        .filter(|e| e.spec.default)
        .map(|e| e.name_any())
        .collect();
    defaults.sort();
    let errors = ctx
        .shared
        .pool_errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    let Ok(ipam) = ctx.shared.ipam.lock() else {
        return Vec::new();
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    eips.iter()
        .map(|eip| {
            let name = eip.name_any();
            let previous = eip.status.clone();
            let conditions = previous
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            let held_by = eip
                .metadata
                .deletion_timestamp
                .is_some()
                .then(|| holders(&ipam, &name));
            let facts = Facts {
                generation: eip.metadata.generation,
                edit_error: errors.get(&name),
                node_addresses: &node_addresses,
                defaults: &defaults,
                previous: &conditions,
                deleting_held_by: held_by.as_deref(),
            };
            let s = status(&name, &ipam, &facts, now.clone());
            (name, previous, s)
        })
        .collect()
}

/// Writes Eip status when it changes, coalescing bursts (an allocation storm writes each
/// pool's status about once a second, not once per IP).
pub async fn status_writer(ctx: Arc<Context>) {
    loop {
        tokio::select! {
            () = ctx.shared.eip_dirty.notified() => {}
            () = tokio::time::sleep(ctx.settings.resync) => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        sync_pools(&ctx);
        finalizers(&ctx).await;
        for (name, previous, wanted) in statuses(&ctx) {
            if previous.as_ref() == Some(&wanted) {
                continue;
            }
            let api: Api<Eip> = Api::all(ctx.client.clone());
            let started = std::time::Instant::now();
            let r = api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": wanted })),
                )
                .await;
            ctx.shared
                .metrics
                .reconciled("eip", started.elapsed().as_secs_f64(), r.is_err());
            if let Err(e) = r {
                warn!(pool = %name, %e, "could not write Eip status; retrying at the next change");
            }
        }
    }
}
