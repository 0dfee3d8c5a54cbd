//! Bringing the peer to the desired state: the RIB-out per family yields the changes (a
//! snapshot's delta, or a walk in bounded batches), [`super::export`] turns them into UPDATEs,
//! and they go on the writer's queue only while it has room, so a slow peer holds nothing up.

use berth_bgp_wire::{Family, Message};
use tracing::{debug, warn};

use super::writer::Writer;
use super::{FAMILIES, Session};
use crate::metrics::PeerLabels;
use crate::rib::{AdjRibOut, Change, Scope, Snapshot};

/// Changes computed and encoded at a time when bringing a peer to a new state.
const SYNC_BATCH: usize = 16_384;

/// Fresh RIB-outs, IPv4 then IPv6, given ADD-PATH per family.
pub(super) fn ribs(add_path: [bool; 2], send_max: Option<usize>) -> [AdjRibOut; 2] {
    [
        AdjRibOut::new(Scope::Ipv4, add_path[0], send_max),
        AdjRibOut::new(Scope::Ipv6, add_path[1], send_max),
    ]
}

impl Session {
    /// Whether there is something to queue for the peer: a sync to the desired state under
    /// way or due, or the End-of-RIB that follows the first one.
    pub(super) fn has_work(&self, desired: &Snapshot) -> bool {
        self.established
            && (self.eor_due || self.synced.iter().any(|v| *v != Some(desired.version)))
    }

    /// Takes the peer's new export settings (communities, large communities, LOCAL_PREF):
    /// every path is announced again with them, on the same session, when they change what a
    /// path carries; a peer that is not up gets them with its first sync anyway.
    pub(super) fn reexport(&mut self, peer: crate::config::PeerConfig) {
        let export = super::export::Export::new(self.local.asn, &peer);
        self.peer = peer;
        if export == self.export {
            // Nothing a path carries changed (LOCAL_PREF towards an eBGP peer, say).
            return;
        }
        self.export = export;
        if self.established {
            for family in 0..FAMILIES.len() {
                self.resend(family);
            }
        }
    }

    /// Announces every path of family `i` again (the loop syncs it), keeping what the peer
    /// holds so what it should no longer hold is still withdrawn.
    pub(super) fn resend(&mut self, i: usize) {
        if let (Some(rib), Some(synced)) = (self.ribs.get_mut(i), self.synced.get_mut(i)) {
            rib.resend_all();
            *synced = None;
        }
    }

    /// Fills the queue from the RIB-out while it has room; never waits.
    pub(super) fn pump(&mut self, desired: &Snapshot) {
        while self.has_work(desired) && self.io.write.as_ref().is_some_and(Writer::has_room) {
            let Some(bytes) = self.next_item(desired) else {
                return;
            };
            // One producer: the room checked above is still there.
            if !self.io.write.as_ref().is_some_and(|w| w.try_send(bytes)) {
                return;
            }
        }
    }

    /// The next batch towards `desired` (about [`SYNC_BATCH`] changes), encoded; then the
    /// End-of-RIB after the first sync; `None` when the peer holds `desired`.
    pub(super) fn next_item(&mut self, desired: &Snapshot) -> Option<Vec<u8>> {
        let negotiated = self.families_negotiated();
        for (i, fam) in FAMILIES.iter().enumerate() {
            if self.synced[i] == Some(desired.version) {
                continue;
            }
            let target = if negotiated.contains(fam) {
                desired.routes.clone()
            } else {
                self.nothing.clone()
            };
            // A small change on top of the version this peer holds: only its prefixes.
            let delta = desired
                .delta
                .as_ref()
                .filter(|d| self.synced[i] == Some(d.from))
                .and_then(|d| self.ribs[i].sync_delta(&target, &d.prefixes));
            let changes = match delta {
                Some(changes) => {
                    debug!(family = i, changes = changes.len(), "delta sync");
                    self.synced[i] = Some(desired.version);
                    changes
                }
                None => {
                    // Bounded batches: a large table never exists as one list of changes.
                    let changes = self.ribs[i].sync(&target, SYNC_BATCH);
                    if changes.is_empty() {
                        self.synced[i] = Some(desired.version);
                    }
                    changes
                }
            };
            if changes.is_empty() {
                continue;
            }
            let mut bytes = Vec::new();
            for msg in self.encode_changes(*fam, &changes) {
                self.metrics.message(&self.label, "update", true);
                bytes.extend_from_slice(&msg);
            }
            return Some(bytes);
        }
        if std::mem::take(&mut self.eor_due) {
            let mut bytes = Vec::new();
            for fam in self.families_negotiated() {
                let eor = Message::Update(berth_bgp_wire::Update::end_of_rib(fam));
                self.metrics.message(&self.label, "update", true);
                bytes.extend_from_slice(&eor.to_bytes(&self.enc));
            }
            return Some(bytes);
        }
        None
    }

    /// Groups changes by attribute set and next hop, and packs them (the export policy
    /// decides what each path carries for this peer).
    pub(super) fn encode_changes(&self, fam: Family, changes: &[Change]) -> Vec<Vec<u8>> {
        let packed = self.export.encode(&self.enc, fam, changes);
        if packed.unsendable > 0 {
            // Too many communities for one message: say so rather than pretend they were sent.
            warn!(
                family = ?fam,
                paths = packed.unsendable,
                "paths not sent: their attributes do not fit in one UPDATE (fewer communities)"
            );
            self.metrics
                .paths_unsendable
                .get_or_create(&PeerLabels {
                    peer: self.label.clone(),
                })
                .inc_by(u64::try_from(packed.unsendable).unwrap_or(u64::MAX));
        }
        packed.messages
    }
}
