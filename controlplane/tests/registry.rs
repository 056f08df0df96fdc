//! The code exports exactly the metrics `registry/` defines, with the same
//! instrument, labels, HELP text and enum members. The YAML is read here on its
//! own (not through the table `build.rs` generates), so a generation bug fails too.

use std::collections::{BTreeMap, BTreeSet};

use controlplane::metrics::{Instrument, Metrics, label, label_name, prometheus_name, registry};
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

/// Registry metric → (Prometheus name, type, HELP, label names).
type Exported = BTreeMap<String, (MetricType, String, BTreeSet<String>)>;

/// Every metric of `metrics.yaml` as the Prometheus endpoint should export it.
fn registry_metrics() -> Exported {
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
        let brief = g
            .brief
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| panic!("{name} has no brief"));
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
        out.insert(prometheus_name(&name, inst, &unit), (ty, brief, labels));
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
    let exported: Exported = m
        .registry
        .gather()
        .iter()
        .map(|f| {
            let labels = f
                .get_metric()
                .first()
                .map(|x| x.get_label().iter().map(|l| l.name().to_owned()).collect())
                .unwrap_or_default();
            (
                f.name().to_owned(),
                (f.get_field_type(), f.help().to_owned(), labels),
            )
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
        assert_eq!(
            &exported[name], def,
            "{name}: instrument, HELP or labels differ"
        );
    }
}

/// Every enum attribute of `attributes.yaml`: id → member values in order (an empty list for
/// a string attribute).
fn attributes() -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for g in load("attributes.yaml").groups {
        for a in g.attributes {
            let id = a["id"].as_str().expect("attribute id").to_owned();
            let members = a["type"]["members"]
                .as_sequence()
                .map(|ms| {
                    ms.iter()
                        .map(|m| m["value"].as_str().unwrap_or_default().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            out.insert(id, members);
        }
    }
    out
}

#[test]
fn the_generated_table_is_the_registry() {
    let attrs = attributes();
    let generated: BTreeMap<String, Vec<String>> = registry::attr::ALL
        .iter()
        .map(|a| {
            (
                a.id.to_owned(),
                a.members.iter().map(|m| (*m).to_owned()).collect(),
            )
        })
        .collect();
    assert_eq!(generated, attrs);
    let defined = registry_metrics();
    let names: BTreeSet<String> = registry::metric::METRICS
        .iter()
        .map(|m| m.prometheus_name())
        .collect();
    assert_eq!(names, defined.keys().cloned().collect());
    assert_eq!(
        controlplane::otlp::registry_metrics().len(),
        defined.len(),
        "OTLP and Prometheus read one table"
    );
}

fn set<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    names.into_iter().map(str::to_owned).collect()
}

#[test]
fn code_enums_match_the_registry_enums() {
    assert_eq!(
        set(DropReason::ALL.iter().map(|r| r.as_str())),
        enum_members("mesh.drop.reason")
    );
    assert_eq!(
        set(dataplane::xdp::Reason::ALL.iter().map(|r| r.as_str())),
        enum_members("mesh.xdp.reason")
    );
    assert_eq!(
        set(label::MessageKind::ALL.map(label::MessageKind::as_str)),
        enum_members("mesh.message.kind")
    );
    assert_eq!(
        set(label::MemberStatus::ALL.map(label::MemberStatus::as_str)),
        enum_members("mesh.member.status")
    );
    assert_eq!(
        set(label::OverlayView::ALL.map(label::OverlayView::as_str)),
        enum_members("mesh.overlay.view")
    );
    assert_eq!(
        set(label::OverlayFrameOutcome::ALL.map(label::OverlayFrameOutcome::as_str)),
        enum_members("mesh.overlay.frame.outcome")
    );
    assert_eq!(
        set(label::XdpMode::ALL.map(label::XdpMode::as_str)),
        enum_members("mesh.xdp.mode")
    );
    assert_eq!(
        set(label::XskBindMode::ALL.map(label::XskBindMode::as_str)),
        enum_members("mesh.xsk.bind_mode")
    );
    // The peer-table mode's enums are gone.
    assert!(!attributes().contains_key("mesh.peer.state"));
    assert_eq!(enum_members("mesh.message.kind"), set(["data"]));
}

/// The generator of `build.rs`, to run it on broken copies of the registry.
#[path = "../build.rs"]
#[allow(dead_code)]
mod build;

/// A copy of `registry/` with `edit` applied to `file`; returns what the generator says.
fn generate_edited(file: &str, edit: impl Fn(&str) -> String) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["manifest.yaml", "metrics.yaml", "attributes.yaml"] {
        let from = format!("{}/../registry/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&from).expect("registry file");
        let text = if name == file { edit(&text) } else { text };
        std::fs::write(dir.path().join(name), text).expect("write copy");
    }
    build::generate(dir.path())
}

#[test]
fn the_build_refuses_a_broken_registry() {
    let same = generate_edited("metrics.yaml", str::to_owned).expect("the registry generates");
    let built = std::fs::read_to_string(concat!(env!("OUT_DIR"), "/registry.rs")).expect("built");
    assert_eq!(same, built, "the build used the registry as it is");
    let cases: [(&str, &str, &str, &str); 4] = [
        (
            "metrics.yaml",
            "instrument: histogram",
            "instrument: summary",
            "unsupported instrument",
        ),
        (
            "metrics.yaml",
            "ref: mesh.drop.reason",
            "ref: mesh.drop.cause",
            "mesh.drop.cause is not in attributes.yaml",
        ),
        (
            "metrics.yaml",
            "brief: Open agent subscriptions.",
            "brief: \"\"",
            "mesh.agent.subscribers: no `brief`",
        ),
        (
            "attributes.yaml",
            "{id: lazy, value: \"lazy\"",
            "{id: lazy, value: \"eager\"",
            "two values of mesh.overlay.view",
        ),
    ];
    for (file, from, to, why) in cases {
        let err = generate_edited(file, |t| {
            assert!(t.contains(from), "{file} has no `{from}`");
            t.replacen(from, to, 1)
        })
        .expect_err(why);
        assert!(err.contains(why), "`{from}` -> `{to}`: {err}");
    }
}
