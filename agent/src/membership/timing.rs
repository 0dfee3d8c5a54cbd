//! Protocol timing: how fast a dead agent is noticed, and what that costs on the wire.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

/// SWIM timing. [`Timing::fast`] (the default) is tuned for a LAN failover well under 0.3 s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Each agent probes one member (round robin over a shuffled list) per period.
    pub probe_period: Duration,
    /// How long a direct probe waits for its ack before asking others to probe indirectly.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly when the direct probe times out.
    pub indirect_probes: usize,
    /// How long a suspected member has to refute before it is declared down, in a cluster of
    /// up to 10 members; scaled by log10(members) above that (see [`Timing::suspicion_for`]).
    pub suspect_to_down: Duration,
    /// Every period, membership updates are also gossiped to `gossip_fanout` random members.
    pub gossip_period: Duration,
    /// See `gossip_period`.
    pub gossip_fanout: usize,
    /// How many times each update is piggybacked (more reaches large clusters more surely).
    pub max_transmissions: u8,
    /// While alone, announce to the seeds this often; also how often down members are retried,
    /// so a member whose link was cut rejoins when it comes back.
    pub rejoin_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self::fast()
    }
}

impl Timing {
    /// LAN timing: detection of a dead agent in about 0.1-0.2 s (see the module docs for the
    /// measured figures and the traffic it costs).
    pub fn fast() -> Self {
        Self {
            probe_period: Duration::from_millis(40),
            probe_rtt: Duration::from_millis(15),
            indirect_probes: 3,
            suspect_to_down: Duration::from_millis(60),
            gossip_period: Duration::from_millis(20),
            gossip_fanout: 3,
            max_transmissions: 10,
            rejoin_period: Duration::from_millis(500),
        }
    }

    /// Checks the relations foca relies on; the error names the field to fix.
    pub fn validate(&self) -> Result<(), String> {
        let nonzero = [
            ("probe_period", self.probe_period),
            ("probe_rtt", self.probe_rtt),
            ("suspect_to_down", self.suspect_to_down),
            ("gossip_period", self.gossip_period),
            ("rejoin_period", self.rejoin_period),
        ];
        for (name, d) in nonzero {
            if d.is_zero() {
                return Err(format!("timing.{name} must be greater than zero"));
            }
        }
        if self.probe_rtt >= self.probe_period {
            return Err(format!(
                "timing.probe_rtt ({:?}) must be shorter than timing.probe_period ({:?})",
                self.probe_rtt, self.probe_period
            ));
        }
        if self.indirect_probes == 0 || self.gossip_fanout == 0 || self.max_transmissions == 0 {
            return Err(
                "timing.indirect_probes, gossip_fanout and max_transmissions must be at least 1"
                    .to_string(),
            );
        }
        Ok(())
    }

    /// The suspicion timeout for a cluster of `members`: `suspect_to_down` x max(1,
    /// log10(members)), because a suspicion takes ~log(members) gossip rounds to reach the
    /// suspect, which needs that long to refute (60 ms at 10 members, 102 ms at 50, 180 ms at
    /// 1,000 with [`Timing::fast`]).
    pub fn suspicion_for(&self, members: usize) -> Duration {
        let factor = (members.max(1) as f64).log10().max(1.0);
        self.suspect_to_down.mul_f64(factor)
    }

    /// The foca configuration; `max_packet_size` is what is left of a datagram after framing.
    pub(crate) fn to_foca(&self, max_packet_size: NonZeroUsize) -> Result<foca::Config, String> {
        self.validate()?;
        let nz = |n: usize| NonZeroUsize::new(n).ok_or_else(|| "zero count".to_string());
        Ok(foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: nz(self.indirect_probes)?,
            max_transmissions: NonZeroU8::new(self.max_transmissions)
                .ok_or_else(|| "zero max_transmissions".to_string())?,
            suspect_to_down_after: self.suspect_to_down,
            // A restarted or renewed agent wins by its larger boot number, so remembering down
            // identities for long costs one entry per address and blocks nothing.
            remove_down_after: Some(Duration::from_secs(3600)),
            max_packet_size,
            // Tell a member we consider down so it renews its identity and rejoins at once.
            notify_down_members: true,
            // Ask one peer for more peers now and then, so a large cluster's view completes.
            periodic_announce: Some(foca::PeriodicParams {
                frequency: Duration::from_secs(5),
                num_members: nz(1)?,
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: self.rejoin_period,
                num_members: nz(2)?,
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: self.gossip_period,
                num_members: nz(self.gossip_fanout)?,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_default_is_fast_and_valid() {
        assert_eq!(Timing::default(), Timing::fast());
        assert!(Timing::fast().validate().is_ok());
        let c = Timing::fast()
            .to_foca(NonZeroUsize::new(1300).unwrap())
            .unwrap();
        assert_eq!(c.probe_period, Duration::from_millis(40));
        assert_eq!(c.max_packet_size.get(), 1300);
    }

    #[test]
    fn suspicion_grows_with_the_log_of_the_cluster_size() {
        let t = Timing::fast();
        assert_eq!(t.suspicion_for(0), t.suspect_to_down);
        assert_eq!(t.suspicion_for(3), t.suspect_to_down);
        assert_eq!(t.suspicion_for(10), t.suspect_to_down);
        assert_eq!(t.suspicion_for(100), t.suspect_to_down * 2);
        assert_eq!(t.suspicion_for(1000), t.suspect_to_down * 3);
    }

    #[test]
    fn bad_timing_names_the_field() {
        let t = Timing {
            probe_rtt: Duration::from_millis(50),
            ..Timing::fast()
        };
        assert!(t.validate().unwrap_err().contains("probe_rtt"));
        let t = Timing {
            suspect_to_down: Duration::ZERO,
            ..Timing::fast()
        };
        assert!(t.validate().unwrap_err().contains("suspect_to_down"));
        let t = Timing {
            gossip_fanout: 0,
            ..Timing::fast()
        };
        assert!(t.validate().is_err());
    }
}
