//! Rooted dissemination tree: one breadth-first spanning tree of the active overlay, rooted at
//! the lowest live node id and kept by beacons (a distance-vector protocol with sequence
//! numbers, in the manner of DSDV and Babel).
//!
//! **Why.** Plumtree shapes its one shared tree from whichever origin broadcast first, and
//! reshapes it on duplicates and grafts. Another origin's message climbs and descends that tree,
//! so its path is up to twice the tree's depth; and when many origins publish at once, prunes
//! and grafts pull the tree in opposite directions (in the simulator: 28-36 hops and 2.5-3
//! payloads per node for a burst of 40 broadcasts from 40 origins at 5k nodes). Here data
//! traffic never shapes the tree: each node's parent is the neighbour nearest the root in hops,
//! so any path in the tree is at most twice the root's eccentricity (about `2 log_{d-1} n` in
//! an overlay of degree `d`), whoever publishes and however many publish at once.
//!
//! **Protocol.**
//! - A node sends `Beacon { root, seq, hops, child }` to every active neighbour whenever its
//!   own `(root, seq, hops, parent)` changes, and to a new neighbour when it comes up. `child`
//!   tells the receiver that it is the sender's parent.
//! - A node that knows of no lower id than its own is a root. It starts a new *wave* (its
//!   `seq` + 1) every [`TreeConfig::beacon_interval`].
//! - Everyone else follows its parent: its `seq` is the parent's and its `hops` the parent's
//!   plus one. It changes parent only to a neighbour that cannot be in its own subtree (so no
//!   loop forms): one following a lower root; one with a strictly shorter path in the same or a
//!   newer wave; or, when the parent has not passed on a newer wave within
//!   [`TreeConfig::settle`], the neighbour that did, with the fewest hops (descendants only
//!   know waves this node passed on). Ties keep the current parent, then go to the neighbour
//!   heard first in the wave (the lowest-latency path). Hops are compared as the wave's
//!   timing allows: a neighbour's count is at least that of any neighbour that brought the
//!   same wave earlier, and a shorter path must bring the parent's wave no later than the
//!   parent did (see *Byzantine members* below).
//! - A node that has heard no new wave for [`TreeConfig::root_timeout`] presumes its root
//!   lost (crashed, or beyond a partition), ignores that root's waves up to the last it saw,
//!   and becomes a root itself; the lowest id wins again. After a heal the lower root's waves
//!   win on both sides.
//! - A restarted root that hears its own id with a higher wave than its own jumps past it.
//!
//! The tree neighbours ([`RootedTree::tree_neighbors`]: parent and children) are the eager set
//! of [`crate::gossip::Plumtree`] in managed mode; lazy `IHave`s to the other active neighbours
//! and graft repair still cover a message that a tree change drops.
//!
//! **Byzantine members.**
//! - *Signed waves.* A root signs each wave it starts ([`wave_statement`]: `mesh/tree/wave/1 ‖
//!   root ‖ seq`); every beacon carries that signature and one that does not verify under the
//!   claimed root's key is dropped and counted ([`TreeStats::beacons_invalid`]). Nobody can
//!   claim a root id whose key it does not hold, nor a wave the root did not start; a liar can
//!   only replay waves it received, which the sequence order makes stale.
//! - *Hop counts* cannot be signed end to end. Only the root itself may claim hop 0 (a beacon
//!   with `hops == 0` from anyone but its `root`, or a root claiming more, is invalid), so a
//!   liar can pose as a neighbour of the root (hop 1) and attract its own neighbours, nothing
//!   more: it cannot make a root, move the tree's root, or reach past its own links.
//! - *Withholding.* A parent that attracts a child and then withholds or delays payloads by
//!   more than the `IHave` timeout is found by the data path: the child repairs the message by
//!   graft while the parent, honest, would have delivered it (see
//!   [`crate::gossip::Plumtree::poll_withheld`]). After [`TreeConfig::withhold_events`] such
//!   events within [`TreeConfig::withhold_window`] ([`RootedTree::on_withheld`]) the child drops
//!   the parent and ignores it as a parent for [`TreeConfig::withhold_penalty`] (doubling per
//!   repeat offence, up to 16x); it re-attaches by the usual loop-free rules.

use std::collections::{BTreeMap, VecDeque};

use crate::auth::{Authenticator, Signature};
use crate::id::NodeId;
use crate::time::{Duration, Instant};
use crate::views::Outbox;
use crate::wire::Message;

/// Beacons claiming more hops than this are ignored (a bound on hostile or looping input).
pub const MAX_HOPS: u16 = 1024;

/// Lost roots remembered at once.
const MAX_LOST: usize = 16;

/// Nodes with withholding evidence or a penalty remembered at once.
const MAX_SUSPECTS: usize = 64;

/// Verified `(root, wave, signature)`s remembered: every neighbour passes on the same wave, so
/// a node verifies about one signature per wave.
const VERIFIED_CACHE: usize = 4;

/// Context tag of a root's signature over one of its waves.
pub const WAVE_CONTEXT: &[u8; 16] = b"mesh/tree/wave/1";

/// What a root signs to start wave `seq`: [`WAVE_CONTEXT`] ‖ `root` ‖ `seq` (little endian).
pub fn wave_statement(root: &NodeId, seq: u32) -> [u8; 16 + 32 + 4] {
    let mut m = [0u8; 16 + 32 + 4];
    m[..16].copy_from_slice(WAVE_CONTEXT);
    m[16..48].copy_from_slice(&root.0);
    m[48..].copy_from_slice(&seq.to_le_bytes());
    m
}

/// A received beacon: the sender's position and the root's signature of the wave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beacon {
    /// The root the sender follows.
    pub root: NodeId,
    /// The root's wave the sender has seen.
    pub seq: u32,
    /// The sender's hops from the root (0 only at the root itself).
    pub hops: u16,
    /// The receiver is the sender's parent.
    pub child: bool,
    /// `root`'s signature over [`wave_statement`]`(root, seq)`.
    pub sig: Signature,
}

/// Rooted-tree settings.
#[derive(Clone, Debug)]
pub struct TreeConfig {
    /// Use the rooted tree as the eager set (`true`), or let Plumtree shape its own tree from
    /// duplicates and grafts (`false`). Default `true`.
    pub enabled: bool,
    /// How often a root starts a new wave. Each wave costs one `Beacon` (40 bytes) per active
    /// link. Default 1 s.
    pub beacon_interval: Duration,
    /// No new wave for this long and the root is presumed lost. Default 5 s.
    pub root_timeout: Duration,
    /// How long a node waits for its parent to pass on a wave that another neighbour already
    /// brought before switching to that neighbour. Longer than the usual latency spread of a
    /// wave, or parents flap. Default 250 ms.
    pub settle: Duration,
    /// Withholding events (a payload the parent did not deliver though a lazy neighbour
    /// announced it, repaired by graft) within [`TreeConfig::withhold_window`] after which the
    /// parent is dropped and penalised. Default 2: an honest parent causes such an event only
    /// when its own upstream is slower than a lazy path by the whole `IHave` timeout, which
    /// the simulator sees a few times per 10k nodes and 10 broadcasts (0 penalties there).
    pub withhold_events: u32,
    /// Window for [`TreeConfig::withhold_events`]. Default 60 s.
    pub withhold_window: Duration,
    /// How long a penalised node is not taken as a parent; doubled for each repeat offence,
    /// up to 16x. Default 60 s.
    pub withhold_penalty: Duration,
}

impl Default for TreeConfig {
    fn default() -> Self {
        TreeConfig {
            enabled: true,
            beacon_interval: Duration::from_secs(1),
            root_timeout: Duration::from_secs(5),
            settle: Duration::from_millis(250),
            withhold_events: 2,
            withhold_window: Duration::from_secs(60),
            withhold_penalty: Duration::from_secs(60),
        }
    }
}

/// Counters (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// `Beacon`s sent.
    pub beacons_sent: u64,
    /// Times this node's parent changed (including to or from none).
    pub parent_changes: u64,
    /// Times this node's root changed.
    pub root_changes: u64,
    /// Times this node presumed its root lost.
    pub roots_lost: u64,
    /// Beacons dropped: the wave's signature did not verify under the claimed root's key, or
    /// the hop count was impossible (0 from a non-root, or more from the root).
    pub beacons_invalid: u64,
    /// Wave signatures verified (cache misses).
    pub waves_verified: u64,
    /// Withholding events reported against a parent ([`RootedTree::on_withheld`]).
    pub withheld: u64,
    /// Times a node was penalised for withholding.
    pub penalties: u64,
}

/// What a neighbour last told us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Advert {
    root: NodeId,
    seq: u32,
    hops: u16,
    child: bool,
    /// The root's signature of `(root, seq)`.
    sig: Signature,
    /// When this `(root, seq)` was first heard from this neighbour.
    at: Instant,
}

/// Withholding evidence against one node.
#[derive(Clone, Debug, Default)]
struct Suspect {
    /// Recent events (within the window).
    events: VecDeque<Instant>,
    /// Penalties so far.
    offences: u32,
    /// Not a parent until then.
    until: Option<Instant>,
}

/// The rooted-tree core (sans I/O).
#[derive(Clone, Debug)]
pub struct RootedTree {
    cfg: TreeConfig,
    me: NodeId,
    root: NodeId,
    seq: u32,
    hops: u16,
    /// The root's signature of `(root, seq)`, passed on in our beacons.
    sig: Signature,
    parent: Option<NodeId>,
    /// Highest wave this node started as a root, or heard of under its own id (never
    /// reused in this process).
    own_seq: u32,
    /// When `seq` last advanced or the root changed.
    progress_at: Instant,
    next_wave: Instant,
    settle_at: Option<Instant>,
    nbrs: BTreeMap<NodeId, Option<Advert>>,
    /// Presumed-lost roots: `(root, last wave seen, forget at)`.
    lost: VecDeque<(NodeId, u32, Instant)>,
    /// Recently verified `(root, seq, signature)`s.
    verified: VecDeque<(NodeId, u32, Signature)>,
    /// Withholding evidence and penalties.
    suspects: BTreeMap<NodeId, Suspect>,
    version: u64,
    stats: TreeStats,
}

impl RootedTree {
    /// A node that is its own root until it hears of a lower id (its wave 0 signed by `auth`).
    pub fn new(cfg: TreeConfig, me: NodeId, now: Instant, auth: &dyn Authenticator) -> Self {
        let next_wave = now + cfg.beacon_interval;
        RootedTree {
            cfg,
            me,
            root: me,
            seq: 0,
            hops: 0,
            sig: auth.sign(&wave_statement(&me, 0)),
            parent: None,
            own_seq: 0,
            progress_at: now,
            next_wave,
            settle_at: None,
            nbrs: BTreeMap::new(),
            lost: VecDeque::new(),
            verified: VecDeque::new(),
            suspects: BTreeMap::new(),
            version: 0,
            stats: TreeStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &TreeConfig {
        &self.cfg
    }

    /// The root this node follows (itself when it is a root).
    pub fn root(&self) -> NodeId {
        self.root
    }

    /// Whether this node is a root.
    pub fn is_root(&self) -> bool {
        self.root == self.me
    }

    /// Hops from the root along the tree (0 at the root).
    pub fn hops(&self) -> u16 {
        self.hops
    }

    /// The current wave.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// The parent (`None` at a root, or while detached after losing the parent).
    pub fn parent(&self) -> Option<NodeId> {
        self.parent
    }

    /// Neighbours that declared this node their parent.
    pub fn children(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nbrs
            .iter()
            .filter(|(_, a)| a.is_some_and(|a| a.child))
            .map(|(p, _)| *p)
    }

    /// Parent and children: where a payload goes in full.
    pub fn tree_neighbors(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.parent.into_iter().collect();
        v.extend(self.children().filter(|c| Some(*c) != self.parent));
        v
    }

    /// Bumped whenever [`RootedTree::tree_neighbors`] may have changed.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Counters.
    pub fn stats(&self) -> TreeStats {
        self.stats
    }

    /// Next deadline: a new wave (at a root), the root timeout, or the end of a settle wait.
    pub fn poll_timeout(&self) -> Instant {
        let t = if self.is_root() {
            self.next_wave
        } else {
            self.progress_at + self.cfg.root_timeout
        };
        let t = self.settle_at.map_or(t, |s| s.min(t));
        self.suspects
            .values()
            .filter_map(|s| s.until)
            .fold(t, Instant::min)
    }

    /// Whether `p` is penalised for withholding (not taken as a parent).
    pub fn is_penalised(&self, p: &NodeId) -> bool {
        self.suspects.get(p).is_some_and(|s| s.until.is_some())
    }

    /// Evidence that `p`, while this node's parent, withheld a payload (reported by
    /// [`crate::gossip::Plumtree::poll_withheld`]). After [`TreeConfig::withhold_events`] within
    /// [`TreeConfig::withhold_window`], `p` is dropped as parent and not taken again for the
    /// penalty time; the node re-attaches elsewhere by the loop-free rules.
    pub fn on_withheld(&mut self, now: Instant, p: NodeId, out: &mut Outbox) {
        self.stats.withheld += 1;
        if !self.suspects.contains_key(&p) && self.suspects.len() >= MAX_SUSPECTS {
            // forget the suspect with the oldest evidence and no penalty; if all are
            // penalised, this evidence is dropped
            let old = self
                .suspects
                .iter()
                .filter(|(_, s)| s.until.is_none())
                .min_by_key(|(_, s)| s.events.back().copied())
                .map(|(k, _)| *k);
            match old {
                Some(k) => {
                    self.suspects.remove(&k);
                }
                None => return,
            }
        }
        let (window, need) = (self.cfg.withhold_window, self.cfg.withhold_events.max(1));
        let s = self.suspects.entry(p).or_default();
        while s
            .events
            .front()
            .is_some_and(|t| now.saturating_since(*t) >= window)
        {
            s.events.pop_front();
        }
        s.events.push_back(now);
        if s.events.len() < need as usize {
            return;
        }
        s.events.clear();
        s.offences = s.offences.saturating_add(1);
        let factor = 1u32 << s.offences.saturating_sub(1).min(4);
        s.until = Some(now + self.cfg.withhold_penalty * factor);
        self.stats.penalties += 1;
        if self.parent == Some(p) {
            self.set_parent(None);
        }
        self.reselect(now, out);
    }

    /// A node became an active neighbour: tell it where we are.
    pub fn neighbor_up(&mut self, p: NodeId, out: &mut Outbox) {
        self.nbrs.entry(p).or_insert(None);
        self.send_to(p, out);
    }

    /// A node left the active view.
    pub fn neighbor_down(&mut self, now: Instant, p: &NodeId, out: &mut Outbox) {
        let Some(was) = self.nbrs.remove(p) else {
            return;
        };
        if was.is_some_and(|a| a.child) {
            self.version += 1;
        }
        if self.parent == Some(*p) {
            self.set_parent(None);
        }
        self.reselect(now, out);
    }

    /// A `Beacon` from `from`. Ignored unless `from` is an active neighbour; dropped and
    /// counted unless the wave's signature verifies under `root`'s key (checked with `auth`)
    /// and the hop count is possible (0 exactly when `from` is the root).
    pub fn on_beacon(
        &mut self,
        now: Instant,
        from: NodeId,
        beacon: Beacon,
        auth: &dyn Authenticator,
        out: &mut Outbox,
    ) {
        if !self.nbrs.contains_key(&from) {
            return;
        }
        if (beacon.root == from) != (beacon.hops == 0) || !self.wave_valid(&beacon, auth) {
            self.stats.beacons_invalid += 1;
            return;
        }
        let Beacon {
            root,
            seq,
            hops,
            child,
            sig,
        } = beacon;
        let Some(slot) = self.nbrs.get_mut(&from) else {
            return;
        };
        let at = match slot {
            Some(a) if a.root == root && a.seq == seq => a.at,
            _ => now,
        };
        let was_child = slot.is_some_and(|a| a.child);
        let first = slot.is_none();
        *slot = Some(Advert {
            root,
            seq,
            hops,
            child,
            sig,
            at,
        });
        if was_child != child {
            self.version += 1;
        }
        // First word from this neighbour: our own beacon to it may have arrived before it
        // counted us as a neighbour (and been dropped), so say where we are once more.
        if first {
            self.send_to(from, out);
        }
        // Most beacons of a wave change nothing here: a non-parent neighbour at our root and
        // wave (or older) offering no shorter path, while we are attached.
        let idle = !self.is_root()
            && self.parent.is_some()
            && Some(from) != self.parent
            && root == self.root
            && seq <= self.seq
            && hops.saturating_add(1) >= self.hops
            && self.settle_at.is_none()
            && was_child == child;
        if idle {
            return;
        }
        // a restarted root: the mesh remembers a later wave of ours than we do
        if root == self.me && seq > self.own_seq {
            self.own_seq = seq;
            if self.is_root() {
                self.start_wave(now, auth, out);
            }
        }
        self.reselect(now, out);
    }

    /// Timer work: new waves at a root (signed with `auth`), root loss, settle expiry, the end
    /// of penalties.
    pub fn on_timeout(&mut self, now: Instant, auth: &dyn Authenticator, out: &mut Outbox) {
        // timers are shared with the rest of the node: re-evaluate only when one of ours is due
        let mut due = self.settle_at.is_some_and(|t| t <= now);
        for s in self.suspects.values_mut() {
            if s.until.is_some_and(|t| t <= now) {
                s.until = None;
                due = true;
            }
        }
        while self.lost.front().is_some_and(|(_, _, t)| *t <= now) {
            self.lost.pop_front();
            due = true;
        }
        if self.is_root() {
            if self.next_wave <= now {
                self.start_wave(now, auth, out);
            }
        } else if self.progress_at + self.cfg.root_timeout <= now {
            // no wave for too long: the root is gone from here
            if self.lost.len() >= MAX_LOST {
                self.lost.pop_front();
            }
            self.lost
                .push_back((self.root, self.seq, now + self.cfg.root_timeout * 4));
            self.stats.roots_lost += 1;
            self.stats.root_changes += 1;
            self.root = self.me;
            self.hops = 0;
            self.set_parent(None);
            self.progress_at = now;
            self.settle_at = None;
            self.start_wave(now, auth, out);
            due = true;
        }
        if due {
            self.reselect(now, out);
        }
    }

    /// As a root: the next wave number (past any this process used), told to every
    /// neighbour; the one after follows in `beacon_interval`.
    fn start_wave(&mut self, now: Instant, auth: &dyn Authenticator, out: &mut Outbox) {
        self.own_seq = self.own_seq.saturating_add(1);
        self.seq = self.own_seq;
        self.sig = auth.sign(&wave_statement(&self.me, self.seq));
        self.next_wave = now + self.cfg.beacon_interval;
        self.advertise(out);
    }

    /// The hops of `a` as far as the wave's timing allows: at least the hops claimed by any
    /// neighbour that brought the same wave earlier. A node nearer the root passes a wave on
    /// sooner, so a claim of fewer hops that arrives later is not believed.
    fn believed_hops(&self, a: &Advert) -> u16 {
        self.nbrs
            .values()
            .flatten()
            .filter(|q| !q.child && q.root == a.root && q.seq == a.seq && q.at < a.at)
            .map(|q| q.hops.min(MAX_HOPS))
            .fold(a.hops, u16::max)
    }

    /// Whether the beacon's wave signature verifies (remembering the last few that did).
    fn wave_valid(&mut self, b: &Beacon, auth: &dyn Authenticator) -> bool {
        let known =
            |(r, s, g): &(NodeId, u32, Signature)| *r == b.root && *s == b.seq && *g == b.sig;
        if (self.root == b.root && self.seq == b.seq && self.sig == b.sig)
            || self.verified.iter().any(known)
        {
            return true;
        }
        self.stats.waves_verified += 1;
        if !auth.verify(&b.root, &wave_statement(&b.root, b.seq), &b.sig) {
            return false;
        }
        if self.verified.len() >= VERIFIED_CACHE {
            self.verified.pop_front();
        }
        self.verified.push_back((b.root, b.seq, b.sig));
        true
    }

    fn is_lost(&self, root: &NodeId, seq: u32) -> bool {
        self.lost.iter().any(|(r, s, _)| r == root && seq <= *s)
    }

    /// Neighbours whose position we could take a path from (not our children, not lost
    /// roots, not ourselves as root).
    fn usable(&self) -> impl Iterator<Item = (NodeId, Advert)> + '_ {
        self.nbrs.iter().filter_map(move |(p, a)| {
            let a = (*a)?;
            (!a.child
                && a.root != self.me
                && a.hops < MAX_HOPS
                && !self.is_lost(&a.root, a.seq)
                && !self.is_penalised(p))
            .then_some((*p, a))
        })
    }

    /// The best of `cands`: newest wave, then fewest hops, then the current parent, then
    /// first heard.
    fn best(&self, cands: impl Iterator<Item = (NodeId, Advert)>) -> Option<(NodeId, Advert)> {
        cands.min_by_key(|(p, a)| {
            (
                std::cmp::Reverse(a.seq),
                self.believed_hops(a),
                Some(*p) != self.parent,
                a.at,
                *p,
            )
        })
    }

    fn set_parent(&mut self, p: Option<NodeId>) {
        if self.parent != p {
            self.parent = p;
            self.version += 1;
            self.stats.parent_changes += 1;
        }
    }

    fn adopt(&mut self, now: Instant, p: NodeId, a: Advert) {
        if a.root != self.root {
            self.stats.root_changes += 1;
            self.progress_at = now;
        } else if a.seq > self.seq {
            self.progress_at = now;
        }
        self.root = a.root;
        self.seq = a.seq;
        self.sig = a.sig;
        self.hops = a.hops.saturating_add(1);
        self.set_parent(Some(p));
    }

    /// Re-evaluates the parent after any input, and advertises a changed position.
    fn reselect(&mut self, now: Instant, out: &mut Outbox) {
        let before = (self.root, self.seq, self.hops, self.parent);
        let lower_root = self.usable().map(|(_, a)| a.root).min();
        if let Some(r) = lower_root.filter(|r| *r < self.root) {
            if let Some((p, a)) = self.best(self.usable().filter(|(_, a)| a.root == r)) {
                self.adopt(now, p, a);
                self.settle_at = None;
            }
        } else if !self.is_root() {
            // follow the parent's waves; drop a parent that left our root or made us its parent
            if let Some(p) = self.parent {
                match self.nbrs.get(&p).copied().flatten() {
                    Some(a) if a.root == self.root && !a.child && !self.is_lost(&a.root, a.seq) => {
                        if a.seq > self.seq {
                            self.progress_at = now;
                            self.seq = a.seq;
                            self.sig = a.sig;
                        }
                        self.hops = a.hops.saturating_add(1);
                    }
                    Some(_) => self.set_parent(None),
                    None => {} // not heard from yet (just came up): keep
                }
            }
            let root = self.root;
            let (seq, hops, attached) = (self.seq, self.hops, self.parent.is_some());
            // the newest wave a neighbour brought (our root cannot change below)
            let newest = self
                .usable()
                .filter(|(_, a)| a.root == root)
                .map(|(_, a)| a.seq)
                .max();
            // in this or a newer wave, a path strictly shorter (attached) or at most one hop
            // longer (detached): never through a descendant, whose hops exceed ours
            // A shorter path is believed only within the wave's timing: a neighbour that brought
            // the parent's wave later than the parent did is not nearer the root, whatever
            // hops it claims (a liar cannot pass on a wave before it has it).
            let parent_at = self
                .parent
                .and_then(|p| self.nbrs.get(&p).copied().flatten())
                .map(|a| (a.root, a.seq, a.at));
            let on_time = |a: &Advert| {
                parent_at.is_none_or(|(r, s, at)| r != a.root || s != a.seq || a.at <= at)
            };
            let better = self.best(self.usable().filter(|(p, a)| {
                a.root == root
                    && Some(*p) != self.parent
                    && a.seq >= seq
                    && if attached {
                        self.believed_hops(a).saturating_add(1) < hops && on_time(a)
                    } else {
                        a.hops <= hops || a.seq > seq
                    }
            }));
            if let Some((p, a)) = better {
                self.adopt(now, p, a);
            } else if newest.is_some_and(|n| n > self.seq) {
                let expired = self.settle_at.is_some_and(|t| t <= now);
                if !attached || expired {
                    let cands = self
                        .usable()
                        .filter(|(_, a)| a.root == root && Some(a.seq) == newest);
                    if let Some((p, a)) = self.best(cands) {
                        self.adopt(now, p, a);
                    }
                } else if self.settle_at.is_none() {
                    self.settle_at = Some(now + self.cfg.settle);
                }
            }
            if newest.is_none_or(|n| n <= self.seq) {
                self.settle_at = None;
            }
        }
        // A shorter path alone waits for the next wave: a neighbour that still thinks we are
        // farther only misses an improvement for a wave, and a growing mesh would otherwise
        // send a burst of beacons down every subtree whose root found a shortcut.
        let (root, seq, hops, parent) = before;
        if (self.root, self.seq, self.parent) != (root, seq, parent) || self.hops > hops {
            self.advertise(out);
        }
    }

    fn beacon_for(&self, p: NodeId) -> Message {
        Message::Beacon {
            root: self.root,
            seq: self.seq,
            hops: self.hops,
            child: Some(p) == self.parent,
            sig: self.sig,
        }
    }

    fn send_to(&mut self, p: NodeId, out: &mut Outbox) {
        out.push_back((p, self.beacon_for(p)));
        self.stats.beacons_sent += 1;
    }

    fn advertise(&mut self, out: &mut Outbox) {
        let nbrs: Vec<NodeId> = self.nbrs.keys().copied().collect();
        for p in nbrs {
            self.send_to(p, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ModelAuth;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, VecDeque};

    const SECRET: u64 = 0x5eed;

    /// `n`'s signer in the tests' mesh.
    fn auth(n: NodeId) -> ModelAuth {
        ModelAuth::new(n, SECRET)
    }

    fn tree(i: u8, now: Instant) -> RootedTree {
        RootedTree::new(TreeConfig::default(), id(i), now, &auth(id(i)))
    }

    /// A beacon from a neighbour at `hops`, with `root`'s real signature of the wave.
    fn signed(root: u8, seq: u32, hops: u16, child: bool) -> Beacon {
        let root = id(root);
        Beacon {
            root,
            seq,
            hops,
            child,
            sig: auth(root).sign(&wave_statement(&root, seq)),
        }
    }

    fn id(i: u8) -> NodeId {
        let mut b = [0u8; 32];
        b[0] = i;
        NodeId(b)
    }

    /// Nodes on instant links: beacons are delivered in order, only over live links.
    struct Net {
        now: Instant,
        nodes: BTreeMap<NodeId, RootedTree>,
        links: BTreeSet<(NodeId, NodeId)>,
        q: VecDeque<(NodeId, NodeId, Message)>,
        down: BTreeSet<NodeId>,
    }

    impl Net {
        fn new(n: u8) -> Self {
            let now = Instant::ZERO;
            Net {
                now,
                nodes: (1..=n).map(|i| (id(i), tree(i, now))).collect(),
                links: BTreeSet::new(),
                q: VecDeque::new(),
                down: BTreeSet::new(),
            }
        }

        fn outbox(&mut self, from: NodeId, out: Outbox) {
            for (to, m) in out {
                self.q.push_back((from, to, m));
            }
        }

        fn link(&mut self, a: u8, b: u8) {
            let (a, b) = (id(a), id(b));
            if a == b || !self.links.insert((a.min(b), a.max(b))) {
                return;
            }
            for (x, y) in [(a, b), (b, a)] {
                let mut out = Outbox::new();
                if let Some(t) = self.nodes.get_mut(&x) {
                    t.neighbor_up(y, &mut out);
                }
                self.outbox(x, out);
            }
            self.drain();
        }

        fn unlink(&mut self, a: NodeId, b: NodeId) {
            if !self.links.remove(&(a.min(b), a.max(b))) {
                return;
            }
            for (x, y) in [(a, b), (b, a)] {
                let mut out = Outbox::new();
                let now = self.now;
                if let Some(t) = self.nodes.get_mut(&x) {
                    t.neighbor_down(now, &y, &mut out);
                }
                self.outbox(x, out);
            }
            self.drain();
        }

        /// Crashes a node: its links go down at the neighbours, it stops.
        fn crash(&mut self, i: u8) {
            let me = id(i);
            let nbrs: Vec<(NodeId, NodeId)> = self
                .links
                .iter()
                .filter(|(a, b)| *a == me || *b == me)
                .copied()
                .collect();
            for (a, b) in nbrs {
                self.unlink(a, b);
            }
            self.nodes.remove(&me);
            self.down.insert(me);
        }

        fn drain(&mut self) {
            let mut steps = 0;
            while let Some((from, to, m)) = self.q.pop_front() {
                steps += 1;
                assert!(steps < 1_000_000, "beacon storm");
                if !self.links.contains(&(from.min(to), from.max(to))) {
                    continue;
                }
                let Message::Beacon {
                    root,
                    seq,
                    hops,
                    child,
                    sig,
                } = m
                else {
                    panic!("unexpected {m:?}");
                };
                let mut out = Outbox::new();
                let now = self.now;
                let b = Beacon {
                    root,
                    seq,
                    hops,
                    child,
                    sig,
                };
                if let Some(t) = self.nodes.get_mut(&to) {
                    t.on_beacon(now, from, b, &auth(to), &mut out);
                }
                self.outbox(to, out);
            }
        }

        /// Advances time in 50 ms steps, running timers.
        fn run(&mut self, ms: u64) {
            for _ in 0..ms / 50 {
                self.now = self.now + Duration::from_millis(50);
                let keys: Vec<NodeId> = self.nodes.keys().copied().collect();
                for k in keys {
                    let mut out = Outbox::new();
                    let now = self.now;
                    if let Some(t) = self.nodes.get_mut(&k)
                        && t.poll_timeout() <= now
                    {
                        t.on_timeout(now, &auth(k), &mut out);
                    }
                    self.outbox(k, out);
                }
                self.drain();
                self.assert_no_loop();
            }
        }

        /// Parent pointers never form a cycle (checked after every step).
        fn assert_no_loop(&self) {
            for start in self.nodes.keys() {
                let mut at = *start;
                for _ in 0..=self.nodes.len() {
                    match self.nodes.get(&at).and_then(|t| t.parent()) {
                        Some(p) => at = p,
                        None => break,
                    }
                }
                assert!(
                    self.nodes.get(&at).is_none_or(|t| t.parent().is_none()),
                    "parent loop through {start:?}"
                );
            }
        }

        fn nbrs(&self, n: NodeId) -> Vec<NodeId> {
            self.links
                .iter()
                .filter_map(|(a, b)| {
                    if *a == n {
                        Some(*b)
                    } else if *b == n {
                        Some(*a)
                    } else {
                        None
                    }
                })
                .collect()
        }

        /// Every component is one tree: rooted at its lowest id, each node at its BFS
        /// distance, parents and children agreeing, no loop.
        fn assert_bfs_trees(&self) {
            let mut seen = BTreeSet::new();
            for start in self.nodes.keys() {
                if seen.contains(start) {
                    continue;
                }
                let mut comp = vec![*start];
                let mut i = 0;
                seen.insert(*start);
                while i < comp.len() {
                    for m in self.nbrs(comp[i]) {
                        if seen.insert(m) {
                            comp.push(m);
                        }
                    }
                    i += 1;
                }
                let root = *comp.iter().min().unwrap();
                let mut dist = BTreeMap::from([(root, 0u16)]);
                let mut frontier = vec![root];
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    for f in frontier {
                        for m in self.nbrs(f) {
                            if !dist.contains_key(&m) {
                                dist.insert(m, dist[&f] + 1);
                                next.push(m);
                            }
                        }
                    }
                    frontier = next;
                }
                for n in &comp {
                    let t = &self.nodes[n];
                    assert_eq!(t.root(), root, "{n:?} follows the component's lowest id");
                    assert_eq!(t.hops(), dist[n], "{n:?} at its BFS distance");
                    match t.parent() {
                        None => assert_eq!(*n, root),
                        Some(p) => {
                            assert!(self.nbrs(*n).contains(&p));
                            assert_eq!(self.nodes[&p].hops() + 1, t.hops());
                            assert!(
                                self.nodes[&p].children().any(|c| c == *n),
                                "{p:?} knows {n:?} is its child"
                            );
                        }
                    }
                    for c in t.children() {
                        assert_eq!(self.nodes[&c].parent(), Some(*n));
                    }
                }
            }
        }
    }

    #[test]
    fn a_mesh_follows_its_lowest_id_along_a_breadth_first_tree() {
        // 1 - 2 - 3 - 4 - 5, plus a chord 5 - 1 and a leaf 6 on 3
        let mut net = Net::new(6);
        for (a, b) in [(5, 4), (4, 3), (3, 2), (2, 1), (5, 1), (3, 6)] {
            net.link(a, b);
        }
        net.run(2000);
        net.assert_bfs_trees();
        let t1 = &net.nodes[&id(1)];
        assert!(t1.is_root());
        let mut kids: Vec<NodeId> = t1.children().collect();
        kids.sort();
        assert_eq!(kids, vec![id(2), id(5)]);
        assert_eq!(net.nodes[&id(6)].tree_neighbors(), vec![id(3)]);
        // a quiet tree costs one beacon per link direction per wave
        let before: u64 = net.nodes.values().map(|t| t.stats().beacons_sent).sum();
        net.run(10_000);
        let after: u64 = net.nodes.values().map(|t| t.stats().beacons_sent).sum();
        assert_eq!(after - before, 10 * 2 * 6);
        let changes: u64 = net.nodes.values().map(|t| t.stats().parent_changes).sum();
        net.run(5_000);
        assert_eq!(
            changes,
            net.nodes
                .values()
                .map(|t| t.stats().parent_changes)
                .sum::<u64>(),
            "a steady mesh keeps its parents"
        );
    }

    #[test]
    fn a_node_that_loses_its_parent_reattaches_without_going_through_its_children() {
        // 1 - 2 - 3 - 4 and 1 - 5 - 4: 4's parent is 3 or 5 (2 hops either way)
        let mut net = Net::new(5);
        for (a, b) in [(1, 2), (2, 3), (3, 4), (1, 5), (5, 4)] {
            net.link(a, b);
        }
        net.run(1000);
        net.assert_bfs_trees();
        // cut 1 - 2: 2 must not take 3 (its child) as parent; it waits for the next wave,
        // which reaches it through 5 - 4 - 3
        net.unlink(id(1), id(2));
        assert_ne!(net.nodes[&id(2)].parent(), Some(id(3)));
        net.run(2000);
        net.assert_bfs_trees();
        assert_eq!(net.nodes[&id(2)].hops(), 4);
    }

    #[test]
    fn a_crashed_root_is_replaced_by_the_next_lowest_id_and_its_old_waves_are_ignored() {
        let mut net = Net::new(5);
        for (a, b) in [(1, 2), (1, 3), (2, 4), (3, 4), (4, 5)] {
            net.link(a, b);
        }
        net.run(1000);
        net.crash(1);
        // before the root timeout everyone still follows 1
        net.run(3000);
        assert!(net.nodes.values().all(|t| t.root() == id(1)));
        net.run(4000);
        net.assert_bfs_trees();
        assert!(net.nodes[&id(2)].is_root());
        assert!(net.nodes.values().all(|t| t.stats().roots_lost <= 1));
    }

    #[test]
    fn the_two_sides_of_a_partition_elect_their_own_roots_and_merge_on_heal() {
        // 1 2 3 | 4 5 6, bridged by 3 - 4
        let mut net = Net::new(6);
        for (a, b) in [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 4)] {
            net.link(a, b);
        }
        net.run(1000);
        net.unlink(id(3), id(4));
        net.run(8000);
        net.assert_bfs_trees();
        assert!(net.nodes[&id(4)].is_root());
        net.link(4, 3);
        net.run(1000);
        net.assert_bfs_trees();
        assert_eq!(net.nodes[&id(6)].root(), id(1));
        assert_eq!(net.nodes[&id(6)].hops(), 4);
    }

    #[test]
    fn a_restarted_root_jumps_past_the_wave_the_mesh_remembers() {
        let mut net = Net::new(3);
        net.link(1, 2);
        net.link(2, 3);
        net.run(5000);
        let remembered = net.nodes[&id(3)].seq();
        assert!(remembered >= 4);
        // 1 restarts at once (its links flap): it has forgotten its waves
        net.unlink(id(1), id(2));
        net.nodes.insert(id(1), tree(1, net.now));
        net.link(1, 2);
        assert!(net.nodes[&id(1)].seq() > remembered);
        net.run(1000);
        net.assert_bfs_trees();
        assert!(net.nodes[&id(3)].seq() > remembered);
    }

    #[test]
    fn beacons_from_strangers_or_with_absurd_hop_counts_are_ignored() {
        let now = Instant::ZERO;
        let mut t = tree(9, now);
        let a = auth(id(9));
        let mut out = Outbox::new();
        t.on_beacon(now, id(1), signed(1, 1, 0, false), &a, &mut out);
        assert!(t.is_root(), "not an active neighbour");
        t.neighbor_up(id(2), &mut out);
        t.on_beacon(now, id(2), signed(1, 1, MAX_HOPS, false), &a, &mut out);
        assert!(t.is_root(), "hop count out of range");
        t.on_beacon(now, id(2), signed(1, 1, 0, false), &a, &mut out);
        assert!(t.is_root(), "hop 0 from a node that is not the root");
        assert_eq!(t.stats().beacons_invalid, 1);
        t.on_beacon(now, id(2), signed(1, 1, 3, false), &a, &mut out);
        assert_eq!((t.root(), t.hops(), t.parent()), (id(1), 4, Some(id(2))));
    }

    #[test]
    fn the_first_beacon_from_a_neighbour_is_answered_once() {
        // our beacon on neighbor_up may have reached it before it counted us as a neighbour
        let now = Instant::ZERO;
        let mut t = tree(1, now);
        let a = auth(id(1));
        let mut out = Outbox::new();
        t.neighbor_up(id(2), &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        t.on_beacon(now, id(2), signed(2, 3, 0, true), &a, &mut out);
        assert!(
            matches!(out.pop_front(), Some((to, Message::Beacon { root, .. })) if to == id(2) && root == id(1))
        );
        assert!(out.is_empty());
        assert_eq!(t.children().collect::<Vec<_>>(), vec![id(2)]);
        t.on_beacon(now, id(2), signed(1, 0, 1, true), &a, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_new_wave_from_another_neighbour_waits_for_the_parent_before_switching() {
        let now = Instant::ZERO;
        let mut t = tree(9, now);
        let a = auth(id(9));
        let mut out = Outbox::new();
        t.neighbor_up(id(2), &mut out);
        t.neighbor_up(id(3), &mut out);
        t.on_beacon(now, id(2), signed(1, 5, 1, false), &a, &mut out);
        t.on_beacon(now, id(3), signed(1, 5, 1, false), &a, &mut out);
        assert_eq!(t.parent(), Some(id(2)));
        // wave 6 comes through 3 first: keep 2 for the settle time
        t.on_beacon(now, id(3), signed(1, 6, 1, false), &a, &mut out);
        assert_eq!(t.parent(), Some(id(2)));
        let soon = now + Duration::from_millis(100);
        t.on_beacon(soon, id(2), signed(1, 6, 1, false), &a, &mut out);
        assert_eq!((t.parent(), t.seq()), (Some(id(2)), 6));
        // wave 7 never comes through 2: switch once the settle time is over
        t.on_beacon(soon, id(3), signed(1, 7, 1, false), &a, &mut out);
        let late = t.poll_timeout();
        assert_eq!(late, soon + TreeConfig::default().settle);
        t.on_timeout(late, &a, &mut out);
        assert_eq!((t.parent(), t.seq()), (Some(id(3)), 7));
    }

    /// A Byzantine neighbour (8) that holds only its own key: beacons for root 00..00 (unsigned,
    /// signed by itself, or a real wave's signature moved to another root or wave) are dropped
    /// and counted, and the mesh keeps its real root.
    #[test]
    fn a_forged_beacon_for_root_zero_is_ignored_and_the_tree_keeps_its_real_root() {
        let mut net = Net::new(5);
        for (a, b) in [(1, 2), (2, 3), (3, 4), (4, 5)] {
            net.link(a, b);
        }
        net.nodes.insert(id(8), tree(8, net.now));
        net.link(8, 3);
        net.link(8, 5);
        net.run(2000);
        net.assert_bfs_trees();
        let zero = NodeId([0; 32]);
        let real = net.nodes[&id(1)].seq();
        let stolen = auth(id(1)).sign(&wave_statement(&id(1), real));
        let forgeries = [
            [0u8; 64],
            auth(id(8)).sign(&wave_statement(&zero, 1_000)),
            stolen,
        ];
        for (i, sig) in forgeries.into_iter().enumerate() {
            for (to, hops) in [(3u8, 0u16), (5, 1)] {
                let b = Beacon {
                    root: zero,
                    seq: 1_000 + i as u32,
                    hops,
                    child: false,
                    sig,
                };
                let mut out = Outbox::new();
                let now = net.now;
                net.nodes.get_mut(&id(to)).expect("node").on_beacon(
                    now,
                    id(8),
                    b,
                    &auth(id(to)),
                    &mut out,
                );
                net.outbox(id(to), out);
            }
            // a real wave of root 1 replayed as a newer wave
            let b = Beacon {
                sig: stolen,
                ..signed(1, real + 5, 1, false)
            };
            let mut out = Outbox::new();
            let now = net.now;
            net.nodes.get_mut(&id(3)).expect("node").on_beacon(
                now,
                id(8),
                b,
                &auth(id(3)),
                &mut out,
            );
            net.outbox(id(3), out);
            net.drain();
        }
        assert_eq!(net.nodes[&id(3)].stats().beacons_invalid, 6);
        assert_eq!(net.nodes[&id(5)].stats().beacons_invalid, 3);
        net.run(2000);
        net.assert_bfs_trees();
        for t in net.nodes.values() {
            assert_eq!(t.root(), id(1), "nobody follows the forged root");
        }
    }

    #[test]
    fn a_parent_reported_for_withholding_is_dropped_penalised_and_taken_back_later() {
        // 1 - 2 - 4, 1 - 3 - 4: 4's parent is 2 (first heard); 2 withholds
        let mut net = Net::new(4);
        for (a, b) in [(1, 2), (1, 3), (2, 4), (3, 4)] {
            net.link(a, b);
        }
        net.run(1000);
        net.assert_bfs_trees();
        let first = net.nodes[&id(4)].parent().expect("attached");
        let other = if first == id(2) { id(3) } else { id(2) };
        let cfg = TreeConfig::default();
        // one event is not enough (honest slowness); a second within the window is
        let mut out = Outbox::new();
        let now = net.now;
        let t4 = net.nodes.get_mut(&id(4)).expect("node");
        t4.on_withheld(now, first, &mut out);
        assert_eq!(t4.parent(), Some(first));
        t4.on_withheld(now + Duration::from_secs(1), first, &mut out);
        assert_eq!(t4.parent(), Some(other), "routed around the withholder");
        assert!(t4.is_penalised(&first));
        assert_eq!((t4.stats().withheld, t4.stats().penalties), (2, 1));
        net.outbox(id(4), out);
        net.drain();
        // the penalised node offers a shorter path for the whole penalty: not taken
        net.run(30_000);
        assert_eq!(net.nodes[&id(4)].parent(), Some(other));
        assert_eq!(net.nodes[&id(4)].hops(), 2);
        assert!(!net.nodes[&first].children().any(|c| c == id(4)));
        // events far apart never add up
        let mut out = Outbox::new();
        let now = net.now;
        let t4 = net.nodes.get_mut(&id(4)).expect("node");
        t4.on_withheld(now, other, &mut out);
        t4.on_withheld(now + cfg.withhold_window, other, &mut out);
        assert_eq!(t4.parent(), Some(other));
        net.outbox(id(4), out);
        net.run(cfg.withhold_penalty.as_millis() as u64);
        assert!(!net.nodes[&id(4)].is_penalised(&first), "the penalty ends");
        net.assert_bfs_trees();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any connected mesh converges to breadth-first trees, and after random links fail,
        /// every remaining component converges again (new roots where the old one is gone),
        /// with no loop at any point the assertions look.
        #[test]
        fn any_mesh_converges_to_breadth_first_trees_after_link_failures(
            n in 2u8..12,
            extra in proptest::collection::vec((1u8..12, 1u8..12), 0..20),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut net = Net::new(n);
            // a random spanning tree first (so it is connected), then extra links
            for i in 2..=n {
                let p = 1 + (extra.len() as u8 + i * 7) % (i - 1);
                net.link(i, p);
            }
            for (a, b) in extra {
                if a <= n && b <= n {
                    net.link(a, b);
                }
            }
            net.run(2000);
            net.assert_bfs_trees();
            for c in cuts {
                let links: Vec<(NodeId, NodeId)> = net.links.iter().copied().collect();
                if links.is_empty() {
                    break;
                }
                let (a, b) = links[c.index(links.len())];
                net.unlink(a, b);
                net.assert_no_loop();
            }
            net.run(12_000);
            net.assert_bfs_trees();
        }
    }
}
