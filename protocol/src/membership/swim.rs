//! The SWIM state machine: probing (direct, then indirect through `PingReq`), Lifeguard's
//! `Nack`, suspicion and refutation, over the member table, the update queue, the suspicion
//! timers and local health. It sends only SWIM messages (`Ping`, `Ack`, `PingReq`, `Nack`)
//! and reports membership changes as `Change`s for [`crate::Node`] to route to the other
//! cores (the views drop dead members, the heal logic reconnects returning ones).
//!
//! Like every core: `now` is an argument, the RNG is lent per call, messages go to an
//! outbox, and changes are polled with `Swim::poll_change`.

use std::collections::VecDeque;

use rand::RngCore;
use rand::seq::SliceRandom;

use super::dissemination::UpdateQueue;
use super::health::LocalHealth;
use super::suspicion::{self, Suspicion, Suspicions};
use super::table::{Applied, MemberTable};
use super::{Change, SwimConfig, SwimStats};
use crate::heal::{MemberState, Status};
use crate::id::NodeId;
use crate::time::{Duration, Instant, jittered};
use crate::views::Outbox;
use crate::wire::{MemberUpdate, Message};

/// Most indirect probes relayed for others at once.
const MAX_RELAYS: usize = 32;

/// This node's probe of the current protocol period.
#[derive(Clone, Debug)]
struct Probe {
    target: NodeId,
    seq: u32,
    sent_at: Instant,
    direct_deadline: Instant,
    indirect_sent: bool,
    acked: bool,
    /// Indirect probes asked, and `Nack`s received for them (Lifeguard).
    indirect: u8,
    nacks: u8,
}

/// An indirect probe this node runs for another member (`PingReq`).
#[derive(Clone, Debug)]
struct Relay {
    seq: u32,
    target: NodeId,
    origin: NodeId,
    origin_seq: u32,
    deadline: Instant,
    /// When to tell the origin the target has not answered (Lifeguard `Nack`).
    nack_at: Instant,
    nacked: bool,
}

/// SWIM failure detection of one node, owning its member table (driven by [`crate::Node`]).
#[derive(Clone, Debug)]
pub struct Swim {
    cfg: SwimConfig,
    me: NodeId,
    incarnation: u64,
    health: LocalHealth,
    seq: u32,
    members: MemberTable,
    probe: Option<Probe>,
    next_probe: Instant,
    /// Round-robin probe order (popped from the back).
    order: Vec<NodeId>,
    updates: UpdateQueue,
    suspicions: Suspicions,
    relays: Vec<Relay>,
    /// Expected mesh size, for `log n` scalings until the table knows better.
    size_hint: u64,
    /// Joins are announced only while the whole mesh fits the member table.
    announce_joins: bool,
    /// How long a dead member still counts as expected (partition detector) and as recent
    /// (eviction order).
    window: Duration,
    changes: VecDeque<Change>,
    stats: SwimStats,
}

impl Swim {
    /// A detector for `me` at `incarnation` over `members`, first probe at `first_probe`.
    /// `size_hint` is the expected mesh size; `window` how long a dead member still counts as
    /// expected and recent.
    pub fn new(
        cfg: SwimConfig,
        me: NodeId,
        incarnation: u64,
        first_probe: Instant,
        members: MemberTable,
        size_hint: u64,
        window: Duration,
    ) -> Self {
        Swim {
            health: LocalHealth::new(cfg.max_lhm),
            updates: UpdateQueue::new(cfg.retransmit_mult, cfg.max_pending_updates),
            announce_joins: size_hint <= members.capacity() as u64,
            cfg,
            me,
            incarnation,
            seq: 0,
            members,
            probe: None,
            next_probe: first_probe,
            order: Vec::new(),
            suspicions: Suspicions::default(),
            relays: Vec::new(),
            size_hint,
            window,
            changes: VecDeque::new(),
            stats: SwimStats::default(),
        }
    }

    // ----- queries --------------------------------------------------------------------------

    /// The member table.
    pub fn members(&self) -> &MemberTable {
        &self.members
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Counters.
    pub fn stats(&self) -> SwimStats {
        self.stats
    }

    /// The local health multiplier.
    pub fn lhm(&self) -> u32 {
        self.health.score()
    }

    /// Lifeguard suspicion timeout for `n` members and `c` confirmations.
    pub fn suspicion_timeout(&self, n: u64, c: u32) -> Duration {
        suspicion::timeout(&self.cfg, n, c)
    }

    /// Updates waiting for piggyback.
    pub fn pending_updates(&self) -> usize {
        self.updates.len()
    }

    /// Earliest deadline: probe period end, indirect-probe timeout, suspicions, relays.
    pub(crate) fn poll_timeout(&self) -> Instant {
        let mut t = self.next_probe;
        if let Some(p) = &self.probe
            && !p.acked
            && !p.indirect_sent
        {
            t = t.min(p.direct_deadline);
        }
        t = t.min(self.suspicions.next_deadline());
        for r in &self.relays {
            t = t.min(r.deadline);
            if !r.nacked {
                t = t.min(r.nack_at);
            }
        }
        t
    }

    /// Whether the protocol period has ended (call [`Swim::probe_tick`]).
    pub(crate) fn probe_due(&self, now: Instant) -> bool {
        self.next_probe <= now
    }

    /// Next membership change, in order of occurrence. Drain after every call that takes
    /// updates or time.
    pub(crate) fn poll_change(&mut self) -> Option<Change> {
        self.changes.pop_front()
    }

    // ----- messages -------------------------------------------------------------------------

    /// A `Ping` from `from`: answer with an `Ack`. (Its updates go through [`Swim::apply`]
    /// first.)
    pub(crate) fn on_ping(&mut self, from: NodeId, seq: u32, out: &mut Outbox) {
        let updates = self.piggyback_for(&from);
        out.push_back((from, Message::Ack { seq, updates }));
    }

    /// An `Ack` from `from`: closes this node's probe, or completes a relay (the ack goes on
    /// to the member that asked).
    pub(crate) fn on_ack(&mut self, now: Instant, from: NodeId, seq: u32, out: &mut Outbox) {
        if let Some(p) = &mut self.probe
            && p.seq == seq
            && !p.acked
        {
            p.acked = true;
            let (target, sent) = (p.target, p.sent_at);
            if from == target {
                self.members.record_rtt(&target, now - sent);
            }
            self.health.better();
            return;
        }
        if let Some(i) = self
            .relays
            .iter()
            .position(|r| r.seq == seq && r.target == from)
        {
            let r = self.relays.swap_remove(i);
            let updates = self.piggyback_for(&r.origin);
            out.push_back((
                r.origin,
                Message::Ack {
                    seq: r.origin_seq,
                    updates,
                },
            ));
        }
    }

    /// A `PingReq` from `from`: answer it directly if this node is the target, else ping the
    /// target on `from`'s behalf (at most [`MAX_RELAYS`] at once).
    pub(crate) fn on_ping_req(
        &mut self,
        now: Instant,
        from: NodeId,
        seq: u32,
        target: NodeId,
        out: &mut Outbox,
    ) {
        if target == self.me {
            let updates = self.piggyback_for(&from);
            out.push_back((from, Message::Ack { seq, updates }));
        } else if self.relays.len() < MAX_RELAYS {
            let my_seq = self.next_seq();
            let timeout = self.health.scale(self.cfg.probe_timeout);
            self.relays.push(Relay {
                seq: my_seq,
                target,
                origin: from,
                origin_seq: seq,
                deadline: now + timeout * 2,
                nack_at: now + timeout / 2,
                nacked: false,
            });
            let updates = self.piggyback_for(&target);
            out.push_back((
                target,
                Message::Ping {
                    seq: my_seq,
                    updates,
                },
            ));
        }
    }

    /// A `Nack` for this node's indirect probe `seq`: one helper is alive and answering.
    pub(crate) fn on_nack(&mut self, seq: u32) {
        if let Some(p) = &mut self.probe
            && p.seq == seq
            && !p.acked
        {
            p.nacks = p.nacks.saturating_add(1).min(p.indirect);
        }
    }

    /// A `Ping` to `to` outside the probe cycle (heal probes, hints), carrying the usual
    /// piggyback (so a claim about `to` reaches it).
    pub(crate) fn ping(&mut self, to: NodeId, out: &mut Outbox) {
        let seq = self.next_seq();
        let updates = self.piggyback_for(&to);
        out.push_back((to, Message::Ping { seq, updates }));
    }

    /// If this node believes `from` is not alive, pings it with that claim so it refutes.
    pub(crate) fn hint_if_not_alive(&mut self, from: NodeId, out: &mut Outbox) {
        if self
            .members
            .get(&from)
            .is_some_and(|e| e.state.status != Status::Alive)
        {
            self.ping(from, out);
        }
    }

    // ----- membership facts -----------------------------------------------------------------

    /// Applies one membership fact (piggybacked, or local). A claim about this node that is
    /// not `Alive` at its incarnation is refuted. `active` is the active view (its members
    /// are never evicted from the table, and only they may evict others).
    pub(crate) fn apply(&mut self, now: Instant, u: MemberUpdate, active: &[NodeId]) {
        if u.node == self.me {
            let mine = self.self_update().state;
            if mine.is_superseded_by(&u.state) {
                self.incarnation = u.state.incarnation.saturating_add(1);
                self.stats.refutations += 1;
                self.health.worse();
                let n = self.n_est();
                self.updates.enqueue(self.self_update(), n);
                self.changes.push_back(Change::Refuted {
                    incarnation: self.incarnation,
                });
            }
            return;
        }
        let evict = active.contains(&u.node);
        match self
            .members
            .apply(now, u.node, u.state, self.window, evict, |x| {
                active.contains(x)
            }) {
            Applied::Changed { old } => {
                let accuser = u.accuser.filter(|a| *a != u.node);
                self.member_changed(now, u.node, old, u.state, accuser)
            }
            Applied::Unchanged => {
                // Lifeguard: another member's probe failed too: an independent confirmation
                if u.state.status == Status::Suspect
                    && let Some(a) = u.accuser
                {
                    self.confirm_suspicion(u.node, u.state.incarnation, a);
                }
            }
        }
    }

    /// `node` said it is leaving (graceful `Disconnect`): it is `Left` at its incarnation.
    pub(crate) fn on_left(&mut self, now: Instant, node: NodeId, active: &[NodeId]) {
        let incarnation = self.members.get(&node).map_or(0, |e| e.state.incarnation);
        self.apply(
            now,
            MemberUpdate {
                node,
                state: MemberState {
                    incarnation,
                    status: Status::Left,
                },
                accuser: None,
            },
            active,
        );
    }

    /// Makes sure `n` has an entry (a neighbour, a contact, a probe target), evicting if the
    /// table is full.
    pub(crate) fn ensure_member(&mut self, now: Instant, n: NodeId, active: &[NodeId]) {
        if n != self.me && self.members.get(&n).is_none() {
            self.members
                .apply(now, n, MemberState::alive(0), self.window, true, |x| {
                    active.contains(x)
                });
            self.announce_join(n, MemberState::alive(0));
        }
    }

    // ----- timers ---------------------------------------------------------------------------

    /// Timer work other than the protocol period: indirect probes once the direct ack is
    /// late (through members of `active`), suspicions that ran out (the suspect is declared
    /// dead), `Nack`s for relays whose target stays silent.
    pub(crate) fn on_timeout<R: RngCore>(
        &mut self,
        now: Instant,
        active: &[NodeId],
        rng: &mut R,
        out: &mut Outbox,
    ) {
        if let Some(p) = &self.probe
            && !p.acked
            && !p.indirect_sent
            && p.direct_deadline <= now
        {
            let (target, seq) = (p.target, p.seq);
            let mut helpers: Vec<NodeId> =
                active.iter().filter(|x| **x != target).copied().collect();
            helpers.shuffle(rng);
            helpers.truncate(self.cfg.indirect_probes);
            let asked = u8::try_from(helpers.len()).unwrap_or(u8::MAX);
            for h in helpers {
                let updates = self.piggyback_for(&h);
                out.push_back((
                    h,
                    Message::PingReq {
                        seq,
                        target,
                        updates,
                    },
                ));
            }
            if let Some(p) = &mut self.probe {
                p.indirect_sent = true;
                p.indirect = asked;
            }
        }
        for (n, incarnation) in self.suspicions.take_expired(now) {
            let suspect = MemberState {
                incarnation,
                status: Status::Suspect,
            };
            if self.members.get(&n).is_some_and(|e| e.state == suspect) {
                self.stats.declared_dead += 1;
                self.apply(
                    now,
                    MemberUpdate {
                        node: n,
                        state: MemberState {
                            incarnation,
                            status: Status::Dead,
                        },
                        accuser: None,
                    },
                    active,
                );
            }
        }
        // Lifeguard: tell requesters whose target stays silent that we are here
        for r in self.relays.iter_mut() {
            if !r.nacked && r.nack_at <= now {
                r.nacked = true;
                out.push_back((r.origin, Message::Nack { seq: r.origin_seq }));
            }
        }
        self.relays.retain(|r| r.deadline > now);
    }

    /// The protocol period: closes the last probe (an unanswered one raises or confirms a
    /// suspicion), pings the next member of the round-robin order (`active` plus a few of
    /// `passive`), re-probes a few suspects (4x as many while `boosted`), and schedules the
    /// next period.
    pub(crate) fn probe_tick<R: RngCore>(
        &mut self,
        now: Instant,
        active: &[NodeId],
        passive: &[NodeId],
        boosted: bool,
        rng: &mut R,
        out: &mut Outbox,
    ) {
        if let Some(p) = self.probe.take()
            && !p.acked
        {
            self.close_failed_probe(now, &p, active);
        }
        if let Some(target) = self.pick_probe_target(active, passive, rng) {
            self.ensure_member(now, target, active);
            let seq = self.next_seq();
            let updates = self.piggyback_for(&target);
            out.push_back((target, Message::Ping { seq, updates }));
            self.probe = Some(Probe {
                target,
                seq,
                sent_at: now,
                direct_deadline: now + self.health.scale(self.cfg.probe_timeout),
                indirect_sent: false,
                acked: false,
                indirect: 0,
                nacks: 0,
            });
            self.stats.probes += 1;
        }
        // re-probe suspects directly, carrying the claim, so live ones refute in time
        let mut suspects = self.suspicions.suspects();
        suspects.shuffle(rng);
        let reprobes = self.cfg.suspect_reprobes * if boosted { 4 } else { 1 };
        for s in suspects.into_iter().take(reprobes) {
            self.ping(s, out);
        }
        self.next_probe = now + jittered(self.health.scale(self.cfg.probe_interval), 10, rng);
    }

    // ----- internals ------------------------------------------------------------------------

    fn n_est(&self) -> u64 {
        self.size_hint.max(self.members.len() as u64 + 1)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn self_update(&self) -> MemberUpdate {
        MemberUpdate {
            node: self.me,
            state: MemberState::alive(self.incarnation),
            accuser: None,
        }
    }

    /// Piggyback for a message to `to`: own state, any non-alive claim about `to`, queued
    /// updates.
    fn piggyback_for(&mut self, to: &NodeId) -> Vec<MemberUpdate> {
        let mut first = vec![self.self_update()];
        if let Some(e) = self.members.get(to)
            && e.state.status != Status::Alive
        {
            first.push(MemberUpdate {
                node: *to,
                state: e.state,
                accuser: None,
            });
        }
        self.updates.piggyback(&first)
    }

    /// Classic SWIM join dissemination, only while the whole mesh fits one member table
    /// (`size_hint <= capacity`): every member then learns every other within a few protocol
    /// periods. Beyond that, tables stay partial by design and joins are not announced.
    fn announce_join(&mut self, node: NodeId, state: MemberState) {
        if self.announce_joins {
            let n = self.n_est();
            self.updates.enqueue(
                MemberUpdate {
                    node,
                    state,
                    accuser: None,
                },
                n,
            );
        }
    }

    /// Lifeguard confirmation of the suspicion about `node` at `incarnation` by `by` (this
    /// node's own failed probe, or another member's accusation): each distinct confirmer
    /// shortens the timeout, down to the minimum at `suspicion_confirmations`. Returns whether
    /// it counted.
    fn confirm_suspicion(&mut self, node: NodeId, incarnation: u64, by: NodeId) -> bool {
        let k = self.cfg.suspicion_confirmations as usize;
        let n = self.n_est();
        let cfg = &self.cfg;
        let counted = self
            .suspicions
            .confirm(node, incarnation, by, k, |c| suspicion::timeout(cfg, n, c));
        if counted {
            self.stats.confirmations += 1;
        }
        counted
    }

    /// The table changed `node` from `old` to `new`: queue the fact for dissemination, start
    /// or end its suspicion, and report the change.
    fn member_changed(
        &mut self,
        now: Instant,
        node: NodeId,
        old: Option<MemberState>,
        new: MemberState,
        accuser: Option<NodeId>,
    ) {
        let n = self.n_est();
        if new.status != Status::Alive || old.is_some_and(|o| o.status != Status::Alive) {
            let accuser = if new.status == Status::Suspect {
                accuser
            } else {
                None
            };
            self.updates.enqueue(
                MemberUpdate {
                    node,
                    state: new,
                    accuser,
                },
                n,
            );
        } else if old.is_none() {
            self.announce_join(node, new);
        }
        self.changes.push_back(Change::Member { node, old, new });
        match new.status {
            Status::Alive => self.suspicions.remove(&node),
            Status::Suspect => {
                let timeout = self.suspicion_timeout(n, 0);
                self.suspicions.insert(
                    node,
                    Suspicion {
                        incarnation: new.incarnation,
                        started: now,
                        deadline: now + timeout,
                        accuser,
                        confirmers: Vec::new(),
                    },
                );
            }
            Status::Dead | Status::Left => {
                self.suspicions.remove(&node);
                if self.probe.as_ref().is_some_and(|p| p.target == node) {
                    self.probe = None;
                }
            }
        }
    }

    /// The probe `p` got no ack in its period: count it against this node's health (and each
    /// helper that sent no `Nack` too), then suspect the target, or confirm its suspicion.
    fn close_failed_probe(&mut self, now: Instant, p: &Probe, active: &[NodeId]) {
        self.stats.failed_probes += 1;
        self.health.worse();
        // Lifeguard: helpers that sent neither ack nor nack point at our own link
        if p.indirect_sent {
            for _ in p.nacks..p.indirect {
                self.stats.missed_nacks += 1;
                self.health.worse();
            }
        }
        let Some(e) = self.members.get(&p.target).copied() else {
            return;
        };
        if e.state.status == Status::Alive {
            self.stats.suspicions_raised += 1;
            let state = MemberState {
                incarnation: e.state.incarnation,
                status: Status::Suspect,
            };
            let me = self.me;
            self.apply(
                now,
                MemberUpdate {
                    node: p.target,
                    state,
                    accuser: Some(me),
                },
                active,
            );
        } else if e.state.status == Status::Suspect {
            let me = self.me;
            if self.confirm_suspicion(p.target, e.state.incarnation, me) {
                // gossip the independent confirmation so others shorten theirs too
                let n = self.n_est();
                self.updates.enqueue(
                    MemberUpdate {
                        node: p.target,
                        state: e.state,
                        accuser: Some(me),
                    },
                    n,
                );
            }
        }
    }

    /// The next member to probe: from the round-robin order, refilled (shuffled) from
    /// `active` plus [`SwimConfig::passive_probes`] random members of `passive` when it runs
    /// out. Dead and departed members are skipped.
    fn pick_probe_target<R: RngCore>(
        &mut self,
        active: &[NodeId],
        passive: &[NodeId],
        rng: &mut R,
    ) -> Option<NodeId> {
        for _ in 0..2 {
            while let Some(t) = self.order.pop() {
                let gone = self
                    .members
                    .get(&t)
                    .is_some_and(|e| matches!(e.state.status, Status::Dead | Status::Left));
                if !gone && t != self.me {
                    return Some(t);
                }
            }
            let mut order: Vec<NodeId> = active.to_vec();
            let mut passive: Vec<NodeId> = passive.to_vec();
            passive.shuffle(rng);
            order.extend(passive.into_iter().take(self.cfg.passive_probes));
            order.shuffle(rng);
            if order.is_empty() {
                return None;
            }
            self.order = order;
        }
        None
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

    fn swim() -> Swim {
        let cfg = SwimConfig::default();
        let first = Instant::ZERO + cfg.probe_interval;
        Swim::new(
            cfg,
            n(0),
            0,
            first,
            MemberTable::new(64, 1),
            10,
            Duration::from_secs(600),
        )
    }

    fn drain(s: &mut Swim) -> Vec<Change> {
        std::iter::from_fn(|| s.poll_change()).collect()
    }

    #[test]
    fn an_unanswered_probe_raises_a_suspicion_that_ends_in_death() {
        let mut s = swim();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut out = Outbox::new();
        let active = [n(1)];
        let t0 = Instant::ZERO + Duration::from_secs(1);
        s.probe_tick(t0, &active, &[], false, &mut rng, &mut out);
        assert!(matches!(out.pop_front(), Some((to, Message::Ping { .. })) if to == n(1)));
        // the direct ack is late: no helper to ask (n(1) is the only neighbour)
        s.on_timeout(t0 + Duration::from_millis(400), &active, &mut rng, &mut out);
        assert!(out.is_empty());
        // the period ends without an ack: suspect
        let t1 = t0 + Duration::from_secs(2);
        s.probe_tick(t1, &active, &[], false, &mut rng, &mut out);
        assert_eq!(s.stats().failed_probes, 1);
        assert_eq!(s.lhm(), 1);
        let changes = drain(&mut s);
        assert!(
            matches!(changes.as_slice(), [Change::Member { node, new, .. }] if *node == n(1) && new.status == Status::Suspect),
            "{changes:?}"
        );
        // nobody refutes: dead at the suspicion deadline
        let deadline = s.poll_timeout().max(t1 + s.suspicion_timeout(10, 0));
        s.on_timeout(deadline, &active, &mut rng, &mut out);
        assert_eq!(s.stats().declared_dead, 1);
        assert_eq!(
            s.members().get(&n(1)).map(|e| e.state.status),
            Some(Status::Dead)
        );
        assert!(drain(&mut s).iter().any(
            |c| matches!(c, Change::Member { node, new, .. } if *node == n(1) && new.status == Status::Dead)
        ));
    }

    #[test]
    fn a_relayed_probe_nacks_then_forwards_a_late_ack() {
        let mut s = swim();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut out = Outbox::new();
        let now = Instant::ZERO;
        s.on_ping_req(now, n(1), 7, n(2), &mut out);
        let seq = match out.pop_front() {
            Some((to, Message::Ping { seq, .. })) if to == n(2) => seq,
            other => panic!("expected a ping to the target, got {other:?}"),
        };
        s.on_timeout(now + Duration::from_millis(200), &[], &mut rng, &mut out);
        assert_eq!(out.pop_front(), Some((n(1), Message::Nack { seq: 7 })));
        s.on_ack(now + Duration::from_millis(300), n(2), seq, &mut out);
        assert!(matches!(out.pop_front(), Some((to, Message::Ack { seq: 7, .. })) if to == n(1)));
    }
}
