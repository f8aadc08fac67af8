//! [`Testbed`], the one handle a test holds: it creates the run, finds nodes and etcd,
//! waits on conditions and tears everything down when dropped. Its other methods live
//! with what they do: building the namespaces in `topology.rs`, agents in `agents.rs`,
//! pods in `cni.rs`, `netdp` CLI calls in `cli.rs` and services in `services.rs`.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, anyhow, bail};

use crate::{cleanup, etcd::Etcd, etcd_cluster::EtcdCluster, netns, wait};

// The paths callers have used since all of this lived in this file.
pub use crate::base::{BPF_ROOT, Count, open_pinned_map, require_privileges, which};
pub use crate::topology::{
    ETCD_PREFIX, Node, NodeSpec, OUTSIDE_GW, OUTSIDE_IP, Pod, Spec, underlay_prefix,
};

/// Where the netdp binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub netdp: PathBuf,
    pub cni: PathBuf,
}

impl Binaries {
    /// `NETDP_BIN_DIR`, or the directory of the running executable (and its parent, for
    /// test binaries in `target/debug/deps`).
    pub fn locate() -> Result<Self> {
        let mut dirs = Vec::new();
        if let Some(d) = std::env::var_os("NETDP_BIN_DIR") {
            dirs.push(PathBuf::from(d));
        }
        if let Ok(exe) = std::env::current_exe()
            && let Some(d) = exe.parent()
        {
            dirs.push(d.to_path_buf());
            if let Some(p) = d.parent() {
                dirs.push(p.to_path_buf());
            }
        }
        for d in &dirs {
            let (netdp, cni) = (d.join("netdp"), d.join("netdp-cni"));
            if netdp.is_file() && cni.is_file() {
                return Ok(Binaries { netdp, cni });
            }
        }
        bail!("netdp and netdp-cni binaries not found in {dirs:?}; build them or set NETDP_BIN_DIR")
    }
}

/// A running testbed: everything it created goes when it is dropped.
pub struct Testbed {
    pub id: String,
    pub dir: PathBuf,
    pub bins: Binaries,
    /// The one etcd, unless the spec asked for a cluster.
    pub etcd: Option<Etcd>,
    pub etcd_cluster: Option<EtcdCluster>,
    /// The etcds of [`Spec::clusters`]: cluster `k`'s is `cluster_etcds[k - 1]`.
    pub cluster_etcds: Vec<Etcd>,
    pub nodes: Vec<Node>,
    pub spec: Spec,
    pub prefix: String,
    /// Namespace holding the underlay bridges.
    pub underlay_ns: String,
    pub router_ns: Option<String>,
    pub outside_ns: Option<String>,
    pub ctl_ns: String,
    /// The program the underlay's ends of node veths run (loaded with the first node).
    pub(crate) peer_xdp: std::sync::OnceLock<crate::peer_xdp::PeerXdp>,
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut x = (std::process::id() as u64) << 32 ^ nanos as u64 ^ rand_seed();
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    format!("{:06x}", x & 0xff_ffff)
}

fn rand_seed() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed)
}

impl Testbed {
    pub fn new(spec: Spec) -> Result<Self> {
        require_privileges()?;
        cleanup::remove_stale();
        let bins = match &spec.bins {
            Some(b) => b.clone(),
            None => Binaries::locate()?,
        };
        let mut id = run_id();
        while netns::exists(&format!("nd{id}-ul")) {
            id = run_id();
        }
        let dir = cleanup::runs_dir().join(&id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        cleanup::register(&id, &dir);
        let mut tb = Testbed {
            prefix: spec
                .etcd_prefix
                .clone()
                .unwrap_or_else(|| ETCD_PREFIX.to_string()),
            underlay_ns: format!("nd{id}-ul"),
            ctl_ns: format!("nd{id}-ctl"),
            router_ns: None,
            outside_ns: None,
            id,
            dir,
            bins,
            etcd: None,
            etcd_cluster: None,
            cluster_etcds: Vec::new(),
            nodes: Vec::new(),
            spec: spec.clone(),
            peer_xdp: std::sync::OnceLock::new(),
        };
        tb.build().context("building the testbed")?;
        Ok(tb)
    }

    pub fn etcd(&self) -> &Etcd {
        self.etcd
            .as_ref()
            .expect("this testbed runs an etcd cluster: use etcd_cluster()")
    }

    pub fn etcd_mut(&mut self) -> &mut Etcd {
        self.etcd
            .as_mut()
            .expect("this testbed runs an etcd cluster: use etcd_cluster()")
    }

    pub fn etcd_cluster(&mut self) -> &mut EtcdCluster {
        self.etcd_cluster
            .as_mut()
            .expect("this testbed runs one etcd: ask for a cluster with Spec::etcd_cluster")
    }

    /// What clients are given as `--etcd-endpoints`: the one etcd, or every member.
    pub fn etcd_endpoint(&self) -> String {
        match &self.etcd_cluster {
            Some(c) => c.endpoint_list(),
            None => self.etcd().endpoint.clone(),
        }
    }

    /// The etcd of cluster `k` (1 on: [`Spec::cluster`]).
    pub fn cluster_etcd(&mut self, k: usize) -> &mut Etcd {
        let n = self.cluster_etcds.len();
        self.cluster_etcds
            .get_mut(k.wrapping_sub(1))
            .unwrap_or_else(|| panic!("no cluster {k}: this testbed has {n} more clusters"))
    }

    /// What the agents of cluster `k` are given as `--etcd-endpoints`.
    pub fn etcd_endpoint_of(&self, k: usize) -> String {
        match k {
            0 => self.etcd_endpoint(),
            k => self.cluster_etcds[k - 1].endpoint.clone(),
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in this testbed"))
    }

    pub(crate) fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in this testbed"))
    }

    /// Writes (replaces) the network config in etcd.
    pub fn set_network_config(&self, json: &str) -> Result<()> {
        let key = format!("{}/config", self.prefix);
        match &self.etcd_cluster {
            Some(c) => c.put(&key, json),
            None => self.etcd().put(&key, json),
        }
    }

    /// This node's subnet as `a.b.c.d/len`, from its subnet file.
    pub fn subnet_of(&self, node: &str) -> Result<String> {
        let (net, len) = self.node(node).subnet()?;
        Ok(format!("{net}/{len}"))
    }

    /// [`wait::wait_until`], with the agents' logs in the error.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        f: impl FnMut() -> Result<bool>,
    ) -> Result<Duration> {
        wait::wait_until(what, timeout, f).map_err(|e| anyhow!("{e:#}\n{}", self.agent_logs(20)))
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "testbed {} failed; agent logs:\n{}",
                self.id,
                self.agent_logs(30)
            );
        }
        self.stop_remaining_agents();
        if let Some(mut e) = self.etcd.take() {
            e.stop();
        }
        drop(self.etcd_cluster.take());
        for mut e in self.cluster_etcds.drain(..) {
            e.stop();
        }
        cleanup::release(&self.id);
    }
}
