//! OpenTelemetry (OTLP/HTTP, protobuf) export of every metric the Weaver
//! registry in `registry/` defines.
//!
//! The registry file is compiled in; each of its metrics becomes an OTel
//! instrument under its registry name (`mesh.dataplane.packets.received`,
//! not the Prometheus spelling), with its unit and description. Counters and
//! gauges are observable instruments whose callbacks read the same values the
//! Prometheus endpoint serves, so the two exports never disagree; the one
//! histogram (dissemination latency) is recorded as it happens. A periodic
//! reader on its own thread pushes everything every `telemetry.otlp_interval_ms`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use prometheus::proto::MetricFamily;
use serde::Deserialize;

use crate::metrics::{Instrument, label_name, prometheus_name};
use crate::node::Shared;

/// The registry's metric definitions, as compiled into the binary.
const REGISTRY: &str = include_str!("../../registry/metrics.yaml");

#[derive(Deserialize)]
struct RegistryFile {
    groups: Vec<RegistryGroup>,
}

#[derive(Deserialize)]
struct RegistryGroup {
    metric_name: Option<String>,
    instrument: Option<String>,
    unit: Option<String>,
    brief: Option<String>,
    #[serde(default)]
    attributes: Vec<RegistryAttribute>,
}

#[derive(Deserialize)]
struct RegistryAttribute {
    #[serde(rename = "ref")]
    reference: Option<String>,
}

/// One registry metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryMetric {
    /// Registry (and OTLP) name.
    pub name: String,
    /// Instrument kind.
    pub instrument: Instrument,
    /// UCUM unit.
    pub unit: String,
    /// Description.
    pub brief: String,
    /// Attribute ids.
    pub attributes: Vec<String>,
}

impl RegistryMetric {
    /// The name the Prometheus endpoint uses for it.
    pub fn prometheus_name(&self) -> String {
        prometheus_name(&self.name, self.instrument, &self.unit)
    }
}

/// Every metric of the compiled-in registry.
pub fn registry_metrics() -> anyhow::Result<Vec<RegistryMetric>> {
    let file: RegistryFile =
        serde_yaml::from_str(REGISTRY).context("parsing registry/metrics.yaml")?;
    file.groups
        .into_iter()
        .filter_map(|g| g.metric_name.clone().map(|n| (n, g)))
        .map(|(name, g)| {
            let instrument = match g.instrument.as_deref() {
                Some("counter") => Instrument::Counter,
                Some("gauge") => Instrument::Gauge,
                Some("histogram") => Instrument::Histogram,
                other => anyhow::bail!("registry metric {name}: unsupported instrument {other:?}"),
            };
            Ok(RegistryMetric {
                instrument,
                unit: g.unit.unwrap_or_default(),
                brief: g.brief.unwrap_or_default(),
                attributes: g
                    .attributes
                    .into_iter()
                    .filter_map(|a| a.reference)
                    .collect(),
                name,
            })
        })
        .collect()
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

/// Values of one Prometheus family as (value, attributes).
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

fn samples(families: &[MetricFamily], prom: &str, attrs: &[String]) -> Vec<(f64, Vec<KeyValue>)> {
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
                        .find(|a| label_name(a) == l.name())
                        .map(|a| KeyValue::new(a.clone(), l.value().to_owned()))
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
    for m in registry_metrics()? {
        let prom = m.prometheus_name();
        let attrs = m.attributes.clone();
        let s = shared.clone();
        let snap = snapshot.clone();
        // The values `/metrics` serves right now, with registry attributes.
        let read = move || snap.with(&s, |families| samples(families, &prom, &attrs));
        match m.instrument {
            Instrument::Counter => {
                meter
                    .u64_observable_counter(m.name.clone())
                    .with_unit(m.unit.clone())
                    .with_description(m.brief.clone())
                    .with_callback(move |obs| {
                        for (v, kv) in read() {
                            obs.observe(v as u64, &kv);
                        }
                    })
                    .build();
            }
            Instrument::Gauge => {
                meter
                    .i64_observable_gauge(m.name.clone())
                    .with_unit(m.unit.clone())
                    .with_description(m.brief.clone())
                    .with_callback(move |obs| {
                        for (v, kv) in read() {
                            obs.observe(v as i64, &kv);
                        }
                    })
                    .build();
            }
            Instrument::Histogram => {
                let h = meter
                    .f64_histogram(m.name.clone())
                    .with_unit(m.unit.clone())
                    .with_description(m.brief.clone())
                    .build();
                shared.metrics.set_otel_latency(h);
            }
        }
    }
    tracing::info!(%endpoint, interval_ms = interval.as_millis() as u64, "OTLP metrics export on");
    Ok(OtlpExport { provider })
}
