//! The ROUTED_NETWORKS map: networks outside the cluster whose hosts route to pod
//! addresses themselves (no masquerading on the way out, a route to the pod subnets on
//! their side), and may therefore send straight to pods from the underlay. Everything else
//! reaching a pod from the underlay must come from a peer's pods (see the programs'
//! `source` module).
use std::collections::BTreeSet;

use anyhow::{Context, Result};
use aya::maps::{
    Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use ipnetwork::Ipv4Network;
use netdp_common::{Ipv4, map_names};

use super::{Pins, open_pinned};

pub struct RoutedNetworks(LpmTrie<MapData, Ipv4, u32>);

fn key(net: &Ipv4Network) -> Key<Ipv4> {
    Key::new(net.prefix() as u32, net.network().octets())
}

impl RoutedNetworks {
    pub fn from_map(map: Map) -> Result<Self> {
        Ok(RoutedNetworks(
            LpmTrie::try_from(map).context("ROUTED_NETWORKS has an unexpected type")?,
        ))
    }

    pub fn open(pins: &Pins) -> Result<Self> {
        Self::from_map(open_pinned(pins, map_names::ROUTED_NETWORKS)?)
    }

    pub fn list(&self) -> BTreeSet<Ipv4Network> {
        self.0
            .keys()
            .filter_map(|k| k.ok())
            .filter_map(|k| Ipv4Network::new(k.data().into(), k.prefix_len() as u8).ok())
            .collect()
    }

    /// Makes the map hold exactly `desired`.
    pub fn set(&mut self, desired: &BTreeSet<Ipv4Network>) -> Result<()> {
        let current = self.list();
        for net in desired.difference(&current) {
            self.0
                .insert(&key(net), 0, 0)
                .with_context(|| format!("adding routed network {net}"))?;
        }
        for net in current.difference(desired) {
            match self.0.remove(&key(net)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("removing routed network {net}")),
            }
        }
        Ok(())
    }
}
