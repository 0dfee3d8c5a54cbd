//! Noticing that this agent was stalled (SIGSTOP, CPU starvation, a frozen VM): after a stall
//! longer than the membership's detection time the others have moved this node's IPs already,
//! and answering the requests queued meanwhile, or new ones, at once makes two MACs answer
//! until they see this node again. So after a stall the announcer stays silent for a moment
//! (the others catch up and drop the IPs, or never moved them), then announces what it owns
//! again, so clients that followed the interim owner come back.
//!
//! Pure: fed the instants of a periodic tick and asked at each frame.

use std::time::Duration;

use tokio::time::Instant;

/// How often the announcer ticks to show it is running.
pub const BEAT: Duration = Duration::from_millis(10);
/// A gap between beats longer than this is a stall (the membership declares an agent down
/// after ~0.1-0.15 s with its default timing).
pub const THRESHOLD: Duration = Duration::from_millis(100);
/// Silence after a stall: long enough for the others to see this node alive again and drop
/// its IPs (tens of ms), short enough to be a blip for clients.
pub const HOLD: Duration = Duration::from_millis(250);

/// Whether answering is paused because this process was stalled.
#[derive(Clone, Debug)]
pub struct Stall {
    last_beat: Instant,
    paused_until: Option<Instant>,
}

impl Stall {
    /// Running since `now`.
    pub fn new(now: Instant) -> Stall {
        Stall {
            last_beat: now,
            paused_until: None,
        }
    }

    /// The periodic tick ran at `now`; true when it found a stall (answering pauses until
    /// [`Stall::resume_at`]).
    pub fn beat(&mut self, now: Instant) -> bool {
        let stalled = now.saturating_duration_since(self.last_beat) > THRESHOLD;
        self.last_beat = now;
        if stalled {
            self.paused_until = Some(now + HOLD);
        }
        stalled
    }

    /// Whether to stay silent at `now`: within the hold after a stall, or in a stall not yet
    /// seen by a tick (a frame handled before the first tick after resuming).
    pub fn paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|t| now < t)
            || now.saturating_duration_since(self.last_beat) > THRESHOLD
    }

    /// When the current pause ends (then the owned IPs are announced again).
    pub fn resume_at(&self) -> Option<Instant> {
        self.paused_until
    }

    /// The pause ended and its announcement is done.
    pub fn resumed(&mut self) {
        self.paused_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_beats_never_pause() {
        let t0 = Instant::now();
        let mut s = Stall::new(t0);
        for i in 1..100 {
            let now = t0 + BEAT * i;
            assert!(!s.beat(now));
            assert!(!s.paused(now + BEAT / 2));
        }
        assert_eq!(s.resume_at(), None);
    }

    #[test]
    fn a_stall_pauses_before_and_after_the_first_beat() {
        let t0 = Instant::now();
        let mut s = Stall::new(t0);
        // Resumed after 200 ms: a frame handled before the tick already sees the stall.
        let back = t0 + Duration::from_millis(200);
        assert!(s.paused(back));
        assert!(s.beat(back));
        assert_eq!(s.resume_at(), Some(back + HOLD));
        assert!(s.paused(back + BEAT));
        // Ticking regularly again: still paused for the hold, then not.
        let mut now = back;
        while now < back + HOLD {
            now += BEAT;
            assert!(!s.beat(now));
        }
        assert!(!s.paused(now));
        s.resumed();
        assert_eq!(s.resume_at(), None);
    }

    #[test]
    fn a_late_tick_below_the_threshold_is_no_stall() {
        let t0 = Instant::now();
        let mut s = Stall::new(t0);
        assert!(!s.beat(t0 + THRESHOLD));
        assert!(!s.paused(t0 + THRESHOLD));
    }
}
