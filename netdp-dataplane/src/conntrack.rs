//! The conntrack maps from userspace (service flows and masqueraded flows alike):
//! CONNTRACK, and HALF_OPEN where TCP flows wait for the answer to their SYN. Listing flows
//! and reclaiming expired entries (the programs ignore them; the LRU would only evict them
//! once a table is full). Masqueraded flows as pod/remote/node translations are
//! [`crate::nat`]'s.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use netdp_common::{
    conntrack::{CtEntry, CtKey, flags, state},
    encap::IPPROTO_UDP,
    map_names,
};

use super::{Dataplane, Pins, open_pinned};

type Table = HashMap<MapData, CtKey, CtEntry>;

/// Both conntrack tables, read and cleaned as one.
pub struct ConntrackMap {
    established: Table,
    half_open: Table,
}

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
    /// In HALF_OPEN: a TCP flow whose handshake has not completed.
    pub half_open: bool,
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
        } else if self.entry.flags & flags::DSR != 0 {
            // Sent on untranslated to the backend's node, which answers the client.
            "service-dsr"
        } else {
            "service"
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.entry.state {
            state::SYN_SENT => "syn_sent",
            // Answered, waiting for the client's ACK (Linux's SYN_RECV).
            state::ESTABLISHED if self.half_open => "syn_recv",
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
    pub fn from_maps(conntrack: Map, half_open: Map) -> Result<Self> {
        Ok(ConntrackMap {
            established: HashMap::try_from(conntrack)
                .context("CONNTRACK has an unexpected type")?,
            half_open: HashMap::try_from(half_open).context("HALF_OPEN has an unexpected type")?,
        })
    }

    /// Takes both tables out of loaded programs.
    pub fn take(dp: &mut Dataplane) -> Result<Self> {
        Self::from_maps(
            dp.take_map(map_names::CONNTRACK)?,
            dp.take_map(map_names::HALF_OPEN)?,
        )
    }

    pub fn open(pins: &Pins) -> Result<Self> {
        Self::from_maps(
            open_pinned(pins, map_names::CONNTRACK)?,
            open_pinned(pins, map_names::HALF_OPEN)?,
        )
    }

    fn tables(&self) -> [&Table; 2] {
        [&self.established, &self.half_open]
    }

    /// Live entries of both tables (expired ones are left out).
    pub fn list(&self) -> Vec<Flow> {
        let now = now();
        let mut v: Vec<Flow> = self
            .tables()
            .into_iter()
            .zip([false, true])
            .flat_map(|(t, half_open)| {
                t.iter()
                    .filter_map(|r| r.ok())
                    .map(move |(key, entry)| (key, entry, half_open))
            })
            .filter(|(_, e, _)| e.expires >= now)
            .map(|(key, entry, half_open)| Flow {
                key,
                entry,
                half_open,
            })
            .collect();
        v.sort_by_key(|f| (f.key.saddr, f.key.sport, f.key.daddr, f.key.dport));
        v
    }

    /// Live entries of flows still waiting for their SYN to be answered.
    pub fn half_open(&self) -> usize {
        let now = now();
        self.half_open
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, e)| e.expires >= now)
            .count()
    }

    /// Forgets one direction of a flow (as LRU eviction would), in whichever table it is.
    pub fn remove(&mut self, key: &CtKey) -> Result<()> {
        let a = self.established.remove(key);
        let b = self.half_open.remove(key);
        if a.is_err() && b.is_err() {
            return a.context("removing a conntrack entry");
        }
        Ok(())
    }

    /// Every entry of both tables, expired or not.
    pub fn len(&self) -> usize {
        self.tables()
            .iter()
            .map(|t| t.keys().filter(|k| k.is_ok()).count())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes expired entries of both tables; returns how many.
    pub fn gc(&mut self) -> usize {
        let now = now();
        let mut n = 0;
        for t in [&mut self.established, &mut self.half_open] {
            let expired: Vec<CtKey> = t
                .iter()
                .filter_map(|r| r.ok())
                .filter(|(_, e)| e.expires < now)
                .map(|(k, _)| k)
                .collect();
            n += expired.iter().filter(|k| t.remove(k).is_ok()).count();
        }
        n
    }

    /// Removes the UDP flows to backends that are gone, per service id (a datagram flow
    /// has no end of its own; kube-proxy clears them the same way), in one pass over the
    /// table whatever the number of services. TCP flows are left to finish (UDP flows never
    /// wait in HALF_OPEN). Returns the entries removed per service.
    pub fn purge_udp_backends(
        &mut self,
        gone: &std::collections::HashMap<u32, std::collections::HashSet<[u8; 4]>>,
    ) -> std::collections::HashMap<u32, usize> {
        let mut removed = std::collections::HashMap::new();
        if gone.values().all(|g| g.is_empty()) {
            return removed;
        }
        let doomed: Vec<(u32, CtKey)> = self
            .established
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
            if self.established.remove(&k).is_ok() {
                *removed.entry(service_id).or_insert(0) += 1;
            }
        }
        removed
    }
}
