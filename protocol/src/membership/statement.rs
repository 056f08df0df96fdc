//! Signed membership statements: what a [`MemberUpdate`] claims and who signed it.
//!
//! - A member's own liveness and departure, `Alive(i)` and `Left(i)`, are believed only when
//!   the member signed them itself: `mesh/swim/alive/1 ‖ node ‖ i` and
//!   `mesh/swim/left/1 ‖ node ‖ i` (incarnations little-endian).
//! - A claim about someone else, `Suspect(i)` or `Dead(i)`, is an *accusation*: it carries the
//!   accuser and its signature over `mesh/swim/suspect/1 ‖ accuser ‖ node ‖ i` (or
//!   `mesh/swim/dead/1 ‖ …`), plus the target's own signature over `Alive(i)` as proof that
//!   the target itself reached incarnation `i`. Nobody can therefore claim an incarnation the
//!   target never signed, and the target can always refute with `Alive(i + 1)`.
//!
//! The context tags keep a signature for one kind of statement from being valid for another
//! (and for any other signed statement of the mesh, see [`crate::auth`]).

use crate::auth::{Authenticator, Signature};
use crate::heal::{MemberState, Status};
use crate::id::NodeId;
use crate::wire::MemberUpdate;

/// Context tag of a self-signed `Alive(i)`.
pub const ALIVE_TAG: &[u8] = b"mesh/swim/alive/1";
/// Context tag of a self-signed `Left(i)`.
pub const LEFT_TAG: &[u8] = b"mesh/swim/left/1";
/// Context tag of an accusation `Suspect(i)`.
pub const SUSPECT_TAG: &[u8] = b"mesh/swim/suspect/1";
/// Context tag of an accusation `Dead(i)`.
pub const DEAD_TAG: &[u8] = b"mesh/swim/dead/1";

/// The bytes `node` signs to state it is in `state` (`Alive` or `Left`).
pub fn self_statement(node: &NodeId, state: MemberState) -> Vec<u8> {
    let tag = if state.status == Status::Left {
        LEFT_TAG
    } else {
        ALIVE_TAG
    };
    let mut m = Vec::with_capacity(tag.len() + 40);
    m.extend_from_slice(tag);
    m.extend_from_slice(&node.0);
    m.extend_from_slice(&state.incarnation.to_le_bytes());
    m
}

/// The bytes `accuser` signs to claim `node` is in `state` (`Suspect` or `Dead`).
pub fn accusation(accuser: &NodeId, node: &NodeId, state: MemberState) -> Vec<u8> {
    let tag = if state.status == Status::Dead {
        DEAD_TAG
    } else {
        SUSPECT_TAG
    };
    let mut m = Vec::with_capacity(tag.len() + 72);
    m.extend_from_slice(tag);
    m.extend_from_slice(&accuser.0);
    m.extend_from_slice(&node.0);
    m.extend_from_slice(&state.incarnation.to_le_bytes());
    m
}

/// Whether `status` is a claim only the member itself can make.
pub fn is_self_claim(status: Status) -> bool {
    matches!(status, Status::Alive | Status::Left)
}

/// `me`'s own signed statement that it is in `state` (`Alive` or `Left`).
pub fn sign_self(auth: &dyn Authenticator, me: NodeId, state: MemberState) -> MemberUpdate {
    MemberUpdate {
        node: me,
        state,
        sig: auth.sign(&self_statement(&me, state)),
        accuser: None,
    }
}

/// `me`'s signed accusation that `node` is in `state` (`Suspect` or `Dead`), with `proof`,
/// `node`'s own signature over `Alive(state.incarnation)`.
pub fn sign_accusation(
    auth: &dyn Authenticator,
    me: NodeId,
    node: NodeId,
    state: MemberState,
    proof: Signature,
) -> MemberUpdate {
    MemberUpdate {
        node,
        state,
        sig: proof,
        accuser: Some((me, auth.sign(&accusation(&me, &node, state)))),
    }
}

/// Why a statement was not believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// A self claim not signed by its subject, or an accusation whose proof is not the
    /// target's own `Alive` at that incarnation.
    BadSignature,
    /// An accusation not signed by its accuser, or accusing itself.
    BadAccuser,
    /// A self claim carrying an accuser, or an accusation without one.
    Malformed,
}

/// Checks `u`'s signatures: a self claim against its subject, an accusation against its
/// accuser and its proof against the target.
pub fn verify(auth: &dyn Authenticator, u: &MemberUpdate) -> Result<(), Invalid> {
    match (is_self_claim(u.state.status), u.accuser) {
        (true, None) => auth
            .verify(&u.node, &self_statement(&u.node, u.state), &u.sig)
            .then_some(())
            .ok_or(Invalid::BadSignature),
        (false, Some((by, sig))) => {
            if by == u.node || !auth.verify(&by, &accusation(&by, &u.node, u.state), &sig) {
                return Err(Invalid::BadAccuser);
            }
            let alive = MemberState::alive(u.state.incarnation);
            auth.verify(&u.node, &self_statement(&u.node, alive), &u.sig)
                .then_some(())
                .ok_or(Invalid::BadSignature)
        }
        _ => Err(Invalid::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ModelAuth;

    fn n(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[test]
    fn statements_verify_only_with_their_signer_and_their_kind() {
        let (a, b) = (ModelAuth::new(n(1), 9), ModelAuth::new(n(2), 9));
        let alive = sign_self(&a, n(1), MemberState::alive(3));
        assert_eq!(verify(&b, &alive), Ok(()));
        // b cannot state a's liveness
        let forged = sign_self(&b, n(1), MemberState::alive(4));
        assert_eq!(verify(&a, &forged), Err(Invalid::BadSignature));
        // an alive signature is no departure
        let mut left = alive;
        left.state.status = Status::Left;
        assert_eq!(verify(&a, &left), Err(Invalid::BadSignature));
        // an accusation with the target's proof verifies; at another incarnation it does not
        let dead = MemberState {
            incarnation: 3,
            status: Status::Dead,
        };
        let acc = sign_accusation(&b, n(2), n(1), dead, alive.sig);
        assert_eq!(verify(&a, &acc), Ok(()));
        let beyond = MemberState {
            incarnation: u64::MAX,
            status: Status::Dead,
        };
        let acc = sign_accusation(&b, n(2), n(1), beyond, alive.sig);
        assert_eq!(verify(&a, &acc), Err(Invalid::BadSignature));
        // an accusation in another accuser's name
        let mut stolen = sign_accusation(&b, n(2), n(1), dead, alive.sig);
        stolen.accuser = stolen.accuser.map(|(_, s)| (n(3), s));
        assert_eq!(verify(&a, &stolen), Err(Invalid::BadAccuser));
        // a suspicion signature is no death claim
        let mut s = sign_accusation(&b, n(2), n(1), dead, alive.sig);
        s.state.status = Status::Suspect;
        assert_eq!(verify(&a, &s), Err(Invalid::BadAccuser));
        let mut m = alive;
        m.accuser = Some((n(2), [0; 64]));
        assert_eq!(verify(&a, &m), Err(Invalid::Malformed));
    }
}
