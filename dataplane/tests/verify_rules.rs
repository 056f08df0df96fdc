//! The verify stage's rule set (ZIP-215 + no small-order keys) on published
//! vectors and edge cases, and the promise that batch and single verdicts are
//! identical.

use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use dataplane::verify::{Verifier, VerifyItem, verify_batch, verify_one};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha512};

/// A test case: key, message, signature and the verdict the rules demand.
#[derive(Clone, Debug)]
struct Case {
    name: String,
    key: [u8; 32],
    msg: Vec<u8>,
    sig: [u8; 64],
    valid: bool,
}

impl Case {
    fn item(&self) -> VerifyItem<'_> {
        VerifyItem {
            public_key: &self.key,
            message: &self.msg,
            signature: &self.sig,
        }
    }
}

fn h32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).unwrap();
    out
}

fn h64(s: &str) -> [u8; 64] {
    let mut out = [0u8; 64];
    hex::decode_to_slice(s, &mut out).unwrap();
    out
}

/// RFC 8032 §7.1: (name, secret key, public key, message, signature).
const RFC8032: &[(&str, &str, &str, &str, &str)] = &[
    (
        "TEST 1",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "TEST 2",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "TEST 3",
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "TEST 1024",
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        concat!(
            "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98",
            "fa6e264bf09efe12ee50f8f54e9f77b1e355f6c50544e23fb1433ddf73be84d8",
            "79de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d",
            "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc",
            "1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4fe",
            "ba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e",
            "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbef",
            "efd75499da96bd68a8a97b928a8bbc103b6621fcde2beca1231d206be6cd9ec7",
            "aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1",
            "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2",
            "d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24",
            "554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270",
            "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc",
            "2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b07",
            "07e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba",
            "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51a",
            "ddd3b75a2b1ae0784504df543af8969be3ea7082ff7fc9888c144da2af58429e",
            "c96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7",
            "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c",
            "42f58c30c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8",
            "ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df",
            "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08",
            "d78ff4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649",
            "de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4",
            "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a3",
            "2ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e",
            "6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f",
            "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b5",
            "0d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1",
            "369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d",
            "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c",
            "0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0",
        ),
        "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
    ),
    (
        "TEST SHA(abc)",
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        concat!(
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a",
            "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        ),
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
];

/// `ℓ`, the prime order of the basepoint, little-endian.
const ELL: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

fn rfc_cases() -> Vec<Case> {
    RFC8032
        .iter()
        .map(|&(name, sk, pk, msg, sig)| {
            let key = h32(pk);
            let msg = hex::decode(msg).unwrap();
            let sig = h64(sig);
            // The typed-in vectors are what the RFC says: signing the message
            // with the secret key gives the same key and signature.
            let signer = SigningKey::from_bytes(&h32(sk));
            assert_eq!(signer.verifying_key().to_bytes(), key, "{name}: public key");
            assert_eq!(signer.sign(&msg).to_bytes(), sig, "{name}: signature");
            Case {
                name: name.to_string(),
                key,
                msg,
                sig,
                valid: true,
            }
        })
        .collect()
}

/// Little-endian `a + b` over 32 bytes (no overflow for the values used).
fn add32(a: &[u8], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let s = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = s as u8;
        carry = s >> 8;
    }
    out
}

fn challenge(r: &[u8; 32], a: &[u8; 32], m: &[u8]) -> Scalar {
    let h = Sha512::new()
        .chain_update(r)
        .chain_update(a)
        .chain_update(m);
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

/// Signs `m` with secret scalar `a` under the *encoded* key `a_bytes` (which
/// may differ from `[a]B` by a torsion point), with nonce `r`; `r_bytes`
/// overrides the encoding of `R` (then `R` must be `[r]B` plus torsion).
fn sign_raw(
    a: &Scalar,
    a_bytes: &[u8; 32],
    r: &Scalar,
    r_bytes: Option<[u8; 32]>,
    m: &[u8],
) -> [u8; 64] {
    let r_bytes = r_bytes.unwrap_or_else(|| EdwardsPoint::mul_base(r).compress().to_bytes());
    let s = r + challenge(&r_bytes, a_bytes, m) * a;
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&r_bytes);
    sig[32..].copy_from_slice(s.as_bytes());
    sig
}

fn random_scalar(rng: &mut StdRng) -> Scalar {
    let mut wide = [0u8; 64];
    rng.fill(&mut wide[..]);
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// The encoding of `p + k` (a non-canonical y for `y = k`), sign bit `sign`.
fn p_plus(k: u8, sign: bool) -> [u8; 32] {
    let mut b = [0xffu8; 32];
    b[0] = 0xed + k;
    b[31] = 0x7f | if sign { 0x80 } else { 0 };
    b
}

/// Every encoding of a small-order point: the eight canonical ones and the
/// non-canonical ones (y ≥ p, or x = 0 with the sign bit set).
fn small_order_encodings() -> Vec<[u8; 32]> {
    let mut out: Vec<[u8; 32]> = EIGHT_TORSION
        .iter()
        .map(|t| t.compress().to_bytes())
        .collect();
    let mut identity_neg = [0u8; 32];
    identity_neg[0] = 1;
    identity_neg[31] = 0x80;
    out.push(identity_neg);
    let mut minus_one_neg = [0xffu8; 32];
    minus_one_neg[0] = 0xec;
    out.push(minus_one_neg);
    for k in 0..19 {
        for sign in [false, true] {
            let b = p_plus(k, sign);
            if CompressedEdwardsY(b)
                .decompress()
                .is_some_and(|p| p.is_small_order())
            {
                out.push(b);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn edge_cases() -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(8032);
    let mut cases = Vec::new();
    let rfc = rfc_cases();
    let base = &rfc[2]; // TEST 3

    // Non-canonical S: S + ℓ, and S with the top bit set.
    let mut sig = base.sig;
    sig[32..].copy_from_slice(&add32(&base.sig[32..], &ELL));
    cases.push(Case {
        name: "S + ℓ".into(),
        sig,
        valid: false,
        ..base.clone()
    });
    let mut sig = base.sig;
    sig[63] |= 0x80;
    cases.push(Case {
        name: "S with bit 255".into(),
        sig,
        valid: false,
        ..base.clone()
    });

    // Small-order keys: the ZIP-215 equation holds (A = T, R = identity,
    // S = 0), the mesh rule rejects them.
    let mut id_bytes = [0u8; 32];
    id_bytes[0] = 1;
    for (i, t) in small_order_encodings().into_iter().enumerate() {
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&id_bytes);
        cases.push(Case {
            name: format!("small-order key #{i} {}", hex::encode(t)),
            key: t,
            msg: b"forged".to_vec(),
            sig,
            valid: false,
        });
    }

    let a = random_scalar(&mut rng);
    let a_bytes = EdwardsPoint::mul_base(&a).compress().to_bytes();
    let msg = b"edge".to_vec();

    // Small-order R, canonical and non-canonical encodings: valid under
    // ZIP-215 (S = k·a, R a torsion point).
    for (i, r_enc) in [
        EIGHT_TORSION[3].compress().to_bytes(),
        p_plus(1, false),
        id_bytes,
    ]
    .into_iter()
    .enumerate()
    {
        let sig = sign_raw(&a, &a_bytes, &Scalar::ZERO, Some(r_enc), &msg);
        cases.push(Case {
            name: format!("small-order R #{i}"),
            key: a_bytes,
            msg: msg.clone(),
            sig,
            valid: true,
        });
    }

    // R = [r]B + T (mixed order) encoded canonically: valid.
    let r = random_scalar(&mut rng);
    let r_mixed = (EdwardsPoint::mul_base(&r) + EIGHT_TORSION[1])
        .compress()
        .to_bytes();
    let sig = sign_raw(&a, &a_bytes, &r, Some(r_mixed), &msg);
    cases.push(Case {
        name: "mixed-order R".into(),
        key: a_bytes,
        msg: msg.clone(),
        sig,
        valid: true,
    });

    // Mixed-order key A' = [a]B + T: valid under the cofactored equation.
    for t in [1usize, 2, 4, 6] {
        let key = (EdwardsPoint::mul_base(&a) + EIGHT_TORSION[t])
            .compress()
            .to_bytes();
        let r = random_scalar(&mut rng);
        let sig = sign_raw(&a, &key, &r, None, &msg);
        cases.push(Case {
            name: format!("mixed-order key T{t}"),
            key,
            msg: msg.clone(),
            sig,
            valid: true,
        });
        let mut bad = msg.clone();
        bad.push(0);
        cases.push(Case {
            name: format!("mixed-order key T{t}, other msg"),
            key,
            msg: bad,
            sig,
            valid: false,
        });
    }

    // Non-canonical key encodings that are not small-order (y = p + k).
    let mut found = 0;
    for k in 2..19 {
        let enc = p_plus(k, false);
        if CompressedEdwardsY(enc)
            .decompress()
            .is_some_and(|p| !p.is_small_order())
        {
            found += 1;
            let sig = sign_raw(&a, &enc, &r, None, &msg);
            cases.push(Case {
                name: format!("non-canonical key y=p+{k}"),
                key: enc,
                msg: msg.clone(),
                sig,
                valid: false,
            });
        }
    }
    assert!(
        found > 0,
        "some y = p + k must decode to a large-order point"
    );

    // Undecodable key and undecodable R.
    let bad_y = (2..=255u8)
        .map(|y| {
            let mut b = [0u8; 32];
            b[0] = y;
            b
        })
        .find(|b| CompressedEdwardsY(*b).decompress().is_none())
        .unwrap();
    cases.push(Case {
        name: "undecodable key".into(),
        key: bad_y,
        valid: false,
        ..base.clone()
    });
    let mut sig = base.sig;
    sig[..32].copy_from_slice(&bad_y);
    cases.push(Case {
        name: "undecodable R".into(),
        sig,
        valid: false,
        ..base.clone()
    });

    // Mutations: single bit flips in R, S, message and key.
    for bit in (0..512).step_by(37) {
        let mut sig = base.sig;
        sig[bit / 8] ^= 1 << (bit % 8);
        cases.push(Case {
            name: format!("sig bit {bit} flipped"),
            sig,
            valid: false,
            ..base.clone()
        });
    }
    for bit in 0..16 {
        let mut msg = base.msg.clone();
        msg[bit / 8] ^= 1 << (bit % 8);
        cases.push(Case {
            name: format!("msg bit {bit} flipped"),
            msg,
            valid: false,
            ..base.clone()
        });
    }
    for bit in (0..256).step_by(29) {
        let mut key = base.key;
        key[bit / 8] ^= 1 << (bit % 8);
        cases.push(Case {
            name: format!("key bit {bit} flipped"),
            key,
            valid: false,
            ..base.clone()
        });
    }
    cases
}

fn check_agreement(cases: &[Case], seed: u64) {
    let items: Vec<VerifyItem<'_>> = cases.iter().map(Case::item).collect();
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut ours = vec![false; items.len()];
    Verifier::from_seed(seed_bytes).verify_batch(&items, &mut ours);
    let mut local = vec![false; items.len()];
    verify_batch(&items, &mut local);
    for (i, c) in cases.iter().enumerate() {
        let single = verify_one(&c.item());
        assert_eq!(single, c.valid, "verify_one on {}", c.name);
        assert_eq!(ours[i], c.valid, "Verifier::verify_batch on {}", c.name);
        assert_eq!(local[i], c.valid, "verify_batch on {}", c.name);
    }
}

#[test]
fn rfc8032_vectors_are_valid_in_both_paths_and_for_dalek_strict() {
    let cases = rfc_cases();
    for c in &cases {
        let vk = VerifyingKey::from_bytes(&c.key).unwrap();
        let sig = ed25519_dalek::Signature::from_bytes(&c.sig);
        assert!(vk.verify_strict(&c.msg, &sig).is_ok(), "{}", c.name);
    }
    check_agreement(&cases, 1);
}

#[test]
fn the_eight_small_order_points_have_their_well_known_encodings() {
    let encs: Vec<String> = small_order_encodings().iter().map(hex::encode).collect();
    for known in [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        // Non-canonical: y = p + 1 (identity), y = p (order 4).
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ] {
        assert!(
            encs.iter().any(|e| e == known),
            "{known} missing from {encs:?}"
        );
    }
}

#[test]
fn small_order_keys_are_rejected_in_both_paths_although_the_equation_holds() {
    let cases: Vec<Case> = edge_cases()
        .into_iter()
        .filter(|c| c.name.starts_with("small-order key"))
        .collect();
    assert!(cases.len() >= 12, "{}", cases.len());
    for c in &cases {
        // Without the mesh rule this would pass: [8](0·B − k·T − 0) = 0.
        let t = CompressedEdwardsY(c.key).decompress().unwrap();
        assert!(t.mul_by_cofactor().is_identity());
    }
    check_agreement(&cases, 2);
}

#[test]
fn small_order_and_non_canonical_r_are_valid_under_zip215_but_not_dalek_strict() {
    let cases: Vec<Case> = edge_cases()
        .into_iter()
        .filter(|c| c.name.starts_with("small-order R"))
        .collect();
    assert_eq!(cases.len(), 3);
    for c in &cases {
        let vk = VerifyingKey::from_bytes(&c.key).unwrap();
        let sig = ed25519_dalek::Signature::from_bytes(&c.sig);
        assert!(vk.verify_strict(&c.msg, &sig).is_err(), "{}", c.name);
    }
    check_agreement(&cases, 3);
}

#[test]
fn mixed_order_keys_give_the_same_verdict_in_batch_and_single_paths() {
    let cases: Vec<Case> = edge_cases()
        .into_iter()
        .filter(|c| c.name.starts_with("mixed-order"))
        .collect();
    assert_eq!(cases.len(), 9);
    check_agreement(&cases, 4);
}

#[test]
fn non_canonical_s_and_undecodable_points_are_rejected_in_both_paths() {
    let cases: Vec<Case> = edge_cases()
        .into_iter()
        .filter(|c| {
            c.name.starts_with("S ")
                || c.name.starts_with("undecodable")
                || c.name.starts_with("non-canonical")
        })
        .collect();
    assert!(cases.len() >= 5);
    for c in cases.iter().filter(|c| c.name.starts_with("S ")) {
        let vk = VerifyingKey::from_bytes(&c.key).unwrap();
        let sig = ed25519_dalek::Signature::from_bytes(&c.sig);
        assert!(vk.verify_strict(&c.msg, &sig).is_err(), "{}", c.name);
    }
    check_agreement(&cases, 5);
}

#[test]
fn mutated_signatures_messages_and_keys_are_rejected_in_both_paths() {
    let cases: Vec<Case> = edge_cases()
        .into_iter()
        .filter(|c| c.name.contains("flipped"))
        .collect();
    assert!(cases.len() > 20);
    check_agreement(&cases, 6);
}

#[test]
fn every_case_mixed_into_one_shuffled_batch_gets_the_single_path_verdict() {
    let mut cases = rfc_cases();
    cases.extend(edge_cases());
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..3 {
        cases.shuffle(&mut rng);
        check_agreement(&cases, 100 + round);
    }
}

/// 64 valid signed messages from 64 keys.
fn valid_batch(n: usize) -> Vec<Case> {
    (0..n)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let sk = SigningKey::from_bytes(&seed);
            let msg = format!("message {i}").into_bytes();
            Case {
                name: format!("valid {i}"),
                key: sk.verifying_key().to_bytes(),
                sig: sk.sign(&msg).to_bytes(),
                msg,
                valid: true,
            }
        })
        .collect()
}

fn run(cases: &[Case]) -> (Vec<bool>, dataplane::verify::BatchReport) {
    let items: Vec<VerifyItem<'_>> = cases.iter().map(Case::item).collect();
    let mut verdicts = vec![false; items.len()];
    let report = Verifier::from_seed([9; 32]).verify_batch(&items, &mut verdicts);
    (verdicts, report)
}

#[test]
fn an_all_valid_batch_costs_one_batch_equation() {
    let cases = valid_batch(64);
    let (verdicts, report) = run(&cases);
    assert!(verdicts.iter().all(|&v| v));
    assert_eq!(report.batch_equations, 1);
    assert_eq!(report.single_equations, 0);
    assert_eq!(report.failures, 0);
}

#[test]
fn one_bad_signature_in_64_is_found_with_at_most_2_log2_64_plus_1_equations() {
    let base = valid_batch(64);
    for bad in [0usize, 1, 21, 31, 32, 62, 63] {
        let mut cases = base.clone();
        cases[bad].msg.push(b'!');
        let (verdicts, report) = run(&cases);
        for (i, v) in verdicts.iter().enumerate() {
            assert_eq!(*v, i != bad, "bad at {bad}, item {i}");
        }
        assert!(report.equations() <= 13, "bad at {bad}: {report:?}");
        assert_eq!(report.failures, 1);
    }
}

#[test]
fn eight_bad_signatures_in_64_are_all_found_with_fewer_equations_than_one_by_one() {
    let mut cases = valid_batch(64);
    let bad = [3usize, 9, 10, 27, 40, 41, 55, 63];
    for &b in &bad {
        cases[b].sig[40] ^= 4;
    }
    let (verdicts, report) = run(&cases);
    for (i, v) in verdicts.iter().enumerate() {
        assert_eq!(*v, !bad.contains(&i), "item {i}");
    }
    assert_eq!(report.failures, 8);
    assert!(report.equations() < 64, "{report:?}");
}

#[test]
fn items_rejected_by_the_rules_cost_no_equation() {
    let mut cases = valid_batch(4);
    cases[1].sig[63] |= 0x80; // non-canonical S
    cases[2].key = small_order_encodings()[0];
    let (verdicts, report) = run(&cases);
    assert_eq!(verdicts, vec![true, false, false, true]);
    assert_eq!(report.rejected_early, 2);
    assert_eq!(report.equations(), 1);
}

#[test]
fn a_short_verdict_slice_limits_the_batch_without_panicking() {
    let cases = valid_batch(3);
    let items: Vec<VerifyItem<'_>> = cases.iter().map(Case::item).collect();
    let mut verdicts = [false; 2];
    verify_batch(&items, &mut verdicts);
    assert_eq!(verdicts, [true, true]);
    let mut none: [bool; 0] = [];
    verify_batch(&items, &mut none);
    verify_batch(&[], &mut [true]);
}

#[test]
fn empty_item_is_never_valid() {
    assert!(!verify_one(&VerifyItem::EMPTY));
}

/// What a proptest item does to its signature.
#[derive(Clone, Copy, Debug)]
enum Corruption {
    None,
    FlipSigBit(u16),
    FlipMsgBit(u16),
    SPlusEll,
    SmallOrderKey(u8),
    WrongKey,
    MixedOrderKey(u8),
    SmallOrderR(u8),
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        3 => Just(Corruption::None),
        1 => any::<u16>().prop_map(Corruption::FlipSigBit),
        1 => any::<u16>().prop_map(Corruption::FlipMsgBit),
        1 => Just(Corruption::SPlusEll),
        1 => any::<u8>().prop_map(Corruption::SmallOrderKey),
        1 => Just(Corruption::WrongKey),
        1 => any::<u8>().prop_map(Corruption::MixedOrderKey),
        1 => any::<u8>().prop_map(Corruption::SmallOrderR),
    ]
}

fn build(i: usize, c: Corruption, small: &[[u8; 32]]) -> Case {
    let a = Scalar::from((i as u64 % 7) * 1_000_003 + 12_345);
    let a_bytes = EdwardsPoint::mul_base(&a).compress().to_bytes();
    let r = Scalar::from(i as u64 * 7_919 + 31);
    let msg = format!("proptest {i}").into_bytes();
    let sig = sign_raw(&a, &a_bytes, &r, None, &msg);
    let mut case = Case {
        name: format!("{i}: {c:?}"),
        key: a_bytes,
        msg,
        sig,
        valid: true,
    };
    match c {
        Corruption::None => {}
        Corruption::FlipSigBit(b) => {
            let b = usize::from(b) % 512;
            case.sig[b / 8] ^= 1 << (b % 8);
            case.valid = false;
        }
        Corruption::FlipMsgBit(b) => {
            let b = usize::from(b) % (case.msg.len() * 8);
            case.msg[b / 8] ^= 1 << (b % 8);
            case.valid = false;
        }
        Corruption::SPlusEll => {
            let s = add32(&case.sig[32..], &ELL);
            case.sig[32..].copy_from_slice(&s);
            case.valid = false;
        }
        Corruption::SmallOrderKey(k) => {
            case.key = small[usize::from(k) % small.len()];
            case.sig = [0; 64];
            case.sig[0] = 1; // R = identity, S = 0: the ZIP-215 equation holds.
            case.valid = false;
        }
        Corruption::WrongKey => {
            case.key = EdwardsPoint::mul_base(&(a + Scalar::ONE))
                .compress()
                .to_bytes();
            case.valid = false;
        }
        Corruption::MixedOrderKey(t) => {
            let t = 1 + usize::from(t) % 7;
            case.key = (EdwardsPoint::mul_base(&a) + EIGHT_TORSION[t])
                .compress()
                .to_bytes();
            case.sig = sign_raw(&a, &case.key, &r, None, &case.msg);
        }
        Corruption::SmallOrderR(t) => {
            let r_enc = small[usize::from(t) % small.len()];
            case.sig = sign_raw(&a, &a_bytes, &Scalar::ZERO, Some(r_enc), &case.msg);
        }
    }
    case
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_batches_with_random_corruptions_get_identical_batch_and_single_verdicts(
        plan in proptest::collection::vec(corruption(), 1..20),
        seed in any::<u64>(),
    ) {
        let small = small_order_encodings();
        let cases: Vec<Case> = plan.iter().enumerate().map(|(i, &c)| build(i, c, &small)).collect();
        check_agreement(&cases, seed);
    }
}

#[test]
fn repeated_keys_are_decoded_once_and_keep_getting_exact_verdicts() {
    // Eight signers, each signing eight messages; every other one is forged.
    let mut cases = Vec::new();
    for i in 0..64 {
        let mut seed = [0u8; 32];
        seed[0] = (i % 8) as u8;
        let sk = SigningKey::from_bytes(&seed);
        let msg = format!("repeat {i}").into_bytes();
        let mut sig = sk.sign(&msg).to_bytes();
        if i % 2 == 1 {
            sig[33] ^= 1;
        }
        cases.push(Case {
            name: format!("repeat {i}"),
            key: sk.verifying_key().to_bytes(),
            msg,
            sig,
            valid: i % 2 == 0,
        });
    }
    // A small-order key repeated: never cached, always rejected.
    for _ in 0..3 {
        let mut sig = [0u8; 64];
        sig[0] = 1;
        cases.push(Case {
            name: "small-order, repeated".into(),
            key: small_order_encodings()[3],
            msg: b"x".to_vec(),
            sig,
            valid: false,
        });
    }
    let items: Vec<VerifyItem<'_>> = cases.iter().map(Case::item).collect();
    let mut v = Verifier::from_seed([4; 32]);
    for _ in 0..2 {
        let mut verdicts = vec![false; items.len()];
        v.verify_batch(&items, &mut verdicts);
        for (c, got) in cases.iter().zip(&verdicts) {
            assert_eq!(*got, c.valid, "{}", c.name);
            assert_eq!(verify_one(&c.item()), c.valid, "{}", c.name);
        }
    }
    // 8 keys decoded at most a few times each (slot collisions), not 128.
    assert!(v.key_cache_hits() >= 100, "{}", v.key_cache_hits());
}

#[test]
fn a_flood_of_forgeries_costs_no_more_equations_than_one_by_one_and_batching_resumes_after() {
    let good = valid_batch(64);
    let mut forged = good.clone();
    for c in &mut forged {
        c.msg.push(b'!');
        c.valid = false;
    }
    let good_items: Vec<VerifyItem<'_>> = good.iter().map(Case::item).collect();
    let bad_items: Vec<VerifyItem<'_>> = forged.iter().map(Case::item).collect();
    let mut v = Verifier::from_seed([5; 32]);
    let mut verdicts = vec![true; 64];
    let mut reports = Vec::new();
    for _ in 0..6 {
        reports.push(v.verify_batch(&bad_items, &mut verdicts));
        assert!(verdicts.iter().all(|&ok| !ok));
    }
    // After the first failing batch, the verifier splits early; once the
    // flood is established every forgery costs exactly one single equation.
    assert!(
        reports[1..].iter().all(|r| r.equations() <= 64),
        "{reports:?}"
    );
    assert_eq!(reports[5].single_equations, 64, "{:?}", reports[5]);
    assert_eq!(reports[5].batch_equations, 0);
    // Honest traffic again: back to one equation per batch.
    let mut last = None;
    for _ in 0..20 {
        last = Some(v.verify_batch(&good_items, &mut verdicts));
        assert!(verdicts.iter().all(|&ok| ok));
    }
    let last = last.unwrap();
    assert_eq!((last.batch_equations, last.single_equations), (1, 0));
}
