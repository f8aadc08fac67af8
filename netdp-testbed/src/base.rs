//! Small things the rest of the crate shares: the host's prerequisites, where agents pin,
//! and what a counter counted. It imports nothing from this crate, so the low-level
//! modules (`netns`, `etcd`) can use it without depending on the testbed above them.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where agents pin their programs and maps (the agent's default `--bpf-root`), one
/// directory per node name.
pub use netdp_common::BPF_ROOT;

/// What a counter counted: one of a node's programs, or an interface's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// Fails loudly unless we are root with the namespace and BPF features the testbed needs.
pub fn require_privileges() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the testbed needs root (network namespaces, BPF); run the tests as root");
    }
    for tool in ["ip", "etcd", "etcdctl", "ping"] {
        if which(tool).is_none() {
            bail!("{tool} is not installed; `cargo xtask setup` installs the testbed's packages");
        }
    }
    if !Path::new("/sys/fs/bpf").exists() {
        bail!("/sys/fs/bpf is missing: mount bpffs with `mount -t bpf bpf /sys/fs/bpf`");
    }
    Ok(())
}

/// The first `tool` on `PATH`.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

/// A map an agent pinned, opened for reading.
pub fn open_pinned_map(pin: &Path) -> Result<aya::maps::Map> {
    let data =
        aya::maps::MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    Ok(aya::maps::Map::from_map_data(data)?)
}
