//! The ROUTES map: remote pod subnets to the node that leases them, and how to get there.
use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{Context, Result};
use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
use ipnetwork::Ipv4Network;
use netdp_common::{
    Ipv4, map_names,
    route::{Route, flags, mode},
};

use super::{Pins, open_pinned};
use crate::{config::Backend, netlink::Link};

pub struct RouteMap(LpmTrie<MapData, Ipv4, Route>);

fn key(subnet: &Ipv4Network) -> Key<Ipv4> {
    Key::new(subnet.prefix() as u32, subnet.network().octets())
}

impl RouteMap {
    pub fn from_map(map: Map) -> Result<Self> {
        Ok(RouteMap(
            LpmTrie::try_from(map).context("ROUTES has an unexpected type")?,
        ))
    }

    pub fn open(pins: &Pins) -> Result<Self> {
        Self::from_map(open_pinned(pins, map_names::ROUTES)?)
    }

    pub fn list(&self) -> Vec<(Ipv4Network, Route)> {
        let mut v: Vec<_> = self
            .0
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
        let current: HashMap<Ipv4Network, Route> = self.list().into_iter().collect();
        let mut stats = SyncStats::default();
        for (subnet, route) in desired {
            match current.get(subnet) {
                Some(r) if r == route => {}
                Some(_) => {
                    self.0
                        .insert(&key(subnet), route, 0)
                        .with_context(|| format!("updating route {subnet}"))?;
                    stats.updated += 1;
                }
                None => {
                    self.0
                        .insert(&key(subnet), route, 0)
                        .with_context(|| format!("adding route {subnet}"))?;
                    stats.added += 1;
                }
            }
        }
        for subnet in current.keys().filter(|s| !desired.contains_key(s)) {
            match self.0.remove(&key(subnet)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => stats.removed += 1,
                Err(e) => return Err(e).with_context(|| format!("removing route {subnet}")),
            }
        }
        Ok(stats)
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
    /// Our address on it, with the prefix of the underlay subnet.
    pub addr: Ipv4Network,
}

impl Underlay {
    /// Whether `peer` shares our L2 segment (same underlay subnet).
    pub fn is_adjacent(&self, peer: Ipv4Addr) -> bool {
        self.addr.contains(peer)
    }
}

/// The route to a peer node with the given backend. `nexthop_mac` is the resolved MAC of
/// the next hop, if the neighbour table has it.
pub fn plan(
    underlay: &Underlay,
    backend: &Backend,
    peer: Ipv4Addr,
    nexthop_mac: Option<[u8; 6]>,
) -> Route {
    let mut route = Route {
        node_ip: peer.octets(),
        nexthop: peer.octets(),
        ifindex: underlay.link.index,
        mode: mode::DIRECT,
        flags: 0,
        dmac: [0; 6],
        smac: underlay.link.mac,
    };
    match backend {
        Backend::HostGw if !underlay.is_adjacent(peer) => route.mode = mode::UNREACHABLE,
        _ => {}
    }
    if let Some(mac) = nexthop_mac {
        route.dmac = mac;
        route.flags |= flags::HAS_MAC;
    }
    route
}
