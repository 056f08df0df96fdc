//! The SWIM state machine: probing (direct, then indirect through `PingReq`), Lifeguard's
//! `Nack`, suspicion and refutation, over the member table, the update queue, the suspicion
//! timers and local health. It sends only SWIM messages (`Ping`, `Ack`, `PingReq`, `Nack`)
//! and reports membership changes as `Change`s for [`crate::Node`] to route to the other
//! cores (the views drop dead members, the heal logic reconnects returning ones).
//!
//! Like every core: `now` is an argument, the RNG and the [`Authenticator`] are lent per
//! call, messages go to an outbox, and changes are polled with `Swim::poll_change`.
//!
//! ## Byzantine members
//! Every fact is a signed statement (see [`super::statement`]); one that fails verification
//! is dropped and counted ([`super::SwimStats::invalid_statements`]). Signatures are checked
//! only for facts that would change something here, so a flood of stale copies costs a
//! comparison each.
//! - A member's `Alive` and `Left` are believed only when it signed them itself.
//! - An accusation (`Suspect`/`Dead` about another member) counts only when its accuser is a
//!   member this node heard from first-hand, at most once per accuser, target and
//!   incarnation, and within [`super::SwimConfig::max_accusations`] new accusations per
//!   accuser and [`super::SwimConfig::accusation_window`]. Its incarnation must be one the
//!   target signed (the accusation carries that signature), so the target can always refute
//!   with `Alive(i + 1)`; nothing pushes an incarnation to `u64::MAX`.
//! - Another member's `Dead` claim is an accusation, not a removal: it starts or confirms a
//!   suspicion here. When a suspicion's timer runs out, the suspect is declared dead only if
//!   this node's own probe (direct and indirect) failed at that incarnation, or if at least
//!   `f + 1` distinct first-hand members accused it, `f = floor((n - 1) / 3)` with `n` the
//!   larger of the size hint and the members known. Otherwise this node probes the suspect
//!   itself first (the probe carries the claim, so a live suspect refutes); a lone accuser
//!   never expels anyone.
//! - A restarted member (incarnation 0) learns the highest incarnation signed or claimed
//!   about it from the first member that holds one (its answer carries that statement when
//!   the member spoke of itself below it) and signs above it.

use std::collections::VecDeque;

use rand::RngCore;
use rand::seq::SliceRandom;

use super::dissemination::UpdateQueue;
use super::health::LocalHealth;
use super::statement::{self, is_self_claim};
use super::suspicion::{self, Suspicion, Suspicions};
use super::table::{Applied, MemberTable};
use super::{Change, SwimConfig, SwimStats};
use crate::auth::{Authenticator, Signature};
use crate::heal::{MemberState, Status};
use crate::id::NodeId;
use crate::time::{Duration, Instant, jittered};
use crate::views::Outbox;
use crate::wire::{MemberUpdate, Message};

/// Most indirect probes relayed for others at once.
const MAX_RELAYS: usize = 32;

/// Most suspects waiting for this node's own probe.
const MAX_VERIFY: usize = 16;

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
    /// This node's signature over `Alive(incarnation)`.
    my_sig: Signature,
    /// Suspects whose timer ran out without enough evidence: probed first, in order.
    verify: Vec<NodeId>,
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
    /// expected and recent. `auth` signs as `me`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: SwimConfig,
        me: NodeId,
        incarnation: u64,
        first_probe: Instant,
        members: MemberTable,
        size_hint: u64,
        window: Duration,
        auth: &dyn Authenticator,
    ) -> Self {
        Swim {
            my_sig: statement::sign_self(auth, me, MemberState::alive(incarnation)).sig,
            verify: Vec::new(),
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
    pub(crate) fn on_ping(
        &mut self,
        from: NodeId,
        seq: u32,
        out: &mut Outbox,
        auth: &dyn Authenticator,
    ) {
        let updates = self.piggyback_for(&from, auth);
        out.push_back((from, Message::Ack { seq, updates }));
    }

    /// An `Ack` from `from`: closes this node's probe, or completes a relay (the ack goes on
    /// to the member that asked).
    pub(crate) fn on_ack(
        &mut self,
        now: Instant,
        from: NodeId,
        seq: u32,
        out: &mut Outbox,
        auth: &dyn Authenticator,
    ) {
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
            let updates = self.piggyback_for(&r.origin, auth);
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
        auth: &dyn Authenticator,
    ) {
        if target == self.me {
            let updates = self.piggyback_for(&from, auth);
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
            let updates = self.piggyback_for(&target, auth);
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
    pub(crate) fn ping(&mut self, to: NodeId, out: &mut Outbox, auth: &dyn Authenticator) {
        let seq = self.next_seq();
        let updates = self.piggyback_for(&to, auth);
        out.push_back((to, Message::Ping { seq, updates }));
    }

    /// If this node believes `from` is not alive, pings it with that claim so it refutes.
    pub(crate) fn hint_if_not_alive(
        &mut self,
        from: NodeId,
        out: &mut Outbox,
        auth: &dyn Authenticator,
    ) {
        if self
            .members
            .get(&from)
            .is_some_and(|e| e.state.status != Status::Alive)
        {
            self.ping(from, out, auth);
        }
    }

    /// This node is leaving: its signed `Left` to each of `to` (a `Ping` carrying only that
    /// statement, so the neighbours can pass the departure on), before the `Disconnect`s.
    pub(crate) fn farewell(&mut self, to: &[NodeId], out: &mut Outbox, auth: &dyn Authenticator) {
        let left = statement::sign_self(
            auth,
            self.me,
            MemberState {
                incarnation: self.incarnation,
                status: Status::Left,
            },
        );
        for t in to {
            let seq = self.next_seq();
            out.push_back((
                *t,
                Message::Ping {
                    seq,
                    updates: vec![left],
                },
            ));
        }
    }

    // ----- membership facts -----------------------------------------------------------------

    /// Applies one signed membership fact piggybacked on a message from `from` (its
    /// authenticated sender). A claim about this node that is not `Alive` at its incarnation
    /// is refuted. `active` is the active view (its members are never evicted from the table,
    /// and only they may evict others). Unsigned or badly signed facts are dropped and
    /// counted; see the module docs for what an accusation needs to count.
    pub(crate) fn apply(
        &mut self,
        now: Instant,
        from: NodeId,
        u: MemberUpdate,
        active: &[NodeId],
        auth: &dyn Authenticator,
    ) {
        if u.node == self.me {
            self.apply_about_me(u, auth);
        } else if is_self_claim(u.state.status) {
            self.apply_self_claim(now, from, u, active, auth);
        } else {
            self.apply_accusation(now, u, active, auth);
        }
    }

    /// A claim about this node: refuted when it is not `Alive` at this incarnation, once its
    /// signatures check out (an accusation's proof is this node's own earlier signature, so
    /// the claim's incarnation is one this node signed, in this life or a previous one).
    fn apply_about_me(&mut self, u: MemberUpdate, auth: &dyn Authenticator) {
        let mine = MemberState::alive(self.incarnation);
        if !mine.is_superseded_by(&u.state) {
            return;
        }
        if statement::verify(auth, &u).is_err() {
            self.stats.invalid_statements += 1;
            return;
        }
        self.incarnation = u.state.incarnation.saturating_add(1);
        self.my_sig = statement::sign_self(auth, self.me, mine_at(self.incarnation)).sig;
        self.stats.refutations += 1;
        self.health.worse();
        let n = self.n_est();
        self.updates.enqueue(self.self_update(), n);
        self.changes.push_back(Change::Refuted {
            incarnation: self.incarnation,
        });
    }

    /// `u.node`'s own `Alive` or `Left`: believed only with its own signature.
    fn apply_self_claim(
        &mut self,
        now: Instant,
        from: NodeId,
        u: MemberUpdate,
        active: &[NodeId],
        auth: &dyn Authenticator,
    ) {
        let first_hand = from == u.node;
        let alive = u.state.status == Status::Alive;
        let (changes, new_proof) = match self.members.get(&u.node) {
            None => (true, alive),
            Some(e) => (
                e.state.is_superseded_by(&u.state),
                alive && e.alive_sig.is_none_or(|(i, _)| i < u.state.incarnation),
            ),
        };
        if !changes && !new_proof {
            if let Some(e) = self.members.get_mut(&u.node) {
                if first_hand && e.alive_sig.is_some_and(|(_, s)| s == u.sig) {
                    e.direct = true;
                }
                // a restarted member speaking of itself below what this node holds
                if first_hand && u.state.incarnation < e.state.incarnation {
                    e.behind = true;
                }
            }
            return;
        }
        if statement::verify(auth, &u).is_err() {
            self.stats.invalid_statements += 1;
            return;
        }
        let unannounced = self
            .members
            .get(&u.node)
            .is_none_or(|e| e.alive_sig.is_none());
        let evict = active.contains(&u.node);
        let applied = if changes {
            self.members
                .apply(now, u.node, u.state, self.window, evict, |x| {
                    active.contains(x)
                })
        } else {
            Applied::Unchanged
        };
        let Some(e) = self.members.get_mut(&u.node) else {
            return;
        };
        if alive && e.alive_sig.is_none_or(|(i, _)| i < u.state.incarnation) {
            e.alive_sig = Some((u.state.incarnation, u.sig));
        }
        if u.state.status == Status::Left && e.state == u.state {
            e.left_sig = Some(u.sig);
        }
        if first_hand {
            e.direct = true;
            if u.state.incarnation >= e.state.incarnation {
                e.behind = false;
            }
        }
        match applied {
            Applied::Changed { old } => self.member_changed(now, u.node, old, u.state, Some(u)),
            Applied::Unchanged if unannounced && alive && e.state == u.state => {
                self.announce_join(u)
            }
            Applied::Unchanged => {}
        }
    }

    /// An accusation (`Suspect` or `Dead`) about another member: evidence for a suspicion
    /// here, never a removal on its own.
    fn apply_accusation(
        &mut self,
        now: Instant,
        u: MemberUpdate,
        active: &[NodeId],
        auth: &dyn Authenticator,
    ) {
        let Some((by, _)) = u.accuser else {
            self.stats.invalid_statements += 1;
            return;
        };
        if by == self.me {
            return; // our own accusation, back from a relay
        }
        let suspect = MemberState {
            incarnation: u.state.incarnation,
            status: Status::Suspect,
        };
        // would it change anything here? (checked before any signature)
        let min = self.suspicion_timeout(self.n_est(), self.cfg.suspicion_confirmations);
        let dead = u.state.status == Status::Dead;
        let relevant = match self.members.get(&u.node) {
            None => true,
            Some(e) if e.state.is_superseded_by(&suspect) => true,
            Some(e) if e.state == suspect => self.suspicions.get(&u.node).is_some_and(|s| {
                s.incarnation == suspect.incarnation
                    && (!s.accusers.contains(&by) || (dead && s.started + min < s.deadline))
            }),
            Some(_) => false,
        };
        if !relevant {
            return;
        }
        let window = self.cfg.accusation_window;
        let max = self.cfg.max_accusations;
        let Some(acc) = self
            .members
            .get_mut(&by)
            .filter(|e| e.direct && matches!(e.state.status, Status::Alive | Status::Suspect))
        else {
            self.stats.unknown_accusers += 1;
            return;
        };
        if now.saturating_since(acc.accusations.0) >= window {
            acc.accusations = (now, 0);
        }
        if acc.accusations.1 >= max {
            self.stats.accusations_rate_limited += 1;
            return;
        }
        if statement::verify(auth, &u).is_err() {
            self.stats.invalid_statements += 1;
            return;
        }
        if let Some(acc) = self.members.get_mut(&by) {
            acc.accusations.1 += 1;
        }
        self.stats.accusations += 1;
        let evict = active.contains(&u.node);
        match self
            .members
            .apply(now, u.node, suspect, self.window, evict, |x| {
                active.contains(x)
            }) {
            Applied::Changed { old } => {
                self.record_proof(&u.node, u.state.incarnation, u.sig);
                self.suspect(now, u.node, old, suspect, Some(by), Some(u));
            }
            Applied::Unchanged => {
                self.record_proof(&u.node, u.state.incarnation, u.sig);
                // Lifeguard: another member's probe failed too: an independent confirmation
                if self.confirm_suspicion(u.node, suspect.incarnation, Some(by)) {
                    let n = self.n_est();
                    self.updates.enqueue(u, n);
                }
            }
        }
        if dead {
            // another member's timer ran out: ours runs for the minimum at most (still no
            // death here without this node's own failed probe or a quorum of accusers)
            self.suspicions.hurry(&u.node, suspect.incarnation, min);
        }
    }

    /// `node` said it is leaving (graceful `Disconnect`, from `node` itself): it is `Left` at
    /// its incarnation here. (Its signed `Left`, which others believe, came just before.)
    pub(crate) fn on_left(&mut self, now: Instant, node: NodeId, active: &[NodeId]) {
        let incarnation = self.members.get(&node).map_or(0, |e| e.state.incarnation);
        let left = MemberState {
            incarnation,
            status: Status::Left,
        };
        let evict = active.contains(&node);
        if let Applied::Changed { old } =
            self.members
                .apply(now, node, left, self.window, evict, |x| active.contains(x))
        {
            self.member_changed(now, node, old, left, None);
        }
    }

    /// Makes sure `n` has an entry (a neighbour, a contact, a probe target), evicting if the
    /// table is full. The entry is a local placeholder, `Alive(0)` without a signature: it is
    /// announced to others only once `n`'s own signed statement arrives.
    pub(crate) fn ensure_member(&mut self, now: Instant, n: NodeId, active: &[NodeId]) {
        if n != self.me && self.members.get(&n).is_none() {
            self.members
                .apply(now, n, MemberState::alive(0), self.window, true, |x| {
                    active.contains(x)
                });
        }
    }

    // ----- timers ---------------------------------------------------------------------------

    /// Timer work other than the protocol period: indirect probes once the direct ack is
    /// late (through members of `active`), suspicions that ran out (the suspect is declared
    /// dead on enough evidence, else probed by this node first), `Nack`s for relays whose
    /// target stays silent.
    pub(crate) fn on_timeout<R: RngCore>(
        &mut self,
        now: Instant,
        active: &[NodeId],
        rng: &mut R,
        out: &mut Outbox,
        auth: &dyn Authenticator,
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
                let updates = self.piggyback_for(&h, auth);
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
        for (n, mut s) in self.suspicions.take_expired(now) {
            let suspect = MemberState {
                incarnation: s.incarnation,
                status: Status::Suspect,
            };
            if self.members.get(&n).is_none_or(|e| e.state != suspect) {
                continue;
            }
            if self.enough_evidence(&s) {
                self.stats.declared_dead += 1;
                let dead = MemberState {
                    incarnation: s.incarnation,
                    status: Status::Dead,
                };
                let evict = active.contains(&n);
                if let Applied::Changed { old } =
                    self.members
                        .apply(now, n, dead, self.window, evict, |x| active.contains(x))
                {
                    let fact = self.accusation(n, dead, auth);
                    self.member_changed(now, n, old, dead, fact);
                }
            } else {
                // no own failed probe and no quorum of accusers: probe it ourselves first
                self.stats.verifications += 1;
                s.verifications += 1;
                s.deadline = now + self.health.scale(self.cfg.probe_interval) * 2;
                self.suspicions.insert(n, s);
                self.queue_verification(n);
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
    /// suspicion), pings the next member (a suspect awaiting this node's own verdict first,
    /// else the round-robin order over `active` plus a few of `passive`), re-probes a few
    /// suspects (4x as many while `boosted`), and schedules the next period.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn probe_tick<R: RngCore>(
        &mut self,
        now: Instant,
        active: &[NodeId],
        passive: &[NodeId],
        boosted: bool,
        rng: &mut R,
        out: &mut Outbox,
        auth: &dyn Authenticator,
    ) {
        if let Some(p) = self.probe.take()
            && !p.acked
        {
            self.close_failed_probe(now, &p, active, auth);
        }
        let verify = self.next_verification();
        if let Some(target) = verify.or_else(|| self.pick_probe_target(active, passive, rng)) {
            self.ensure_member(now, target, active);
            let seq = self.next_seq();
            let updates = self.piggyback_for(&target, auth);
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
            self.ping(s, out, auth);
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
            sig: self.my_sig,
            accuser: None,
        }
    }

    /// Whether a suspicion that ran out may end in death here: this node's own probe failed
    /// at that incarnation, or at least `f + 1` distinct first-hand members accused it
    /// (`f = floor((n - 1) / 3)`, `n` the size hint or the members known, the larger), so at
    /// least one of them is honest when at most `f` are Byzantine.
    fn enough_evidence(&self, s: &Suspicion) -> bool {
        if s.own {
            return true;
        }
        let f = (self.n_est() - 1) / 3;
        let first_hand = s
            .accusers
            .iter()
            .filter(|a| self.members.get(a).is_some_and(|e| e.direct))
            .count() as u64;
        first_hand > f
    }

    /// The next suspect awaiting this node's own probe, if it is still suspected.
    fn next_verification(&mut self) -> Option<NodeId> {
        while !self.verify.is_empty() {
            let n = self.verify.remove(0);
            if self.suspicions.get(&n).is_some() {
                return Some(n);
            }
        }
        None
    }

    /// Keeps `sig` as `node`'s proof of `Alive(incarnation)` if it is the highest known.
    fn record_proof(&mut self, node: &NodeId, incarnation: u64, sig: Signature) {
        if let Some(e) = self.members.get_mut(node)
            && e.alive_sig.is_none_or(|(i, _)| i < incarnation)
        {
            e.alive_sig = Some((incarnation, sig));
        }
    }

    /// This node's signed accusation that `node` is in `state`, if it holds `node`'s own
    /// signature for that incarnation (without it, the claim stays local).
    fn accusation(
        &self,
        node: NodeId,
        state: MemberState,
        auth: &dyn Authenticator,
    ) -> Option<MemberUpdate> {
        let (i, proof) = self.members.get(&node)?.alive_sig?;
        (i == state.incarnation)
            .then(|| statement::sign_accusation(auth, self.me, node, state, proof))
    }

    /// Piggyback for a message to `to`: own state, any non-alive claim about `to` (or what
    /// this node holds about `to` when it spoke of itself below that), queued updates.
    fn piggyback_for(&mut self, to: &NodeId, auth: &dyn Authenticator) -> Vec<MemberUpdate> {
        let mut first = vec![self.self_update()];
        if let Some(e) = self.members.get(to).copied() {
            let about = match e.state.status {
                Status::Suspect | Status::Dead => self.accusation(*to, e.state, auth),
                Status::Left => e.left_sig.map(|sig| MemberUpdate {
                    node: *to,
                    state: e.state,
                    sig,
                    accuser: None,
                }),
                Status::Alive if e.behind => e.alive_sig.map(|(i, sig)| MemberUpdate {
                    node: *to,
                    state: MemberState::alive(i),
                    sig,
                    accuser: None,
                }),
                Status::Alive => None,
            };
            if e.behind
                && let Some(m) = self.members.get_mut(to)
            {
                m.behind = false;
            }
            first.extend(about);
        }
        self.updates.piggyback(&first)
    }

    /// Classic SWIM join dissemination, only while the whole mesh fits one member table
    /// (`size_hint <= capacity`): every member then learns every other within a few protocol
    /// periods. Beyond that, tables stay partial by design and joins are not announced. Only
    /// the member's own signed `Alive` is announced.
    fn announce_join(&mut self, u: MemberUpdate) {
        if self.announce_joins {
            let n = self.n_est();
            self.updates.enqueue(u, n);
        }
    }

    /// Lifeguard confirmation of the suspicion about `node` at `incarnation` by `by` (`None`:
    /// this node's own failed probe; else another member's accusation): each distinct
    /// confirmer shortens the timeout, down to the minimum at `suspicion_confirmations`, and
    /// is evidence at expiry. Returns whether it counted.
    fn confirm_suspicion(&mut self, node: NodeId, incarnation: u64, by: Option<NodeId>) -> bool {
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

    /// The table made `node` a suspect (from `old`): start its suspicion, raised by `accuser`
    /// (`None`: this node's own failed probe), and disseminate `fact`.
    fn suspect(
        &mut self,
        now: Instant,
        node: NodeId,
        old: Option<MemberState>,
        new: MemberState,
        accuser: Option<NodeId>,
        fact: Option<MemberUpdate>,
    ) {
        self.member_changed(now, node, old, new, fact);
        let timeout = self.suspicion_timeout(self.n_est(), 0);
        self.suspicions
            .insert(node, Suspicion::new(new.incarnation, now, timeout, accuser));
        if accuser.is_some() {
            // another member's claim: probe the suspect ourselves soon (evidence if it is
            // gone, and the probe carries the claim, so a live suspect refutes at once)
            self.queue_verification(node);
        }
    }

    /// Puts `node` in line for this node's own probe (at most [`MAX_VERIFY`] wait).
    fn queue_verification(&mut self, node: NodeId) {
        if self.verify.len() < MAX_VERIFY && !self.verify.contains(&node) {
            self.verify.push(node);
        }
    }

    /// The table changed `node` from `old` to `new`: queue the signed `fact` for
    /// dissemination (a non-alive state, a return, or a join), end its suspicion if it is no
    /// longer suspected, and report the change.
    fn member_changed(
        &mut self,
        now: Instant,
        node: NodeId,
        old: Option<MemberState>,
        new: MemberState,
        fact: Option<MemberUpdate>,
    ) {
        let _ = now;
        let n = self.n_est();
        if let Some(fact) = fact {
            if new.status != Status::Alive || old.is_some_and(|o| o.status != Status::Alive) {
                self.updates.enqueue(fact, n);
            } else if old.is_none() || old.is_some_and(|o| o.incarnation < new.incarnation) {
                self.announce_join(fact);
            }
        }
        self.changes.push_back(Change::Member { node, old, new });
        match new.status {
            Status::Alive => self.suspicions.remove(&node),
            Status::Suspect => {}
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
    fn close_failed_probe(
        &mut self,
        now: Instant,
        p: &Probe,
        active: &[NodeId],
        auth: &dyn Authenticator,
    ) {
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
        let state = MemberState {
            incarnation: e.state.incarnation,
            status: Status::Suspect,
        };
        if e.state.status == Status::Alive {
            self.stats.suspicions_raised += 1;
            let evict = active.contains(&p.target);
            if let Applied::Changed { old } =
                self.members
                    .apply(now, p.target, state, self.window, evict, |x| {
                        active.contains(x)
                    })
            {
                let fact = self.accusation(p.target, state, auth);
                self.suspect(now, p.target, old, state, None, fact);
            }
        } else if e.state.status == Status::Suspect
            && self.confirm_suspicion(p.target, e.state.incarnation, None)
        {
            // gossip the independent confirmation so others shorten theirs too
            if let Some(fact) = self.accusation(p.target, state, auth) {
                let n = self.n_est();
                self.updates.enqueue(fact, n);
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

/// `Alive` at `incarnation`.
fn mine_at(incarnation: u64) -> MemberState {
    MemberState::alive(incarnation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ModelAuth;
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
            &auth(0),
        )
    }

    fn auth(b: u8) -> ModelAuth {
        ModelAuth::new(n(b), 7)
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
        s.probe_tick(t0, &active, &[], false, &mut rng, &mut out, &auth(0));
        assert!(matches!(out.pop_front(), Some((to, Message::Ping { .. })) if to == n(1)));
        // the direct ack is late: no helper to ask (n(1) is the only neighbour)
        s.on_timeout(
            t0 + Duration::from_millis(400),
            &active,
            &mut rng,
            &mut out,
            &auth(0),
        );
        assert!(out.is_empty());
        // the period ends without an ack: suspect
        let t1 = t0 + Duration::from_secs(2);
        s.probe_tick(t1, &active, &[], false, &mut rng, &mut out, &auth(0));
        assert_eq!(s.stats().failed_probes, 1);
        assert_eq!(s.lhm(), 1);
        let changes = drain(&mut s);
        assert!(
            matches!(changes.as_slice(), [Change::Member { node, new, .. }] if *node == n(1) && new.status == Status::Suspect),
            "{changes:?}"
        );
        // nobody refutes: dead at the suspicion deadline
        let deadline = s.poll_timeout().max(t1 + s.suspicion_timeout(10, 0));
        s.on_timeout(deadline, &active, &mut rng, &mut out, &auth(0));
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
        s.on_ping_req(now, n(1), 7, n(2), &mut out, &auth(0));
        let seq = match out.pop_front() {
            Some((to, Message::Ping { seq, .. })) if to == n(2) => seq,
            other => panic!("expected a ping to the target, got {other:?}"),
        };
        s.on_timeout(
            now + Duration::from_millis(200),
            &[],
            &mut rng,
            &mut out,
            &auth(0),
        );
        assert_eq!(out.pop_front(), Some((n(1), Message::Nack { seq: 7 })));
        s.on_ack(
            now + Duration::from_millis(300),
            n(2),
            seq,
            &mut out,
            &auth(0),
        );
        assert!(matches!(out.pop_front(), Some((to, Message::Ack { seq: 7, .. })) if to == n(1)));
    }
}
