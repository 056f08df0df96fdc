//! Generates `$OUT_DIR/registry.rs` from the Weaver registry in `../registry/`, so the
//! Prometheus and OTLP exports read one table (`controlplane::metrics::registry`):
//!
//! - `attr::*`: one `AttributeDef` per attribute of `attributes.yaml` (id, brief, enum member
//!   values; none for a string attribute), and `ALL`, all of them in registry order;
//! - `metric::*`: one `MetricDef` per `type: metric` group of `metrics.yaml` (name, instrument,
//!   unit, brief, attributes), and `METRICS`, all of them in registry order;
//! - `label::*`: one `mesh_types::labels!` enum per enum attribute, its variants the members in
//!   registry order (`mesh.member.status` becomes `MemberStatus`, member `zero_copy` becomes
//!   `ZeroCopy`).
//!
//! A malformed registry (unknown instrument, missing brief or unit, an attribute reference that
//! `attributes.yaml` does not define, a duplicate id) fails the build with the reason
//! (`controlplane/tests/registry.rs` includes this file to test [`generate`] on broken copies).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

/// One attribute of `attributes.yaml`.
struct Attribute {
    id: String,
    brief: String,
    /// (member id, value, brief); empty for a string attribute.
    members: Vec<(String, String, String)>,
}

/// One metric group of `metrics.yaml`.
struct Metric {
    name: String,
    instrument: &'static str,
    unit: String,
    brief: String,
    attributes: Vec<String>,
}

fn main() {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let out = std::env::var_os("OUT_DIR").map(PathBuf::from);
    let (Some(manifest), Some(out)) = (manifest, out) else {
        panic!("cargo sets CARGO_MANIFEST_DIR and OUT_DIR for build scripts");
    };
    let dir = manifest.join("../registry");
    for f in ["metrics.yaml", "attributes.yaml", "manifest.yaml"] {
        println!("cargo::rerun-if-changed={}", dir.join(f).display());
    }
    let code = generate(&dir).unwrap_or_else(|e| panic!("registry/: {e}"));
    let target = out.join("registry.rs");
    std::fs::write(&target, code).unwrap_or_else(|e| panic!("{}: {e}", target.display()));
}

fn load(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn groups(file: &Value, name: &str) -> Result<Vec<Value>, String> {
    file.get("groups")
        .and_then(Value::as_sequence)
        .cloned()
        .ok_or_else(|| format!("{name}: no `groups` list"))
}

fn text(v: &Value, key: &str, what: &str) -> Result<String, String> {
    match v.get(key).and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => Err(format!("{what}: no `{key}`")),
    }
}

fn attributes(file: &Value) -> Result<Vec<Attribute>, String> {
    let mut out = Vec::new();
    for g in groups(file, "attributes.yaml")? {
        let Some(list) = g.get("attributes").and_then(Value::as_sequence) else {
            continue;
        };
        for a in list {
            let id = text(a, "id", "an attribute of attributes.yaml")?;
            let brief = text(a, "brief", &id)?;
            let ty = a.get("type").ok_or_else(|| format!("{id}: no `type`"))?;
            let members = match ty {
                Value::String(s) if s == "string" => Vec::new(),
                Value::Mapping(_) => {
                    let ms = ty
                        .get("members")
                        .and_then(Value::as_sequence)
                        .ok_or_else(|| format!("{id}: enum type without `members`"))?;
                    let mut members = Vec::new();
                    for m in ms {
                        let mid = text(m, "id", &format!("a member of {id}"))?;
                        let what = format!("{id} member {mid}");
                        members.push((mid, text(m, "value", &what)?, text(m, "brief", &what)?));
                    }
                    if members.is_empty() {
                        return Err(format!("{id}: enum without members"));
                    }
                    members
                }
                other => return Err(format!("{id}: unsupported type {other:?}")),
            };
            out.push(Attribute { id, brief, members });
        }
    }
    Ok(out)
}

fn metrics(file: &Value, defined: &BTreeSet<&str>) -> Result<Vec<Metric>, String> {
    let mut out = Vec::new();
    for g in groups(file, "metrics.yaml")? {
        let gid = text(&g, "id", "a group of metrics.yaml")?;
        if g.get("type").and_then(Value::as_str) != Some("metric") {
            return Err(format!(
                "{gid}: metrics.yaml holds only `type: metric` groups"
            ));
        }
        let name = text(&g, "metric_name", &gid)?;
        let instrument = match text(&g, "instrument", &name)?.as_str() {
            "counter" => "Counter",
            "gauge" => "Gauge",
            "histogram" => "Histogram",
            other => return Err(format!("{name}: unsupported instrument {other:?}")),
        };
        let mut attributes = Vec::new();
        for a in g
            .get("attributes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let r = text(a, "ref", &format!("an attribute of {name}"))?;
            if !defined.contains(r.as_str()) {
                return Err(format!("{name}: attribute {r} is not in attributes.yaml"));
            }
            attributes.push(r);
        }
        out.push(Metric {
            instrument,
            unit: text(&g, "unit", &name)?,
            brief: text(&g, "brief", &name)?,
            attributes,
            name,
        });
    }
    Ok(out)
}

/// `mesh.gossip.messages.delivered` -> `MESH_GOSSIP_MESSAGES_DELIVERED`.
fn const_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `zero_copy` -> `ZeroCopy`, `mesh.member.status` (without `mesh.`) -> `MemberStatus`.
fn type_name(id: &str) -> String {
    id.trim_start_matches("mesh.")
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn unique(what: &str, names: impl IntoIterator<Item = String>) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for n in names {
        if !seen.insert(n.clone()) {
            return Err(format!("two {what} map to {n}"));
        }
    }
    Ok(())
}

pub(crate) fn generate(dir: &Path) -> Result<String, String> {
    let attrs = attributes(&load(&dir.join("attributes.yaml"))?)?;
    let defined: BTreeSet<&str> = attrs.iter().map(|a| a.id.as_str()).collect();
    let mets = metrics(&load(&dir.join("metrics.yaml"))?, &defined)?;
    unique("attributes", attrs.iter().map(|a| const_name(&a.id)))?;
    unique("metrics", mets.iter().map(|m| const_name(&m.name)))?;
    unique(
        "enum attributes",
        attrs
            .iter()
            .filter(|a| !a.members.is_empty())
            .map(|a| type_name(&a.id)),
    )?;
    for a in &attrs {
        unique(
            &format!("members of {}", a.id),
            a.members.iter().map(|m| type_name(&m.0)),
        )?;
        unique(
            &format!("values of {}", a.id),
            a.members.iter().map(|m| m.1.clone()),
        )?;
    }

    let mut s = String::from(
        "// Generated by controlplane/build.rs from registry/*.yaml: do not edit.\n\n",
    );
    s += "/// Every attribute of `registry/attributes.yaml`.\npub mod attr {\n    use crate::metrics::AttributeDef;\n\n";
    for a in &attrs {
        let members: Vec<String> = a.members.iter().map(|m| format!("{:?}", m.1)).collect();
        let _ = writeln!(
            s,
            "    #[doc = {doc:?}]\n    pub const {c}: AttributeDef = AttributeDef {{\n        id: {id:?},\n        brief: {brief:?},\n        members: &[{members}],\n    }};",
            doc = format!("`{}`: {}", a.id, a.brief),
            c = const_name(&a.id),
            id = a.id,
            brief = a.brief,
            members = members.join(", "),
        );
    }
    let all: Vec<String> = attrs
        .iter()
        .map(|a| format!("        &{},", const_name(&a.id)))
        .collect();
    let _ = writeln!(
        s,
        "    /// Every attribute, in registry order.\n    pub const ALL: [&AttributeDef; {n}] = [\n{all}\n    ];",
        n = attrs.len(),
        all = all.join("\n"),
    );
    s += "}\n\n/// Every metric of `registry/metrics.yaml`.\npub mod metric {\n    use crate::metrics::{Instrument, MetricDef};\n\n";
    for m in &mets {
        let attrs: Vec<String> = m
            .attributes
            .iter()
            .map(|a| format!("&super::attr::{}", const_name(a)))
            .collect();
        let _ = writeln!(
            s,
            "    #[doc = {doc:?}]\n    pub const {c}: MetricDef = MetricDef {{\n        name: {name:?},\n        instrument: Instrument::{inst},\n        unit: {unit:?},\n        brief: {brief:?},\n        attributes: &[{attrs}],\n    }};",
            doc = format!(
                "`{}` ({}, `{}`): {}",
                m.name,
                m.instrument.to_ascii_lowercase(),
                m.unit,
                m.brief
            ),
            c = const_name(&m.name),
            name = m.name,
            inst = m.instrument,
            unit = m.unit,
            brief = m.brief,
            attrs = attrs.join(", "),
        );
    }
    let all: Vec<String> = mets
        .iter()
        .map(|m| format!("        &{},", const_name(&m.name)))
        .collect();
    let _ = writeln!(
        s,
        "    /// Every metric, in registry order.\n    pub const METRICS: [&MetricDef; {n}] = [\n{all}\n    ];\n}}\n",
        n = mets.len(),
        all = all.join("\n"),
    );
    s += "/// One `labels!` enum per enum attribute: its members, in registry order.\npub mod label {\n";
    for a in attrs.iter().filter(|a| !a.members.is_empty()) {
        let _ = writeln!(
            s,
            "    mesh_types::labels! {{\n        #[doc = {doc:?}]\n        pub enum {ty} {{",
            doc = format!("`{}`: {}", a.id, a.brief),
            ty = type_name(&a.id),
        );
        for (i, (id, value, brief)) in a.members.iter().enumerate() {
            let _ = writeln!(
                s,
                "            #[doc = {brief:?}]\n            {v} = {i} => {value:?},",
                v = type_name(id),
            );
        }
        s += "        }\n    }\n\n";
    }
    s += "}\n";
    Ok(s)
}
