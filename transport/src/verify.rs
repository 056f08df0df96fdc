//! rustls certificate verifiers for the mesh: the peer's certificate must
//! chain to the mesh CA, be valid now, allow the TLS role it is used in
//! (serverAuth / clientAuth when the extended key usage extension is
//! present), and hold an Ed25519 key, which becomes the peer's [`NodeId`].
//!
//! Host names are not checked: a node is named by its key, not by DNS. A
//! dialer that knows whom it is calling pins the expected [`NodeId`]
//! instead ([`MeshServerVerifier::new`]).
//!
//! Only TLS 1.3 with Ed25519 handshake signatures is accepted, so the
//! CertificateVerify message proves the peer holds the identity key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::TrustAnchor;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use webpki::{EndEntityCert, KeyUsage};

use crate::{Error, NodeId, Result};

/// DER of an Ed25519 SubjectPublicKeyInfo (RFC 8410) before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Ed25519 only, for both the chain and the handshake signature.
static ED25519_ONLY: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[webpki::ring::ED25519],
    mapping: &[(SignatureScheme::ED25519, &[webpki::ring::ED25519])],
};

/// Why a peer certificate was refused beyond what webpki reports.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("certificate key is not Ed25519")]
    NotEd25519,
    #[error("peer is node {got}, expected {expected}")]
    WrongPeer { expected: NodeId, got: NodeId },
}

/// The [`NodeId`] in a certificate: its Ed25519 SubjectPublicKeyInfo.
///
/// This only parses; it does not check the chain, validity or signature.
/// Use it on certificates that a verifier has already accepted (for
/// example the one returned by a QUIC connection's peer identity).
pub fn node_id_from_cert(cert: &CertificateDer<'_>) -> Result<NodeId> {
    let ee = EndEntityCert::try_from(cert).map_err(|e| Error::Parse {
        what: "node certificate",
        why: e.to_string(),
    })?;
    node_id_of(&ee).ok_or(Error::Parse {
        what: "node certificate",
        why: "key is not Ed25519".into(),
    })
}

fn node_id_of(ee: &EndEntityCert<'_>) -> Option<NodeId> {
    let spki = ee.subject_public_key_info();
    let key = spki.as_ref().strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    <[u8; 32]>::try_from(key).ok().map(NodeId)
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    let ce = match e {
        W::BadDer | W::BadDerTime | W::TrailingData(_) => CertificateError::BadEncoding,
        W::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        W::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        W::InvalidCertValidity => CertificateError::Expired,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

fn refuse(r: Refusal) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
}

/// The check shared by both verifiers.
#[derive(Debug)]
struct Chain {
    anchor: TrustAnchor<'static>,
}

impl Chain {
    fn new(ca_cert: &CertificateDer<'_>) -> Result<Chain> {
        let anchor = webpki::anchor_from_trusted_cert(ca_cert)
            .map_err(|e| Error::Parse {
                what: "mesh CA certificate",
                why: e.to_string(),
            })?
            .to_owned();
        Ok(Chain { anchor })
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<NodeId, rustls::Error> {
        let ee = EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        ee.verify_for_usage(
            ED25519_ONLY.all,
            std::slice::from_ref(&self.anchor),
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
        node_id_of(&ee).ok_or_else(|| refuse(Refusal::NotEd25519))
    }
}

/// Verifies the server's certificate when this node dials.
#[derive(Debug)]
pub struct MeshServerVerifier {
    chain: Chain,
    expected: Option<NodeId>,
}

impl MeshServerVerifier {
    /// Trust `ca_cert`; if `expected` is set, accept only that node.
    pub fn new(ca_cert: &CertificateDer<'_>, expected: Option<NodeId>) -> Result<Self> {
        Ok(MeshServerVerifier {
            chain: Chain::new(ca_cert)?,
            expected,
        })
    }

    /// Check a server certificate chain at time `now`; the peer's id on success.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<NodeId, rustls::Error> {
        let got = self
            .chain
            .verify(end_entity, intermediates, now, KeyUsage::server_auth())?;
        match self.expected {
            Some(expected) if expected != got => Err(refuse(Refusal::WrongPeer { expected, got })),
            _ => Ok(got),
        }
    }
}

/// QUIC needs TLS 1.3; a TLS 1.2 signature is never accepted.
fn reject_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

/// The handshake signature, Ed25519 only: proves the peer holds the key its
/// certificate names.
fn verify_ed25519_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &ED25519_ONLY)
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        reject_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Verifies the client's certificate when this node accepts. A client
/// certificate is mandatory.
#[derive(Debug)]
pub struct MeshClientVerifier {
    chain: Chain,
}

impl MeshClientVerifier {
    /// Trust `ca_cert`.
    pub fn new(ca_cert: &CertificateDer<'_>) -> Result<Self> {
        Ok(MeshClientVerifier {
            chain: Chain::new(ca_cert)?,
        })
    }

    /// Check a client certificate chain at time `now`; the peer's id on success.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<NodeId, rustls::Error> {
        self.chain
            .verify(end_entity, intermediates, now, KeyUsage::client_auth())
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        reject_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}
