//! Issue 11, item 4: one flooding peer must not crowd the others out of the
//! receive side. Loopback only.

mod common;

use std::collections::HashMap;

use common::*;
use mesh_transport::{MeshCa, NodeId, PeerEvent, Transport, TransportConfig};

const FLOOD: u64 = 6000;
const FEW: u8 = 5;

async fn join(member: &Transport, to: &Transport) {
    member
        .connect(to.local_addr().expect("addr"), Some(to.node_id()))
        .await
        .expect("connect");
}

/// One member floods 6000 frames into a node that is not reading; two others
/// then send five each. Every one of the ten arrives, within the first frames
/// `recv` hands out (bounded by count: the three peers are served in turn),
/// and the flood's excess is counted as dropped.
#[tokio::test]
async fn a_flooding_peer_does_not_crowd_out_the_others() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        // The default receive configuration, the one the control plane uses.
        let r = node(&ca, 1);
        let flooder = node(&ca, 2);
        let honest = [node(&ca, 3), node(&ca, 4)];
        for m in std::iter::once(&flooder).chain(&honest) {
            join(m, &r).await;
        }
        for _ in 0..3 {
            assert!(matches!(next_event(&r).await, PeerEvent::Connected(..)));
        }
        let r_id = r.node_id();

        // The flood, 100-byte frames, while nobody reads on r.
        let frame = [0xffu8; 100];
        for _ in 0..FLOOD {
            flooder.send(&r_id, &frame).await.expect("flood send");
        }
        eventually("every flood frame queued or dropped", || {
            let s = r.stats();
            s.frames_received + s.frames_dropped_queue_full == FLOOD
        })
        .await;
        let flooded = r.stats();
        assert!(
            flooded.frames_dropped_queue_full > 0,
            "the flood overflows: {flooded:?}"
        );

        // Then the few, still while the flood sits in r's queues.
        for (k, h) in honest.iter().enumerate() {
            for i in 0..FEW {
                h.send(&r_id, &[k as u8, i]).await.expect("honest send");
            }
        }
        eventually("the honest frames reached r", || {
            let s = r.stats();
            s.frames_received + s.frames_dropped_queue_full == FLOOD + 2 * u64::from(FEW)
        })
        .await;
        let s = r.stats();
        assert_eq!(
            s.frames_dropped_queue_full, flooded.frames_dropped_queue_full,
            "no honest frame is dropped: {s:?}"
        );

        // Three peers with frames waiting, served in turn: the ten honest
        // frames are among the first 3 * FEW + 3 handed out, in order per peer.
        let ids: Vec<NodeId> = honest.iter().map(Transport::node_id).collect();
        let mut got: HashMap<NodeId, Vec<u8>> = HashMap::new();
        let bound = 3 * usize::from(FEW) + 3;
        for _ in 0..bound {
            let (from, _, payload) = r.recv().await.expect("recv");
            if let Some(k) = ids.iter().position(|id| *id == from) {
                assert_eq!(usize::from(payload[0]), k);
                got.entry(from).or_default().push(payload[1]);
            }
        }
        // The flood's excess over its own queue was dropped and counted
        // under its reason; its queue holds the rest.
        let cap = TransportConfig::default().peer_recv_queue as u64;
        let s = r.stats();
        assert_eq!(s.frames_dropped_peer_queue_full, FLOOD - cap, "{s:?}");
        assert_eq!(s.frames_dropped_total_queue_full, 0, "{s:?}");
        assert_eq!(s.frames_received, cap + 2 * u64::from(FEW), "{s:?}");
        assert_eq!(s.frames_delivered, bound as u64, "{s:?}");
        let want: Vec<u8> = (0..FEW).collect();
        for id in &ids {
            assert_eq!(
                got.get(id),
                Some(&want),
                "all of {id}'s frames, in order, within the first {bound} received"
            );
        }
    })
    .await
    .expect("test bound");
}
