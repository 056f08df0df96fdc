//! What the driver reports: the status and peers views, and the core's metrics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use dataplane::pipeline::DropReason;
use mesh_protocol::{Node as Core, Reachability};
use rand::rngs::SmallRng;

use super::driver::Driver;
use crate::metrics::label::{MemberStatus, OverlayView};
use crate::service::{OverlayStatus, PeerView, Status, TreeStatus};

impl Driver {
    /// The node's status.
    pub(super) fn status(&mut self) -> Status {
        self.refresh_core_metrics();
        let c = &self.core;
        let counts = member_counts(c);
        let st = c.partition_status();
        let overlay = OverlayStatus {
            active: c.active_view().len(),
            passive: c.passive_view().len(),
            eager: c.eager_peers().len(),
            lazy: c.lazy_peers().len(),
            members: MemberStatus::ALL
                .iter()
                .zip(counts)
                .map(|(s, n)| (s.as_str().to_owned(), n))
                .collect(),
            incarnation: c.incarnation(),
            local_health: c.status().lhm,
            partition: match st.state {
                Reachability::Connected => "connected",
                Reachability::Partitioned => "partitioned",
                Reachability::Isolated => "isolated",
            }
            .to_owned(),
            reachable: st.reachable,
            expected: st.expected,
            admitted: self.admitted.len(),
            address_book: self.book.len(),
            tree: c.tree().map(|t| TreeStatus {
                root: hex::encode(t.root().0),
                is_root: t.is_root(),
                hops: t.hops(),
                wave: t.seq(),
                parent: t.parent().map(|p| hex::encode(p.0)),
                children: t.children().count(),
                parent_changes: t.stats().parent_changes,
            }),
        };
        // Isolated only counts once there was a mesh to be cut off from.
        let partitioned = st.state == Reachability::Partitioned
            || (st.state == Reachability::Isolated && st.expected > 0);
        let f = &self.fast;
        let m = &self.service.metrics;
        Status {
            backend: f.backend().to_owned(),
            xdp_mode: f.xdp_mode(),
            xdp: self
                .service
                .xdp
                .as_ref()
                .and_then(|x| x.counters().ok())
                .map(|c| {
                    dataplane::xdp::Reason::ALL
                        .iter()
                        .map(|r| (r.as_str().to_owned(), c[*r as usize]))
                        .collect()
                }),
            node_id: self.me.to_hex(),
            listen: self.addrs.0,
            api: self.addrs.1,
            peers_live: overlay.active,
            partitioned,
            overlay,
            stored_messages: self.store.len(),
            delivered_remembered: self.ledger.len(),
            equivocating_origins: self.ledger.flagged(),
            received: f.sum(|s| s.received.load(Relaxed)),
            accepted: HashMap::from([("data".to_owned(), f.sum(|s| s.accepted.load(Relaxed)))]),
            dropped: DropReason::ALL
                .iter()
                .map(|r| {
                    (
                        r.as_str().to_owned(),
                        f.sum(|s| s.dropped[*r as usize].load(Relaxed)),
                    )
                })
                .collect(),
            repairs: f.sum(|s| s.repairs.load(Relaxed)),
            forwarded: f.sum(|s| s.forwarded.load(Relaxed)),
            delivered: m.delivered.get(),
            published: m.published.get(),
            uptime_ms: u64::try_from(self.clock.origin.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The active view as the peers API shows it.
    pub(super) fn peers(&self) -> Vec<PeerView> {
        let c = &self.core;
        c.active_view()
            .iter()
            .map(|n| PeerView {
                node_id: n.to_hex(),
                addr: self
                    .book
                    .addr(n)
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                rtt_us: c.rtt_us(n),
                eager: c.eager_peers().contains(n),
            })
            .collect()
    }

    /// Copies the core's views, members and counters into the metrics.
    pub(super) fn refresh_core_metrics(&mut self) {
        let m = &self.service.metrics;
        let c = &self.core;
        for (v, n) in [
            (OverlayView::Active, c.active_view().len()),
            (OverlayView::Passive, c.passive_view().len()),
            (OverlayView::Eager, c.eager_peers().len()),
            (OverlayView::Lazy, c.lazy_peers().len()),
        ] {
            m.view_size(v).set(n as i64);
        }
        for (st, n) in MemberStatus::ALL.iter().zip(member_counts(c)) {
            m.member_count(*st).set(n as i64);
        }
        let s = c.stats();
        let last = &self.last;
        let d = |now: u64, then: u64| now.saturating_sub(then);
        m.probes.inc_by(d(s.swim.probes, last.swim.probes));
        m.suspicions
            .inc_by(d(s.swim.suspicions_raised, last.swim.suspicions_raised));
        m.declared_dead
            .inc_by(d(s.swim.declared_dead, last.swim.declared_dead));
        m.refutations
            .inc_by(d(s.swim.refutations, last.swim.refutations));
        m.confirmations
            .inc_by(d(s.swim.confirmations, last.swim.confirmations));
        m.missed_nacks
            .inc_by(d(s.swim.missed_nacks, last.swim.missed_nacks));
        m.local_health.set(i64::from(c.status().lhm));
        m.prunes.inc_by(d(s.gossip.prunes, last.gossip.prunes));
        m.grafts.inc_by(d(s.gossip.grafts, last.gossip.grafts));
        m.tree_parent_changes
            .inc_by(d(s.tree.parent_changes, last.tree.parent_changes));
        m.tree_roots_lost
            .inc_by(d(s.tree.roots_lost, last.tree.roots_lost));
        if let Some(tree) = c.tree() {
            m.tree_depth.set(i64::from(tree.hops()));
        }
        self.last = s;
    }
}

/// Members by status, in [`MemberStatus::ALL`] order (the core's status values).
fn member_counts(c: &Core<SmallRng>) -> [usize; MemberStatus::COUNT] {
    let mut counts = [0usize; MemberStatus::COUNT];
    for (_, e) in c.members().iter() {
        counts[e.state.status as usize] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_protocol::Status;

    #[test]
    fn the_cores_status_values_index_the_member_status_labels() {
        for (st, name) in [
            (Status::Alive, "alive"),
            (Status::Suspect, "suspect"),
            (Status::Dead, "dead"),
            (Status::Left, "left"),
        ] {
            assert_eq!(MemberStatus::ALL[st as usize].as_str(), name);
        }
    }
}
