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

/// What a peer may tunnel here: its subnet (a gateway across clusters: its cluster's
/// Network), and `netdp_common::peer::flags`.
pub type PeerEntry = (Ipv4Network, u16);

/// PEERS, and what this handle last made it hold (see `RouteMap`).
pub struct PeerMap {
    map: BpfHashMap<MapData, PeerKey, Peer>,
    written: Option<HashMap<Ipv4Addr, PeerEntry>>,
}

impl PeerMap {
    pub fn from_map(map: Map) -> Result<Self> {
        Ok(PeerMap {
            map: BpfHashMap::try_from(map).context("PEERS has an unexpected type")?,
            written: None,
        })
    }

    pub fn open(pins: &Pins) -> Result<Self> {
        Self::from_map(open_pinned(pins, map_names::PEERS)?)
    }

    pub fn list(&self) -> Vec<(Ipv4Addr, Ipv4Network)> {
        self.entries()
            .into_iter()
            .map(|(a, (n, _))| (a, n))
            .collect()
    }

    /// Every peer with its flags.
    pub fn entries(&self) -> Vec<(Ipv4Addr, PeerEntry)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .filter_map(|r| r.ok())
            .filter_map(|(k, p)| {
                Ipv4Network::new(Ipv4Addr::from(p.subnet), p.prefix_len)
                    .ok()
                    .map(|n| (Ipv4Addr::from(k.addr), (n, p.flags)))
            })
            .collect();
        v.sort();
        v
    }

    /// Makes the map hold exactly `desired` (peer address -> its subnet), no flags.
    pub fn sync(&mut self, desired: &HashMap<Ipv4Addr, Ipv4Network>) -> Result<SyncStats> {
        let flagged = desired.iter().map(|(a, n)| (*a, (*n, 0))).collect();
        self.sync_flagged(&flagged)
    }

    /// Makes the map hold exactly `desired` (peer address -> its subnet and flags),
    /// touching only entries that differ.
    pub fn sync_flagged(&mut self, desired: &HashMap<Ipv4Addr, PeerEntry>) -> Result<SyncStats> {
        let current = match self.written.take() {
            Some(w) => w,
            None => self.entries().into_iter().collect(),
        };
        let mut stats = SyncStats::default();
        for (addr, entry) in desired {
            let changed = match current.get(addr) {
                Some(s) if s == entry => continue,
                Some(_) => &mut stats.updated,
                None => &mut stats.added,
            };
            let (subnet, flags) = entry;
            let peer = Peer {
                subnet: subnet.network().octets(),
                prefix_len: subnet.prefix(),
                _pad: 0,
                flags: *flags,
            };
            self.map
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
            match self.map.remove(&PeerKey {
                addr: addr.octets(),
            }) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => stats.removed += 1,
                Err(e) => return Err(e).with_context(|| format!("removing peer {addr}")),
            }
        }
        self.written = Some(desired.clone());
        Ok(stats)
    }

    /// Makes the next sync read the map again (see `RouteMap::forget`).
    pub fn forget(&mut self) {
        self.written = None;
    }
}
