//! Signed statements: the cores never hold a key or a crypto library. A driver lends an
//! [`Authenticator`] that signs with this node's key and checks other nodes' signatures.
//!
//! - `meshd` signs with the node's Ed25519 key (the same key its certificate is issued for,
//!   so a signed statement is bound to a CA-certified member) and verifies Ed25519.
//! - The simulator and the unit tests use [`ModelAuth`]: a model of unforgeable signatures
//!   that costs a hash instead of an Ed25519 operation, so 100k-node runs stay affordable.
//!   A Byzantine node in the simulator can sign only as itself, exactly like a real one.
//!
//! Every signed statement starts with a context tag naming what it is (for example
//! `b"mesh/swim/alive/1"`), so a signature for one kind of statement is never valid for
//! another.

use crate::id::NodeId;

/// Length of a signature.
pub const SIGNATURE_LEN: usize = 64;

/// A signature over a statement.
pub type Signature = [u8; SIGNATURE_LEN];

/// Signs as this node and checks other nodes' signatures.
pub trait Authenticator {
    /// This node's signature over `msg`.
    fn sign(&self, msg: &[u8]) -> Signature;
    /// Whether `sig` is `signer`'s signature over `msg`.
    fn verify(&self, signer: &NodeId, msg: &[u8], sig: &Signature) -> bool;
}

/// The simulator's and the tests' signatures: a keyed hash of the signer's id and the
/// statement under a secret shared by the model (not by the nodes). A node that signs only
/// through its own `ModelAuth` cannot produce another node's signature, which is the
/// property the protocol relies on; it is not cryptography and never runs in `meshd`.
#[derive(Clone, Debug)]
pub struct ModelAuth {
    me: NodeId,
    secret: u64,
}

impl ModelAuth {
    /// Signs as `me` in the model keyed by `secret` (one secret per simulated mesh).
    pub fn new(me: NodeId, secret: u64) -> Self {
        ModelAuth { me, secret }
    }

    fn tag(&self, signer: &NodeId, msg: &[u8]) -> Signature {
        use core::hash::{BuildHasher, Hasher};
        let mut sig = [0u8; SIGNATURE_LEN];
        for (lane, chunk) in sig.chunks_exact_mut(8).enumerate() {
            let mut h = foldhash::quality::FixedState::with_seed(
                self.secret ^ (lane as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            )
            .build_hasher();
            h.write(&signer.0);
            h.write(msg);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        sig
    }
}

impl Authenticator for ModelAuth {
    fn sign(&self, msg: &[u8]) -> Signature {
        self.tag(&self.me, msg)
    }

    fn verify(&self, signer: &NodeId, msg: &[u8], sig: &Signature) -> bool {
        self.tag(signer, msg) == *sig
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_signatures_bind_signer_and_statement() {
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        let (sa, sb) = (ModelAuth::new(a, 7), ModelAuth::new(b, 7));
        let sig = sa.sign(b"mesh/test/1 hello");
        assert!(sb.verify(&a, b"mesh/test/1 hello", &sig), "anyone checks");
        assert!(
            !sb.verify(&b, b"mesh/test/1 hello", &sig),
            "bound to the signer"
        );
        assert!(
            !sb.verify(&a, b"mesh/test/1 hellp", &sig),
            "bound to the statement"
        );
        assert_ne!(sb.sign(b"mesh/test/1 hello"), sig, "b cannot sign as a");
        let other_mesh = ModelAuth::new(b, 8);
        assert!(!other_mesh.verify(&a, b"mesh/test/1 hello", &sig));
    }
}
