//! The agent API: HTTP/1.1 + JSON on a local address, so agents in any
//! language can join the mesh with an HTTP client.
//!
//! | method | path | body / query | answer |
//! |---|---|---|---|
//! | GET | `/v1/status` | | node status (JSON) |
//! | GET | `/v1/peers` | | live peers (JSON array) |
//! | POST | `/v1/publish` | `{"topic": "...", "text": "..."}` or `{"topic": "...", "data_b64": "..."}` | `{"id", "sequence", "timestamp_us"}` |
//! | GET | `/v1/subscribe?topic=T` | `topic` optional (all topics when absent) | NDJSON stream, one delivered message per line |
//! | POST | `/v1/deny` | `{"ip": "10.0.0.9"}` | drops that source in XDP (409 on the UDP backend) |
//! | POST | `/v1/allow` | `{"ip": "10.0.0.9"}` | removes it from the deny map |
//! | POST | `/v1/rate` | `{"pps": 1000, "burst": 200}` | per-source token bucket in XDP (0 pps = off) |
//! | GET | `/metrics` | | Prometheus text format |
//!
//! A subscriber that falls more than 4096 messages behind gets a line
//! `{"lagged": N}` saying how many it missed (also counted in
//! `mesh.agent.messages.lagged`); the stream then continues.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use crate::service::{PublishError, Service};

/// Body of `POST /v1/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Topic, 1 to 255 bytes.
    pub topic: String,
    /// UTF-8 body.
    pub text: Option<String>,
    /// Binary body, base64.
    pub data_b64: Option<String>,
}

/// Query of `GET /v1/subscribe`.
#[derive(Debug, Deserialize)]
pub struct SubscribeQuery {
    /// Only this topic (all when absent).
    pub topic: Option<String>,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

async fn status(State(s): State<Arc<Service>>) -> Response {
    match s.status().await {
        Some(st) => Json(st).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "node stopping"),
    }
}

async fn peers(State(s): State<Arc<Service>>) -> Response {
    match s.peers().await {
        Some(p) => Json(p).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "node stopping"),
    }
}

async fn publish(State(s): State<Arc<Service>>, body: axum::body::Bytes) -> Response {
    let req: PublishRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    let data = match (req.text, req.data_b64) {
        (Some(t), None) => t.into_bytes(),
        (None, Some(b)) => {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(b) {
                Ok(d) => d,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad data_b64: {e}")),
            }
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of `text` or `data_b64`",
            );
        }
    };
    match s.publish(req.topic, data).await {
        Ok(r) => Json(r).into_response(),
        Err(e @ PublishError::Encode(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn subscribe(State(s): State<Arc<Service>>, Query(q): Query<SubscribeQuery>) -> Response {
    let rx = s.deliveries.subscribe();
    s.metrics.subscribers.inc();
    let guard = SubscriberGuard(s.clone());
    let stream =
        futures_util::stream::unfold((rx, guard, q.topic), |(mut rx, guard, topic)| async move {
            loop {
                match rx.recv().await {
                    Ok(d) => {
                        if topic.as_deref().is_some_and(|t| t != d.topic) {
                            continue;
                        }
                        let mut line = serde_json::to_vec(&*d).unwrap_or_default();
                        line.push(b'\n');
                        return Some((Ok::<_, std::io::Error>(line), (rx, guard, topic)));
                    }
                    Err(RecvError::Lagged(n)) => {
                        guard.0.metrics.lagged.inc_by(n);
                        let line = format!("{{\"lagged\":{n}}}\n").into_bytes();
                        return Some((Ok(line), (rx, guard, topic)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "stream"))
}

/// Decrements the subscriber gauge when a stream ends.
struct SubscriberGuard(Arc<Service>);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.metrics.subscribers.dec();
    }
}

/// Body of `POST /v1/deny` and `POST /v1/allow`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddrRequest {
    /// Source IP address.
    pub ip: std::net::IpAddr,
}

async fn deny_or_allow(s: Arc<Service>, body: axum::body::Bytes, deny: bool) -> Response {
    let req: AddrRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    let Some(x) = s.xdp.as_ref() else {
        return error(
            StatusCode::CONFLICT,
            "the XDP backend is not active on this node",
        );
    };
    let result = if deny {
        x.deny(req.ip).map(|_| true)
    } else {
        x.allow(req.ip)
    };
    match result {
        Ok(changed) => {
            Json(serde_json::json!({ "ip": req.ip, "denied": deny, "changed": changed }))
                .into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Body of `POST /v1/rate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateRequest {
    /// Packets per second allowed per source address (0 = no limit).
    pub pps: u64,
    /// Bucket depth, packets (1..=1e9; ignored, and may be 0, when `pps` is 0).
    #[serde(default)]
    pub burst: u64,
}

/// Most packets per second a rate may allow (the XDP program's limit).
const MAX_RATE: u64 = 1_000_000_000;

/// Checks a rate request: `pps` 0..=1e9 (0 = no limit, and then `burst` may be 0), `burst`
/// 1..=1e9 otherwise. Returns the `(pps, burst)` to write.
fn check_rate(req: &RateRequest) -> Result<(u64, u64), String> {
    if req.pps > MAX_RATE {
        return Err(format!(
            "pps must be 0..={MAX_RATE} (0 = no limit), got {}",
            req.pps
        ));
    }
    if req.pps == 0 {
        // Off: the bucket depth is unused; keep a valid one.
        return Ok((0, req.burst.clamp(1, MAX_RATE)));
    }
    if !(1..=MAX_RATE).contains(&req.burst) {
        return Err(format!("burst must be 1..={MAX_RATE}, got {}", req.burst));
    }
    Ok((req.pps, req.burst))
}

async fn rate(State(s): State<Arc<Service>>, body: axum::body::Bytes) -> Response {
    let req: RateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    let (pps, burst) = match check_rate(&req) {
        Ok(x) => x,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let Some(x) = s.xdp.as_ref() else {
        return error(
            StatusCode::CONFLICT,
            "the XDP backend is not active on this node",
        );
    };
    match x.set_rate(pps, burst) {
        Ok(()) => Json(serde_json::json!({ "pps": pps, "burst": burst })).into_response(),
        Err(e @ dataplane::xdp::XdpError::Setting { .. }) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn deny(State(s): State<Arc<Service>>, body: axum::body::Bytes) -> Response {
    deny_or_allow(s, body, true).await
}

async fn allow(State(s): State<Arc<Service>>, body: axum::body::Bytes) -> Response {
    deny_or_allow(s, body, false).await
}

async fn metrics(State(s): State<Arc<Service>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.render_metrics(),
    )
        .into_response()
}

/// Prepares an accepted agent connection: `TCP_NODELAY` on. A subscriber stream writes one
/// small line per message; with Nagle's algorithm on, a line waits for the client's delayed
/// ACK (about 40 ms on Linux) whenever the previous one is unacknowledged.
fn prepare(tcp: &tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set on an agent connection");
    }
}

/// Limits of the API server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Connections open at once; more are closed when accepted.
    pub(crate) max_connections: usize,
    /// Time allowed for a request's headers, from the connection's start or the end of the
    /// previous response (idle keep-alive connections included).
    pub(crate) header_timeout: std::time::Duration,
}

/// Serves the API until the task is aborted: HTTP/1.1, at most `limits.max_connections`
/// connections, each with `TCP_NODELAY` and a header-read timeout.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Service>, limits: Limits) {
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/publish", post(publish))
        .route("/v1/subscribe", get(subscribe))
        .route("/v1/deny", post(deny))
        .route("/v1/allow", post(allow))
        .route("/v1/rate", post(rate))
        .route("/metrics", get(metrics))
        .with_state(shared.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let Some((tcp, peer, slot)) =
            accept(&listener, &slots, || shared.metrics.api_refused.inc()).await
        else {
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "agent API connection ended");
            }
            drop(slot);
        });
    }
}

/// Accepts one agent connection and prepares it, holding one of `slots` for its lifetime;
/// `None` when the accept failed or every slot is taken (the connection is then closed and
/// `refused` called).
async fn accept(
    listener: &tokio::net::TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
    refused: impl FnOnce(),
) -> Option<(
    tokio::net::TcpStream,
    std::net::SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let (tcp, peer) = match listener.accept().await {
        Ok(x) => x,
        Err(e) => {
            // EMFILE and friends: back off instead of spinning.
            tracing::warn!(error = %e, "agent API accept failed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            return None;
        }
    };
    let Ok(slot) = slots.clone().try_acquire_owned() else {
        refused();
        tracing::debug!(%peer, "agent API connection refused: at api.max_connections");
        return None;
    };
    prepare(&tcp);
    Some((tcp, peer, slot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn rate_zero_turns_the_limit_off_and_out_of_range_is_a_client_error() {
        let r = |pps, burst| check_rate(&RateRequest { pps, burst });
        assert_eq!(
            r(0, 0),
            Ok((0, 1)),
            "`meshctl rate 0 0` turns the limit off"
        );
        assert_eq!(r(1000, 200), Ok((1000, 200)));
        assert!(r(1000, 0).is_err(), "a limit needs a bucket");
        let huge = r(u64::MAX, 10).expect_err("over the XDP limit");
        assert!(huge.contains("pps"), "{huge}");
        assert!(r(10, u64::MAX).is_err());
    }

    #[tokio::test]
    async fn accepted_connections_get_tcp_nodelay_and_a_slot() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let first = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let refused = std::cell::Cell::new(0);
        let count = || refused.set(refused.get() + 1);
        let (server_side, _, slot) = accept(&l, &slots, count).await.expect("a free slot");
        assert!(
            server_side.nodelay().expect("nodelay readable"),
            "the API must set TCP_NODELAY on accepted connections"
        );
        // Every slot taken: the next connection is accepted and closed at once.
        let mut second = tokio::net::TcpStream::connect(addr).await.expect("connect");
        assert!(accept(&l, &slots, count).await.is_none(), "over the cap");
        assert_eq!(refused.get(), 1, "counted");
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), second.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "a refused connection is closed");
        // A slot freed: accepted again.
        drop((slot, server_side, first));
        let _third = tokio::net::TcpStream::connect(addr).await.expect("connect");
        assert!(
            accept(&l, &slots, count).await.is_some(),
            "a freed slot is reused"
        );
        assert_eq!(refused.get(), 1);
    }
}
