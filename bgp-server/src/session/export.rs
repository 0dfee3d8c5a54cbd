//! Export policy: what one peer is sent for each path, by the iBGP/eBGP rules. Pure: no
//! socket, clock or metrics; the session owns one per peer and counts what [`Export::encode`]
//! reports.
//!
//! - AS_PATH: our ASN alone toward an eBGP peer, empty toward an iBGP peer (the routes start
//!   here). Toward a peer without 4-octet ASN support, a 4-octet ASN goes out as AS_TRANS in
//!   AS_PATH with the real path in AS4_PATH (RFC 6793); the codec's packer does that from the
//!   session's [`EncodeContext`], so every UPDATE this module makes follows it.
//! - LOCAL_PREF: iBGP only; the peer's (BgpPeer `localPref`) over the route's, else 100.
//! - Communities and large communities: the route's, then the peer's, each once.
//! - Weighted next hops: a link-bandwidth extended community of `weight` Mbit/s.
//! - NEXT_HOP: the route's next hop as it is (third-party next hops are the point: each node
//!   is a path).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use berth_bgp_wire::{
    AsPath, AsSegment, Attribute, EncodeContext, ExtCommunity, Family, NextHop, Nlri, Origin,
    Packed, pack_updates,
};

use crate::config::PeerConfig;
use crate::rib::{Change, PathAttrs, PathId};

/// The LOCAL_PREF sent to iBGP peers when neither the peer nor the route sets one.
const DEFAULT_LOCAL_PREF: u32 = 100;

/// One peer's export settings, read once from its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Export {
    local_asn: u32,
    ebgp: bool,
    local_pref: Option<u32>,
    communities: Vec<u32>,
    large_communities: Vec<[u32; 3]>,
}

impl Export {
    /// The policy toward `peer` from a speaker of `local_asn`.
    pub(super) fn new(local_asn: u32, peer: &PeerConfig) -> Export {
        Export {
            local_asn,
            ebgp: local_asn != peer.asn,
            local_pref: peer.local_pref,
            // Validated when the settings were accepted; one that does not parse is skipped
            // (as before the split).
            communities: peer
                .communities
                .iter()
                .filter_map(|c| crate::config::parse_community(c))
                .collect(),
            large_communities: peer.large_communities.clone(),
        }
    }

    /// The attributes of one path for this peer.
    pub(super) fn attributes(&self, attrs: &PathAttrs) -> Vec<Attribute> {
        let path = if self.ebgp {
            vec![AsSegment::Sequence(vec![self.local_asn])]
        } else {
            vec![]
        };
        let mut out = vec![
            Attribute::Origin(Origin::Igp),
            Attribute::AsPath(AsPath(path)),
        ];
        if !self.ebgp {
            let pref = self
                .local_pref
                .or(attrs.local_pref)
                .unwrap_or(DEFAULT_LOCAL_PREF);
            out.push(Attribute::LocalPref(pref));
        }
        let mut communities = attrs.communities.clone();
        for c in &self.communities {
            if !communities.contains(c) {
                communities.push(*c);
            }
        }
        if !communities.is_empty() {
            out.push(Attribute::Communities(communities));
        }
        if let Some(w) = attrs.weight {
            let asn = u16::try_from(self.local_asn).unwrap_or(berth_bgp_wire::AS_TRANS);
            // Weight w is sent as w Mbit/s (in bytes per second): receivers such as FRR round
            // the bandwidth down to whole Mbit/s, so a raw small number would read as zero.
            #[allow(clippy::cast_precision_loss)]
            let bw = (w as f32 * 125_000.0).to_bits();
            out.push(Attribute::ExtendedCommunities(vec![
                ExtCommunity::LinkBandwidth { asn, bandwidth: bw },
            ]));
        }
        let mut large: Vec<[u32; 3]> = attrs
            .large_communities
            .iter()
            .map(|(a, b, c)| [*a, *b, *c])
            .collect();
        for c in &self.large_communities {
            if !large.contains(c) {
                large.push(*c);
            }
        }
        if !large.is_empty() {
            out.push(Attribute::LargeCommunities(large));
        }
        out
    }

    /// A path's next hop as the codec sends it.
    pub(super) fn next_hop(addr: IpAddr) -> NextHop {
        match addr {
            IpAddr::V4(a) => NextHop::V4(a),
            IpAddr::V6(a) => NextHop::V6 {
                global: a,
                link_local: None,
            },
        }
    }

    /// Changes of one family as UPDATEs for this peer: paths with the same next hop and
    /// attributes share messages; path IDs only where ADD-PATH was negotiated. Groups too
    /// large for one message are counted in [`Packed::unsendable`], not dropped silently.
    pub(super) fn encode(&self, enc: &EncodeContext, fam: Family, changes: &[Change]) -> Packed {
        let ap = enc.add_path(fam);
        let path_id = |id: PathId| ap.then_some(id.0);
        let mut withdrawn = Vec::new();
        let mut groups: BTreeMap<(IpAddr, &Arc<PathAttrs>), Vec<Nlri>> = BTreeMap::new();
        for c in changes {
            match c {
                Change::Withdraw {
                    prefix,
                    path_id: id,
                } => withdrawn.push(Nlri {
                    path_id: path_id(*id),
                    prefix: *prefix,
                }),
                Change::Announce {
                    prefix,
                    path_id: id,
                    next_hop,
                    attrs,
                } => groups.entry((*next_hop, attrs)).or_default().push(Nlri {
                    path_id: path_id(*id),
                    prefix: *prefix,
                }),
            }
        }
        let groups: Vec<_> = groups
            .into_iter()
            .map(|((next_hop, attrs), nlri)| {
                (self.attributes(attrs), Export::next_hop(next_hop), nlri)
            })
            .collect();
        pack_updates(enc, fam, &withdrawn, &groups)
    }
}

#[cfg(test)]
mod tests;
