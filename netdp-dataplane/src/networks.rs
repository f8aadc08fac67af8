//! Sets of networks the programs match sources against (LPM tries keyed by address):
//! ROUTED_NETWORKS, outside networks whose hosts route to pod addresses themselves and may
//! therefore send straight to pods from the underlay (everything else reaching a pod from
//! the underlay must come from a peer's pods, the programs' `source` module);
//! DENIED_SOURCES, the XDP prefilter's deny list; and CLUSTER_NETWORKS, the other
//! clusters of a mesh (labelled with their ids).
use std::collections::BTreeSet;

use anyhow::{Context, Result};
use aya::maps::{
    Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use ipnetwork::Ipv4Network;
use netdp_common::Ipv4;

use super::{Pins, open_pinned};

pub struct NetworkSet {
    map: LpmTrie<MapData, Ipv4, u32>,
    /// The map's name, for errors.
    name: &'static str,
}

fn key(net: &Ipv4Network) -> Key<Ipv4> {
    Key::new(net.prefix() as u32, net.network().octets())
}

impl NetworkSet {
    /// `map` is the map named `name` (one of the catalogue's LPM tries of networks).
    pub fn from_map(map: Map, name: &'static str) -> Result<Self> {
        Ok(NetworkSet {
            map: LpmTrie::try_from(map)
                .with_context(|| format!("{name} has an unexpected type"))?,
            name,
        })
    }

    pub fn open(pins: &Pins, name: &'static str) -> Result<Self> {
        Self::from_map(open_pinned(pins, name)?, name)
    }

    pub fn list(&self) -> BTreeSet<Ipv4Network> {
        self.map
            .keys()
            .filter_map(|k| k.ok())
            .filter_map(|k| Ipv4Network::new(k.data().into(), k.prefix_len() as u8).ok())
            .collect()
    }

    /// Makes the map hold exactly `desired`.
    pub fn set(&mut self, desired: &BTreeSet<Ipv4Network>) -> Result<()> {
        let current = self.list();
        for net in desired.difference(&current) {
            self.map
                .insert(&key(net), 0, 0)
                .with_context(|| format!("adding {net} to {}", self.name))?;
        }
        for net in current.difference(desired) {
            match self.map.remove(&key(net)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing {net} from {}", self.name));
                }
            }
        }
        Ok(())
    }

    /// Adds `net` labelled `value` (or relabels it), leaving the others.
    pub fn insert(&mut self, net: &Ipv4Network, value: u32) -> Result<()> {
        self.map
            .insert(&key(net), value, 0)
            .with_context(|| format!("adding {net} to {}", self.name))
    }

    /// The label of the longest network holding `addr`.
    pub fn lookup(&self, addr: std::net::Ipv4Addr) -> Option<u32> {
        self.map.get(&Key::new(32, addr.octets()), 0).ok()
    }
}
