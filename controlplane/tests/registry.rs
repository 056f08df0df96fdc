//! The code exports exactly the metrics `registry/` defines, with the same
//! instrument, labels and enum members.

use std::collections::{BTreeMap, BTreeSet};

use controlplane::metrics::{Instrument, KIND_NAMES, Metrics, label_name, prometheus_name};
use dataplane::pipeline::DropReason;
use prometheus::proto::MetricType;
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    groups: Vec<Group>,
}

#[derive(Deserialize)]
struct Group {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    metric_name: Option<String>,
    instrument: Option<String>,
    unit: Option<String>,
    stability: Option<String>,
    brief: Option<String>,
    #[serde(default)]
    attributes: Vec<serde_yaml::Value>,
}

fn load(name: &str) -> File {
    let path = format!("{}/../registry/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Registry metric → (Prometheus name, type, label names).
fn registry_metrics() -> BTreeMap<String, (MetricType, BTreeSet<String>)> {
    let mut out = BTreeMap::new();
    for g in load("metrics.yaml").groups {
        assert_eq!(g.kind, "metric", "{}", g.id);
        let name = g
            .metric_name
            .unwrap_or_else(|| panic!("{} has no metric_name", g.id));
        assert_eq!(
            g.id,
            format!("metric.{name}"),
            "group id follows metric name"
        );
        assert!(g.stability.is_some(), "{name} has no stability");
        assert!(
            g.brief.is_some_and(|b| !b.is_empty()),
            "{name} has no brief"
        );
        let unit = g.unit.unwrap_or_else(|| panic!("{name} has no unit"));
        let (inst, ty) = match g.instrument.as_deref() {
            Some("counter") => (Instrument::Counter, MetricType::COUNTER),
            Some("gauge") => (Instrument::Gauge, MetricType::GAUGE),
            Some("histogram") => (Instrument::Histogram, MetricType::HISTOGRAM),
            other => panic!("{name}: unsupported instrument {other:?}"),
        };
        let labels = g
            .attributes
            .iter()
            .map(|a| {
                label_name(
                    a["ref"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{name}: attribute without ref")),
                )
            })
            .collect();
        out.insert(prometheus_name(&name, inst, &unit), (ty, labels));
    }
    out
}

fn enum_members(attr: &str) -> BTreeSet<String> {
    for g in load("attributes.yaml").groups {
        for a in g.attributes {
            if a["id"].as_str() == Some(attr) {
                return a["type"]["members"]
                    .as_sequence()
                    .unwrap_or_else(|| panic!("{attr} is not an enum"))
                    .iter()
                    .map(|m| m["value"].as_str().unwrap_or_default().to_owned())
                    .collect();
            }
        }
    }
    panic!("attribute {attr} not defined");
}

#[test]
fn exported_metrics_equal_the_registry_in_both_directions() {
    let m = Metrics::new().expect("metrics register");
    let exported: BTreeMap<String, (MetricType, BTreeSet<String>)> = m
        .registry
        .gather()
        .iter()
        .map(|f| {
            let labels = f
                .get_metric()
                .first()
                .map(|x| x.get_label().iter().map(|l| l.name().to_owned()).collect())
                .unwrap_or_default();
            (f.name().to_owned(), (f.get_field_type(), labels))
        })
        .collect();
    let defined = registry_metrics();
    let extra: Vec<_> = exported
        .keys()
        .filter(|k| !defined.contains_key(*k))
        .collect();
    let missing: Vec<_> = defined
        .keys()
        .filter(|k| !exported.contains_key(*k))
        .collect();
    assert!(extra.is_empty(), "exported but not in registry/: {extra:?}");
    assert!(
        missing.is_empty(),
        "in registry/ but never exported: {missing:?}"
    );
    for (name, def) in &defined {
        assert_eq!(&exported[name], def, "{name}: instrument or labels differ");
    }
}

#[test]
fn drop_reasons_and_kinds_match_the_registry_enums() {
    let reasons: BTreeSet<String> = DropReason::ALL
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
    assert_eq!(reasons, enum_members("mesh.drop.reason"));
    let kinds: BTreeSet<String> = KIND_NAMES[1..7].iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(kinds, enum_members("mesh.message.kind"));
    let states: BTreeSet<String> = ["live", "pending", "unreachable"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(states, enum_members("mesh.peer.state"));
    let xdp: BTreeSet<String> = dataplane::xdp::Reason::ALL
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
    assert_eq!(xdp, enum_members("mesh.xdp.reason"));
    let modes: BTreeSet<String> = controlplane::metrics::XDP_MODES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(modes, enum_members("mesh.xdp.mode"));
    let binds: BTreeSet<String> = controlplane::metrics::XSK_BIND_MODES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(binds, enum_members("mesh.xsk.bind_mode"));
}
