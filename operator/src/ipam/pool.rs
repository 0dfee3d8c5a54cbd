//! A pool: the user's Eip spec turned into the sorted ranges it may hand out.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::addr::{AddressSpec, Count, Family, Range, subtract, to_int};
use super::error::PoolEditError;
use super::selector::{Labels, Selector};

/// A pool as the operator reads it from an Eip, before parsing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolSpec {
    /// The Eip's name.
    pub name: String,
    /// `spec.address`.
    pub address: String,
    /// `spec.excludes`.
    pub excludes: Vec<String>,
    /// `spec.useNetworkAndBroadcast`.
    pub use_network_and_broadcast: bool,
    /// `spec.disable`.
    pub disabled: bool,
    /// `spec.default`.
    pub default: bool,
    /// `spec.priority`: lower is tried first.
    pub priority: i32,
    /// `spec.namespaces`.
    pub namespaces: Option<BTreeSet<String>>,
    /// `spec.namespaceSelector`.
    pub namespace_selector: Option<Selector>,
    /// `spec.serviceSelector`.
    pub service_selector: Option<Selector>,
}

/// A parsed pool. Its size in memory depends on the number of excludes, never on the number
/// of addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    spec: PoolSpec,
    address: AddressSpec,
    /// What the pool may hand out: `address` minus excludes and skipped addresses; sorted,
    /// disjoint.
    usable: Vec<Range>,
    size: Count,
}

impl Pool {
    /// Parses a spec; errors name the pool, the bad value and the accepted forms.
    pub fn parse(spec: PoolSpec) -> Result<Pool, PoolEditError> {
        let invalid = |source| PoolEditError::Invalid {
            pool: spec.name.clone(),
            source,
        };
        let address: AddressSpec = spec.address.parse().map_err(invalid)?;
        let family = address.family();
        let mut cut = Vec::with_capacity(spec.excludes.len() + 2);
        for e in &spec.excludes {
            let ex: AddressSpec = e.parse().map_err(invalid)?;
            if ex.family() != family {
                return Err(PoolEditError::ExcludeFamily {
                    pool: spec.name.clone(),
                    exclude: e.clone(),
                    family,
                });
            }
            cut.push(ex.range());
        }
        if !spec.use_network_and_broadcast
            && let Some((net, bcast)) = address.network_and_broadcast()
        {
            cut.push(Range::single(net));
            cut.push(Range::single(bcast));
        }
        let usable = subtract(&[address.range()], &cut);
        let size = usable
            .iter()
            .fold(Count::ZERO, |acc, r| acc.saturating_add(r.len()));
        Ok(Pool {
            spec,
            address,
            usable,
            size,
        })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The spec it was parsed from.
    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    /// The family of its addresses.
    pub fn family(&self) -> Family {
        self.address.family()
    }

    /// Every address the pool spans, usable or not.
    pub fn span(&self) -> Range {
        self.address.range()
    }

    /// The ranges it hands out from, sorted.
    pub fn usable(&self) -> &[Range] {
        &self.usable
    }

    /// Number of addresses it can hand out.
    pub fn size(&self) -> Count {
        self.size
    }

    /// Whether `ip` is inside the pool's address, usable or not.
    pub fn spans(&self, ip: IpAddr) -> bool {
        self.span().contains(ip)
    }

    /// Whether the pool may hand out `ip`. O(log excludes).
    pub fn is_usable(&self, ip: IpAddr) -> bool {
        if Family::of(ip) != self.family() {
            return false;
        }
        let v = to_int(ip);
        let i = self.usable.partition_point(|r| r.end < v);
        self.usable.get(i).is_some_and(|r| r.start <= v)
    }

    /// First usable address.
    pub fn first(&self) -> Option<IpAddr> {
        self.usable.first().map(Range::first)
    }

    /// Last usable address.
    pub fn last(&self) -> Option<IpAddr> {
        self.usable.last().map(Range::last)
    }

    /// Whether the pool has any namespace or Service restriction.
    pub fn has_selectors(&self) -> bool {
        self.spec.namespaces.is_some()
            || self.spec.namespace_selector.is_some()
            || self.spec.service_selector.is_some()
    }

    /// Whether a Service in `namespace` with these labels may draw from the pool; `Err` says
    /// which restriction refused it.
    pub fn admits(
        &self,
        namespace: &str,
        namespace_labels: &Labels,
        service_labels: &Labels,
    ) -> Result<(), String> {
        if let Some(ns) = &self.spec.namespaces
            && !ns.contains(namespace)
        {
            return Err(format!(
                "namespace {namespace} is not in its spec.namespaces"
            ));
        }
        if let Some(sel) = &self.spec.namespace_selector
            && !sel.matches(namespace_labels)
        {
            return Err(format!(
                "namespace {namespace}'s labels do not match its spec.namespaceSelector"
            ));
        }
        if let Some(sel) = &self.spec.service_selector
            && !sel.matches(service_labels)
        {
            return Err("the Service's labels do not match its spec.serviceSelector".to_owned());
        }
        Ok(())
    }
}
