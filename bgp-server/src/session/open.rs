//! Our OPEN (capabilities from the peer's settings) and what both sides negotiated from the
//! two OPENs: families, 4-octet ASNs, ADD-PATH per family.

use berth_bgp_wire::{
    AddPathMode, Capability, DecodeContext, EncodeContext, Family, GracefulRestartFamily, Open,
};

use super::sync::ribs;
use super::{FAMILIES, Session};

impl Session {
    /// The families this peer is configured for (`families`; empty: both).
    pub(super) fn offered(&self) -> Vec<Family> {
        FAMILIES
            .into_iter()
            .zip(crate::config::FAMILY_NAMES)
            .filter(|(_, name)| {
                self.peer.families.is_empty() || self.peer.families.iter().any(|f| f == name)
            })
            .map(|(fam, _)| fam)
            .collect()
    }

    pub(super) fn our_open(&self) -> Open {
        let offered = self.offered();
        let mut caps: Vec<Capability> = offered
            .iter()
            .map(|f| {
                let (afi, safi) = f.afi_safi();
                Capability::Multiprotocol { afi, safi }
            })
            .collect();
        caps.push(Capability::RouteRefresh);
        caps.push(Capability::FourOctetAs(self.local.asn));
        if self.peer.add_path {
            caps.push(Capability::AddPath(
                offered
                    .iter()
                    .map(|f| {
                        let (afi, safi) = f.afi_safi();
                        (afi, safi, AddPathMode::Send)
                    })
                    .collect(),
            ));
        }
        let gr = self.local.graceful_restart;
        if gr.enabled {
            // The nodes, not the speaker, forward the traffic, and they keep doing so while the
            // speaker restarts: forwarding state is always preserved (F bit), so the peer keeps
            // the stale paths until our End-of-RIB instead of flushing them on our new OPEN.
            let families = offered
                .iter()
                .map(|f| {
                    let (afi, safi) = f.afi_safi();
                    GracefulRestartFamily {
                        afi,
                        safi,
                        forwarding_preserved: true,
                    }
                })
                .collect();
            caps.push(Capability::GracefulRestart {
                restarting: self.local.restarting,
                // RFC 8538: our planned restart sends a Cease the peer answers as a restart.
                notification: true,
                restart_time: gr.restart_time,
                families,
            });
        }
        Open {
            asn: self.local.asn,
            hold_time: self.peer.hold_time,
            router_id: self.local.router_id,
            capabilities: caps,
        }
    }

    pub(super) fn negotiate(&mut self) {
        let ours = self.our_open();
        let Some(theirs) = &self.peer_open else {
            return;
        };
        let four = ours.four_octet_as() && theirs.four_octet_as();
        let mut add_path = [false; 2];
        for (i, fam) in FAMILIES.iter().enumerate() {
            let (afi, safi) = fam.afi_safi();
            let we_send = ours
                .add_path()
                .any(|(a, s, m)| (*a, *s) == (afi, safi) && m.sends());
            let they_receive = theirs
                .add_path()
                .any(|(a, s, m)| (*a, *s) == (afi, safi) && m.receives());
            add_path[i] = we_send && they_receive;
        }
        self.enc = EncodeContext {
            four_octet_as: four,
            add_path,
            extended_message: false,
        };
        // We never advertise ADD-PATH receive, so their NLRI carry no path IDs.
        self.dec = DecodeContext {
            four_octet_as: four,
            add_path: [false; 2],
            extended_message: false,
        };
        self.ribs = ribs(add_path, self.peer.send_max);
        self.synced = [None; 2];
    }

    pub(super) fn families_negotiated(&self) -> Vec<Family> {
        let Some(theirs) = &self.peer_open else {
            return vec![Family::Ipv4Unicast];
        };
        let mp: Vec<Family> = theirs
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol { afi, safi } => Family::from_afi_safi(*afi, *safi),
                _ => None,
            })
            .collect();
        // RFC 4760: a peer without the MP capability speaks IPv4 unicast only.
        let theirs = if mp.is_empty() {
            vec![Family::Ipv4Unicast]
        } else {
            mp
        };
        // Only what both offered is exchanged.
        let ours = self.offered();
        theirs.into_iter().filter(|f| ours.contains(f)).collect()
    }
}
