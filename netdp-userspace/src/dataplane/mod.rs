//! Loading, pinning and attaching netdp's programs, and typed access to their maps.
//!
//! Module names follow the eBPF side: `endpoint` programs ENDPOINTS, `route` programs
//! ROUTES, `peer` programs PEERS, `nat` reads CONNTRACK and NAT, `counters` reads COUNTERS.
pub mod counters;
pub mod endpoint;
pub mod nat;
pub mod peer;
pub mod pins;
pub mod route;

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use log::{info, warn};
use netdp_common::{capacity, map_names, node::NodeConfig, program_names};

pub use pins::{Hook, Pins};

/// The eBPF object, built by `cargo xtask build-ebpf` and embedded at compile time.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(env!("NETDP_EBPF_OBJECT"))
}

/// Map capacities (flags of the agent).
#[derive(Debug, Clone)]
pub struct MapSizes {
    pub endpoints: u32,
    pub routes: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            endpoints: capacity::ENDPOINTS,
            routes: capacity::ROUTES,
        }
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

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a tc classifier"))
}

impl Dataplane {
    /// Loads the programs with no node settings: local delivery and direct routes only
    /// (no tunnels, no egress, no masquerading).
    pub fn load(pins: Option<&Pins>, sizes: &MapSizes) -> Result<Self> {
        Self::load_for(pins, sizes, &NodeConfig::default())
    }

    /// Loads the programs for a node. With `pins`, maps are reused from (or pinned to) the
    /// node's bpffs directory so their contents survive agent restarts. `node` is baked
    /// into the programs as a constant.
    pub fn load_for(pins: Option<&Pins>, sizes: &MapSizes, node: &NodeConfig) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader.override_global(netdp_common::node::GLOBAL, node, true);
        if let Some(pins) = pins {
            pins.create_dirs()?;
            drop_incompatible_pins(pins);
            for name in map_names::ALL {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        loader
            .map_max_entries(map_names::ENDPOINTS, sizes.endpoints)
            .map_max_entries(map_names::ROUTES, sizes.routes);
        let mut ebpf = loader
            .load(object())
            .context("loading netdp's eBPF object")?;
        for name in [program_names::FROM_POD, program_names::FROM_NETDEV] {
            classifier(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading program {name} into the kernel"))?;
        }
        if let Some(pins) = pins {
            check_pinned_sizes(&ebpf, pins, sizes);
        }
        Ok(Dataplane { ebpf })
    }

    pub fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        classifier(&mut self.ebpf, name)
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
        for name in [program_names::FROM_POD, program_names::FROM_NETDEV] {
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

fn check_pinned_sizes(ebpf: &Ebpf, pins: &Pins, sizes: &MapSizes) {
    for (name, want) in [
        (map_names::ENDPOINTS, sizes.endpoints),
        (map_names::ROUTES, sizes.routes),
    ] {
        let Some(map) = ebpf.map(name) else { continue };
        let data: &MapData = match map {
            Map::HashMap(d) | Map::LpmTrie(d) => d,
            _ => continue,
        };
        if let Ok(info) = data.info() {
            if info.max_entries() != want {
                warn!(
                    "map {name} at {} keeps its {} entries (asked for {want}); remove the node's \
                     pins to resize it",
                    pins.map(name).display(),
                    info.max_entries()
                );
            }
        }
    }
}

/// Key and value sizes of each map as this build's programs define them.
fn layout(name: &str) -> Option<(usize, usize)> {
    use core::mem::size_of;
    use netdp_common::{counters, endpoint, nat, peer, route};
    Some(match name {
        map_names::ENDPOINTS => (
            size_of::<endpoint::EndpointKey>(),
            size_of::<endpoint::Endpoint>(),
        ),
        // LPM keys: a 32-bit prefix length, then the address.
        map_names::ROUTES => (
            4 + size_of::<netdp_common::Ipv4>(),
            size_of::<route::Route>(),
        ),
        map_names::COUNTERS => (4, size_of::<counters::CounterValue>()),
        map_names::PEERS => (size_of::<peer::PeerKey>(), size_of::<peer::Peer>()),
        map_names::CONNTRACK => (size_of::<nat::CtKey>(), size_of::<nat::CtEntry>()),
        map_names::NAT => (size_of::<nat::NatKey>(), size_of::<nat::NatEntry>()),
        _ => return None,
    })
}

/// Removes pinned maps an older build left with another layout (a grown route entry,
/// say): the programs could not use them, and the agent refills what it owns.
fn drop_incompatible_pins(pins: &Pins) {
    for name in map_names::ALL {
        let path = pins.map(name);
        let (Some((key, value)), Ok(info)) = (layout(name), aya::maps::MapInfo::from_pin(&path))
        else {
            continue;
        };
        if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
            warn!(
                "map {name} at {} has {}-byte keys and {}-byte values, this build uses {key} \
                 and {value}: replacing it (its entries are rebuilt or lost)",
                path.display(),
                info.key_size(),
                info.value_size()
            );
            let _ = std::fs::remove_file(&path);
        }
    }
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
