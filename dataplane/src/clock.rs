//! The wall clock, as the wire format and the replay window count it.
//!
//! Only drivers read clocks: the pipeline takes `now` as an argument.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall clock in µs since the Unix epoch (0 if the clock is before it).
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn wall_clock_is_after_2020() {
        assert!(super::wall_us() > 1_577_836_800_000_000);
    }
}
