//! Command-line runner: `mesh-sim --nodes N --seed S --loss P --churn P [--partition]
//! [--broadcasts B] [--partition-ms MS]` prints the report table. Tuning flags for
//! experiments: `--ihave-ms`, `--near-slots`, `--rebalance-ratio`, `--optimize`,
//! `--deep-flood`, `--prune-after`, `--interval-ms`, `--directional-prune`, `--join-spacing-us`,
//! `--latency-base-us`, `--tree plumtree|rooted` (default rooted), `--beacon-ms`.
//! Byzantine tree attacks: `--byzantine F` (fraction of nodes), `--attack withhold|fake-root`
//! (default withhold), `--byzantine-root` (node 0, the rightful root, is one of them); the
//! honest-only run of the same seed follows and the p99 delivery-time inflation is printed.

use std::time::Instant as WallClock;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let nodes: usize = get("--nodes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let seed: u64 = get("--seed").and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut cfg = mesh_sim::SimConfig::new(nodes, seed);
    cfg.loss = get("--loss").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    cfg.churn = get("--churn").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    cfg.partition = args.iter().any(|a| a == "--partition");
    if let Some(b) = get("--broadcasts").and_then(|v| v.parse().ok()) {
        cfg.broadcasts = b;
    }
    if let Some(p) = get("--partition-ms").and_then(|v| v.parse().ok()) {
        cfg.partition_ms = p;
    }
    if let Some(s) = get("--join-spacing-us").and_then(|v| v.parse().ok()) {
        cfg.join_spacing_us = s;
    }
    if let Some(r) = get("--latency-base-us").and_then(|v| v.parse().ok()) {
        cfg.latency_base_us = r;
    }
    if let Some(r) = get("--ihave-ms").and_then(|v| v.parse().ok()) {
        cfg.node.gossip.ihave_timeout = mesh_protocol::Duration::from_millis(r);
    }
    if let Some(r) = get("--near-slots").and_then(|v| v.parse().ok()) {
        cfg.node.topology.near_slots = r;
    }
    if let Some(r) = get("--rebalance-ratio").and_then(|v| v.parse().ok()) {
        cfg.node.topology.rebalance_ratio = r;
    }
    if let Some(r) = get("--interval-ms").and_then(|v| v.parse().ok()) {
        cfg.broadcast_interval_ms = r;
    }
    if args.iter().any(|a| a == "--directional-prune") {
        cfg.node.gossip.directional_prune = true;
    }
    if let Some(r) = get("--prune-after").and_then(|v| v.parse().ok()) {
        cfg.node.gossip.prune_after_duplicates = r;
    }
    if let Some(r) = get("--deep-flood").and_then(|v| v.parse().ok()) {
        cfg.node.gossip.deep_flood_round = r;
    }
    if let Some(r) = get("--optimize").and_then(|v| v.parse().ok()) {
        cfg.node.gossip.optimize_threshold = r;
    }
    match get("--tree").as_deref() {
        None | Some("rooted") => {}
        Some("plumtree") => cfg.node.tree.enabled = false,
        Some(other) => {
            eprintln!("--tree must be rooted or plumtree, not {other}");
            std::process::exit(2);
        }
    }
    if let Some(r) = get("--beacon-ms").and_then(|v| v.parse().ok()) {
        cfg.node.tree.beacon_interval = mesh_protocol::Duration::from_millis(r);
        cfg.node.tree.root_timeout = mesh_protocol::Duration::from_millis(r * 5);
        cfg.node.tree.settle = mesh_protocol::Duration::from_millis(r.div_ceil(4));
    }
    if let Some(f) = get("--byzantine").and_then(|v| v.parse().ok()) {
        cfg.byzantine = f;
        cfg.byzantine_root = args.iter().any(|a| a == "--byzantine-root");
        cfg.tree_attack = match get("--attack").as_deref() {
            None | Some("withhold") => mesh_sim::TreeAttack::Withhold,
            Some("fake-root") => mesh_sim::TreeAttack::FakeRoot,
            Some("false-accusations") => {
                cfg.member_attack = mesh_sim::MemberAttack::FalseAccusations;
                mesh_sim::TreeAttack::None
            }
            Some(other) => {
                eprintln!("--attack must be withhold, fake-root or false-accusations, not {other}");
                std::process::exit(2);
            }
        };
    }
    println!(
        "mesh-sim nodes={} seed={} loss={} churn={} partition={} tree={} (active {}, passive {}, members cap {})",
        nodes,
        seed,
        cfg.loss,
        cfg.churn,
        cfg.partition,
        if cfg.node.tree.enabled {
            "rooted"
        } else {
            "plumtree"
        },
        cfg.node.views.active_size,
        cfg.node.views.passive_size,
        cfg.node.member_capacity
    );
    let t = WallClock::now();
    let report = mesh_sim::run(&cfg);
    print!("{}", report.table());
    println!(
        "wall time s                    {:.1}",
        t.elapsed().as_secs_f64()
    );
    if cfg.tree_attack != mesh_sim::TreeAttack::None
        || cfg.member_attack != mesh_sim::MemberAttack::None
    {
        let honest_cfg = mesh_sim::SimConfig {
            tree_attack: mesh_sim::TreeAttack::None,
            member_attack: mesh_sim::MemberAttack::None,
            ..cfg.clone()
        };
        let t = WallClock::now();
        let honest = mesh_sim::run(&honest_cfg);
        println!(
            "honest-only run (same seed, the same nodes honest): delivery {:.6}, delivery ms p50 / p99 {:.1} / {:.1}, bytes per node {}, wall {:.1} s",
            honest.delivery_ratio,
            honest.delivery_ms_p50_p99.0,
            honest.delivery_ms_p50_p99.1,
            honest.bytes_sent / honest.nodes.max(1) as u64,
            t.elapsed().as_secs_f64()
        );
        println!(
            "p99 delivery-time inflation    {:.2}x ({:?}, {} Byzantine of {})",
            mesh_sim::p99_inflation(&report, &honest),
            (cfg.tree_attack, cfg.member_attack),
            report.byzantine,
            report.nodes
        );
    }
}
