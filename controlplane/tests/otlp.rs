//! OTLP export: a node pushes every metric of `registry/` (under its
//! registry name, with its attributes) to an OTLP/HTTP collector, here a
//! fake one that decodes the protobuf requests. Two members of one mesh CA on
//! the protocol cores, over mutual TLS on loopback.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use controlplane::config::Config;
use controlplane::enroll::{CaDir, DEFAULT_VALIDITY};
use controlplane::node;
use controlplane::otlp::registry_metrics;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message;
use tokio::time::{Instant, sleep};

type Received = Arc<Mutex<Vec<ExportMetricsServiceRequest>>>;

async fn collect(State(r): State<Received>, body: Bytes) -> &'static str {
    if let Ok(req) = ExportMetricsServiceRequest::decode(body) {
        r.lock().unwrap().push(req);
    }
    ""
}

/// Member `i` of the CA in `dir/ca`, at `127.0.9.i:7400`.
fn config(dir: &std::path::Path, ca: &CaDir, i: u8) -> Config {
    let e = ca
        .enroll(
            &dir.join(format!("o{i}.key")),
            &dir.join(format!("o{i}.crt")),
            DEFAULT_VALIDITY,
        )
        .expect("enroll");
    let mut c = Config::default();
    e.apply(&mut c);
    c.node.listen = std::net::SocketAddr::from(([127, 0, 9, i], 7400));
    c.node.api_listen = "127.0.0.1:0".parse().unwrap();
    c.overlay.expected_size = 2;
    c.overlay.probe_interval_ms = 200;
    c.overlay.probe_timeout_ms = 100;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registry_metric_reaches_an_otlp_collector() {
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/metrics", post(collect))
        .with_state(received.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let ca = CaDir::init(&dir.path().join("ca")).expect("mesh CA");
    let a = node::start(config(dir.path(), &ca, 1)).await.unwrap();
    let mut cb = config(dir.path(), &ca, 2);
    cb.node.bootstrap = vec![a.udp_addr()];
    cb.telemetry.otlp_endpoint = format!("http://{collector}/v1/metrics");
    cb.telemetry.otlp_interval_ms = 200;
    let b = node::start(cb).await.unwrap();
    let mut deliveries = b.subscribe();
    let t0 = Instant::now();
    while b.status().await.map_or(0, |s| s.overlay.active) < 1 {
        assert!(t0.elapsed() < Duration::from_secs(10), "nodes did not meet");
        sleep(Duration::from_millis(20)).await;
    }
    // A message from A delivered at B: counters move, the latency histogram fills.
    let sent = a.publish("t", b"measured").await.unwrap();
    let t0 = Instant::now();
    loop {
        match deliveries.try_recv() {
            Ok(d) if d.id == sent.id => break,
            Ok(_) => {}
            Err(_) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "B never got A's message"
                );
                sleep(Duration::from_millis(20)).await;
            }
        }
    }

    let want: BTreeSet<String> = registry_metrics()
        .iter()
        .map(|m| m.name.to_owned())
        .collect();
    let t0 = Instant::now();
    loop {
        let seen = Seen::of(&received.lock().unwrap(), &b.id().to_hex());
        if seen.names == want
            && seen.delivered >= 1
            && seen.latency_count >= 1
            && seen.reason_attr
            && seen.node_attr
        {
            assert!(
                seen.drift.is_empty(),
                "OTLP description or unit differs from registry/: {:?}",
                seen.drift
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "OTLP export incomplete: missing {:?}, extra {:?}, delivered {}, latency count {}, reason attr {}, node attr {}",
            want.difference(&seen.names).collect::<Vec<_>>(),
            seen.names.difference(&want).collect::<Vec<_>>(),
            seen.delivered,
            seen.latency_count,
            seen.reason_attr,
            seen.node_attr,
        );
        sleep(Duration::from_millis(100)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
    server.abort();
}

/// What the collector got so far.
#[derive(Default)]
struct Seen {
    /// Metric names.
    names: BTreeSet<String>,
    /// Highest `mesh.gossip.messages.delivered`.
    delivered: i64,
    /// Highest count of `mesh.gossip.dissemination.latency`.
    latency_count: u64,
    /// A `mesh.dataplane.packets.dropped` point carried `mesh.drop.reason`.
    reason_attr: bool,
    /// The resource named the node (`mesh.node.id`).
    node_attr: bool,
    /// Metrics whose description or unit is not the registry's brief or unit.
    drift: Vec<String>,
}

impl Seen {
    fn of(requests: &[ExportMetricsServiceRequest], node: &str) -> Seen {
        let mut s = Seen::default();
        for rm in requests.iter().flat_map(|r| &r.resource_metrics) {
            s.node_attr |= rm.resource.as_ref().is_some_and(|r| {
                r.attributes.iter().any(|kv| {
                    kv.key == "mesh.node.id"
                        && kv.value.as_ref().and_then(|v| v.value.as_ref())
                            == Some(&AnyValue::StringValue(node.to_owned()))
                })
            });
            for m in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
                s.names.insert(m.name.clone());
                match registry_metrics().iter().find(|d| d.name == m.name) {
                    Some(d) if d.brief == m.description && d.unit == m.unit => {}
                    _ => s.drift.push(m.name.clone()),
                }
                match &m.data {
                    Some(metric::Data::Sum(sum)) if m.name == "mesh.gossip.messages.delivered" => {
                        for p in &sum.data_points {
                            if let Some(number_data_point::Value::AsInt(v)) = p.value {
                                s.delivered = s.delivered.max(v);
                            }
                        }
                    }
                    Some(metric::Data::Sum(sum)) if m.name == "mesh.dataplane.packets.dropped" => {
                        s.reason_attr |= sum
                            .data_points
                            .iter()
                            .any(|p| p.attributes.iter().any(|kv| kv.key == "mesh.drop.reason"));
                    }
                    Some(metric::Data::Histogram(h))
                        if m.name == "mesh.gossip.dissemination.latency" =>
                    {
                        for p in &h.data_points {
                            s.latency_count = s.latency_count.max(p.count);
                        }
                    }
                    _ => {}
                }
            }
        }
        s
    }
}
