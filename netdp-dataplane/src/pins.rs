//! Where a node's BPF objects live on bpffs: `<root>/<node>/{maps,progs,links}/`.
//!
//! Everything the dataplane needs to keep forwarding is pinned here, so the agent can stop,
//! restart or be upgraded without dropping traffic, and so the CNI plugin and the CLI can
//! reach the maps without talking to the agent.
use std::{
    fs::{DirBuilder, Permissions},
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A pinned map or program is opened by path, and whoever can open it can read or rewrite
/// it (routes, endpoints, conntrack). So the directories are the agent's user's alone
/// (root) and the pins too: root still reads them (`bpftool map dump pinned`, the CNI
/// plugin, the CLI), nobody else can. The kernel creates pins 0600 already.
const DIR_MODE: u32 = 0o700;
const PIN_MODE: u32 = 0o600;
const SUBDIRS: [&str; 3] = ["maps", "progs", "links"];

pub struct Pins {
    dir: PathBuf,
}

/// Attachment points we pin links for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// tc ingress of the underlay interface.
    Netdev,
    /// tc ingress of a pod's host-side veth.
    Pod,
    /// tc ingress of the gateway device's peer (the node's own traffic to pods).
    Host,
    /// A cgroup socket program (the name is the program's).
    Cgroup,
    /// XDP on the underlay interface, in native (driver) mode.
    XdpNative,
    /// XDP on the underlay interface, in generic (skb) mode.
    XdpGeneric,
}

impl Hook {
    fn prefix(self) -> &'static str {
        match self {
            Hook::Netdev => "netdev-",
            Hook::Pod => "pod-",
            Hook::Host => "host-",
            Hook::Cgroup => "cgroup-",
            Hook::XdpNative => "xdp-native-",
            Hook::XdpGeneric => "xdp-generic-",
        }
    }
}

/// The node's name: the one given, else the hostname (as Kubernetes names nodes).
pub fn node_name(given: Option<&str>) -> Result<String> {
    match given {
        Some(n) => Ok(n.to_string()),
        None => Ok(nix::unistd::gethostname()
            .context("reading the hostname")?
            .to_string_lossy()
            .into_owned()),
    }
}

/// Node names become directory names; keep them to what Kubernetes allows in a node name.
pub fn validate_node_name(node: &str) -> Result<()> {
    if node.is_empty()
        || node.len() > 253
        || node.starts_with('.')
        || !node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        bail!("node name {node:?} must be 1-253 characters of letters, digits, '-', '.', '_'");
    }
    Ok(())
}

/// Whether this process has a mount namespace of its own: it differs from init's, or from
/// its parent's (`ip netns exec` unshares it and execs the command, so the parent, a shell,
/// still has the host's; init's may not be readable in a sandbox).
fn private_mount_namespace() -> bool {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let Some(own) = ns("self") else {
        return false;
    };
    let parent = nix::unistd::getppid().to_string();
    ["1", parent.as_str()]
        .iter()
        .filter_map(|pid| ns(pid))
        .any(|other| other != own)
}

/// Whether `dir` is on the same filesystem as its parent (not a mount point).
fn below_mount(dir: &Path) -> bool {
    let dev = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.dev()).ok();
    match (dev(dir), dir.parent().and_then(dev)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Refuses `path` unless `owner` owns it; takes away every permission bit beyond `mode`.
fn secure_path(path: &Path, mode: u32, owner: u32) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("checking {}", path.display()))?;
    if meta.uid() != owner {
        bail!(
            "{} is owned by uid {}, not by this agent's user (uid {owner}): someone else could \
             have planted or replaced its BPF objects, so the agent will not use it. Remove it \
             (the dataplane is rebuilt) or chown it to uid {owner} if it is known to be good",
            path.display(),
            meta.uid()
        );
    }
    let bits = meta.mode() & 0o7777;
    if meta.file_type().is_symlink() || bits & !mode == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, Permissions::from_mode(mode))
        .with_context(|| format!("restricting {} to mode {mode:04o}", path.display()))?;
    log::warn!(
        "{} had mode {bits:04o}, open to other users; restricted it to {mode:04o}",
        path.display()
    );
    Ok(())
}

fn is_bpffs(path: &Path) -> Result<bool> {
    let st =
        nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(st.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

impl Pins {
    pub fn new(root: &Path, node: &str) -> Result<Self> {
        validate_node_name(node)?;
        // bpffs refuses names with dots (they are reserved for its own files); Kubernetes
        // node names never contain '_', so mapping '.' to '_' keeps names distinct.
        Ok(Pins {
            dir: root.join(node.replace('.', "_")),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join("progs").join(name)
    }

    pub fn link(&self, hook: Hook, ifname: &str) -> PathBuf {
        self.dir
            .join("links")
            .join(format!("{}{ifname}", hook.prefix()))
    }

    /// Interfaces with a pinned link for `hook`.
    pub fn links(&self, hook: Hook) -> Result<Vec<(String, PathBuf)>> {
        let dir = self.dir.join("links");
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(ifname) = name.strip_prefix(hook.prefix()) {
                out.push((ifname.to_string(), entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether the agent has set this node up (the CNI plugin waits for it).
    pub fn exists(&self) -> bool {
        self.program(netdp_common::program_names::FROM_POD).exists()
    }

    /// Creates the directories, checking they are on bpffs. If the directory sits under a
    /// `/sys/fs/bpf` that has no bpffs mounted yet (a fresh host), mounts it, as Cilium does.
    pub fn create_dirs(&self) -> Result<()> {
        let bpf = Path::new("/sys/fs/bpf");
        if self.dir.starts_with(bpf) && bpf.is_dir() && !is_bpffs(bpf)? {
            if private_mount_namespace() {
                // `ip netns exec` unshares the mount namespace and mounts a fresh /sys: a bpffs
                // mounted there would be this process's alone and vanish with it, pins and all.
                bail!(
                    "/sys/fs/bpf here is not the host's: the agent runs in a mount namespace of \
                     its own (started with `ip netns exec`?), so its pins would vanish when it \
                     exits and the CNI plugin would not see them. Enter only the network \
                     namespace instead: `nsenter --net=/run/netns/NAME netdp agent ...`, or, in \
                     a container, mount the host's /sys/fs/bpf"
                );
            }
            nix::mount::mount(
                Some("bpf"),
                bpf,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .context("mounting bpffs at /sys/fs/bpf")?;
            log::info!("mounted bpffs at /sys/fs/bpf");
        }
        let mut probe = self.dir.as_path();
        while !probe.exists() {
            probe = probe.parent().unwrap_or(Path::new("/"));
        }
        if !is_bpffs(probe)? {
            bail!(
                "{} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf`",
                probe.display()
            );
        }
        for sub in SUBDIRS {
            let d = self.dir.join(sub);
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(&d)
                .with_context(|| format!("creating {}", d.display()))?;
        }
        self.secure()
    }

    /// Checks the pin directories and every pin in them, as an earlier agent (or someone
    /// else) left them. Anything another user owns is refused: it could have been planted
    /// to feed the dataplane routes or read its state. Anything others may open is
    /// tightened, with a warning naming it.
    pub fn secure(&self) -> Result<()> {
        let owner = nix::unistd::geteuid().as_raw();
        // The root too when it is a directory on bpffs, not the mount point itself (whose
        // mode is the host's business).
        if let Some(root) = self.dir.parent().filter(|r| below_mount(r)) {
            secure_path(root, DIR_MODE, owner)?;
        }
        secure_path(&self.dir, DIR_MODE, owner)?;
        for sub in SUBDIRS {
            let d = self.dir.join(sub);
            secure_path(&d, DIR_MODE, owner)?;
            let entries =
                std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))?;
            for entry in entries {
                let entry = entry.with_context(|| format!("listing {}", d.display()))?;
                secure_path(&entry.path(), PIN_MODE, owner)?;
            }
        }
        Ok(())
    }

    /// Removes every pinned object of this node: programs detach, maps go away.
    pub fn remove_all(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.dir.display())),
        }
    }
}
