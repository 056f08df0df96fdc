//! Portable UDP backend: batched receive with `recvmmsg(2)` and batched send
//! with `sendmmsg(2)` on a non-blocking socket, plus an `eventfd(2)` waker so
//! other threads can interrupt the wait.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Bytes reserved per received datagram. Larger than the mesh limit so an
/// oversized datagram is seen as oversized rather than silently cut.
pub const RX_BUF_LEN: usize = 2048;

/// Receive buffers and `recvmmsg` headers for one batch, allocated once.
pub struct RxBatch {
    bufs: Box<[u8]>,
    lens: Vec<usize>,
    from: Vec<SocketAddr>,
    capacity: usize,
    count: usize,
    iovs: Box<[libc::iovec]>,
    addrs: Box<[libc::sockaddr_storage]>,
    msgs: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers inside `iovs` and `msgs` only ever point into the
// batch's own boxed buffers (rewritten before every use), so moving the batch
// to another thread moves everything they refer to with it.
unsafe impl Send for RxBatch {}

impl RxBatch {
    /// Room for `capacity` datagrams.
    pub fn new(capacity: usize) -> RxBatch {
        let capacity = capacity.max(1);
        let empty_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        RxBatch {
            bufs: vec![0u8; capacity * RX_BUF_LEN].into_boxed_slice(),
            lens: vec![0; capacity],
            from: vec![SocketAddr::from(([0, 0, 0, 0], 0)); capacity],
            capacity,
            count: 0,
            iovs: vec![empty_iov; capacity].into_boxed_slice(),
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
            addrs: vec![unsafe { MaybeUninit::zeroed().assume_init() }; capacity]
                .into_boxed_slice(),
            // SAFETY: mmsghdr is plain data; all-zero is a valid value.
            msgs: vec![unsafe { MaybeUninit::zeroed().assume_init() }; capacity].into_boxed_slice(),
        }
    }

    /// Maximum datagrams per batch.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Datagram `i` of the last receive.
    pub fn packet(&self, i: usize) -> &[u8] {
        let start = i * RX_BUF_LEN;
        &self.bufs[start..start + self.lens[i].min(RX_BUF_LEN)]
    }

    /// Sender of datagram `i`.
    pub fn from(&self, i: usize) -> SocketAddr {
        self.from[i]
    }
}

/// A non-blocking UDP socket with batched I/O.
pub struct BatchSocket {
    sock: UdpSocket,
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a live i32 and we pass its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl BatchSocket {
    /// Binds `addr` with the given kernel buffer sizes (bytes; the kernel
    /// may cap them at `net.core.rmem_max` unless we are privileged).
    pub fn bind(addr: SocketAddr, rcvbuf: usize, sndbuf: usize) -> io::Result<BatchSocket> {
        let sock = UdpSocket::bind(addr)?;
        sock.set_nonblocking(true)?;
        let fd = sock.as_raw_fd();
        let rcv = i32::try_from(rcvbuf).unwrap_or(i32::MAX);
        let snd = i32::try_from(sndbuf).unwrap_or(i32::MAX);
        // FORCE variants ignore rmem_max when we have CAP_NET_ADMIN.
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcv).is_err() {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, rcv)?;
        }
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, snd).is_err() {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, snd)?;
        }
        Ok(BatchSocket { sock })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// A second handle to the same socket (for senders on other threads).
    pub fn try_clone_std(&self) -> io::Result<UdpSocket> {
        self.sock.try_clone()
    }

    /// Raw descriptor, for polling.
    pub fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Receives up to `batch.capacity()` datagrams without blocking. Returns
    /// how many arrived (0 when none are queued).
    pub fn recv_batch(&self, batch: &mut RxBatch) -> io::Result<usize> {
        let n = batch.capacity;
        let base = batch.bufs.as_mut_ptr();
        for i in 0..n {
            batch.iovs[i] = libc::iovec {
                // SAFETY: i * RX_BUF_LEN + RX_BUF_LEN <= bufs.len() by construction.
                iov_base: unsafe { base.add(i * RX_BUF_LEN) }.cast(),
                iov_len: RX_BUF_LEN,
            };
            let h = &mut batch.msgs[i].msg_hdr;
            h.msg_name = (&mut batch.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut batch.iovs[i];
            h.msg_iovlen = 1;
            h.msg_flags = 0;
        }
        let msgs = &mut batch.msgs;
        let addrs = &batch.addrs;
        // SAFETY: every pointer in msgs points into iovs/addrs/bufs, which
        // outlive the call; vlen equals msgs.len().
        let rc = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            batch.count = 0;
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let got = rc as usize;
        batch.count = got;
        for i in 0..got {
            let truncated = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            // A truncated datagram keeps the full buffer length, which the
            // parser rejects as oversized.
            batch.lens[i] = if truncated {
                RX_BUF_LEN
            } else {
                msgs[i].msg_len as usize
            };
            batch.from[i] =
                sockaddr_to_std(&addrs[i]).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        }
        Ok(got)
    }

    /// Sends each `(dest, bytes)` with one `sendmmsg` call per 64 datagrams.
    /// Returns how many the kernel took; the rest failed (e.g. buffer full).
    pub fn send_batch(&self, msgs: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
        send_batch_fd(self.sock.as_raw_fd(), msgs)
    }
}

/// `sendmmsg` on any UDP descriptor.
pub fn send_batch_fd(fd: RawFd, msgs: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
    let mut sent = 0;
    for chunk in msgs.chunks(64) {
        let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
            chunk.iter().map(|(a, _)| std_to_sockaddr(a)).collect();
        let mut iovs: Vec<libc::iovec> = chunk
            .iter()
            .map(|(_, b)| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain data; all-zero is a valid value.
        let mut hdrs: Vec<libc::mmsghdr> =
            vec![unsafe { MaybeUninit::zeroed().assume_init() }; chunk.len()];
        for i in 0..chunk.len() {
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut addrs[i].0 as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = addrs[i].1;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: pointers reference addrs/iovs/the caller's slices, all live
        // for the call; the kernel only reads the iov data.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if sent == 0 {
                return Err(e);
            }
            return Ok(sent);
        }
        sent += rc as usize;
        if (rc as usize) < chunk.len() {
            return Ok(sent);
        }
    }
    Ok(sent)
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: family says this storage holds a sockaddr_in, which is
            // smaller than sockaddr_storage and has compatible alignment.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn std_to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe {
                std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin);
            }
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe {
                std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6);
            }
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// Wakes a thread blocked in [`wait_readable`] (an `eventfd`).
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// A new non-blocking eventfd.
    pub fn new() -> io::Result<Waker> {
        // SAFETY: plain syscall; we check the result.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Waker {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Wakes the waiter (idempotent until it drains).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN)
        // still leaves the fd readable, which is all we need.
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN is fine.
        unsafe {
            libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
        }
    }

    /// Raw descriptor.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What ended a [`wait_readable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// The socket has data.
    pub socket: bool,
    /// The waker fired (and was drained).
    pub woken: bool,
}

/// Blocks until `fd` is readable, `waker` fires, or `timeout` passes.
pub fn wait_readable(fd: RawFd, waker: &Waker, timeout: Duration) -> io::Result<Readiness> {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: waker.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: fds is a live array of 2 pollfd.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(Readiness {
                socket: false,
                woken: false,
            });
        }
        return Err(e);
    }
    let woken = fds[1].revents & libc::POLLIN != 0;
    if woken {
        waker.drain();
    }
    Ok(Readiness {
        socket: fds[0].revents & (libc::POLLIN | libc::POLLERR) != 0,
        woken,
    })
}

impl crate::backend::RxView for RxBatch {
    fn len(&self) -> usize {
        self.count
    }
    fn packet(&self, i: usize) -> &[u8] {
        if i < self.count {
            RxBatch::packet(self, i)
        } else {
            &[]
        }
    }
    fn from(&self, i: usize) -> SocketAddr {
        self.from
            .get(i)
            .copied()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

impl crate::backend::TxSink for BatchSocket {
    fn send_batch(&mut self, msgs: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
        BatchSocket::send_batch(self, msgs)
    }
}

/// The UDP backend as a [`crate::backend::Backend`]: a socket and its batch.
pub struct UdpBackend {
    socket: BatchSocket,
    rx: RxBatch,
}

impl UdpBackend {
    /// Wraps `socket` with a receive batch of `batch` datagrams.
    pub fn new(socket: BatchSocket, batch: usize) -> UdpBackend {
        UdpBackend {
            socket,
            rx: RxBatch::new(batch),
        }
    }
}

impl crate::backend::Backend for UdpBackend {
    type Rx = RxBatch;
    type Tx = BatchSocket;
    fn recv_batch(&mut self) -> io::Result<usize> {
        self.socket.recv_batch(&mut self.rx)
    }
    fn halves(&mut self) -> (&RxBatch, &mut BatchSocket) {
        (&self.rx, &mut self.socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_on_loopback_keeps_sender_addresses() {
        let a = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20, 1 << 20).unwrap();
        let b = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20, 1 << 20).unwrap();
        let dest = b.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + i as usize]).collect();
        let msgs: Vec<(SocketAddr, &[u8])> = payloads.iter().map(|p| (dest, &p[..])).collect();
        assert_eq!(a.send_batch(&msgs).unwrap(), 10);
        let waker = Waker::new().unwrap();
        let mut batch = RxBatch::new(64);
        let mut got = Vec::new();
        for _ in 0..50 {
            wait_readable(b.raw_fd(), &waker, Duration::from_millis(100)).unwrap();
            let n = b.recv_batch(&mut batch).unwrap();
            for i in 0..n {
                assert_eq!(batch.from(i), a.local_addr().unwrap());
                got.push(batch.packet(i).to_vec());
            }
            if got.len() == 10 {
                break;
            }
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn oversized_datagram_is_not_silently_cut_to_a_valid_length() {
        let a = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20, 1 << 20).unwrap();
        let b = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20, 1 << 20).unwrap();
        let big = vec![7u8; 5000];
        a.send_batch(&[(b.local_addr().unwrap(), &big[..])])
            .unwrap();
        let waker = Waker::new().unwrap();
        wait_readable(b.raw_fd(), &waker, Duration::from_secs(2)).unwrap();
        let mut batch = RxBatch::new(4);
        assert_eq!(b.recv_batch(&mut batch).unwrap(), 1);
        assert!(batch.packet(0).len() > crate::wire::MAX_DATAGRAM);
    }

    #[test]
    fn waker_interrupts_a_wait() {
        let b = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 16, 1 << 16).unwrap();
        let waker = Waker::new().unwrap();
        waker.wake();
        let r = wait_readable(b.raw_fd(), &waker, Duration::from_secs(5)).unwrap();
        assert!(r.woken);
        assert!(!r.socket);
    }
}
