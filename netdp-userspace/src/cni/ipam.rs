//! Pod address allocation inside the node's subnet, persisted on disk like host-local:
//! one file per allocated address, written under a lock, so concurrent plugin runs and
//! restarts never hand out a live address twice.
use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use ipnetwork::Ipv4Network;

/// One recorded allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub addr: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
    /// The host-side veth that carries this pod.
    pub host_ifname: String,
}

pub struct Store {
    dir: PathBuf,
    _lock: File,
}

const LAST_RESERVED: &str = "last_reserved_ip.0";

impl Store {
    /// Opens (creating) the store of network `name` and takes its lock until dropped.
    pub fn open(data_dir: &Path, name: &str) -> Result<Self> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("network name {name:?} cannot be used as a directory name");
        }
        let dir = data_dir.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .with_context(|| format!("opening lock in {}", dir.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "locking {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Store { dir, _lock: lock })
    }

    pub fn list(&self) -> Result<Vec<Allocation>> {
        let mut out = Vec::new();
        for entry in
            fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))?
        {
            let entry = entry?;
            let Some(addr) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            let mut lines = text.lines();
            out.push(Allocation {
                addr,
                container_id: lines.next().unwrap_or_default().to_string(),
                ifname: lines.next().unwrap_or_default().to_string(),
                host_ifname: lines.next().unwrap_or_default().to_string(),
            });
        }
        out.sort_by_key(|a| a.addr);
        Ok(out)
    }

    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Allocation>> {
        Ok(self
            .list()?
            .into_iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname))
    }

    /// Allocates an address for (container, ifname): the one it already has, the requested
    /// one if free, else the next free address after the last one handed out (so a freed
    /// address is not reused at once by the next pod).
    pub fn allocate(
        &self,
        subnet: Ipv4Network,
        container_id: &str,
        ifname: &str,
        host_ifname: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Allocation> {
        let existing = self.list()?;
        if let Some(a) = existing.iter().find(|a| {
            a.container_id == container_id && a.ifname == ifname && subnet.contains(a.addr)
        }) {
            return Ok(a.clone());
        }
        let first = u32::from(subnet.network()) + 2; // .0 network, .1 the node's gateway
        let last = u32::from(subnet.broadcast()) - 1;
        if first > last {
            bail!("subnet {subnet} has no room for pods");
        }
        let taken = |a: u32| existing.iter().any(|x| u32::from(x.addr) == a);
        let addr = match requested {
            Some(r) => {
                let n = u32::from(r);
                if !(first..=last).contains(&n) {
                    bail!("requested address {r} is not a pod address of {subnet}");
                }
                if taken(n) {
                    bail!("requested address {r} is already in use");
                }
                n
            }
            None => {
                let last_reserved = fs::read_to_string(self.dir.join(LAST_RESERVED))
                    .ok()
                    .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
                    .map(u32::from)
                    .filter(|a| (first..=last).contains(a))
                    .unwrap_or(last);
                let span = last - first + 1;
                let start = last_reserved - first + 1;
                (0..span)
                    .map(|i| first + (start + i) % span)
                    .find(|a| !taken(*a))
                    .with_context(|| {
                        format!(
                            "no free address left in {subnet} ({span} pod addresses, all in use)"
                        )
                    })?
            }
        };
        let alloc = Allocation {
            addr: Ipv4Addr::from(addr),
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            host_ifname: host_ifname.to_string(),
        };
        let path = self.dir.join(alloc.addr.to_string());
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("recording {}", path.display()))?;
        write!(
            f,
            "{}\n{}\n{}\n",
            alloc.container_id, alloc.ifname, alloc.host_ifname
        )?;
        f.sync_all()?;
        fs::write(self.dir.join(LAST_RESERVED), alloc.addr.to_string())?;
        Ok(alloc)
    }

    /// Frees an address.
    pub fn release(&self, addr: Ipv4Addr) -> Result<()> {
        match fs::remove_file(self.dir.join(addr.to_string())) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("freeing {addr}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "netdp-ipam-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn allocates_round_robin_and_frees() {
        let dir = tmp();
        let subnet: Ipv4Network = "10.1.15.0/29".parse().unwrap();
        let store = Store::open(&dir, "net").unwrap();
        let a = store.allocate(subnet, "c1", "eth0", "h1", None).unwrap();
        assert_eq!(a.addr, Ipv4Addr::new(10, 1, 15, 2));
        // Same container and interface: same address.
        assert_eq!(store.allocate(subnet, "c1", "eth0", "h1", None).unwrap(), a);
        let b = store.allocate(subnet, "c2", "eth0", "h2", None).unwrap();
        assert_eq!(b.addr, Ipv4Addr::new(10, 1, 15, 3));
        store.release(a.addr).unwrap();
        // Not reused at once...
        let c = store.allocate(subnet, "c3", "eth0", "h3", None).unwrap();
        assert_eq!(c.addr, Ipv4Addr::new(10, 1, 15, 4));
        // ...but can be asked for explicitly.
        let d = store
            .allocate(subnet, "c4", "eth0", "h4", Some(a.addr))
            .unwrap();
        assert_eq!(d.addr, a.addr);
        assert!(
            store
                .allocate(subnet, "c5", "eth0", "h5", Some(b.addr))
                .is_err()
        );
        assert!(
            store
                .allocate(
                    subnet,
                    "c5",
                    "eth0",
                    "h5",
                    Some(Ipv4Addr::new(10, 1, 15, 1))
                )
                .is_err()
        );
        // .5 and .6 left, then exhausted.
        store.allocate(subnet, "c6", "eth0", "h6", None).unwrap();
        store.allocate(subnet, "c7", "eth0", "h7", None).unwrap();
        let err = store
            .allocate(subnet, "c8", "eth0", "h8", None)
            .unwrap_err();
        assert!(err.to_string().contains("no free address"), "{err}");
        drop(store);
        // Persisted.
        let store = Store::open(&dir, "net").unwrap();
        assert_eq!(store.list().unwrap().len(), 5);
        assert_eq!(store.find("c2", "eth0").unwrap().unwrap().host_ifname, "h2");
        fs::remove_dir_all(dir).unwrap();
    }
}
