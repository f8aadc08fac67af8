//! `cargo xtask test`: what CI runs.
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{
    build::{self, workspace},
    setup::{self, cmd, exec},
};

#[derive(clap::Args)]
pub struct Args {
    /// Skip fmt and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Skip building and running the OCI image (`cargo xtask image`).
    #[arg(long)]
    no_image: bool,
    /// Only run tests whose name contains this.
    filter: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    if !setup::is_root() {
        bail!(
            "the tests need root (network namespaces, BPF programs, bpffs); run `sudo -E cargo xtask test`"
        );
    }
    setup::ensure_runtime()?;
    build::ebpf()?;
    let root = workspace();
    if !args.no_lint {
        eprintln!("== lint: cargo fmt --check, cargo clippy -D warnings");
        exec(
            cmd("cargo")
                .current_dir(&root)
                .args(["fmt", "--all", "--check"]),
        )
        .context("cargo fmt found unformatted code")?;
        exec(cmd("cargo").current_dir(&root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
        .context("clippy found problems")?;
        eprintln!("== lint: the eBPF crate (cargo +nightly fmt --check, clippy -D warnings)");
        build::ebpf_lint()?;
        eprintln!("== lint: the Kubernetes manifests in deploy/ (cargo xtask deploy-check)");
        crate::deploy::run()?;
    }
    eprintln!("== tests: unit, packet (BPF_PROG_TEST_RUN), end-to-end (namespaced clusters)");
    let mut c = cmd("cargo");
    c.current_dir(&root)
        .args(["test", "--workspace", "--no-fail-fast"]);
    c.arg("--");
    if let Some(f) = &args.filter {
        c.arg(f);
    }
    // Two at a time: each end-to-end test runs its own cluster on a 2-core machine.
    c.arg("--test-threads=2");
    exec(&mut c).context("tests failed")?;
    // The image the DaemonSet runs, built from scratch and run once; a filtered run is
    // about its tests only.
    if !args.no_image && args.filter.is_none() {
        eprintln!("== image: build the OCI image and run it (cargo xtask image)");
        crate::image::run(crate::image::Args::default())?;
    }
    eprintln!("== all tests passed in {:.0?}", start.elapsed());
    Ok(())
}
