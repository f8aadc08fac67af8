//! The CONNTRACK map from userspace (service flows and masqueraded flows alike): listing
//! flows and reclaiming expired entries (the programs ignore them; the LRU would only evict
//! them once the table is full). Masqueraded flows as pod/remote/node translations are
//! [`crate::nat`]'s.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use netdp_common::{
    conntrack::{CtEntry, CtKey, flags, state},
    encap::IPPROTO_UDP,
    map_names,
};

use super::{Pins, open_pinned};

pub struct ConntrackMap(HashMap<MapData, CtKey, CtEntry>);

/// Seconds of CLOCK_MONOTONIC, the clock the programs stamp entries with.
pub fn now() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// One direction of a tracked flow.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub key: CtKey,
    pub entry: CtEntry,
}

impl Flow {
    pub fn is_reply(&self) -> bool {
        self.entry.flags & flags::REPLY != 0
    }

    pub fn is_masquerade(&self) -> bool {
        self.entry.flags & flags::MASQ != 0
    }

    /// What the flow's translation is called.
    pub fn kind(&self) -> &'static str {
        if self.is_masquerade() {
            "masquerade"
        } else {
            "service"
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.entry.state {
            state::SYN_SENT => "syn_sent",
            state::ESTABLISHED => "established",
            state::CLOSING => "closing",
            state::OTHER => "active",
            _ => "?",
        }
    }

    /// `a:p -> b:q` for a tuple.
    pub fn tuple(addr: [u8; 4], port: u16, to: [u8; 4], to_port: u16) -> String {
        format!(
            "{}:{} -> {}:{}",
            Ipv4Addr::from(addr),
            port,
            Ipv4Addr::from(to),
            to_port
        )
    }
}

impl ConntrackMap {
    pub fn from_map(map: Map) -> Result<Self> {
        Ok(ConntrackMap(
            HashMap::try_from(map).context("CONNTRACK has an unexpected type")?,
        ))
    }

    pub fn open(pins: &Pins) -> Result<Self> {
        Self::from_map(open_pinned(pins, map_names::CONNTRACK)?)
    }

    /// Live entries (expired ones are left out).
    pub fn list(&self) -> Vec<Flow> {
        let now = now();
        let mut v: Vec<Flow> = self
            .0
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, e)| e.expires >= now)
            .map(|(key, entry)| Flow { key, entry })
            .collect();
        v.sort_by_key(|f| (f.key.saddr, f.key.sport, f.key.daddr, f.key.dport));
        v
    }

    /// Forgets one direction of a flow (as LRU eviction would).
    pub fn remove(&mut self, key: &CtKey) -> Result<()> {
        self.0.remove(key).context("removing a conntrack entry")
    }

    /// Every entry, expired or not.
    pub fn len(&self) -> usize {
        self.0.keys().filter(|k| k.is_ok()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes expired entries; returns how many.
    pub fn gc(&mut self) -> usize {
        let now = now();
        let expired: Vec<CtKey> = self
            .0
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, e)| e.expires < now)
            .map(|(k, _)| k)
            .collect();
        expired.iter().filter(|k| self.0.remove(k).is_ok()).count()
    }

    /// Removes the UDP flows to backends that are gone, per service id (a datagram flow
    /// has no end of its own; kube-proxy clears them the same way), in one pass over the
    /// table whatever the number of services. TCP flows are left to finish. Returns the
    /// entries removed per service.
    pub fn purge_udp_backends(
        &mut self,
        gone: &std::collections::HashMap<u32, std::collections::HashSet<[u8; 4]>>,
    ) -> std::collections::HashMap<u32, usize> {
        let mut removed = std::collections::HashMap::new();
        if gone.values().all(|g| g.is_empty()) {
            return removed;
        }
        let doomed: Vec<(u32, CtKey)> = self
            .0
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, e)| {
                let Some(gone) = gone.get(&e.service_id) else {
                    return false;
                };
                k.proto == IPPROTO_UDP
                    && e.flags & flags::MASQ == 0
                    && ((e.flags & flags::REPLY == 0 && gone.contains(&e.nat_daddr))
                        || (e.flags & flags::REPLY != 0 && gone.contains(&k.saddr)))
            })
            .map(|(k, e)| (e.service_id, k))
            .collect();
        for (service_id, k) in doomed {
            if self.0.remove(&k).is_ok() {
                *removed.entry(service_id).or_insert(0) += 1;
            }
        }
        removed
    }
}
