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
/// while the flood waits behind its own full queue (backpressure: nothing of
/// an ordered stream is dropped); afterwards all 6000 arrive in order.
#[tokio::test]
async fn a_flooding_peer_does_not_crowd_out_the_others() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        // The default receive configuration, the one the control plane uses.
        let r = node(&ca, 1);
        let flooder = std::sync::Arc::new(node(&ca, 2));
        let honest = [node(&ca, 3), node(&ca, 4)];
        for m in std::iter::once(&*flooder).chain(&honest) {
            join(m, &r).await;
        }
        for _ in 0..3 {
            assert!(matches!(next_event(&r).await, PeerEvent::Connected(..)));
        }
        let r_id = r.node_id();
        let cap = TransportConfig::default().peer_recv_queue as u64;

        // The flood, 100-byte frames numbered, while nobody reads on r: its sends
        // block once r's queue for it and the QUIC windows are full.
        let f = flooder.clone();
        let flood = tokio::spawn(async move {
            for i in 0..FLOOD {
                let mut frame = [0xffu8; 100];
                frame[..8].copy_from_slice(&i.to_le_bytes());
                f.send(&r_id, &frame).await.expect("flood send");
            }
        });
        eventually("the flood fills its own queue", || {
            let s = r.stats();
            s.frames_received >= cap && s.frames_backpressured >= 1
        })
        .await;

        // Then the few, while the flood waits behind its queue.
        for (k, h) in honest.iter().enumerate() {
            for i in 0..FEW {
                h.send(&r_id, &[k as u8, i]).await.expect("honest send");
            }
        }
        eventually("the honest frames reached r", || {
            r.stats().frames_received >= cap + 2 * u64::from(FEW)
        })
        .await;

        // Three peers with frames waiting, served in turn: the ten honest
        // frames are among the first 3 * FEW + 3 handed out, in order per peer.
        let ids: Vec<NodeId> = honest.iter().map(Transport::node_id).collect();
        let mut got: HashMap<NodeId, Vec<u8>> = HashMap::new();
        let mut flood_seen = Vec::new();
        let bound = 3 * usize::from(FEW) + 3;
        for _ in 0..bound {
            let (from, _, payload) = r.recv().await.expect("recv");
            if let Some(k) = ids.iter().position(|id| *id == from) {
                assert_eq!(usize::from(payload[0]), k);
                got.entry(from).or_default().push(payload[1]);
            } else {
                flood_seen.push(payload);
            }
        }
        let want: Vec<u8> = (0..FEW).collect();
        for id in &ids {
            assert_eq!(
                got.get(id),
                Some(&want),
                "all of {id}'s frames, in order, within the first {bound} received"
            );
        }
        // The rest of the flood: nothing lost, in order.
        while (flood_seen.len() as u64) < FLOOD {
            let (_, _, payload) = r.recv().await.expect("recv");
            flood_seen.push(payload);
        }
        for (i, p) in flood_seen.iter().enumerate() {
            let mut n = [0u8; 8];
            n.copy_from_slice(&p[..8]);
            assert_eq!(
                u64::from_le_bytes(n),
                i as u64,
                "flood frame {i} out of order"
            );
        }
        flood.await.expect("flood task");
        let s = r.stats();
        assert_eq!(
            s.frames_dropped_queue_full, 0,
            "no stream frame dropped: {s:?}"
        );
        assert_eq!(s.frames_received, FLOOD + 2 * u64::from(FEW), "{s:?}");
    })
    .await
    .expect("test bound");
}
