//! `cargo xtask`: build, test, demo and benchmark netdp.
mod bench;
mod build;
mod demo;
mod deploy;
mod image;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, test and demo netdp")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (rust-src, bpf-linker, Debian packages) and check each by using it.
    Setup,
    /// Build the eBPF programs (nightly, bpfel-unknown-none).
    BuildEbpf,
    /// Build everything: programs, agent, CNI plugin.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Everything CI runs: lints, unit tests, packet tests, end-to-end tests.
    Test(test::Args),
    /// Build a namespaced 3-node cluster with real etcd and agents, and show it working.
    Demo(demo::Args),
    /// Validate deploy/ offline: the Kubernetes 1.37 schema, checkov, what netdp needs of it.
    DeployCheck,
    /// Build the OCI image (FROM scratch, target/netdp-image.tar) and run it once with podman.
    Image(image::Args),
    /// Benchmarks next to kube-proxy (iptables, nftables), Flannel and the bare underlay.
    Bench(bench::Args),
}

fn main() {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Demo(_) | Command::Bench(_) | Command::Image(_)
    ) {
        // Before any thread exists: Ctrl-C tears the clusters down.
        netdp_testbed::cleanup::install_signal_cleanup();
    }
    let result: Result<()> = match cli.command {
        Command::Setup => setup::ensure_runtime(),
        Command::BuildEbpf => setup::ensure().and_then(|_| build::ebpf()),
        Command::Build { release } => setup::ensure().and_then(|_| build::all(release).map(|_| ())),
        Command::Test(args) => test::run(args),
        Command::Demo(args) => demo::run(args),
        Command::DeployCheck => deploy::run(),
        Command::Image(args) => image::run(args),
        Command::Bench(args) => bench::run(args),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
