//! AF_XDP on a veth pair between two private namespaces: datagrams sent by
//! an ordinary UDP socket in the peer namespace arrive through the XDP
//! program and the AF_XDP socket (junk is dropped and counted in XDP), and
//! replies sent through the AF_XDP TX ring reach the peer's UDP socket.
//!
//! Needs root; prints why and returns otherwise. Bounded by deadlines.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::netns::{NetNs, veth};
use common::packets::{PORT, datagram};
use dataplane::backend::{Backend, RxView, TxSink};
use dataplane::wire::Kind;
use dataplane::xdp::{AttachPolicy, MeshXdp, Reason, XdpMode, XdpSettings};
use dataplane::xsk::{BindMode, XskConfig, XskSocket};

const N: usize = 200;
const JUNK: usize = 17;

#[test]
fn veth_datagrams_arrive_through_af_xdp_and_replies_leave_through_tx() {
    if !common::root_or_skip("veth_datagrams_arrive_through_af_xdp_and_replies_leave_through_tx") {
        return;
    }
    exchange(true);
}

#[test]
fn the_same_exchange_works_without_need_wakeup() {
    if !common::root_or_skip("the_same_exchange_works_without_need_wakeup") {
        return;
    }
    exchange(false);
}

fn exchange(need_wakeup: bool) {
    let (a, b) = match (NetNs::new("xa"), NetNs::new("xb")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("skipped: cannot make network namespaces: {e}");
            return;
        }
    };
    veth(&a, "m0", "10.77.0.1/24", &b, "m1", "10.77.0.2/24").expect("veth pair");
    let node: SocketAddr = format!("10.77.0.1:{PORT}").parse().expect("addr");
    let (ready_tx, ready_rx) = mpsc::channel();

    let receiver = a.spawn(move || {
        let mut xdp = MeshXdp::load(&XdpSettings::default()).expect("load XDP");
        let mode = xdp
            .attach("m0", AttachPolicy::Native)
            .expect("native XDP on veth");
        let mut cfg = XskConfig::veth("m0", node);
        cfg.need_wakeup = need_wakeup;
        let mut sock = XskSocket::open(&cfg, xdp.control()).expect("xsk");
        let bind = sock.mode();
        ready_tx.send(()).expect("ready");
        let mut got: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < N && Instant::now() < deadline {
            let n = sock.recv_batch().expect("recv");
            if n == 0 {
                let _ = sock.poll_readable(10);
                continue;
            }
            let (rx, tx) = sock.halves();
            let mut replies = Vec::with_capacity(rx.len());
            for i in 0..rx.len() {
                got.push((rx.from(i), rx.packet(i).to_vec()));
                replies.push((rx.from(i), rx.packet(i)));
            }
            let sent = tx.send_batch(&replies).expect("send");
            assert_eq!(sent, replies.len(), "every reply queued");
        }
        // Let the last completions come back so the stats are final.
        let end = Instant::now() + Duration::from_secs(2);
        while sock.tx().in_flight() > 0 && Instant::now() < end {
            sock.tx().reap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let counters = xdp.control().counters().expect("counters");
        (mode, bind, got, counters, sock.stats())
    });

    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("receiver ready");
    let sender = b.spawn(move || {
        let s = UdpSocket::bind("10.77.0.2:6000").expect("bind");
        // Replies arrive while we are still sending: a large receive
        // buffer (forced, we are root) so none is lost to the socket.
        let size: libc::c_int = 8 << 20;
        // SAFETY: valid socket fd and a c_int option value.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUFFORCE");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut sent = Vec::new();
        for i in 0..N {
            let d = datagram(Kind::Data, i % 50, i as u64);
            s.send_to(&d, node).expect("send");
            sent.push(d);
            if i % JUNK == 0 {
                let mut junk = datagram(Kind::Data, 5, 0);
                junk[0] = b'X';
                s.send_to(&junk, node).expect("send junk");
            }
        }
        let mut replies = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 2048];
        while replies.len() < N && Instant::now() < deadline {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                replies.push((from, buf[..n].to_vec()));
            }
        }
        (sent, replies)
    });

    let (sent, replies) = sender.join().expect("sender thread").expect("netns");
    let (mode, bind, got, counters, stats) = receiver.join().expect("receiver").expect("netns");
    eprintln!("XDP mode {mode}, AF_XDP {bind}, stats {stats:?}");
    assert_eq!(mode, XdpMode::Native, "veth supports native XDP");
    assert_eq!(
        bind,
        BindMode::Copy,
        "veth has no zero-copy: fell back to copy"
    );
    assert_eq!(got.len(), N, "every datagram arrived through AF_XDP");
    let src: SocketAddr = "10.77.0.2:6000".parse().expect("addr");
    for (i, (from, bytes)) in got.iter().enumerate() {
        assert_eq!(*from, src);
        assert_eq!(bytes, &sent[i], "datagram {i} intact and in order");
    }
    assert_eq!(counters[Reason::Redirect as usize], N as u64);
    assert_eq!(
        counters[Reason::DropBadMagic as usize],
        (N / JUNK + 1) as u64
    );
    assert_eq!(stats.rx_malformed, 0);
    assert_eq!(
        replies.len(),
        N,
        "every reply sent through AF_XDP TX arrived"
    );
    for (i, (from, bytes)) in replies.iter().enumerate() {
        assert_eq!(*from, node);
        assert_eq!(bytes, &sent[i]);
    }
}
