//! Loading, pinning and attaching netdp's programs, and typed access to their maps.
//!
//! Module names follow the eBPF side: `endpoint` writes ENDPOINTS, `route` writes ROUTES,
//! `peer` writes PEERS, `counters` reads COUNTERS, `lb` writes the service maps (FRONTENDS,
//! BACKENDS, MAGLEV, AFFINITY_BACKENDS, LB_CONFIG; `lb::writer`) with `maglev` computing the
//! tables, `conntrack` reads and garbage-collects CONNTRACK and HALF_OPEN (service and
//! masquerade flows), `nat` lists the masqueraded ones, `networks` writes ROUTED_NETWORKS and
//! DENIED_SOURCES, and `xdp` attaches the XDP program. `compat` deals with pinned maps an older build left.
mod compat;
pub mod config;
pub mod conntrack;
pub mod counters;
pub mod endpoint;
pub mod lb;
pub mod lease;
pub mod maglev;
pub mod monitor;
pub mod nat;
pub mod networks;
pub mod node;
pub mod peer;
pub mod pins;
pub mod route;
pub mod util;
pub mod xdp;

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use log::{info, warn};
use netdp_common::{
    capacity, global_names, lb::maglev_rows, map_names, maps, node::NodeConfig, program_names,
};

pub use pins::{Hook, Pins, node_name};

/// An interface as the dataplane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// Map capacities (flags of the agent).
#[derive(Debug, Clone)]
pub struct MapSizes {
    pub endpoints: u32,
    pub routes: u32,
    pub frontends: u32,
    pub backends: u32,
    /// Number of Maglev tables.
    pub maglev_tables: u32,
    /// Entries per Maglev table (a prime).
    pub maglev_table_size: u32,
    pub affinity: u32,
    pub affinity_backends: u32,
    pub conntrack: u32,
    /// HALF_OPEN: TCP flows until their SYN is answered.
    pub half_open: u32,
    pub sock_nat: u32,
    /// Conntrack lifetimes per state, seconds (see `conntrack::timeout`).
    pub conntrack_timeouts: [u32; 4],
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            endpoints: capacity::ENDPOINTS,
            routes: capacity::ROUTES,
            frontends: capacity::FRONTENDS,
            backends: capacity::BACKENDS,
            maglev_tables: capacity::MAGLEV_TABLES,
            maglev_table_size: netdp_common::lb::MAGLEV_TABLE_SIZE,
            affinity: capacity::AFFINITY,
            affinity_backends: capacity::AFFINITY_BACKENDS,
            conntrack: capacity::CONNTRACK,
            half_open: capacity::HALF_OPEN,
            sock_nat: capacity::SOCK_NAT,
            conntrack_timeouts: netdp_common::conntrack::timeout::DEFAULTS,
        }
    }
}

impl MapSizes {
    /// MAGLEV array elements: every table, each rounded up to whole rows.
    pub fn maglev_rows(&self) -> u32 {
        self.maglev_tables
            .saturating_mul(maglev_rows(self.maglev_table_size))
            .max(1)
    }

    /// Capacities per map, as the loader is told.
    fn by_map(&self) -> [(&'static str, u32); 11] {
        [
            (map_names::ENDPOINTS, self.endpoints),
            (map_names::ROUTES, self.routes),
            (map_names::FRONTENDS, self.frontends),
            (map_names::BACKENDS, self.backends),
            (map_names::MAGLEV, self.maglev_rows()),
            (map_names::AFFINITY, self.affinity),
            (map_names::AFFINITY_BACKENDS, self.affinity_backends),
            (map_names::CONNTRACK, self.conntrack),
            (map_names::HALF_OPEN, self.half_open),
            (map_names::LB_CONFIG, 1),
            (map_names::SOCK_NAT, self.sock_nat),
        ]
    }
}

/// The loaded programs and maps of one node.
pub struct Dataplane {
    ebpf: Ebpf,
}

/// What [`Dataplane::install`] found and did.
#[derive(Debug, Default)]
pub struct Installed {
    /// The underlay link already existed and now runs the new program.
    pub netdev_adopted: bool,
    /// Pod links that now run the new program.
    pub pod_links_adopted: usize,
    /// Pinned pod links whose interface is gone, removed.
    pub pod_links_removed: usize,
}

fn socket_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a cgroup socket program"))
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a tc classifier"))
}

impl Dataplane {
    /// Loads the programs with no node settings: local delivery and direct routes only
    /// (no tunnels, no egress, no masquerading).
    pub fn load(object: &[u8], pins: Option<&Pins>, sizes: &MapSizes) -> Result<Self> {
        Self::load_for(object, pins, sizes, &NodeConfig::default())
    }

    /// Loads the programs for a node. With `pins`, maps are reused from (or pinned to) the
    /// node's bpffs directory so their contents survive agent restarts. `node` is baked
    /// into the programs as a constant. `object` is the eBPF object (`cargo xtask build-ebpf`
    /// builds it; the binaries embed it, the benchmarks read it from the build).
    pub fn load_for(
        object: &[u8],
        pins: Option<&Pins>,
        sizes: &MapSizes,
        node: &NodeConfig,
    ) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader.override_global(global_names::NODE, node, true);
        if let Some(pins) = pins {
            pins.create_dirs()?;
            compat::drop_incompatible_pins(pins);
            for spec in maps::CATALOGUE {
                loader.map_pin_path(spec.name, pins.map(spec.name));
            }
        }
        for (name, size) in sizes.by_map() {
            loader.map_max_entries(name, size);
        }
        loader
            .override_global(
                global_names::MAGLEV_TABLE_SIZE,
                &sizes.maglev_table_size,
                true,
            )
            .override_global(global_names::CT_TIMEOUTS, &sizes.conntrack_timeouts, true);
        let mut ebpf = loader.load(object).context("loading netdp's eBPF object")?;
        for name in program_names::CLASSIFIERS {
            classifier(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading program {name} into the kernel"))?;
        }
        for name in program_names::SOCKETS {
            socket_program(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading program {name} into the kernel"))?;
        }
        xdp::program(&mut ebpf)?.load().with_context(|| {
            format!(
                "loading program {} into the kernel",
                program_names::XDP_NETDEV
            )
        })?;
        if let Some(pins) = pins {
            compat::check_pinned_sizes(&ebpf, pins, sizes);
        }
        Ok(Dataplane { ebpf })
    }

    pub fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        classifier(&mut self.ebpf, name)
    }

    /// A classifier to run on crafted packets (BPF_PROG_TEST_RUN), as the packet tests and
    /// the per-packet benchmark do.
    pub fn classifier(&self, name: &str) -> Result<&SchedClassifier> {
        self.ebpf
            .program(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {name} is not a tc classifier"))
    }

    /// Names of the maps still in the object (globals' sections such as `.rodata` included).
    pub fn map_names(&self) -> Vec<String> {
        self.ebpf.maps().map(|(name, _)| name.to_string()).collect()
    }

    /// Takes a map out of the object, to wrap it in its typed accessor.
    pub fn take_map(&mut self, name: &str) -> Result<Map> {
        self.ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
    }

    /// Pins the programs, moves every pinned link (underlay and pods) to the programs just
    /// loaded, and attaches to the underlay if nothing was attached yet. Links are
    /// replaced atomically, so traffic never sees a moment without a program.
    pub fn install(&mut self, pins: &Pins, netdev: &str) -> Result<Installed> {
        let mut done = Installed::default();
        for name in program_names::CLASSIFIERS {
            let path = pins.program(name);
            let tmp = pins.program(&format!("{name}_new"));
            let _ = std::fs::remove_file(&tmp);
            self.program(name)?
                .pin(&tmp)
                .with_context(|| format!("pinning program {name}"))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("pinning program {name} at {}", path.display()))?;
        }

        // Links of an underlay interface we no longer use are dropped.
        for (ifname, path) in pins.links(Hook::Netdev)? {
            if ifname != netdev {
                info!("detaching from {ifname}: the underlay is now {netdev}");
                let _ = std::fs::remove_file(path);
            }
        }
        let netdev_pin = pins.link(Hook::Netdev, netdev);
        done.netdev_adopted = self.adopt(program_names::FROM_NETDEV, &netdev_pin)?;
        if !done.netdev_adopted {
            attach_and_pin(
                self.program(program_names::FROM_NETDEV)?,
                netdev,
                &netdev_pin,
            )?;
        }

        for (ifname, path) in pins.links(Hook::Pod)? {
            if nix::net::if_::if_nametoindex(ifname.as_str()).is_err() {
                let _ = std::fs::remove_file(&path);
                done.pod_links_removed += 1;
                continue;
            }
            if self.adopt(program_names::FROM_POD, &path)? {
                done.pod_links_adopted += 1;
            }
        }
        Ok(done)
    }

    /// Runs `from_host` on tc ingress of `ifname` (the gateway device's peer, where the
    /// node's own traffic to pods arrives), taking over a pinned link if there is one.
    pub fn attach_host(&mut self, pins: &Pins, ifname: &str) -> Result<()> {
        for (old, path) in pins.links(Hook::Host)? {
            if old != ifname {
                let _ = std::fs::remove_file(path);
            }
        }
        let pin = pins.link(Hook::Host, ifname);
        if !self.adopt(program_names::FROM_HOST, &pin)? {
            attach_and_pin(self.program(program_names::FROM_HOST)?, ifname, &pin)?;
        }
        Ok(())
    }

    /// Attaches the socket programs to the cgroup at `cgroup` (links pinned, so they stay
    /// while the agent is away). A previous agent's links are replaced: the new ones are
    /// attached first, so no connect goes untranslated in between.
    pub fn attach_sockets(&mut self, pins: &Pins, cgroup: &std::path::Path) -> Result<()> {
        let dir = std::fs::File::open(cgroup)
            .with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        for name in program_names::SOCKETS {
            let prog = socket_program(&mut self.ebpf, name)?;
            let id = prog
                // Links always coexist with others; link_create takes no attach flags.
                .attach(&dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to cgroup {}", cgroup.display()))?;
            let link: FdLink = prog
                .take_link(id)
                .context("taking the new link")?
                .try_into()
                .context("the cgroup link is not fd based (needs kernel 5.7+)")?;
            let path = pins.link(Hook::Cgroup, name);
            let tmp = pins.link(Hook::Cgroup, &format!("{name}_new"));
            let _ = std::fs::remove_file(&tmp);
            link.pin(&tmp)
                .with_context(|| format!("pinning link at {}", tmp.display()))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("pinning link at {}", path.display()))?;
        }
        Ok(())
    }

    /// Points the pinned link at `path` to our program `name`. `false` if there is none.
    fn adopt(&mut self, name: &str, path: &std::path::Path) -> Result<bool> {
        let pinned = match PinnedLink::from_pin(path) {
            Ok(p) => p,
            Err(_) if !path.exists() => return Ok(false),
            Err(e) => {
                warn!("dropping unusable pinned link {}: {e}", path.display());
                let _ = std::fs::remove_file(path);
                return Ok(false);
            }
        };
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .with_context(|| format!("{} is not a tc link", path.display()))?;
        self.program(name)?
            .attach_to_link(link)
            .with_context(|| format!("updating {} to the new program", path.display()))?;
        Ok(true)
    }
}

/// Attaches `prog` to tc ingress of `ifname` (TCX) and pins the link at `pin`.
pub fn attach_and_pin(
    prog: &mut SchedClassifier,
    ifname: &str,
    pin: &std::path::Path,
) -> Result<()> {
    let id = prog
        .attach_with_options(
            ifname,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .with_context(|| format!("attaching to tc ingress of {ifname}"))?;
    let link: FdLink = prog
        .take_link(id)
        .context("taking the new link")?
        .try_into()
        .context("the tc link is not fd based (TCX needs kernel 6.6+)")?;
    link.pin(pin)
        .with_context(|| format!("pinning link at {}", pin.display()))?;
    Ok(())
}

/// Opens a pinned map of a node (for the CLI and the CNI plugin).
pub fn open_pinned(pins: &Pins, name: &str) -> Result<Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening map {} (is the netdp agent running on this node?)",
            path.display()
        )
    })?;
    Map::from_map_data(data).with_context(|| format!("reading map {}", path.display()))
}
