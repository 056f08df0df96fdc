//! Builds the XDP program in `ebpf/` with clang into `OUT_DIR`; the loader
//! embeds it with `include_bytes!`. No compiled object is ever committed.
//!
//! Environment: `CLANG` overrides the compiler (default `clang`),
//! `MESH_BPF_INCLUDE` adds an include directory (default
//! `/usr/include/<arch>-linux-gnu`, where Debian keeps `asm/types.h`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let ebpf = manifest.join("..").join("ebpf");
    let header = ebpf.join("include").join("mesh_wire.h");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=MESH_BPF_INCLUDE");

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_string());
    let multiarch =
        env::var("MESH_BPF_INCLUDE").unwrap_or_else(|_| format!("/usr/include/{arch}-linux-gnu"));

    for name in ["mesh_xdp", "bench_xdp"] {
        let src = ebpf.join(format!("{name}.c"));
        let out = out_dir.join(format!("{name}.o"));
        println!("cargo:rerun-if-changed={}", src.display());
        compile(&clang, &multiarch, &ebpf, &src, &out);
    }
}

fn compile(clang: &str, multiarch: &str, ebpf: &Path, src: &Path, out: &Path) {
    let status = Command::new(clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I{multiarch}"))
        .arg(format!("-I{}", ebpf.join("include").display()))
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "building the XDP program failed: `{clang} -target bpf {}` exited with {s}; \
             it needs the Debian packages clang, llvm and libbpf-dev (bpf/bpf_helpers.h) \
             and kernel headers under {multiarch} (set MESH_BPF_INCLUDE to override)",
            src.display()
        ),
        Err(e) => panic!(
            "building the XDP program needs clang, which could not be run as `{clang}`: {e}. \
             Install it (Debian: `apt-get install clang llvm libbpf-dev`) or point the CLANG \
             environment variable at it"
        ),
    }
}
