//! Costs of the curve operations the verify stage is built from, in TSC
//! ticks: point decoding, the small-order check, SHA-512, the
//! single-signature double-base multiplication, and dalek's multiscalar
//! multiplication by size, with and without padding to dalek's Pippenger
//! threshold (190 terms), plus an interleaved A/B of the two near the
//! crossover. Findings (2 vCPU EPYC, IFMA): a Straus lookup-table allocation
//! above glibc's initial mmap threshold (about 129 terms) costs page faults
//! on the first calls only; in steady state Straus stays ahead of padded
//! Pippenger up to 129 terms, so `dataplane::verify` does not pad.
//!
//! `cargo run --release -p mesh-bench --example costs`

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::VartimeMultiscalarMul;
use mesh_bench::tsc;
use std::hint::black_box;
/// Prints the best-of-7 ticks per call of `f` over `n` calls.
fn t<F: FnMut()>(name: &str, n: usize, mut f: F) {
    let mut best = u64::MAX;
    for _ in 0..7 {
        let a = tsc::now();
        for _ in 0..n {
            f();
        }
        best = best.min(tsc::now() - a);
    }
    println!("{name:40} {:>10.0} ticks", best as f64 / n as f64);
}

fn main() {
    mesh_bench::pin_to_last_core();
    let pts: Vec<EdwardsPoint> = (1..300u64)
        .map(|i| EdwardsPoint::mul_base(&Scalar::from(i * 7919 + 1)))
        .collect();
    let enc: Vec<CompressedEdwardsY> = pts.iter().map(|p| p.compress()).collect();
    let sc: Vec<Scalar> = (1..300u64).map(|i| Scalar::from(i).invert()).collect();
    t("decompress", 200, || {
        black_box(black_box(&enc[5]).decompress());
    });
    t("is_small_order", 200, || {
        black_box(black_box(&pts[5]).is_small_order());
    });
    let msg = [7u8; 184];
    t("sha512 184B", 200, || {
        use sha2::Digest;
        black_box(sha2::Sha512::digest(black_box(&msg)));
    });
    t("double_scalar_mul_basepoint", 200, || {
        black_box(EdwardsPoint::vartime_double_scalar_mul_basepoint(
            &sc[1], &pts[2], &sc[3],
        ));
    });
    for n in [1usize, 2, 4, 8, 16, 32, 64, 128] {
        let m = 2 * n + 1;
        t(&format!("multiscalar {m} points (batch {n})"), 20, || {
            black_box(EdwardsPoint::vartime_multiscalar_mul(&sc[..m], &pts[..m]));
        });
    }
    let zero = vec![Scalar::ZERO; 300];
    let id = vec![EdwardsPoint::default(); 300];
    for n in [2usize, 4, 8, 16, 24, 32, 48, 64, 96, 128] {
        let m = 2 * n + 1;
        let pad = 190usize.saturating_sub(m);
        t(
            &format!("padded to >=190: {m} points (batch {n})"),
            20,
            || {
                black_box(EdwardsPoint::vartime_multiscalar_mul(
                    sc[..m].iter().chain(&zero[..pad]),
                    pts[..m].iter().chain(&id[..pad]),
                ));
            },
        );
    }
    // A/B, interleaved: Straus vs padded Pippenger at 65, 97 and 129 terms.
    for m in [97usize, 105, 113, 121, 129] {
        let pad = 190 - m;
        let mut a = Vec::new();
        let mut b = Vec::new();
        for _ in 0..41 {
            let t0 = tsc::now();
            black_box(EdwardsPoint::vartime_multiscalar_mul(&sc[..m], &pts[..m]));
            let t1 = tsc::now();
            black_box(EdwardsPoint::vartime_multiscalar_mul(
                sc[..m].iter().chain(&zero[..pad]),
                pts[..m].iter().chain(&id[..pad]),
            ));
            let t2 = tsc::now();
            a.push((t1 - t0) as f64);
            b.push((t2 - t1) as f64);
        }
        println!(
            "A/B {m} terms: Straus median {:.0}, padded Pippenger median {:.0} ticks",
            mesh_bench::quantile(&mut a, 0.5),
            mesh_bench::quantile(&mut b, 0.5)
        );
    }
}
