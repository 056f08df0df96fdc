//! The backend seam: what the tile needs from a datagram backend, whatever
//! moves the bytes. [`crate::udp::UdpBackend`] (`recvmmsg`/`sendmmsg`) and
//! [`crate::xsk::XskSocket`] (AF_XDP) implement it; the tile, the benchmarks
//! and the tests are written against these traits only.

use std::io;
use std::net::SocketAddr;

/// The receive side every backend offers once a batch is in: packet views
/// and their sources. Index `i` runs over `0..len()`.
pub trait RxView {
    /// Packets in the current batch.
    fn len(&self) -> usize;
    /// True when the batch is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// UDP payload of packet `i` (empty when out of range).
    fn packet(&self, i: usize) -> &[u8];
    /// Source of packet `i`.
    fn from(&self, i: usize) -> SocketAddr;
}

/// The send side: batched UDP datagrams.
pub trait TxSink {
    /// Sends `(destination, UDP payload)` datagrams; returns how many were
    /// queued to the device. Never blocks.
    fn send_batch(&mut self, msgs: &[(SocketAddr, &[u8])]) -> io::Result<usize>;
}

/// A datagram backend: receive a batch, then look at it while sending.
pub trait Backend {
    /// Receive half.
    type Rx: RxView;
    /// Send half.
    type Tx: TxSink;
    /// Takes the next batch (non-blocking; 0 when nothing is waiting).
    /// The previous batch's views are invalidated.
    fn recv_batch(&mut self) -> io::Result<usize>;
    /// Both halves, so accepted packets can be forwarded while borrowed.
    fn halves(&mut self) -> (&Self::Rx, &mut Self::Tx);
}
