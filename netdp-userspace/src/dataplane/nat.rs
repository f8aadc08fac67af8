//! Reading masquerade state (CONNTRACK and NAT), for the CLI and tests.
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use netdp_common::{
    map_names,
    nat::{CtEntry, CtKey, NatEntry, NatKey},
};

use super::{Pins, open_pinned};

/// One masqueraded flow: the pod's side, the outside, and the node's side it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub proto: u8,
    pub pod: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub nat: SocketAddrV4,
}

pub struct NatMaps {
    conntrack: BpfHashMap<MapData, CtKey, CtEntry>,
    nat: BpfHashMap<MapData, NatKey, NatEntry>,
}

fn sock(addr: [u8; 4], port_be: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(addr), u16::from_be(port_be))
}

impl NatMaps {
    pub fn from_maps(conntrack: Map, nat: Map) -> Result<Self> {
        Ok(NatMaps {
            conntrack: BpfHashMap::try_from(conntrack)
                .context("CONNTRACK has an unexpected type")?,
            nat: BpfHashMap::try_from(nat).context("NAT has an unexpected type")?,
        })
    }

    pub fn open(pins: &Pins) -> Result<Self> {
        Self::from_maps(
            open_pinned(pins, map_names::CONNTRACK)?,
            open_pinned(pins, map_names::NAT)?,
        )
    }

    /// Flows from pods, with their translation.
    pub fn conntrack(&self) -> Vec<Translation> {
        let mut v: Vec<_> = self
            .conntrack
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, e)| Translation {
                proto: k.proto,
                pod: sock(k.saddr, k.sport),
                remote: sock(k.daddr, k.dport),
                nat: sock(e.nat_addr, e.nat_port),
            })
            .collect();
        v.sort_by_key(|t| (t.proto, t.pod, t.remote));
        v
    }

    /// Forgets a pod flow's conntrack entry (as LRU eviction would); its NAT entry stays
    /// until its port is reclaimed.
    pub fn remove_conntrack(&mut self, key: &CtKey) -> Result<()> {
        self.conntrack
            .remove(key)
            .context("removing a conntrack entry")
    }

    /// Reply-direction entries: which node port leads back to which pod.
    pub fn reverse(&self) -> Vec<Translation> {
        let mut v: Vec<_> = self
            .nat
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, e)| Translation {
                proto: k.proto,
                pod: sock(e.pod_addr, e.pod_port),
                remote: sock(k.remote_addr, k.remote_port),
                nat: sock(k.nat_addr, k.nat_port),
            })
            .collect();
        v.sort_by_key(|t| (t.proto, t.pod, t.remote));
        v
    }
}
