//! The far end of each node's veth runs an XDP program that passes everything
//! (`xdp_pass` of the `xdp_peer` object, built with the programs): a veth delivers the frames its peer's XDP program
//! transmits (a node's XDP_TX) only while it has an XDP program of its own, as a machine
//! with a veth-based underlay would need too. Physical NICs need nothing of the kind.
use std::{path::PathBuf, sync::Mutex};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};

use crate::netns;

/// The object `cargo xtask build-ebpf` builds next to netdp's programs.
pub fn object() -> PathBuf {
    match std::env::var_os("NETDP_XDP_PEER_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/ebpf/bpfel-unknown-none/release/xdp_peer"),
    }
}

pub struct PeerXdp(Mutex<Ebpf>);

impl PeerXdp {
    pub fn load() -> Result<Self> {
        let path = object();
        let mut ebpf = Ebpf::load_file(&path).with_context(|| {
            format!(
                "loading {} (cargo xtask build-ebpf builds it)",
                path.display()
            )
        })?;
        let prog: &mut Xdp = ebpf
            .program_mut("xdp_pass")
            .ok_or_else(|| anyhow!("no xdp_pass in {}", path.display()))?
            .try_into()?;
        prog.load().context("loading xdp_pass")?;
        Ok(PeerXdp(Mutex::new(ebpf)))
    }

    /// Attaches the program to `dev` of namespace `ns` (native mode); it stays until the
    /// testbed, or the namespace, goes.
    pub fn attach(&self, ns: &str, dev: &str) -> Result<()> {
        let mut ebpf = self
            .0
            .lock()
            .map_err(|_| anyhow!("peer XDP lock poisoned"))?;
        let prog: &mut Xdp = ebpf
            .program_mut("xdp_pass")
            .ok_or_else(|| anyhow!("xdp_pass is gone"))?
            .try_into()?;
        let file = std::fs::File::open(netns::path(ns))
            .with_context(|| format!("opening namespace {ns}"))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                use std::os::fd::AsRawFd;
                // SAFETY: plain syscall on an fd we own; affects only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("entering {ns}: {}", std::io::Error::last_os_error());
                }
                prog.attach(dev, XdpMode::Driver)
                    .with_context(|| format!("attaching xdp_pass to {dev} in {ns}"))?;
                Ok(())
            })
            .join()
            .map_err(|_| anyhow!("attaching xdp_pass panicked"))?
        })
    }
}
