//! Stream framing: each frame is a `u16` little-endian length followed by
//! that many payload bytes. The largest frame is [`MAX_FRAME_LEN`] bytes; a
//! receiver with a lower configured limit closes the connection on a frame
//! that exceeds it, before allocating for it.

/// Largest frame payload the encoding can carry (`u16::MAX` = 64 KiB - 1).
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;

/// Length of the frame header.
pub const HEADER_LEN: usize = 2;

/// The header for a payload of `len` bytes, or `None` if `len` exceeds `max`
/// (or [`MAX_FRAME_LEN`]).
pub fn header(len: usize, max: usize) -> Option<[u8; HEADER_LEN]> {
    if len > max.min(MAX_FRAME_LEN) {
        return None;
    }
    u16::try_from(len).ok().map(u16::to_le_bytes)
}

/// The payload length announced by a header, or `None` if it exceeds `max`.
pub fn payload_len(header: [u8; HEADER_LEN], max: usize) -> Option<usize> {
    let len = usize::from(u16::from_le_bytes(header));
    (len <= max).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_up_to_the_limit() {
        for len in [0usize, 1, 255, 256, 1000, MAX_FRAME_LEN] {
            let h = header(len, MAX_FRAME_LEN).expect("fits");
            assert_eq!(payload_len(h, MAX_FRAME_LEN), Some(len));
        }
    }

    #[test]
    fn header_refuses_frames_over_either_limit() {
        assert_eq!(header(MAX_FRAME_LEN + 1, usize::MAX), None);
        assert_eq!(header(101, 100), None);
        assert_eq!(payload_len(101u16.to_le_bytes(), 100), None);
    }
}
