//! The agent API over real HTTP: publish, subscribe (NDJSON stream), status,
//! peers, metrics, and clear errors for bad requests.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use controlplane::node;

fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_publish_and_subscribe_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::mesh_ca(dir.path(), "ca");
    let listen = "127.0.9.1:7400".parse().unwrap();
    let cfg = common::member_config(&ca, dir.path(), "api", listen, vec![], 2);
    let n = node::start(cfg).await.unwrap();
    let api = n.api_addr();

    let result = tokio::task::spawn_blocking(move || {
        // Open a subscription first.
        let mut sub = TcpStream::connect(api).unwrap();
        sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            sub,
            "GET /v1/subscribe?topic=news HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(sub);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        std::thread::sleep(Duration::from_millis(100));

        let (code, body) = request(
            api,
            "POST",
            "/v1/publish",
            r#"{"topic":"other","text":"skip me"}"#,
        );
        assert_eq!(code, 200, "{body}");
        let (code, body) = request(
            api,
            "POST",
            "/v1/publish",
            r#"{"topic":"news","text":"hello agents"}"#,
        );
        assert_eq!(code, 200, "{body}");
        let receipt: serde_json::Value = serde_json::from_str(&body).unwrap();

        // The stream (chunked) carries the news message, not the other topic.
        let mut found = None;
        for _ in 0..50 {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Some(start) = line.find('{') {
                let v: serde_json::Value = serde_json::from_str(line[start..].trim()).unwrap();
                found = Some(v);
                break;
            }
        }
        let v = found.expect("a delivered message on the stream");
        assert_eq!(v["topic"], "news");
        assert_eq!(v["text"], "hello agents");
        assert_eq!(v["id"], receipt["id"]);
        assert_eq!(v["local"], true);

        // Errors are clear and are not 5xx.
        let (code, body) = request(api, "POST", "/v1/publish", "{not json");
        assert_eq!(code, 400);
        assert!(body.contains("bad JSON"), "{body}");
        let (code, body) = request(api, "POST", "/v1/publish", r#"{"topic":"","text":"x"}"#);
        assert_eq!(code, 400);
        assert!(body.contains("topic"), "{body}");
        let big = "x".repeat(2000);
        let (code, body) = request(
            api,
            "POST",
            "/v1/publish",
            &format!(r#"{{"topic":"t","text":"{big}"}}"#),
        );
        assert_eq!(code, 400);
        assert!(body.contains("exceeds"), "{body}");
        let (code, _) = request(
            api,
            "POST",
            "/v1/publish",
            r#"{"topic":"t","text":"a","data_b64":"YQ=="}"#,
        );
        assert_eq!(code, 400);

        // Deny needs the XDP backend; on UDP it is a clear conflict.
        let (code, body) = request(api, "POST", "/v1/deny", r#"{"ip":"10.1.2.3"}"#);
        assert_eq!(code, 409, "{body}");
        assert!(body.contains("XDP backend is not active"), "{body}");

        let (code, body) = request(api, "GET", "/v1/status", "");
        assert_eq!(code, 200);
        let st: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(st["published"], 2);
        let (code, body) = request(api, "GET", "/v1/peers", "");
        assert_eq!((code, body.trim()), (200, "[]"));
        let (code, body) = request(api, "GET", "/metrics", "");
        assert_eq!(code, 200);
        assert!(
            body.contains("mesh_gossip_messages_published_total 2"),
            "{body}"
        );
        assert!(body.contains("mesh_agent_subscribers 1"), "{body}");
    })
    .await;
    n.shutdown().await;
    result.unwrap();
}
