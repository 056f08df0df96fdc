//! OpenTelemetry (OTLP/HTTP, protobuf) export of every metric the Weaver
//! registry in `registry/` defines.
//!
//! The instruments come from the same generated table the Prometheus endpoint
//! registers from ([`crate::metrics::registry`]): each entry of
//! [`METRICS`](crate::metrics::registry::metric::METRICS) becomes an OTel instrument under
//! its registry name (`mesh.dataplane.packets.received`, not the Prometheus
//! spelling), with its unit, brief and attributes. Counters and gauges are
//! observable instruments whose callbacks read the same values the Prometheus
//! endpoint serves, so the two exports never disagree; the one histogram
//! (dissemination latency) is recorded as it happens. A periodic reader on its
//! own thread pushes everything every `telemetry.otlp_interval_ms`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use prometheus::proto::MetricFamily;

use crate::metrics::{Instrument, MetricDef, Metrics, registry};
use crate::service::Service as Shared;

/// Every metric of the registry, in registry order (the table both exports use).
pub fn registry_metrics() -> &'static [&'static MetricDef] {
    &registry::metric::METRICS
}

/// A running OTLP export; flushes and stops when dropped.
pub struct OtlpExport {
    provider: SdkMeterProvider,
}

impl Drop for OtlpExport {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "OTLP shutdown");
        }
    }
}

/// The gathered metric families, reused by every callback of one export.
#[derive(Default)]
struct Snapshot {
    state: std::sync::Mutex<Option<(std::time::Instant, Vec<MetricFamily>)>>,
}

impl Snapshot {
    /// Older than this, a snapshot is gathered again (an export's callbacks all run within
    /// it; the export interval is at least 100 ms).
    const FRESH: Duration = Duration::from_millis(50);

    fn with<T>(&self, shared: &Shared, f: impl FnOnce(&[MetricFamily]) -> T) -> T {
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let stale = g.as_ref().is_none_or(|(at, _)| at.elapsed() > Self::FRESH);
        if stale {
            shared.refresh_metrics();
            *g = Some((std::time::Instant::now(), shared.metrics.registry.gather()));
        }
        f(g.as_ref().map_or(&[][..], |(_, fams)| &fams[..]))
    }
}

/// The values of Prometheus family `prom` as (value, attributes): each label
/// becomes the registry attribute whose label name it is.
fn samples(
    families: &[MetricFamily],
    prom: &str,
    attrs: &[(String, &'static str)],
) -> Vec<(f64, Vec<KeyValue>)> {
    let Some(f) = families.iter().find(|f| f.name() == prom) else {
        return Vec::new();
    };
    let counter = f.get_field_type() == prometheus::proto::MetricType::COUNTER;
    f.get_metric()
        .iter()
        .map(|m| {
            let kv = m
                .get_label()
                .iter()
                .filter_map(|l| {
                    attrs
                        .iter()
                        .find(|(label, _)| label == l.name())
                        .map(|(_, id)| KeyValue::new(*id, l.value().to_owned()))
                })
                .collect();
            let v = if counter {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            };
            (v, kv)
        })
        .collect()
}

/// Starts pushing every registry metric to `endpoint` (an OTLP/HTTP metrics
/// URL such as `http://collector:4318/v1/metrics`) every `interval`.
pub(crate) fn start(
    endpoint: &str,
    interval: Duration,
    shared: Arc<Shared>,
) -> anyhow::Result<OtlpExport> {
    let exporter = MetricExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .with_context(|| format!("OTLP exporter for {endpoint}"))?;
    let reader = PeriodicReader::builder(exporter)
        .with_interval(interval)
        .build();
    let resource = Resource::builder()
        .with_service_name("meshd")
        .with_attribute(KeyValue::new("mesh.node.id", shared.id.to_hex()))
        .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    let meter = provider.meter("meshd");
    // One export runs every instrument's callback back to back: they share one
    // refresh + gather instead of one each.
    let snapshot = Arc::new(Snapshot::default());
    for m in registry_metrics() {
        let prom = m.prometheus_name();
        let attrs: Vec<(String, &'static str)> = m
            .attributes
            .iter()
            .map(|a| (a.label_name(), a.id))
            .collect();
        let s = shared.clone();
        let snap = snapshot.clone();
        // The values `/metrics` serves right now, with registry attributes.
        let read = move || snap.with(&s, |families| samples(families, &prom, &attrs));
        match m.instrument {
            Instrument::Counter => {
                meter
                    .u64_observable_counter(m.name)
                    .with_unit(m.unit)
                    .with_description(m.brief)
                    .with_callback(move |obs| {
                        for (v, kv) in read() {
                            obs.observe(v as u64, &kv);
                        }
                    })
                    .build();
            }
            Instrument::Gauge => {
                meter
                    .i64_observable_gauge(m.name)
                    .with_unit(m.unit)
                    .with_description(m.brief)
                    .with_callback(move |obs| {
                        for (v, kv) in read() {
                            obs.observe(v as i64, &kv);
                        }
                    })
                    .build();
            }
            Instrument::Histogram => {
                // Histograms are recorded as they happen, not read from `/metrics`: each one
                // needs its recording site, and the registry has one histogram.
                anyhow::ensure!(
                    *m == Metrics::LATENCY,
                    "registry histogram {} has no OTLP recording site",
                    m.name
                );
                let h = meter
                    .f64_histogram(m.name)
                    .with_unit(m.unit)
                    .with_description(m.brief)
                    .build();
                shared.metrics.set_otel_latency(h);
            }
        }
    }
    tracing::info!(%endpoint, interval_ms = interval.as_millis() as u64, "OTLP metrics export on");
    Ok(OtlpExport { provider })
}
