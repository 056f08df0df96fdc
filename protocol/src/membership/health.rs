//! Lifeguard local health: a score in `0..=max` that rises when this node's own probes go
//! unanswered or it has to refute a claim about itself, and falls with every answered probe.
//! Probe period and timeout are multiplied by `1 + score`, so a slow or overloaded node probes
//! more patiently instead of accusing healthy members.

use crate::time::Duration;

/// The local health multiplier.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalHealth {
    score: u32,
    max: u32,
}

impl LocalHealth {
    /// A healthy node (score 0) whose score never exceeds `max`.
    pub(crate) fn new(max: u32) -> Self {
        LocalHealth { score: 0, max }
    }

    /// The current score (Lifeguard's LHM).
    pub(crate) fn score(&self) -> u32 {
        self.score
    }

    /// Evidence that this node is healthy (an answered probe).
    pub(crate) fn better(&mut self) {
        self.score = self.score.saturating_sub(1);
    }

    /// Evidence that this node may be the slow one (an unanswered probe, a missing `Nack`, a
    /// refutation).
    pub(crate) fn worse(&mut self) {
        self.score = (self.score + 1).min(self.max);
    }

    /// `d` stretched by the score: `d * (1 + score)`.
    pub(crate) fn scale(&self, d: Duration) -> Duration {
        d * (1 + self.score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_stays_within_its_bounds_and_stretches_periods() {
        let mut h = LocalHealth::new(2);
        h.better();
        assert_eq!(h.score(), 0);
        for _ in 0..5 {
            h.worse();
        }
        assert_eq!(h.score(), 2);
        assert_eq!(h.scale(Duration::from_secs(1)), Duration::from_secs(3));
        h.better();
        assert_eq!(h.score(), 1);
    }
}
