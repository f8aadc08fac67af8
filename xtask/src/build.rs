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

/// Builds the programs with nightly for bpfel-unknown-none, with BTF for the maps.
pub fn ebpf() -> Result<()> {
    let root = workspace();
    let flags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    exec(
        cmd("cargo")
            .current_dir(root.join("netdp-ebpf"))
            .args([
                "+nightly",
                "build",
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
            .env_remove("RUSTC_WORKSPACE_WRAPPER"),
    )
    .context("building the eBPF programs")
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
