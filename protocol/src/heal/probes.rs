//! Heal probes: how a node that lost part of the mesh finds it again. Every heal period it
//! pings a few members it declared dead (a healed partition or a restart answers, refutes the
//! claim and re-merges, see the module docs of [`crate::heal`]), plus one bootstrap seed while
//! partitioned or short of neighbours; with no neighbour at all it rejoins through that seed.
//!
//! The period is [`crate::NodeConfig::heal_interval`] while connected and
//! [`crate::NodeConfig::heal_interval_partitioned`] while not. When a departed member comes
//! back, a heal is probably under way: for [`crate::NodeConfig::heal_boost`] the short period
//! applies, twice as many dead members are pinged, and SWIM re-probes suspects 4x as often.

use rand::seq::SliceRandom;
use rand::{Rng, RngCore};

use super::Reachability;
use crate::id::NodeId;
use crate::time::{Duration, Instant, jittered};

/// Most bootstrap seeds kept.
pub(crate) const MAX_SEEDS: usize = 32;

/// The heal-probe settings (the node's `heal_*` fields).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HealTimers {
    pub interval: Duration,
    pub interval_partitioned: Duration,
    pub probes: usize,
    pub boost: Duration,
}

/// What one heal tick asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HealTick {
    /// Rejoin through this seed first (the active view is empty).
    pub join: Option<NodeId>,
    /// Ping these (dead members, then a seed).
    pub ping: Vec<NodeId>,
}

/// The active view as a heal tick sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActiveView<'a> {
    /// Its members.
    pub members: &'a [NodeId],
    /// Its target size.
    pub target: usize,
    /// Whether a join is already running.
    pub joining: bool,
}

/// Heal-probe schedule and seeds of one node.
#[derive(Clone, Debug)]
pub(crate) struct HealProbes {
    cfg: HealTimers,
    seeds: Vec<NodeId>,
    next: Instant,
    boost_until: Instant,
}

impl HealProbes {
    /// No seeds, first tick at `first`.
    pub(crate) fn new(cfg: HealTimers, first: Instant) -> Self {
        HealProbes {
            cfg,
            seeds: Vec::new(),
            next: first,
            boost_until: Instant::ZERO,
        }
    }

    /// Remembers `s` as a seed (at most [`MAX_SEEDS`]; `me` and repeats are ignored).
    pub(crate) fn add_seed(&mut self, me: NodeId, s: NodeId) {
        if s != me && !self.seeds.contains(&s) && self.seeds.len() < MAX_SEEDS {
            self.seeds.push(s);
        }
    }

    /// When [`HealProbes::tick`] is next due.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.next
    }

    /// Whether a tick is due.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.next <= now
    }

    /// Whether a heal is under way (a departed member came back recently).
    pub(crate) fn boosted(&self, now: Instant) -> bool {
        self.boost_until > now
    }

    /// A departed member is back: boost, and tick within the short period.
    pub(crate) fn member_back(&mut self, now: Instant) {
        self.boost_until = now + self.cfg.boost;
        self.next = self.next.min(now + self.cfg.interval_partitioned);
    }

    /// The partition detector says the node is cut off: tick now.
    pub(crate) fn partitioned(&mut self, now: Instant) {
        self.next = self.next.min(now);
    }

    /// One heal tick: schedules the next and picks the members to ping, from `dead` (the
    /// members declared dead here) and the seeds.
    pub(crate) fn tick<R: RngCore>(
        &mut self,
        now: Instant,
        state: Reachability,
        mut dead: Vec<NodeId>,
        view: ActiveView<'_>,
        rng: &mut R,
    ) -> HealTick {
        let active = view.members;
        let connected = state == Reachability::Connected;
        let boosted = self.boosted(now);
        let interval = if !connected || boosted {
            self.cfg.interval_partitioned
        } else {
            self.cfg.interval
        };
        self.next = now + jittered(interval, 25, rng);
        dead.shuffle(rng);
        let k = if boosted {
            self.cfg.probes * 2
        } else {
            self.cfg.probes
        };
        let mut tick = HealTick {
            join: None,
            ping: dead.into_iter().take(k).collect(),
        };
        if (!connected || active.len() < view.target / 2) && !self.seeds.is_empty() {
            let s = self.seeds[rng.random_range(0..self.seeds.len())];
            if !active.contains(&s) {
                tick.ping.push(s);
                if active.is_empty() && !view.joining {
                    tick.join = Some(s);
                }
            }
        }
        tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn n(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    fn probes() -> HealProbes {
        HealProbes::new(
            HealTimers {
                interval: Duration::from_secs(10),
                interval_partitioned: Duration::from_secs(2),
                probes: 2,
                boost: Duration::from_secs(60),
            },
            Instant::ZERO + Duration::from_secs(10),
        )
    }

    #[test]
    fn an_isolated_node_pings_dead_members_and_rejoins_through_a_seed() {
        let mut h = probes();
        let mut rng = SmallRng::seed_from_u64(1);
        h.add_seed(n(0), n(0));
        h.add_seed(n(0), n(9));
        h.add_seed(n(0), n(9));
        let now = Instant::ZERO + Duration::from_secs(10);
        assert!(h.due(now));
        let view = |members, joining| ActiveView {
            members,
            target: 8,
            joining,
        };
        let t = h.tick(
            now,
            Reachability::Isolated,
            vec![n(1), n(2), n(3)],
            view(&[], false),
            &mut rng,
        );
        assert_eq!(t.join, Some(n(9)));
        assert_eq!(t.ping.len(), 3);
        assert_eq!(t.ping[2], n(9));
        // not connected: the short period (2 s +-25%)
        assert!(h.poll_timeout() <= now + Duration::from_millis(2500));
        // a join under way: no second one
        let t = h.tick(
            now,
            Reachability::Isolated,
            vec![],
            view(&[], true),
            &mut rng,
        );
        assert_eq!((t.join, t.ping), (None, vec![n(9)]));
    }

    #[test]
    fn a_connected_node_probes_seeds_only_when_short_of_neighbours_and_a_return_boosts() {
        let mut h = probes();
        let mut rng = SmallRng::seed_from_u64(2);
        h.add_seed(n(0), n(9));
        let now = Instant::ZERO + Duration::from_secs(10);
        let full = ActiveView {
            members: &[n(4), n(5), n(6), n(7)],
            target: 8,
            joining: false,
        };
        let dead = vec![n(1), n(2), n(3), n(8), n(10)];
        let t = h.tick(now, Reachability::Connected, dead.clone(), full, &mut rng);
        assert_eq!((t.join, t.ping.len()), (None, 2));
        assert!(h.poll_timeout() >= now + Duration::from_millis(7500));
        h.member_back(now);
        assert!(h.boosted(now));
        assert!(h.poll_timeout() <= now + Duration::from_secs(2));
        let t = h.tick(now, Reachability::Connected, dead, full, &mut rng);
        assert_eq!(t.ping.len(), 4, "twice the probes while boosted");
        assert!(!h.boosted(now + Duration::from_secs(60)));
    }
}
