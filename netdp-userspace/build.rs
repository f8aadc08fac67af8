//! Embeds the eBPF object built by `cargo xtask build-ebpf`, or explains how to build it.
use std::{env, path::PathBuf, process::exit};

fn main() {
    println!("cargo:rerun-if-env-changed=NETDP_EBPF_OBJECT");
    let object = match env::var_os("NETDP_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/ebpf/bpfel-unknown-none/release/netdp"),
    };
    println!("cargo:rerun-if-changed={}", object.display());
    match object.canonicalize() {
        Ok(path) => println!("cargo:rustc-env=NETDP_EBPF_OBJECT={}", path.display()),
        Err(_) => {
            eprintln!(
                "error: netdp's eBPF object is missing ({}).\n\
                 Build it first with `cargo xtask build-ebpf` (it installs nightly's rust-src \
                 and bpf-linker if they are missing).",
                object.display()
            );
            exit(1);
        }
    }
}
