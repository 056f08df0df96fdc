//! Enrollment: the short path from nothing to nodes that talk mutual TLS.
//!
//! ```text
//! meshctl ca init --dir ca                                     # once per mesh
//! meshctl enroll --ca-dir ca --key n1/node.key --cert n1/node.crt   # once per node
//! ```
//!
//! [`CaDir::init`] creates a mesh CA in a directory (`ca.crt`, and `ca.key` with mode 0600;
//! [`mesh_transport::MeshCa`] writes them and never overwrites). [`CaDir::enroll`] gives a
//! node its identity key if it has none yet ([`Identity::load_or_create`], mode 0600, never
//! replaced) and writes the CA's certificate for that key (mode 0644). The node's config then
//! names the three files ([`Enrolled::apply`]): `node.key_file`, `tls.cert`, `tls.ca_cert`.
//!
//! The CA key stays in the CA directory: a node needs only `ca.crt`. Enrolling a node again
//! keeps its key (and so its node id) and renews its certificate.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dataplane::identity::{Identity, IdentityError};
use mesh_transport::MeshCa;
use mesh_transport::ca::{CA_CERT_FILE, CA_KEY_FILE, cert_to_pem};

use crate::config::Config;

/// Validity of a node certificate when none is asked for: one year.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// Errors creating a CA or enrolling a node. Each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Creating a directory failed.
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The directory already holds a CA (a CA is never overwritten).
    #[error(
        "{path} already exists: {dir} already holds a mesh CA (use it, or pick another directory)"
    )]
    CaExists {
        /// The CA directory.
        dir: PathBuf,
        /// The file that is in the way.
        path: PathBuf,
    },
    /// Generating, writing or reading the CA, or issuing a certificate, failed.
    #[error("mesh CA in {dir}: {source}")]
    Ca {
        /// The CA directory.
        dir: PathBuf,
        /// Cause.
        source: mesh_transport::Error,
    },
    /// The node key could not be read or created.
    #[error(transparent)]
    Key(#[from] IdentityError),
    /// Writing the node certificate failed.
    #[error("cannot write certificate {path}: {source}")]
    WriteCert {
        /// The certificate file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A validity of zero or beyond what a certificate can encode.
    #[error("certificate validity must be 1 to 36500 days, got {days}")]
    Validity {
        /// The days asked for.
        days: u64,
    },
}

/// A mesh CA kept in a directory: `ca.crt` (what nodes trust) and `ca.key` (mode 0600).
#[derive(Debug)]
pub struct CaDir {
    dir: PathBuf,
    ca: MeshCa,
}

/// One enrolled node: its id and the files its config names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    /// The node id: its Ed25519 public key.
    pub node_id: [u8; 32],
    /// The node's key file (`node.key_file`), mode 0600.
    pub key: PathBuf,
    /// Whether the key was created by this enrollment (otherwise an existing key was kept).
    pub key_created: bool,
    /// The node's certificate (`tls.cert`), mode 0644.
    pub cert: PathBuf,
    /// The mesh CA certificate (`tls.ca_cert`).
    pub ca_cert: PathBuf,
}

impl Enrolled {
    /// The node id as 64 hex characters.
    pub fn node_id_hex(&self) -> String {
        hex::encode(self.node_id)
    }

    /// Points `cfg` at this node's files: `node.key_file`, `tls.cert` and `tls.ca_cert`.
    pub fn apply(&self, cfg: &mut Config) {
        cfg.node.key_file = self.key.clone();
        cfg.tls.cert = self.cert.clone();
        cfg.tls.ca_cert = self.ca_cert.clone();
    }

    /// The config lines that name this node's files (`[node]` key and `[tls]` section),
    /// with absolute paths so the config works from any directory.
    pub fn config_snippet(&self) -> String {
        // A TOML string (quoted and escaped) of the absolute path.
        let abs = |p: &Path| {
            let p = std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
            toml::Value::String(p.display().to_string())
        };
        format!(
            "[node]\nkey_file = {}\n\n[tls]\nca_cert = {}\ncert = {}\n",
            abs(&self.key),
            abs(&self.ca_cert),
            abs(&self.cert)
        )
    }
}

/// The validity for `days` days, refusing zero and anything past a century.
pub fn validity_days(days: u64) -> Result<Duration, EnrollError> {
    if !(1..=36_500).contains(&days) {
        return Err(EnrollError::Validity { days });
    }
    Ok(Duration::from_secs(days * 86_400))
}

impl CaDir {
    /// Creates `dir` if needed (mode 0700 when created) and a new mesh CA in it. Fails if
    /// the directory already holds a CA file.
    pub fn init(dir: &Path) -> Result<CaDir, EnrollError> {
        for name in [CA_CERT_FILE, CA_KEY_FILE] {
            let path = dir.join(name);
            if path.exists() {
                return Err(EnrollError::CaExists {
                    dir: dir.to_owned(),
                    path,
                });
            }
        }
        if !dir.exists() {
            create_dirs(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
                EnrollError::CreateDir {
                    path: dir.to_owned(),
                    source,
                }
            })?;
        }
        let ca_err = |source| EnrollError::Ca {
            dir: dir.to_owned(),
            source,
        };
        let ca = MeshCa::generate().map_err(ca_err)?;
        ca.save(dir).map_err(ca_err)?;
        Ok(CaDir {
            dir: dir.to_owned(),
            ca,
        })
    }

    /// Opens the CA in `dir` (its key must have mode 0600).
    pub fn open(dir: &Path) -> Result<CaDir, EnrollError> {
        let ca = MeshCa::load(dir).map_err(|source| EnrollError::Ca {
            dir: dir.to_owned(),
            source,
        })?;
        Ok(CaDir {
            dir: dir.to_owned(),
            ca,
        })
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate file, what every node's `tls.ca_cert` names.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// The CA itself.
    pub fn ca(&self) -> &MeshCa {
        &self.ca
    }

    /// Enrolls a node: creates its key at `key` if there is none (an existing key is kept:
    /// the node keeps its id) and writes the CA's certificate for it to `cert`, valid for
    /// `validity` from now. Parent directories are created.
    pub fn enroll(
        &self,
        key: &Path,
        cert: &Path,
        validity: Duration,
    ) -> Result<Enrolled, EnrollError> {
        let (id, key_created) = Identity::load_or_create(key)?;
        let node_id = id.node_id().0;
        self.issue(node_id, cert, validity)?;
        Ok(Enrolled {
            node_id,
            key: key.to_owned(),
            key_created,
            cert: cert.to_owned(),
            ca_cert: self.cert_path(),
        })
    }

    /// Writes the CA's certificate for the node id `node_id` (a node whose key is kept
    /// elsewhere: `meshd --print-node-id`) to `cert`, valid for `validity` from now.
    pub fn issue(
        &self,
        node_id: [u8; 32],
        cert: &Path,
        validity: Duration,
    ) -> Result<(), EnrollError> {
        let der = self
            .ca
            .issue(node_id, validity)
            .map_err(|source| EnrollError::Ca {
                dir: self.dir.clone(),
                source,
            })?;
        write_replacing(cert, cert_to_pem(&der).as_bytes(), 0o644)
    }
}

fn create_dirs(dir: &Path) -> Result<(), EnrollError> {
    fs::create_dir_all(dir).map_err(|source| EnrollError::CreateDir {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `data` to a temporary file beside `path` with `mode`, then renames it over `path`:
/// a reader (a restarting node) sees the old certificate or the new one, never half of one.
fn write_replacing(path: &Path, data: &[u8], mode: u32) -> Result<(), EnrollError> {
    let err = |source| EnrollError::WriteCert {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        // The umask may have narrowed the mode given at creation.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_a_ca_once_with_a_private_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ca");
        let ca = CaDir::init(&dir).expect("init");
        assert_eq!(ca.cert_path(), dir.join("ca.crt"));
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let again = CaDir::init(&dir).expect_err("a second CA in the same directory");
        assert!(matches!(again, EnrollError::CaExists { .. }), "{again}");
        // The same CA opens again from its files.
        let opened = CaDir::open(&dir).expect("open");
        assert_eq!(opened.ca().cert_der(), ca.ca().cert_der());
    }

    #[test]
    fn enrolling_creates_the_key_once_and_renews_the_certificate() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = CaDir::init(&tmp.path().join("ca")).expect("init");
        let key = tmp.path().join("n1/node.key");
        let cert = tmp.path().join("n1/node.crt");
        let first = ca.enroll(&key, &cert, DEFAULT_VALIDITY).expect("enroll");
        assert!(first.key_created);
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        let pem1 = fs::read_to_string(&cert).expect("cert");
        let again = ca.enroll(&key, &cert, DEFAULT_VALIDITY).expect("re-enroll");
        assert!(!again.key_created);
        assert_eq!(again.node_id, first.node_id, "the node keeps its id");
        assert_ne!(fs::read_to_string(&cert).expect("cert"), pem1, "renewed");
        let der = mesh_transport::ca::cert_from_pem(&fs::read_to_string(&cert).expect("cert"))
            .expect("pem");
        let bound = mesh_transport::node_id_from_cert(&der).expect("node id");
        assert_eq!(
            bound.0, first.node_id,
            "the certificate names the node's key"
        );
        assert!(!tmp.path().join("n1").read_dir().expect("dir").any(|e| {
            e.expect("entry")
                .file_name()
                .to_string_lossy()
                .contains(".tmp")
        }));
    }

    #[test]
    fn a_world_readable_key_or_a_bad_validity_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = CaDir::init(&tmp.path().join("ca")).expect("init");
        let key = tmp.path().join("node.key");
        ca.enroll(&key, &tmp.path().join("node.crt"), DEFAULT_VALIDITY)
            .expect("enroll");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = ca
            .enroll(&key, &tmp.path().join("node.crt"), DEFAULT_VALIDITY)
            .expect_err("world-readable key");
        assert!(err.to_string().contains("0600"), "{err}");
        assert!(matches!(
            validity_days(0),
            Err(EnrollError::Validity { days: 0 })
        ));
        assert_eq!(
            validity_days(2).expect("2 days"),
            Duration::from_secs(172_800)
        );
    }

    #[test]
    fn apply_points_a_config_at_the_node_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = CaDir::init(&tmp.path().join("ca")).expect("init");
        let e = ca
            .enroll(
                &tmp.path().join("k"),
                &tmp.path().join("c.crt"),
                DEFAULT_VALIDITY,
            )
            .expect("enroll");
        let mut cfg = Config::default();
        e.apply(&mut cfg);
        assert_eq!(cfg.node.key_file, tmp.path().join("k"));
        assert_eq!(cfg.tls.cert, tmp.path().join("c.crt"));
        assert_eq!(cfg.tls.ca_cert, tmp.path().join("ca/ca.crt"));
        // The snippet is valid config naming the same files.
        let parsed: Config = toml::from_str(&e.config_snippet()).expect("snippet parses");
        assert_eq!(parsed.node.key_file, cfg.node.key_file);
        assert_eq!(parsed.tls, cfg.tls);
    }

    /// Two enrolled nodes bind mutual-TLS endpoints and connect, each seeing the other's
    /// node id; a node enrolled by another CA cannot bind with this mesh's CA certificate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn enrolled_nodes_bind_and_connect_over_mutual_tls() {
        use mesh_transport::{CertificateDer, Transport, TransportConfig};
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = CaDir::init(&tmp.path().join("ca")).expect("init");
        let ca_der = ca.ca().cert_der().clone();
        let load = |e: &Enrolled| -> ([u8; 32], CertificateDer<'static>) {
            let (id, _) = Identity::load_or_create(&e.key).expect("key");
            let pem = fs::read_to_string(&e.cert).expect("cert");
            (
                id.secret_seed(),
                mesh_transport::ca::cert_from_pem(&pem).expect("pem"),
            )
        };
        let mut ends = Vec::new();
        for n in ["a", "b"] {
            let e = ca
                .enroll(
                    &tmp.path().join(format!("{n}.key")),
                    &tmp.path().join(format!("{n}.crt")),
                    DEFAULT_VALIDITY,
                )
                .expect("enroll");
            let (seed, cert) = load(&e);
            let t = Transport::bind(
                "127.0.0.1:0".parse().expect("addr"),
                seed,
                cert,
                ca_der.clone(),
                TransportConfig::default(),
            )
            .expect("an enrolled node binds");
            assert_eq!(t.node_id().0, e.node_id);
            ends.push((t, e));
        }
        let (a, b) = (&ends[0].0, &ends[1].0);
        let to_b = b.local_addr().expect("addr");
        a.connect(to_b, Some(mesh_transport::NodeId(ends[1].1.node_id)))
            .await
            .expect("a reaches b over mutual TLS");
        let t0 = std::time::Instant::now();
        while !b.is_connected(&a.node_id()) {
            assert!(t0.elapsed() < Duration::from_secs(5), "b never saw a");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let other = CaDir::init(&tmp.path().join("other-ca")).expect("init");
        let e = other
            .enroll(
                &tmp.path().join("x.key"),
                &tmp.path().join("x.crt"),
                DEFAULT_VALIDITY,
            )
            .expect("enroll");
        let (seed, cert) = load(&e);
        let err = Transport::bind(
            "127.0.0.1:0".parse().expect("addr"),
            seed,
            cert,
            ca_der,
            TransportConfig::default(),
        )
        .expect_err("another CA's certificate");
        assert!(err.to_string().contains("mesh CA"), "{err}");
        for (t, _) in ends {
            t.shutdown().await;
        }
    }
}
