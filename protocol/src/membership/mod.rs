//! SWIM failure detection with Lifeguard's refinements, over a bounded member table.
//!
//! - **Probing**: every protocol period the node pings the next member of a shuffled
//!   round-robin list (its active view plus [`SwimConfig::passive_probes`] passive members, which
//!   keeps the passive view fresh and measures RTTs). No `Ack` within the probe timeout → a
//!   `PingReq` to [`SwimConfig::indirect_probes`] other neighbours, who ping on its behalf and
//!   relay the `Ack`, or send a `Nack` when the target stays silent. No `Ack` by the end of the
//!   period → the member becomes `Suspect`.
//! - **Suspicion** (Lifeguard): a suspect is declared `Dead` after a timeout that starts at
//!   `max = beta * min` and shrinks towards `min = alpha * log10(n) * period` with independent
//!   confirmations (distinct accusers carried in the updates, or this node's own failed probe
//!   of the suspect). Holders of a suspicion re-probe the suspect directly
//!   ([`SwimConfig::suspect_reprobes`] per period), carrying the claim, so a live suspect hears
//!   of it and refutes quickly.
//! - **Refutation**: a claim about oneself that is not `Alive` at the current incarnation is
//!   answered by incrementing the incarnation and gossiping `Alive(i + 1)`.
//! - **Local health** (Lifeguard LHM): raised on failed probes, on each helper that sent no
//!   `Nack`, and on refuting; lowered on answered probes; probe period and timeout are
//!   multiplied by `1 + lhm`.
//! - **Dissemination**: updates are piggybacked on `Ping`/`Ack`/`PingReq` (sender's own state
//!   first, then any non-alive claim about the recipient, then queued updates), each
//!   retransmitted `lambda * ceil(log2 n)` times.
//!
//! Modules, one job each:
//! - [`swim`]: the state machine ([`Swim`]): probes, relays, `Nack`s, applying facts,
//!   refutation, the protocol period; it reports `Change`s for the composed node to route.
//! - [`table`]: the bounded [`MemberTable`] (views, recently heard members, departed members
//!   kept for partition healing; the least useful entry is evicted).
//! - [`statement`]: what a membership fact's signatures cover, and their check.
//! - `suspicion`: Lifeguard suspicion timers, confirmations and their evidence.
//! - `dissemination`: the piggyback queue.
//! - `health`: the local health multiplier.

mod dissemination;
mod health;
pub mod statement;
mod suspicion;
pub mod swim;
pub mod table;

pub use swim::Swim;
pub use table::{Applied, MemberInfo, MemberTable};

use crate::heal::MemberState;
use crate::id::NodeId;
use crate::time::Duration;

/// SWIM / Lifeguard settings.
#[derive(Clone, Debug)]
pub struct SwimConfig {
    /// Protocol period (one probe per period). Default 1 s. Shorter detects faster and costs
    /// proportionally more probe traffic.
    pub probe_interval: Duration,
    /// Wait for a direct `Ack` before asking for indirect probes. Default 400 ms; must exceed
    /// typical RTT or healthy members get indirect probes.
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly (`k`). Default 3.
    pub indirect_probes: usize,
    /// Passive members added to each probe cycle. Default 2.
    pub passive_probes: usize,
    /// Suspicion minimum multiplier (`alpha`): `min = alpha * log10(n) * period`. Default 5
    /// (the Lifeguard paper's; 4 gave 2.6x more false deaths at 20% loss in the simulator).
    pub suspicion_alpha: u32,
    /// Suspicion maximum multiplier (`beta`): `max = beta * min`. Default 6.
    pub suspicion_beta: u32,
    /// Confirmations (`K`) at which the suspicion timeout reaches its minimum. Default 3.
    pub suspicion_confirmations: u32,
    /// Piggyback retransmission multiplier (`lambda`). Default 3.
    pub retransmit_mult: u32,
    /// Local health multiplier ceiling. Default 8.
    pub max_lhm: u32,
    /// Suspects re-probed directly per period. Default 2.
    pub suspect_reprobes: usize,
    /// Most updates waiting for piggyback. Default 64.
    pub max_pending_updates: usize,
    /// Most new accusations counted from one accuser per [`SwimConfig::accusation_window`];
    /// more are dropped and counted. Default 32 (an honest member raises at most about one
    /// suspicion and one death per protocol period).
    pub max_accusations: u32,
    /// The window of [`SwimConfig::max_accusations`]. Default 10 s.
    pub accusation_window: Duration,
}

impl Default for SwimConfig {
    fn default() -> Self {
        SwimConfig {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(400),
            indirect_probes: 3,
            passive_probes: 2,
            suspicion_alpha: 5,
            suspicion_beta: 6,
            suspicion_confirmations: 3,
            retransmit_mult: 3,
            max_lhm: 8,
            suspect_reprobes: 2,
            max_pending_updates: 64,
            max_accusations: 32,
            accusation_window: Duration::from_secs(10),
        }
    }
}

/// Failure-detector counters (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwimStats {
    /// Probes started.
    pub probes: u64,
    /// Probes that got no ack, direct or indirect.
    pub failed_probes: u64,
    /// Suspicions this node raised itself.
    pub suspicions_raised: u64,
    /// Members this node declared dead (suspicion timed out here).
    pub declared_dead: u64,
    /// Times this node refuted a claim about itself.
    pub refutations: u64,
    /// Indirect probes that brought neither an ack nor a `Nack` (Lifeguard: counts against
    /// this node's own health).
    pub missed_nacks: u64,
    /// Suspicions shortened by an independent confirmation (another accuser or an own
    /// failed probe).
    pub confirmations: u64,
    /// Membership statements dropped because a signature did not check out (an unsigned or
    /// forged self statement, an accusation in another's name or naming an incarnation its
    /// target never signed).
    pub invalid_statements: u64,
    /// Accusations counted (new evidence from a first-hand accuser).
    pub accusations: u64,
    /// Accusations dropped because their accuser is not a member this node heard from
    /// first-hand.
    pub unknown_accusers: u64,
    /// Accusations dropped over their accuser's [`SwimConfig::max_accusations`].
    pub accusations_rate_limited: u64,
    /// Suspicions whose timer ran out without enough evidence to declare death: this node
    /// probed the suspect itself first.
    pub verifications: u64,
}

/// A membership change reported by [`Swim::poll_change`] for the composed node to act on
/// (events for the driver; the views drop dead members; a returning member is reconnected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// What this node believes about `node` changed from `old` (`None`: a new entry) to `new`.
    Member {
        node: NodeId,
        old: Option<MemberState>,
        new: MemberState,
    },
    /// This node refuted a claim about itself and now has `incarnation`.
    Refuted { incarnation: u64 },
}
