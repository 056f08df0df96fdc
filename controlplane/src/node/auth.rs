//! The protocol cores' [`Authenticator`] in `meshd`: Ed25519 with the node's own key, the key
//! its mesh certificate is issued for, so a statement it signs is bound to a CA-certified
//! member. Verification uses the data plane's rules (ZIP-215 with small-order keys
//! rejected), the same verdict as for data messages.

use dataplane::identity::Identity;
use dataplane::verify::{VerifyItem, verify_one};
use mesh_protocol::{Authenticator, NodeId, Signature};

/// Signs as this node with its Ed25519 key.
pub(crate) struct Ed25519Auth {
    key: Identity,
}

impl Ed25519Auth {
    /// Signs with `identity` (a copy of the node's key).
    pub(crate) fn new(identity: &Identity) -> Self {
        Ed25519Auth {
            key: Identity::from_seed(identity.secret_seed()),
        }
    }
}

impl Authenticator for Ed25519Auth {
    fn sign(&self, msg: &[u8]) -> Signature {
        self.key.sign(msg)
    }

    fn verify(&self, signer: &NodeId, msg: &[u8], sig: &Signature) -> bool {
        verify_one(&VerifyItem {
            public_key: &signer.0,
            message: msg,
            signature: sig,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_statements_bind_signer_and_statement() {
        let (a, b) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let (sa, sb) = (Ed25519Auth::new(&a), Ed25519Auth::new(&b));
        let (ida, idb) = (a.node_id(), b.node_id());
        let sig = sa.sign(b"mesh/test/1 hello");
        assert!(sb.verify(&ida, b"mesh/test/1 hello", &sig));
        assert!(!sb.verify(&idb, b"mesh/test/1 hello", &sig));
        assert!(!sb.verify(&ida, b"mesh/test/1 hellp", &sig));
    }
}
