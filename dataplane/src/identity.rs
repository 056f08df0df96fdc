//! Node identity: one Ed25519 key per node, created on first start and kept in
//! a file readable only by its owner.
//!
//! The file holds the 32-byte secret seed as 64 lower-case hex characters and a
//! newline. A file that exists but cannot be read or parsed is an error: the
//! node never silently replaces a key, because its id is the mesh's name for it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::wire::{self, EncodeError, Kind, SIGNATURE_LEN, SIGNED_OFFSET, Unsigned};

/// Errors loading or creating a node key.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key file exists but could not be read.
    #[error("cannot read node key {path}: {source}")]
    Read {
        /// Key file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The key file exists but does not hold a key.
    #[error(
        "node key {path} is corrupt: {why} (refusing to replace it; move it away to make a new identity)"
    )]
    Corrupt {
        /// Key file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// The key file is readable by other users.
    #[error("node key {path} has mode {mode:o}; it must be 0600 (chmod 600 it)")]
    Permissions {
        /// Key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Creating the key file failed.
    #[error("cannot create node key {path}: {source}")]
    Create {
        /// Key file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The OS random source failed.
    #[error("OS random source failed: {0}")]
    Random(String),
}

pub use mesh_types::NodeId;

/// A node's signing identity.
pub struct Identity {
    key: SigningKey,
}

impl core::fmt::Debug for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Identity({:?})", self.node_id())
    }
}

impl Identity {
    /// A fresh random identity (not stored anywhere).
    pub fn generate() -> Result<Identity, IdentityError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Identity::from_seed(seed))
    }

    /// Identity from a 32-byte secret seed (tests and tools).
    pub fn from_seed(seed: [u8; 32]) -> Identity {
        Identity {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Loads the key at `path`, or creates one with mode 0600 if no file is
    /// there. Returns the identity and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Identity, bool), IdentityError> {
        match fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(IdentityError::Permissions {
                        path: path.to_owned(),
                        mode,
                    });
                }
                let text = fs::read_to_string(path).map_err(|source| IdentityError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let seed = parse_seed(text.trim_end_matches('\n')).map_err(|why| {
                    IdentityError::Corrupt {
                        path: path.to_owned(),
                        why,
                    }
                })?;
                Ok((Identity::from_seed(seed), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Identity::generate()?;
                let create = |source| IdentityError::Create {
                    path: path.to_owned(),
                    source,
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    fs::create_dir_all(dir).map_err(create)?;
                }
                // create_new: never overwrite a file that appeared meanwhile.
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(create)?;
                let line = format!("{}\n", hex::encode(id.key.to_bytes()));
                f.write_all(line.as_bytes()).map_err(create)?;
                f.sync_all().map_err(create)?;
                Ok((id, true))
            }
            Err(source) => Err(IdentityError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The 32-byte secret seed. Sensitive: only for building the node's TLS
    /// private key; never log or send it.
    pub fn secret_seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// This node's id (public key).
    pub fn node_id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs arbitrary bytes.
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(msg).to_bytes()
    }

    /// Encodes and signs a datagram into `out`.
    pub fn seal(
        &self,
        kind: Kind,
        hop_limit: u8,
        sequence: u64,
        timestamp_us: u64,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        Unsigned {
            kind,
            hop_limit,
            origin: self.node_id().0,
            sequence,
            timestamp_us,
            payload,
        }
        .write_unsigned(out)?;
        let sig = self.sign(&out[SIGNED_OFFSET..]);
        wire::finish(out, &sig);
        Ok(())
    }
}

fn parse_seed(text: &str) -> Result<[u8; 32], &'static str> {
    if text.len() != 64 {
        return Err("expected 64 hex characters");
    }
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text, &mut seed).map_err(|_| "not hex")?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_a_0600_key_and_later_starts_reuse_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.key");
        let (a, created) = Identity::load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = Identity::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.node_id(), b.node_id());
    }

    #[test]
    fn corrupt_key_is_an_error_and_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        fs::write(&path, "not a key\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = Identity::load_or_create(&path).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("node.key"));
        assert_eq!(fs::read_to_string(&path).unwrap(), "not a key\n");
    }

    #[test]
    fn world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        Identity::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load_or_create(&path).unwrap_err();
        assert!(matches!(
            err,
            IdentityError::Permissions { mode: 0o644, .. }
        ));
    }

    #[test]
    fn sealed_datagram_verifies_against_origin() {
        let id = Identity::from_seed([5; 32]);
        let mut out = Vec::new();
        id.seal(Kind::Data, 4, 1, 2, b"\x01thello", &mut out)
            .unwrap();
        let p = wire::Packet::parse(&out).unwrap();
        let vk = VerifyingKey::from_bytes(p.origin()).unwrap();
        let sig = ed25519_dalek::Signature::from_bytes(p.signature());
        vk.verify_strict(p.signed_bytes(), &sig).unwrap();
    }
}
