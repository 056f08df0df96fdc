//! OTLP export: a node pushes every metric of `registry/` (under its
//! registry name, with its attributes) to an OTLP/HTTP collector, here a
//! fake one that decodes the protobuf requests.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use controlplane::config::Config;
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

fn config(dir: &std::path::Path, i: usize) -> Config {
    let mut c = Config::default();
    c.node.key_file = dir.join(format!("o{i}.key"));
    c.node.listen = "127.0.0.1:0".parse().unwrap();
    c.node.api_listen = "127.0.0.1:0".parse().unwrap();
    c.gossip.heartbeat_interval_ms = 100;
    c.gossip.peer_exchange_interval_ms = 100;
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
    let a = node::start(config(dir.path(), 0)).await.unwrap();
    let mut cb = config(dir.path(), 1);
    cb.node.bootstrap = vec![a.udp_addr()];
    cb.telemetry.otlp_endpoint = format!("http://{collector}/v1/metrics");
    cb.telemetry.otlp_interval_ms = 200;
    let b = node::start(cb).await.unwrap();
    let t0 = Instant::now();
    while b.status().await.map_or(0, |s| s.peers_live) < 1 {
        assert!(t0.elapsed() < Duration::from_secs(10), "nodes did not meet");
        sleep(Duration::from_millis(20)).await;
    }
    // A message from A delivered at B: counters move, the latency histogram fills.
    a.publish("t", b"measured").await.unwrap();

    let want: BTreeSet<String> = registry_metrics()
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    let t0 = Instant::now();
    loop {
        let (names, delivered, reason_attr, node_attr) = {
            let got = received.lock().unwrap();
            let mut names = BTreeSet::new();
            let mut delivered = 0;
            let mut reason_attr = false;
            let mut node_attr = false;
            for req in got.iter() {
                for rm in &req.resource_metrics {
                    node_attr |= rm.resource.as_ref().is_some_and(|r| {
                        r.attributes.iter().any(|kv| {
                            kv.key == "mesh.node.id"
                                && kv.value.as_ref().and_then(|v| v.value.as_ref())
                                    == Some(&AnyValue::StringValue(b.id().to_hex()))
                        })
                    });
                    for sm in &rm.scope_metrics {
                        for m in &sm.metrics {
                            names.insert(m.name.clone());
                            if let Some(metric::Data::Sum(sum)) = &m.data {
                                if m.name == "mesh.gossip.messages.delivered" {
                                    for p in &sum.data_points {
                                        if let Some(number_data_point::Value::AsInt(v)) = p.value {
                                            delivered = delivered.max(v);
                                        }
                                    }
                                }
                                if m.name == "mesh.dataplane.packets.dropped" {
                                    reason_attr |= sum.data_points.iter().any(|p| {
                                        p.attributes.iter().any(|kv| kv.key == "mesh.drop.reason")
                                    });
                                }
                            }
                        }
                    }
                }
            }
            (names, delivered, reason_attr, node_attr)
        };
        if names == want && delivered >= 1 && reason_attr && node_attr {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "OTLP export incomplete: missing {:?}, extra {:?}, delivered {delivered}, reason attr {reason_attr}, node attr {node_attr}",
            want.difference(&names).collect::<Vec<_>>(),
            names.difference(&want).collect::<Vec<_>>()
        );
        sleep(Duration::from_millis(100)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
    server.abort();
}
