//! The cores' notion of time, shared with every mesh crate through `mesh-types`: a monotonic
//! [`Instant`] in nanoseconds from an arbitrary origin chosen by the driver (the simulator
//! starts at zero and jumps), [`Duration`], and [`scale`] for jitter and multipliers.
//!
//! No core ever reads a clock; `now` is always an argument.

pub use mesh_types::{Duration, Instant, scale};

/// `d` with jitter of +-`pct`% (timers of the cores, so nodes do not act in lockstep).
pub(crate) fn jittered<R: rand::RngCore>(d: Duration, pct: u64, rng: &mut R) -> Duration {
    use rand::Rng;
    scale(d, rng.random_range(100 - pct..=100 + pct), 100)
}
