//! The mesh CA and node certificates.
//!
//! The CA is an Ed25519 key with a self-signed certificate (path length 0:
//! it signs node certificates only). A node certificate is issued for the
//! node's bare Ed25519 public key (the node never hands its secret to the
//! CA): its SubjectPublicKeyInfo is the identity key, its subject common name
//! is `mesh-node <64 hex>` and its subjectAltName holds the URI
//! `urn:mesh:node:<64 hex>`. It allows both TLS server and client use, since
//! every node dials and accepts.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm,
};
use ring::rand::SecureRandom;
use ring::signature::KeyPair as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{Error, NodeId, Result};

/// Common name of every mesh CA certificate. Node certificates name it as
/// their issuer; a CA loaded from files must carry exactly this subject.
pub const CA_COMMON_NAME: &str = "mesh-transport CA";

/// File name of the CA certificate written by [`MeshCa::save`].
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key written by [`MeshCa::save`] (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// How long a freshly generated CA certificate is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Back-dating of `notBefore` on issued certificates, to tolerate clock skew
/// between the issuer and the nodes.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The fixed PKCS#8 v1 (RFC 8410) prefix of an Ed25519 private key; the
/// 32-byte seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The node's Ed25519 secret seed as a PKCS#8 v1 private key for rustls.
pub fn node_private_key(seed: &[u8; 32]) -> PrivateKeyDer<'static> {
    let mut der = Vec::with_capacity(48);
    der.extend_from_slice(&PKCS8_ED25519_PREFIX);
    der.extend_from_slice(seed);
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))
}

/// The node id (Ed25519 public key) belonging to a secret seed.
pub fn node_id_from_seed(seed: &[u8; 32]) -> NodeId {
    let mut id = [0u8; 32];
    match ring::signature::Ed25519KeyPair::from_seed_unchecked(seed) {
        Ok(kp) => id.copy_from_slice(kp.public_key().as_ref()),
        // ring accepts every 32-byte seed; an error here would be a ring bug.
        Err(_) => unreachable!("ring rejected a 32-byte Ed25519 seed"),
    }
    NodeId(id)
}

/// A bare Ed25519 public key, for rcgen to put into a certificate.
struct Ed25519Public([u8; 32]);

impl PublicKeyData for Ed25519Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ED25519
    }
}

/// The mesh certificate authority: issues node certificates.
///
/// Keep the key ([`MeshCa::key_pem`], `ca.key`) offline; nodes only need
/// the certificate ([`MeshCa::cert_der`], `ca.crt`).
pub struct MeshCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("cert_len", &self.cert.len())
            .finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn random_serial() -> Result<SerialNumber> {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::Parse {
            what: "generating a certificate serial number",
            why: "OS random source failed".into(),
        })?;
    b[0] &= 0x7f; // positive, and never longer than 16 bytes when encoded
    b[0] |= 0x01; // never a leading zero byte
    Ok(SerialNumber::from_slice(&b))
}

impl MeshCa {
    /// A new CA: fresh Ed25519 key, self-signed certificate valid from now
    /// (minus [`CLOCK_SKEW`]) for [`CA_VALIDITY`].
    pub fn generate() -> Result<MeshCa> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(|source| Error::Cert {
            what: "generating the mesh CA key",
            source,
        })?;
        let now = SystemTime::now();
        let mut params = ca_params();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + CA_VALIDITY).into();
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(|source| Error::Cert {
            what: "self-signing the mesh CA certificate",
            source,
        })?;
        Ok(MeshCa {
            cert: cert.der().clone(),
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// Load a CA from its certificate and key in PEM form.
    ///
    /// Checks that the key is Ed25519, that the certificate holds that key
    /// and that its subject is [`CA_COMMON_NAME`] (so issued certificates
    /// chain to it).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<MeshCa> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::Parse {
            what: "mesh CA key PEM",
            why: e.to_string(),
        })?;
        if key.algorithm() != &PKCS_ED25519 {
            return Err(Error::Parse {
                what: "mesh CA key PEM",
                why: "not an Ed25519 key".into(),
            });
        }
        let cert =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| Error::Parse {
                what: "mesh CA certificate PEM",
                why: e.to_string(),
            })?;
        let loaded = webpki::anchor_from_trusted_cert(&cert).map_err(|e| Error::Parse {
            what: "mesh CA certificate",
            why: e.to_string(),
        })?;
        // What a certificate made from this key with our parameters looks
        // like: subject and key must match the loaded one byte for byte.
        let reference = ca_params()
            .self_signed(&key)
            .map_err(|source| Error::Cert {
                what: "checking the mesh CA key",
                source,
            })?;
        let want = webpki::anchor_from_trusted_cert(reference.der()).map_err(|e| Error::Parse {
            what: "mesh CA reference certificate",
            why: e.to_string(),
        })?;
        if loaded.subject_public_key_info != want.subject_public_key_info {
            return Err(Error::Parse {
                what: "mesh CA",
                why: "the certificate does not hold the key's public half".into(),
            });
        }
        if loaded.subject != want.subject {
            return Err(Error::Parse {
                what: "mesh CA certificate",
                why: format!("subject must be exactly CN={CA_COMMON_NAME}"),
            });
        }
        let cert = cert.into_owned();
        Ok(MeshCa {
            cert,
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// Write `ca.crt` (mode 0644) and `ca.key` (mode 0600) into `dir`.
    /// Never overwrites: fails if either file exists.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_new(&dir.join(CA_CERT_FILE), self.cert_pem().as_bytes(), 0o644)?;
        write_new(&dir.join(CA_KEY_FILE), self.key_pem().as_bytes(), 0o600)
    }

    /// Read `ca.crt` and `ca.key` from `dir`. The key file must not be
    /// readable by group or others.
    pub fn load(dir: &Path) -> Result<MeshCa> {
        let key_path = dir.join(CA_KEY_FILE);
        let meta = fs::metadata(&key_path).map_err(|source| Error::Io {
            what: "reading mesh CA key",
            path: key_path.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Parse {
                what: "mesh CA key file",
                why: format!("{} has mode {mode:o}; it must be 0600", key_path.display()),
            });
        }
        let cert_pem = read_string(&dir.join(CA_CERT_FILE), "reading mesh CA certificate")?;
        let key_pem = read_string(&key_path, "reading mesh CA key")?;
        MeshCa::from_pem(&cert_pem, &key_pem)
    }

    /// The CA certificate (DER): what every node trusts.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> String {
        cert_to_pem(&self.cert)
    }

    /// The CA private key as PKCS#8 PEM. Secret: store with mode 0600.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issue a certificate for a node's Ed25519 public key (its node id),
    /// valid from now (minus [`CLOCK_SKEW`]) for `validity`.
    pub fn issue(
        &self,
        node_public_key: [u8; 32],
        validity: Duration,
    ) -> Result<CertificateDer<'static>> {
        let now = SystemTime::now();
        self.issue_with_window(node_public_key, now - CLOCK_SKEW, now + validity)
    }

    /// Issue a node certificate with an explicit validity window.
    pub fn issue_with_window(
        &self,
        node_public_key: [u8; 32],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertificateDer<'static>> {
        if not_after <= not_before {
            return Err(Error::Parse {
                what: "node certificate validity",
                why: "not_after must be later than not_before".into(),
            });
        }
        let hex = NodeId(node_public_key).to_hex();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("mesh-node {hex}"));
        p.distinguished_name = dn;
        let uri = format!("urn:mesh:node:{hex}")
            .try_into()
            .map_err(|source| Error::Cert {
                what: "encoding the node URI",
                source,
            })?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        p.not_before = not_before.into();
        p.not_after = not_after.into();
        p.serial_number = Some(random_serial()?);
        let cert = p
            .signed_by(&Ed25519Public(node_public_key), &self.issuer)
            .map_err(|source| Error::Cert {
                what: "signing the node certificate",
                source,
            })?;
        Ok(cert.der().clone())
    }
}

/// PEM (`-----BEGIN CERTIFICATE-----`) text of a DER certificate.
pub fn cert_to_pem(cert: &CertificateDer<'_>) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(cert.len().div_ceil(3) * 4);
    for chunk in cert.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The first certificate in PEM text, as DER.
pub fn cert_from_pem(pem: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Parse {
        what: "certificate PEM",
        why: e.to_string(),
    })
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let io = |source| Error::Io {
        what: "writing",
        path: path.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}

fn read_string(path: &Path, what: &'static str) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_through_the_pki_types_parser() {
        for len in [1usize, 2, 3, 4, 47, 48, 49, 300] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let cert = CertificateDer::from(der.clone());
            let back = cert_from_pem(&cert_to_pem(&cert)).expect("parse");
            assert_eq!(back.as_ref(), &der[..]);
        }
    }

    #[test]
    fn pkcs8_key_is_the_fixed_prefix_and_the_seed() {
        let seed = [9u8; 32];
        let PrivateKeyDer::Pkcs8(k) = node_private_key(&seed) else {
            panic!("not pkcs8")
        };
        assert_eq!(k.secret_pkcs8_der().len(), 48);
        assert_eq!(&k.secret_pkcs8_der()[16..], &seed);
    }

    #[test]
    fn inverted_validity_window_is_refused() {
        let ca = MeshCa::generate().expect("ca");
        let now = SystemTime::now();
        assert!(
            ca.issue_with_window([1; 32], now, now - Duration::from_secs(1))
                .is_err()
        );
    }
}
