//! The mesh CA on disk: save, load, refuse inconsistent or exposed files.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use mesh_transport::ca::{CA_CERT_FILE, CA_KEY_FILE, cert_from_pem, cert_to_pem};
use mesh_transport::verify::MeshServerVerifier;
use mesh_transport::{MeshCa, node_id_from_cert};
use rustls::pki_types::UnixTime;

#[test]
fn ca_saved_and_loaded_issues_certificates_the_original_trusts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = MeshCa::generate().expect("ca");
    ca.save(dir.path()).expect("save");
    let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(ca.save(dir.path()).is_err(), "never overwrites");

    let loaded = MeshCa::load(dir.path()).expect("load");
    assert_eq!(loaded.cert_der(), ca.cert_der());
    let cert = loaded
        .issue([4u8; 32], Duration::from_secs(60))
        .expect("issue");
    let verifier = MeshServerVerifier::new(ca.cert_der(), Some([4u8; 32].into())).expect("v");
    assert_eq!(
        verifier
            .check(&cert, &[], UnixTime::now())
            .expect("chains to the original CA"),
        node_id_from_cert(&cert).expect("id")
    );
    // Node certificates survive PEM.
    assert_eq!(cert_from_pem(&cert_to_pem(&cert)).expect("pem"), cert);
}

#[test]
fn mismatched_or_exposed_ca_files_are_refused() {
    let a = MeshCa::generate().expect("a");
    let b = MeshCa::generate().expect("b");
    let err = MeshCa::from_pem(&a.cert_pem(), &b.key_pem()).expect_err("mismatch");
    assert!(err.to_string().contains("public half"), "{err}");
    assert!(MeshCa::from_pem("junk", &a.key_pem()).is_err());
    assert!(MeshCa::from_pem(&a.cert_pem(), "junk").is_err());

    let dir = tempfile::tempdir().expect("tempdir");
    a.save(dir.path()).expect("save");
    let key = dir.path().join(CA_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = MeshCa::load(dir.path()).expect_err("exposed key");
    assert!(err.to_string().contains("0600"), "{err}");
    std::fs::remove_file(dir.path().join(CA_CERT_FILE)).expect("rm");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(MeshCa::load(dir.path()).is_err(), "missing certificate");
}

#[test]
fn wrong_pinned_id_and_foreign_ca_are_refused_by_the_verifier() {
    let ca = MeshCa::generate().expect("ca");
    let other = MeshCa::generate().expect("other");
    let cert = ca.issue([5u8; 32], Duration::from_secs(60)).expect("issue");
    let pinned = MeshServerVerifier::new(ca.cert_der(), Some([6u8; 32].into())).expect("v");
    assert!(pinned.check(&cert, &[], UnixTime::now()).is_err());
    let foreign = MeshServerVerifier::new(other.cert_der(), None).expect("v");
    assert!(foreign.check(&cert, &[], UnixTime::now()).is_err());
    // Not valid yet / expired relative to the verification time.
    let any = MeshServerVerifier::new(ca.cert_der(), None).expect("v");
    let far_future = UnixTime::since_unix_epoch(Duration::from_secs(4_000_000_000));
    assert!(any.check(&cert, &[], far_future).is_err());
    assert!(
        any.check(&cert, &[], UnixTime::since_unix_epoch(Duration::ZERO))
            .is_err()
    );
    // Garbage is an error, not a panic.
    let junk = rustls::pki_types::CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01, 0xff]);
    assert!(any.check(&junk, &[], UnixTime::now()).is_err());
    assert!(node_id_from_cert(&junk).is_err());
}
