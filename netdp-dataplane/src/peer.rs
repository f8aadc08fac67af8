//! The PEERS map: underlay addresses of the other nodes, the only sources tunnel packets
//! are accepted from.
use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use ipnetwork::Ipv4Network;
use netdp_common::{
    map_names,
    peer::{Peer, PeerKey},
};

use super::{Pins, open_pinned, route::SyncStats};

pub struct PeerMap(BpfHashMap<MapData, PeerKey, Peer>);

impl PeerMap {
    pub fn from_map(map: Map) -> Result<Self> {
        Ok(PeerMap(
            BpfHashMap::try_from(map).context("PEERS has an unexpected type")?,
        ))
    }

    pub fn open(pins: &Pins) -> Result<Self> {
        Self::from_map(open_pinned(pins, map_names::PEERS)?)
    }

    pub fn list(&self) -> Vec<(Ipv4Addr, Ipv4Network)> {
        let mut v: Vec<_> = self
            .0
            .iter()
            .filter_map(|r| r.ok())
            .filter_map(|(k, p)| {
                Ipv4Network::new(Ipv4Addr::from(p.subnet), p.prefix_len as u8)
                    .ok()
                    .map(|n| (Ipv4Addr::from(k.addr), n))
            })
            .collect();
        v.sort();
        v
    }

    /// Makes the map hold exactly `desired` (peer address -> its subnet), touching only
    /// entries that differ.
    pub fn sync(&mut self, desired: &HashMap<Ipv4Addr, Ipv4Network>) -> Result<SyncStats> {
        let current: HashMap<Ipv4Addr, Ipv4Network> = self.list().into_iter().collect();
        let mut stats = SyncStats::default();
        for (addr, subnet) in desired {
            let changed = match current.get(addr) {
                Some(s) if s == subnet => continue,
                Some(_) => &mut stats.updated,
                None => &mut stats.added,
            };
            let peer = Peer {
                subnet: subnet.network().octets(),
                prefix_len: subnet.prefix() as u32,
            };
            self.0
                .insert(
                    PeerKey {
                        addr: addr.octets(),
                    },
                    peer,
                    0,
                )
                .with_context(|| format!("adding peer {addr}"))?;
            *changed += 1;
        }
        for addr in current.keys().filter(|a| !desired.contains_key(a)) {
            match self.0.remove(&PeerKey {
                addr: addr.octets(),
            }) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => stats.removed += 1,
                Err(e) => return Err(e).with_context(|| format!("removing peer {addr}")),
            }
        }
        Ok(stats)
    }
}
