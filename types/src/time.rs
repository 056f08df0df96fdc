//! Monotonic time for the mesh: an [`Instant`] in nanoseconds from an arbitrary origin chosen
//! by the driver (the simulator starts at zero and jumps).
//!
//! No core ever reads a clock; `now` is always an argument.

use core::ops::{Add, Sub};
pub use core::time::Duration;

/// A point in time: nanoseconds since an arbitrary origin fixed by the driver.
///
/// Arithmetic saturates instead of panicking, so hostile or extreme values cannot crash a core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(pub u64);

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant(0);
    /// The largest representable instant ("never").
    pub const MAX: Instant = Instant(u64::MAX);

    /// An instant `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

fn dur_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(dur_nanos(rhs)))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_since(rhs)
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_sub(dur_nanos(rhs)))
    }
}

/// Scales a duration by `num / den` without overflow panics (used for jitter and multipliers).
pub fn scale(d: Duration, num: u64, den: u64) -> Duration {
    let n = dur_nanos(d) as u128 * num as u128 / den.max(1) as u128;
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        assert_eq!(Instant::MAX + Duration::from_secs(1), Instant::MAX);
        assert_eq!(Instant(5) - Instant(9), Duration::ZERO);
        assert_eq!(Instant(5) - Duration::from_nanos(9), Instant::ZERO);
        assert_eq!(scale(Duration::from_secs(2), 3, 2), Duration::from_secs(3));
    }
}
