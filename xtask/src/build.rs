//! Building the eBPF object and the binaries.
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::setup::{cmd, exec};

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// `cargo +nightly <verb>` in the eBPF crate, for bpfel-unknown-none with BTF for the maps.
fn ebpf_cargo(verb: &str) -> std::process::Command {
    let root = workspace();
    let flags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let mut c = cmd("cargo");
    c.current_dir(root.join("netdp-ebpf"))
        .args([
            "+nightly",
            verb,
            "--release",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
        ])
        .arg("--target-dir")
        .arg(root.join("target/ebpf"))
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env("PATH", crate::setup::path_with_cargo_bin())
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    c
}

/// Builds the programs with nightly for bpfel-unknown-none, with BTF for the maps.
pub fn ebpf() -> Result<()> {
    exec(&mut ebpf_cargo("build")).context("building the eBPF programs")
}

/// fmt and clippy for the eBPF crate, which is outside the workspace (its own target and
/// toolchain), held to the same rules as the rest.
pub fn ebpf_lint() -> Result<()> {
    exec(
        cmd("cargo")
            .current_dir(workspace().join("netdp-ebpf"))
            .args(["+nightly", "fmt", "--check"]),
    )
    .context("cargo fmt found unformatted code in netdp-ebpf")?;
    exec(ebpf_cargo("clippy").args(["--", "-D", "warnings"]))
        .context("clippy found problems in netdp-ebpf")
}

/// Builds programs and binaries; returns the directory holding `netdp` and `netdp-cni`.
/// Everything built in release, as the demo and the benchmarks run it.
pub fn binaries() -> Result<netdp_testbed::Binaries> {
    let dir = all(true)?;
    Ok(netdp_testbed::Binaries {
        netdp: dir.join("netdp"),
        cni: dir.join("netdp-cni"),
    })
}

pub fn all(release: bool) -> Result<PathBuf> {
    ebpf()?;
    let mut c = cmd("cargo");
    c.current_dir(workspace())
        .args(["build", "-p", "netdp-userspace", "--bins"]);
    if release {
        c.arg("--release");
    }
    exec(&mut c).context("building netdp and netdp-cni")?;
    Ok(workspace()
        .join("target")
        .join(if release { "release" } else { "debug" }))
}
