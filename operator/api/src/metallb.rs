//! MetalLB's configuration (`IPAddressPool`, `L2Advertisement`, `BGPAdvertisement`,
//! `BGPPeer`) converted to Berth's (`Eip`, `BgpConf`, `BgpPeer`), keeping the pool names so
//! Services annotated for MetalLB keep asking for the same pool (the operator reads MetalLB's
//! annotations too), and every address a pool could hand out, so no Service's IP falls
//! outside Berth's pools. What Berth cannot express is said in [`Conversion::notes`], never
//! dropped silently. Pure: `berthctl convert-metallb` reads and prints.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

use crate::{BgpConf, BgpPeer, Eip};

/// The result: Berth's objects (as they would be applied) and what did not carry over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversion {
    /// `Eip`s, then the `BgpConf`, then the `BgpPeer`s.
    pub objects: Vec<Value>,
    /// Each thing that changed meaning or was left out, naming the MetalLB object.
    pub notes: Vec<String>,
}

/// Input that cannot be converted at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {why}")]
pub struct ConvertError {
    /// `Kind/name` of the MetalLB object.
    pub object: String,
    /// What is wrong and what to do.
    pub why: String,
}

fn error(object: &str, why: impl Into<String>) -> ConvertError {
    ConvertError {
        object: object.to_owned(),
        why: why.into(),
    }
}

/// Converts MetalLB objects (any order; other kinds are noted and skipped).
/// `l2_interface`: the interface for Layer2 pools whose L2Advertisement names none (MetalLB
/// answers on every interface; Berth needs one, or `can_reach:<ip>`).
pub fn convert(docs: &[Value], l2_interface: Option<&str>) -> Result<Conversion, ConvertError> {
    let mut out = Conversion::default();
    let of_kind = |kind: &str| -> Vec<&Value> {
        docs.iter()
            .filter(|d| d["kind"] == kind && is_metallb(d))
            .collect()
    };
    for d in docs {
        let kind = d["kind"].as_str().unwrap_or("?");
        if !is_metallb(d)
            || ![
                "IPAddressPool",
                "L2Advertisement",
                "BGPAdvertisement",
                "BGPPeer",
            ]
            .contains(&kind)
        {
            out.notes.push(format!(
                "{}: skipped, not one of MetalLB's IPAddressPool, L2Advertisement, BGPAdvertisement, BGPPeer",
                id(d)
            ));
        }
    }
    let l2 = of_kind("L2Advertisement");
    let bgp = of_kind("BGPAdvertisement");
    let pools = of_kind("IPAddressPool");
    let mut defaults: Vec<(i64, String)> = Vec::new();
    for pool in &pools {
        let name = name(pool);
        let object = id(pool);
        let spec = &pool["spec"];
        let mut in_l2: Vec<&&Value> = Vec::new();
        for a in &l2 {
            if advertises(a, pool)? {
                in_l2.push(a);
            }
        }
        let mut in_bgp: Vec<&&Value> = Vec::new();
        for a in &bgp {
            if advertises(a, pool)? {
                in_bgp.push(a);
            }
        }
        let layer2 = !in_l2.is_empty() && in_bgp.is_empty();
        if !in_l2.is_empty() && !in_bgp.is_empty() {
            out.notes.push(format!(
                "{object}: advertised by both L2Advertisement and BGPAdvertisement; a Berth pool is one or the other: converted as bgp"
            ));
        }
        if in_l2.is_empty() && in_bgp.is_empty() {
            out.notes.push(format!(
                "{object}: no advertisement selects it (MetalLB assigns but announces nothing); converted as bgp"
            ));
        }
        for a in in_l2.iter().chain(in_bgp.iter()) {
            for unsupported in [
                "nodeSelectors",
                "peers",
                "aggregationLength",
                "aggregationLengthV6",
                "communities",
                "localPref",
            ] {
                if !a["spec"][unsupported].is_null() {
                    out.notes.push(format!(
                        "{}: spec.{unsupported} has no per-pool equivalent in Berth and is not carried",
                        id(a)
                    ));
                }
            }
        }
        let interface = if layer2 {
            let named: Vec<&str> = in_l2
                .iter()
                .flat_map(|a| a["spec"]["interfaces"].as_array().into_iter().flatten())
                .filter_map(Value::as_str)
                .collect();
            if named.len() > 1 {
                out.notes.push(format!(
                    "{object}: MetalLB answers on interfaces {named:?}; a Berth Eip answers on one: {} (or use can_reach:<gateway>)",
                    named[0]
                ));
            }
            match named.first().copied().or(l2_interface) {
                Some(i) => Some(i.to_owned()),
                None => {
                    return Err(error(
                        &object,
                        "Layer2 pool without an interface: MetalLB answers on every interface, Berth on one; pass --interface NAME (or can_reach:<gateway ip>)",
                    ));
                }
            }
        } else {
            None
        };
        let blocks: Vec<String> = spec["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        if blocks.is_empty() {
            return Err(error(
                &object,
                "spec.addresses is empty: nothing to convert",
            ));
        }
        let avoid_buggy = spec["avoidBuggyIPs"].as_bool().unwrap_or(false);
        let shapes = shapes(&object, &blocks, avoid_buggy, &mut out.notes)?;
        let alloc = &spec["serviceAllocation"];
        let mut base = serde_json::Map::new();
        base.insert(
            "protocol".into(),
            json!(if layer2 { "layer2" } else { "bgp" }),
        );
        if let Some(i) = interface {
            base.insert("interface".into(), json!(i));
        }
        let priority = alloc["priority"].as_i64().unwrap_or(0);
        if !(0..=1_000_000).contains(&priority) {
            return Err(error(
                &object,
                format!(
                    "serviceAllocation.priority {priority} is outside Berth's 0-1000000: lower it"
                ),
            ));
        }
        if priority != 0 {
            base.insert("priority".into(), json!(priority));
        }
        let namespaces = alloc["namespaces"].as_array().filter(|a| !a.is_empty());
        if let Some(ns) = namespaces {
            base.insert("namespaces".into(), Value::Array(ns.clone()));
        }
        let mut selected = namespaces.is_some();
        for (from, to) in [
            ("namespaceSelectors", "namespaceSelector"),
            ("serviceSelectors", "serviceSelector"),
        ] {
            let list = alloc[from].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                continue;
            }
            if list.len() > 1 {
                out.notes.push(format!(
                    "{object}: serviceAllocation.{from} has {} selectors (any may match); Berth's {to} is one: the first is kept",
                    list.len()
                ));
            }
            if to == "namespaceSelector" && namespaces.is_some() {
                out.notes.push(format!(
                    "{object}: serviceAllocation has both namespaces and namespaceSelectors; Berth allows one: namespaces kept"
                ));
                continue;
            }
            base.insert(to.into(), list[0].clone());
            selected = true;
        }
        let auto_assign = spec["autoAssign"].as_bool().unwrap_or(true);
        if auto_assign && !selected {
            defaults.push((priority, name.clone()));
        }
        if !auto_assign && selected {
            out.notes.push(format!(
                "{object}: autoAssign: false with a serviceAllocation: Berth gives matching Services IPs from it without an annotation"
            ));
        }
        for (i, shape) in shapes.iter().enumerate() {
            let mut spec = base.clone();
            spec.insert("address".into(), json!(shape.address));
            if !shape.excludes.is_empty() {
                spec.insert("excludes".into(), json!(shape.excludes));
            }
            if shape.network_and_broadcast {
                spec.insert("useNetworkAndBroadcast".into(), json!(true));
            }
            let eip_name = if i == 0 {
                name.clone()
            } else {
                format!("{name}-{}", shape.family)
            };
            out.objects.push(json!({
                "apiVersion": "berth.dev/v1alpha1",
                "kind": "Eip",
                "metadata": {"name": eip_name},
                "spec": Value::Object(spec),
            }));
        }
    }
    // One default pool in Berth: MetalLB's auto-assigned pools without a selection.
    defaults.sort();
    if let Some((_, first)) = defaults.first() {
        for eip in &mut out.objects {
            if eip["metadata"]["name"] == first.as_str() {
                eip["spec"]["default"] = json!(true);
            }
        }
        if defaults.len() > 1 {
            let rest: Vec<&str> = defaults[1..].iter().map(|(_, n)| n.as_str()).collect();
            out.notes.push(format!(
                "pools {rest:?} are auto-assigned in MetalLB too; Berth has one default pool ({first}): the others serve only Services that name them"
            ));
        }
    }
    peers(&of_kind("BGPPeer"), &mut out)?;
    // Every object must be one Berth's types accept.
    for o in &out.objects {
        let ok = match o["kind"].as_str() {
            Some("Eip") => serde_json::from_value::<Eip>(o.clone()).map(drop),
            Some("BgpConf") => serde_json::from_value::<BgpConf>(o.clone()).map(drop),
            _ => serde_json::from_value::<BgpPeer>(o.clone()).map(drop),
        };
        ok.map_err(|e| {
            error(
                &id(o),
                format!("converted object does not parse as Berth's: {e}"),
            )
        })?;
    }
    Ok(out)
}

fn is_metallb(d: &Value) -> bool {
    d["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("metallb.io/"))
}

fn name(d: &Value) -> String {
    d["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn id(d: &Value) -> String {
    format!("{}/{}", d["kind"].as_str().unwrap_or("?"), name(d))
}

/// An advertisement applies to a pool it lists, to a pool whose labels one of its
/// `ipAddressPoolSelectors` matches (`matchLabels` only), or to every pool when it has
/// neither. A selector with `matchExpressions` is refused: list the pools by name.
fn advertises(adv: &Value, pool: &Value) -> Result<bool, ConvertError> {
    let spec = &adv["spec"];
    let name = name(pool);
    let listed = spec["ipAddressPools"].as_array().filter(|a| !a.is_empty());
    let selectors = spec["ipAddressPoolSelectors"]
        .as_array()
        .filter(|a| !a.is_empty());
    if listed.is_some_and(|l| l.iter().any(|p| p == name.as_str())) {
        return Ok(true);
    }
    let Some(selectors) = selectors else {
        return Ok(listed.is_none());
    };
    let labels = pool["metadata"]["labels"].as_object();
    for sel in selectors {
        if sel["matchExpressions"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
        {
            return Err(error(
                &id(adv),
                "spec.ipAddressPoolSelectors with matchExpressions is not converted: list the pools in ipAddressPools instead",
            ));
        }
        let matches = sel["matchLabels"].as_object().is_none_or(|w| {
            w.iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        });
        if matches {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One Eip's addresses: a block, or the span of several blocks with the gaps excluded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    address: String,
    excludes: Vec<String>,
    network_and_broadcast: bool,
    family: &'static str,
}

/// The pool's blocks as Eips: one per family. Several blocks of a family become their span
/// with the gaps excluded, so the pool keeps its name and every address it had.
fn shapes(
    object: &str,
    blocks: &[String],
    avoid_buggy: bool,
    notes: &mut Vec<String>,
) -> Result<Vec<Shape>, ConvertError> {
    let mut by_family: BTreeMap<&'static str, Vec<(u128, u128, String)>> = BTreeMap::new();
    for b in blocks {
        let (first, last) = block(b).ok_or_else(|| {
            error(
                object,
                format!("spec.addresses entry {b:?} is not a CIDR or a range a-b"),
            )
        })?;
        let family = if first.is_ipv4() { "v4" } else { "v6" };
        by_family
            .entry(family)
            .or_default()
            .push((num(first), num(last), b.clone()));
    }
    if by_family.len() > 1 {
        notes.push(format!(
            "{object}: IPv4 and IPv6 blocks; a Berth Eip holds one family: the IPv6 ones are Eip {}-v6, which Services naming the pool do not reach (give dual-stack Services berth.dev/pool per family or a selector)",
            object.split('/').nth(1).unwrap_or_default()
        ));
    }
    let mut out = Vec::new();
    for (family, mut list) in by_family {
        list.sort();
        let v4 = family == "v4";
        if list.len() == 1 {
            let (_, _, text) = &list[0];
            let is_cidr = text.contains('/');
            if let Ok(net) = text.trim().parse::<IpNet>()
                && net.trunc() != net
            {
                return Err(error(
                    object,
                    format!(
                        "spec.addresses entry {text:?} has host bits set: write {} (Berth refuses it at admission)",
                        net.trunc()
                    ),
                ));
            }
            let wide = !is_cidr
                || text
                    .trim()
                    .parse::<IpNet>()
                    .is_ok_and(|n| n.prefix_len() < 24);
            if v4 && avoid_buggy && wide {
                notes.push(format!(
                    "{object}: avoidBuggyIPs: MetalLB skips every .0 and .255 address; Berth skips only a CIDR's network and broadcast address: add the others to excludes if clients need them avoided"
                ));
            }
            let mut shape = Shape {
                address: text.split_whitespace().collect(),
                excludes: Vec::new(),
                network_and_broadcast: false,
                family,
            };
            if v4 && is_cidr && !avoid_buggy {
                // MetalLB hands out a CIDR's first and last address unless avoidBuggyIPs.
                shape.network_and_broadcast = true;
            }
            out.push(shape);
            continue;
        }
        let first = list[0].0;
        let last = list.iter().map(|(_, l, _)| *l).max().unwrap_or(first);
        let mut excludes = Vec::new();
        let mut covered = list[0].1;
        for (f, l, _) in &list[1..] {
            if *f > covered.saturating_add(1) {
                excludes.push(range(covered + 1, f - 1, v4));
            }
            covered = covered.max(*l);
        }
        if excludes.len() > 256 {
            return Err(error(
                object,
                format!(
                    "{} blocks with {} gaps: more than an Eip's 256 excludes; split the pool",
                    list.len(),
                    excludes.len()
                ),
            ));
        }
        if v4 && avoid_buggy {
            notes.push(format!(
                "{object}: avoidBuggyIPs over several blocks: Berth's span hands out .0 and .255 addresses inside it; add them to excludes if clients need them avoided"
            ));
        } else if v4 && list.iter().any(|(_, _, t)| t.contains('/')) {
            notes.push(format!(
                "{object}: several blocks became one range {}: network and broadcast addresses of its CIDRs are handed out, as MetalLB did",
                range(first, last, v4)
            ));
        }
        out.push(Shape {
            address: range(first, last, v4),
            excludes,
            network_and_broadcast: false,
            family,
        });
    }
    Ok(out)
}

/// First and last address of a CIDR, a range `a-b` or one IP.
fn block(s: &str) -> Option<(IpAddr, IpAddr)> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once('-') {
        let (a, b): (IpAddr, IpAddr) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        return (a.is_ipv4() == b.is_ipv4() && num(a) <= num(b)).then_some((a, b));
    }
    if let Ok(net) = s.parse::<IpNet>() {
        return Some((net.network(), net.broadcast()));
    }
    let ip: IpAddr = s.parse().ok()?;
    Some((ip, ip))
}

fn num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn ip(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(u32::try_from(n).unwrap_or(u32::MAX).into())
    } else {
        IpAddr::V6(n.into())
    }
}

fn range(first: u128, last: u128, v4: bool) -> String {
    if first == last {
        ip(first, v4).to_string()
    } else {
        format!("{}-{}", ip(first, v4), ip(last, v4))
    }
}

/// MetalLB's BGPPeers: one BgpConf (Berth has one ASN per cluster) and a BgpPeer each.
fn peers(list: &[&Value], out: &mut Conversion) -> Result<(), ConvertError> {
    if list.is_empty() {
        return Ok(());
    }
    let asns: BTreeSet<u64> = list
        .iter()
        .filter_map(|p| p["spec"]["myASN"].as_u64())
        .collect();
    let Some(&asn) = asns.iter().next() else {
        return Err(error(&id(list[0]), "spec.myASN is missing"));
    };
    if asns.len() > 1 {
        return Err(error(
            &id(list[0]),
            format!(
                "BGPPeers use several local ASNs {asns:?}; Berth speaks one (BgpConf.spec.asn): make them equal first"
            ),
        ));
    }
    let router_ids: BTreeSet<&str> = list
        .iter()
        .filter_map(|p| p["spec"]["routerID"].as_str())
        .collect();
    let mut conf = json!({"asn": asn});
    if router_ids.len() == 1 {
        conf["routerId"] = json!(router_ids.iter().next());
    } else if router_ids.len() > 1 {
        out.notes.push(format!(
            "BGPPeers set several routerIDs {router_ids:?}; BgpConf leaves routerId unset (each node's InternalIP)"
        ));
    }
    out.objects.push(json!({
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "BgpConf",
        "metadata": {"name": crate::names::BGPCONF_NAME},
        "spec": conf,
    }));
    for p in list {
        let object = id(p);
        let s = &p["spec"];
        let mut spec = json!({
            "address": s["peerAddress"].as_str().ok_or_else(|| error(&object, "spec.peerAddress is missing"))?,
            "peerAsn": s["peerASN"].as_u64().ok_or_else(|| error(&object, "spec.peerASN is missing"))?,
        });
        if let Some(port) = s["peerPort"].as_u64().filter(|p| *p != 179) {
            spec["port"] = json!(port);
        }
        for (from, to) in [("holdTime", "holdTime"), ("keepaliveTime", "keepaliveTime")] {
            if let Some(d) = s[from].as_str() {
                let secs = seconds(d).ok_or_else(|| {
                    error(
                        &object,
                        format!("spec.{from} {d:?} is not a duration like 90s or 1m30s"),
                    )
                })?;
                spec[to] = json!(secs);
            }
        }
        if let Some(secret) = s["passwordSecret"].as_object() {
            let mut r =
                json!({"name": secret.get("name").cloned().unwrap_or_default(), "key": "password"});
            if let Some(ns) = secret.get("namespace") {
                r["namespace"] = ns.clone();
            }
            spec["passwordSecretRef"] = r;
        } else if s["password"].as_str().is_some_and(|p| !p.is_empty()) {
            out.notes.push(format!(
                "{object}: spec.password is written in the object; Berth reads passwords from Secrets only: create one (key password) and set passwordSecretRef"
            ));
        }
        if s["ebgpMultiHop"].as_bool() == Some(true) {
            spec["ebgpMultihop"] = json!(255);
        }
        if let Some(sel) = s["nodeSelectors"].as_array().filter(|a| !a.is_empty()) {
            if sel.len() > 1 {
                out.notes.push(format!(
                    "{object}: {} nodeSelectors (any may match); Berth's nodeSelector is one: the first is kept",
                    sel.len()
                ));
            }
            spec["nodeSelector"] = sel[0].clone();
        }
        for unsupported in [
            "sourceAddress",
            "bfdProfile",
            "vrf",
            "connectTime",
            "dynamicASN",
            "disableMP",
            "enableGracefulRestart",
            "dualStackAddressFamily",
            "interface",
        ] {
            if !s[unsupported].is_null() {
                out.notes.push(format!(
                    "{object}: spec.{unsupported} is not supported by Berth and is not carried"
                ));
            }
        }
        out.objects.push(json!({
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "BgpPeer",
            "metadata": {"name": name(p)},
            "spec": spec,
        }));
    }
    Ok(())
}

/// A Go duration of hours, minutes and seconds (`90s`, `1m30s`, `3m`) in whole seconds.
fn seconds(d: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut digits = String::new();
    for c in d.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    digits.is_empty().then_some(total)
}

#[cfg(test)]
mod tests;
