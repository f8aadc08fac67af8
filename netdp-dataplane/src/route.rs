//! The ROUTES map: remote pod subnets to the node that leases them, and how to get there.
use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{Context, Result};
use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
use ipnetwork::Ipv4Network;
use netdp_common::{
    Ipv4, encap, map_names,
    route::{Route, flags, mode},
};

use super::{Pins, open_pinned};
use crate::{Link, config::Backend, lease::LeaseAttrs};

/// ROUTES, and what this handle last made it hold: a sync compares with that instead of
/// reading thousands of entries back from the kernel on every lease change.
pub struct RouteMap {
    map: LpmTrie<MapData, Ipv4, Route>,
    /// `None`: not known (a fresh handle, a failed write, or [`RouteMap::forget`]); the
    /// next sync reads the map.
    written: Option<HashMap<Ipv4Network, Route>>,
}

fn key(subnet: &Ipv4Network) -> Key<Ipv4> {
    Key::new(subnet.prefix() as u32, subnet.network().octets())
}

impl RouteMap {
    pub fn from_map(map: Map) -> Result<Self> {
        Ok(RouteMap {
            map: LpmTrie::try_from(map).context("ROUTES has an unexpected type")?,
            written: None,
        })
    }

    pub fn open(pins: &Pins) -> Result<Self> {
        Self::from_map(open_pinned(pins, map_names::ROUTES)?)
    }

    pub fn list(&self) -> Vec<(Ipv4Network, Route)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .filter_map(|r| r.ok())
            .filter_map(|(k, r)| {
                Ipv4Network::new(Ipv4Addr::from(k.data()), k.prefix_len() as u8)
                    .ok()
                    .map(|n| (n, r))
            })
            .collect();
        v.sort_by_key(|(n, _)| (n.network(), n.prefix()));
        v
    }

    /// Makes the map hold exactly `desired`, touching only entries that differ so packets
    /// in flight never see a missing route for a subnet that stays.
    pub fn sync(&mut self, desired: &HashMap<Ipv4Network, Route>) -> Result<SyncStats> {
        let current = match self.written.take() {
            Some(w) => w,
            None => self.list().into_iter().collect(),
        };
        let mut stats = SyncStats::default();
        for (subnet, route) in desired {
            let (count, what) = match current.get(subnet) {
                Some(r) if r == route => continue,
                Some(_) => (&mut stats.updated, "updating"),
                None => (&mut stats.added, "adding"),
            };
            self.map
                .insert(&key(subnet), route, 0)
                .with_context(|| format!("{what} route {subnet}"))?;
            *count += 1;
        }
        for subnet in current.keys().filter(|s| !desired.contains_key(s)) {
            match self.map.remove(&key(subnet)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => stats.removed += 1,
                Err(e) => return Err(e).with_context(|| format!("removing route {subnet}")),
            }
        }
        self.written = Some(desired.clone());
        Ok(stats)
    }

    /// Routes in the map: as last written, or read from it.
    pub fn count(&self) -> usize {
        match &self.written {
            Some(w) => w.len(),
            None => self.list().len(),
        }
    }

    /// Makes the next sync read the map again, so it also repairs what someone else
    /// changed there (the agent's periodic resync).
    pub fn forget(&mut self) {
        self.written = None;
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
}

impl SyncStats {
    pub fn is_empty(&self) -> bool {
        self.added + self.updated + self.removed == 0
    }
}

/// This node's side of the underlay.
#[derive(Debug, Clone)]
pub struct Underlay {
    pub link: Link,
    /// Our address on it, with the prefix of the underlay subnet: tunnels start here.
    pub addr: Ipv4Network,
}

impl Underlay {
    /// Whether `peer` shares our L2 segment (same underlay subnet).
    pub fn is_adjacent(&self, peer: Ipv4Addr) -> bool {
        self.addr.contains(peer)
    }
}

/// How this node reaches `peer` (its lease) with `backend`, or why it cannot.
pub fn mode_for(underlay: &Underlay, backend: &Backend, peer: &LeaseAttrs) -> Result<u32, String> {
    if peer.backend_type != backend.type_name() {
        return Err(format!(
            "it uses the {:?} backend and this node {}",
            peer.backend_type,
            backend.type_name()
        ));
    }
    let adjacent = underlay.is_adjacent(peer.public_ip);
    Ok(match backend {
        Backend::HostGw if adjacent => mode::DIRECT,
        Backend::HostGw => {
            return Err(format!(
                "it is not on this node's underlay subnet {}: host-gw needs L2 adjacency",
                underlay.addr.network()
            ));
        }
        Backend::Vxlan { direct_routing, .. } | Backend::Ipip { direct_routing }
            if *direct_routing && adjacent =>
        {
            mode::DIRECT
        }
        Backend::Vxlan { .. } => {
            if peer.vtep_mac().is_none() {
                return Err("its lease has no BackendData.VtepMAC".into());
            }
            mode::VXLAN
        }
        Backend::Ipip { .. } => mode::IPIP,
        Backend::Udp { .. } => mode::UDP,
    })
}

/// Bytes a route mode adds to each packet.
pub fn overhead(mode: u32) -> u32 {
    match mode {
        mode::VXLAN => encap::VXLAN_OVERHEAD,
        mode::IPIP => encap::IPIP_OVERHEAD,
        mode::UDP => encap::UDP_OVERHEAD,
        _ => 0,
    }
}

/// The ROUTES entry for a peer reached in `mode` (from [`mode_for`]) through `nexthop`,
/// whose MAC is `nexthop_mac` if the neighbour table has it. Every header field the
/// programs write is filled in here.
pub fn entry_for(
    underlay: &Underlay,
    backend: &Backend,
    peer: &LeaseAttrs,
    mode: u32,
    nexthop: Ipv4Addr,
    nexthop_mac: Option<[u8; 6]>,
) -> Route {
    let src = underlay.addr.ip().octets();
    let dst = peer.public_ip.octets();
    let mut route = Route {
        node_ip: dst,
        nexthop: nexthop.octets(),
        ifindex: underlay.link.index,
        mode,
        flags: 0,
        dmac: [0; 6],
        smac: underlay.link.mac,
        src_ip: src,
        vtep_mac: [0; 6],
        port: 0,
        vni: 0,
        ip_sum: 0,
        mtu: underlay.link.mtu.saturating_sub(overhead(mode)),
    };
    match (mode, backend) {
        (mode::VXLAN, Backend::Vxlan { vni, port, .. }) => {
            route.vtep_mac = peer.vtep_mac().unwrap_or_default();
            route.vni = *vni;
            route.port = *port;
            route.ip_sum = encap::outer_ip_sum(src, dst, encap::IPPROTO_UDP);
        }
        (mode::UDP, Backend::Udp { port }) => {
            route.port = *port;
            route.ip_sum = encap::outer_ip_sum(src, dst, encap::IPPROTO_UDP);
        }
        (mode::IPIP, _) => route.ip_sum = encap::outer_ip_sum(src, dst, encap::IPPROTO_IPIP),
        _ => {}
    }
    if let Some(mac) = nexthop_mac {
        route.dmac = mac;
        route.flags |= flags::HAS_MAC;
    }
    route
}
