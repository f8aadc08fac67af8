//! `cargo xtask image`: the OCI image the DaemonSet in `deploy/` runs, built `FROM scratch`
//! without any registry, then run once.
//!
//! The root holds `netdp`, `netdp-cni`, the eBPF object and exactly the shared libraries
//! `ldd` names for the two binaries (with the dynamic loader): no shell, nothing else.
//! Debian's `buildah` builds it into `target/netdp-image.tar` (an OCI archive named as the
//! DaemonSet's `image:`); `skopeo` and `umoci` unpack it again to check its config and its
//! files; `podman` (with `runc`) loads and runs it: `--version`, `check` (the programs for
//! every backend through this kernel's verifier), `netdp-cni` answering VERSION, no
//! `/bin/sh`, and the DaemonSet's two init containers exactly as the manifest writes them
//! (command, environment from the ConfigMap, mounts, unprivileged and read-only):
//! `install-cni` into a scratch host root, `network apply` against a real etcd, plain and
//! with the TLS flags the manifest documents. Every flag the manifest passes the agent is
//! one `netdp agent --help` lists.
//!
//! buildah and podman use a store of their own under `target/image/`, one per run, so a
//! run never touches the machine's images or another run's, and everything is removed
//! afterwards, also when a step fails (and at the next run when one was killed).
//!
//! - `work`: one run's scratch space, its private buildah and podman stores, the tools
//!   probed, everything removed afterwards;
//! - `root`: the image's root assembled (binaries, eBPF object, ldd's libraries);
//! - `oci`: buildah commits it to an OCI archive, skopeo and umoci check the archive;
//! - `smoke`: podman loads and runs it (`--version`, `check`, netdp-cni, no shell, the
//!   agent's flags);
//! - `init`: the DaemonSet's init containers, run as the kubelet would.
mod init;
mod oci;
mod root;
mod smoke;
mod work;

use std::{path::PathBuf, time::Instant};

use anyhow::{Result, bail, ensure};
use work::Work;

use crate::{
    build::{self, workspace},
    deploy::Deployment,
    setup,
};

#[derive(clap::Args, Default)]
pub struct Args {
    /// Take netdp and netdp-cni from this directory instead of building them in release
    /// (the eBPF object is taken from target/ebpf as built by `cargo xtask build-ebpf`).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

/// Where the image goes.
pub fn archive() -> PathBuf {
    workspace().join("target/netdp-image.tar")
}

fn ebpf_object() -> PathBuf {
    workspace().join("target/ebpf/bpfel-unknown-none/release/netdp")
}

/// Where the binaries live in the image; the DaemonSet's commands name them.
const NETDP: &str = "usr/bin/netdp";
const NETDP_CNI: &str = "usr/bin/netdp-cni";
const OBJECT: &str = "usr/lib/netdp/netdp.bpf.o";

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    if !setup::is_root() {
        bail!(
            "building and running the image needs root (buildah, podman); run `sudo -E cargo xtask image`"
        );
    }
    setup::apt(setup::IMAGE_PACKAGES)?;
    Work::remove_stale();
    let work = Work::new()?;
    work.probe_tools()?;

    let deployment = Deployment::load()?;
    let reference = deployment.image()?;
    let version = env!("CARGO_PKG_VERSION");
    ensure!(
        reference.ends_with(&format!(":{version}")),
        "the DaemonSet runs {reference}, but this is netdp {version}: update the image tag in deploy/"
    );

    let (netdp, cni) = match &args.bin_dir {
        Some(dir) => (dir.join("netdp"), dir.join("netdp-cni")),
        None => {
            setup::ensure()?;
            let b = build::binaries()?;
            (b.netdp, b.cni)
        }
    };
    let built = Instant::now();

    eprintln!("== image: assembling a root from scratch (binaries, eBPF object, ldd's libraries)");
    let files = work.assemble(&netdp, &cni, &ebpf_object())?;
    for f in files.keys() {
        eprintln!("  /{f}");
    }

    eprintln!(
        "== image: buildah from scratch, commit oci-archive:{}",
        archive().display()
    );
    work.buildah_commit(&reference, version)?;

    eprintln!("== image: the archive's config and files (skopeo, umoci)");
    work.inspect(&reference, &files)?;

    eprintln!("== image: podman load and run (runc)");
    let loaded = work.podman_load()?;
    ensure!(
        loaded.iter().any(|l| l == &reference),
        "podman loaded {loaded:?} from the archive, not {reference} (the DaemonSet's image)"
    );
    work.smoke(&reference, version)?;
    work.agent_flags(&reference, &deployment)?;

    eprintln!("== image: the DaemonSet's init containers, as the manifest runs them");
    work.init_containers(&reference, &deployment, &cni)?;

    let size = std::fs::metadata(archive()).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "== image {reference} ({:.1} MiB) built and checked in {:.1?} ({:.1?} after the build)",
        size as f64 / (1024.0 * 1024.0),
        start.elapsed(),
        built.elapsed()
    );
    Ok(())
}
