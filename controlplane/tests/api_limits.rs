//! The agent API under hostile clients, on a real node: a connection that never sends a
//! request is closed after `api.header_timeout_ms` while a quiet subscriber stream stays
//! open; past `api.max_connections` a connection is closed at once and the node still serves
//! once a slot frees.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use controlplane::node;

/// Reads until EOF or `limit`; true when the server closed the connection.
fn closed_by_server(mut s: TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false, // timed out: still open
        }
    }
}

fn status_code(api: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect(api).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.get(9..12).and_then(|c| c.parse().ok())
}

/// Opens a subscriber stream; returns the reader once the 200 head arrived.
fn subscribe(api: SocketAddr, topic: &str) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(api).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /v1/subscribe?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .expect("write");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("head");
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_excess_connections_are_closed_and_streams_are_not() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = common::mesh_ca(dir.path(), "ca");
    let listen = "127.0.9.21:7400".parse().expect("addr");
    let mut cfg = common::member_config(&ca, dir.path(), "lim", listen, vec![], 2);
    cfg.api.header_timeout_ms = 300;
    cfg.api.max_connections = 3;
    let n = node::start(cfg).await.expect("start");
    let api = n.api_addr();

    let result = tokio::task::spawn_blocking(move || {
        // 1. A connection that sends nothing is closed (the old server kept it forever).
        let silent = TcpStream::connect(api).expect("connect");
        assert!(
            closed_by_server(silent, Duration::from_secs(10)),
            "a silent connection must be closed after the header timeout"
        );
        // 2. So is one that sends half a request head (slowloris).
        let mut slow = TcpStream::connect(api).expect("connect");
        write!(slow, "GET /v1/status HTTP/1.1\r\nHost: x\r\n").expect("write");
        assert!(closed_by_server(slow, Duration::from_secs(10)));

        // 3. A subscriber stream outlives many header timeouts.
        let sub = subscribe(api, "quiet");
        std::thread::sleep(Duration::from_millis(1_200));
        // 4. Two more streams fill the cap of 3: the next connection is closed at once.
        let hold: Vec<_> = (0..2).map(|_| subscribe(api, "hold")).collect();
        let over = TcpStream::connect(api).expect("connect");
        assert!(
            closed_by_server(over, Duration::from_secs(10)),
            "a connection over api.max_connections must be closed"
        );
        assert_eq!(status_code(api), None, "no slot: refused");
        // 5. A slot frees: served again.
        drop(hold);
        let mut code = None;
        for _ in 0..50 {
            code = status_code(api);
            if code == Some(200) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(code, Some(200), "served once a slot is free");
        sub
    })
    .await
    .expect("client thread");

    // The quiet stream is still open and delivers.
    let mut sub = result;
    n.publish("quiet", b"still here").await.expect("publish");
    let got = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        for _ in 0..20 {
            line.clear();
            if sub.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if line.contains("still here") {
                return true;
            }
        }
        false
    })
    .await
    .expect("reader");
    assert!(
        got,
        "the subscriber stream must survive idle time and deliver"
    );
    n.shutdown().await;
}
