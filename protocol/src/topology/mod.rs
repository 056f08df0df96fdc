//! Latency-aware peer selection: RTT estimates and the near + random mix of the active view.
//!
//! RTTs come from SWIM probes (`Ping` → `Ack` on a direct probe) and are smoothed with the
//! TCP-style EWMA `srtt = 7/8 srtt + 1/8 sample` ([`ewma`]). Half of the active view
//! ([`TopologyConfig::near_slots`]) is steered towards low-RTT peers; the rest stays random, so
//! the overlay keeps the expansion of a random graph (stays connected, short paths) while most
//! eager-tree links are short. [`rebalance`] proposes at most one swap per
//! [`TopologyConfig::rebalance_interval`], and only for a clear gain
//! ([`TopologyConfig::rebalance_ratio`]), so views do not oscillate.

use rand::{Rng, RngCore};

use crate::id::NodeId;
use crate::time::Duration;

/// Topology settings.
#[derive(Clone, Debug)]
pub struct TopologyConfig {
    /// Active-view slots steered towards the lowest-RTT peers; the rest are random.
    /// Default: half the active view.
    pub near_slots: usize,
    /// How often a near-peer swap is considered. Default 30 s; shorter reacts faster to
    /// changing latencies at the cost of more view churn.
    pub rebalance_interval: Duration,
    /// A passive candidate must have an RTT this many times lower than the near peer it
    /// replaces. Default 2.
    pub rebalance_ratio: u32,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            near_slots: 3,
            rebalance_interval: Duration::from_secs(30),
            rebalance_ratio: 2,
        }
    }
}

/// Folds an RTT sample (microseconds) into a smoothed estimate (EWMA, gain 1/8).
pub fn ewma(prev: Option<u32>, sample_us: u32) -> u32 {
    match prev {
        None => sample_us,
        Some(p) => ((p as u64 * 7 + sample_us as u64) / 8) as u32,
    }
}

/// Chooses a candidate index: with `prefer_near`, the lowest known RTT among up to 8 random
/// candidates (unknown RTTs lose); otherwise uniformly at random. `None` if `cands` is empty.
pub fn pick_candidate<R: RngCore>(
    cands: &[NodeId],
    rtt: impl Fn(&NodeId) -> Option<u32>,
    prefer_near: bool,
    rng: &mut R,
) -> Option<usize> {
    if cands.is_empty() {
        return None;
    }
    let first = rng.random_range(0..cands.len());
    if !prefer_near {
        return Some(first);
    }
    let mut best = (rtt(&cands[first]).unwrap_or(u32::MAX), first);
    for _ in 0..7 {
        let i = rng.random_range(0..cands.len());
        let r = rtt(&cands[i]).unwrap_or(u32::MAX);
        if r < best.0 {
            best = (r, i);
        }
    }
    Some(best.1)
}

/// The passive candidate to ask next when the active view has room: while fewer than
/// [`TopologyConfig::near_slots`] active peers are near ([`near_count`] of `active_rtts`),
/// half the time the nearest of a few random candidates, otherwise a random one (see
/// [`pick_candidate`]). `None` if `cands` is empty.
pub fn pick_neighbor<R: RngCore>(
    cfg: &TopologyConfig,
    active_rtts: &[Option<u32>],
    cands: &[NodeId],
    rtt: impl Fn(&NodeId) -> Option<u32>,
    rng: &mut R,
) -> Option<usize> {
    let prefer_near =
        near_count(active_rtts, cfg.near_slots) < cfg.near_slots && rng.random_bool(0.5);
    pick_candidate(cands, rtt, prefer_near, rng)
}

/// How many active peers count as "near": those among the `near_slots` lowest known RTTs.
pub fn near_count(active_rtts: &[Option<u32>], near_slots: usize) -> usize {
    active_rtts
        .iter()
        .filter(|r| r.is_some())
        .count()
        .min(near_slots)
}

/// Proposes one swap `(add, drop)`: the passive peer with the lowest known RTT replaces the
/// worst of the `near_slots` nearest active peers if it is `ratio` times closer. Random slots
/// (the peers beyond the nearest `near_slots`) are never proposed for dropping.
pub fn rebalance(
    active: &[(NodeId, Option<u32>)],
    passive: &[(NodeId, Option<u32>)],
    near_slots: usize,
    ratio: u32,
) -> Option<(NodeId, NodeId)> {
    let (cand, crtt) = passive
        .iter()
        .filter_map(|(n, r)| r.map(|r| (*n, r)))
        .min_by_key(|(n, r)| (*r, *n))?;
    let mut known: Vec<(u32, NodeId)> = active
        .iter()
        .filter_map(|(n, r)| r.map(|r| (r, *n)))
        .collect();
    known.sort_unstable();
    if near_slots == 0 || known.len() < near_slots {
        return None;
    }
    let (worst_rtt, worst) = known[near_slots - 1];
    ((crtt as u64 * ratio.max(1) as u64) < worst_rtt as u64).then_some((cand, worst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn n(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[test]
    fn ewma_moves_an_eighth_towards_the_sample() {
        assert_eq!(ewma(None, 800), 800);
        assert_eq!(ewma(Some(800), 1600), 900);
    }

    #[test]
    fn near_preference_picks_the_lowest_rtt_candidate_usually() {
        let cands: Vec<NodeId> = (0..4).map(n).collect();
        let mut rng = SmallRng::seed_from_u64(1);
        let rtt = |x: &NodeId| Some(if x.0[0] == 2 { 10 } else { 1000 });
        let hits = (0..100)
            .filter(|_| pick_candidate(&cands, rtt, true, &mut rng) == Some(2))
            .count();
        assert!(hits > 80, "{hits}");
        assert_eq!(pick_candidate(&[], rtt, true, &mut rng), None);
    }

    #[test]
    fn rebalance_swaps_only_a_near_slot_for_a_clearly_closer_peer() {
        let active = [
            (n(1), Some(10)),
            (n(2), Some(100)),
            (n(3), Some(500)),
            (n(4), None),
        ];
        // near slots = 2 -> worst near is n(2) at 100; n(9) at 40 is 2.5x better.
        assert_eq!(
            rebalance(&active, &[(n(9), Some(40)), (n(8), None)], 2, 2),
            Some((n(9), n(2)))
        );
        // 60 is not 2x better than 100.
        assert_eq!(rebalance(&active, &[(n(9), Some(60))], 2, 2), None);
        // the random slot n(3) (500) is never the victim
        assert_eq!(
            rebalance(&active, &[(n(9), Some(1))], 2, 2),
            Some((n(9), n(2)))
        );
    }
}
