//! The service maps: FRONTENDS, BACKENDS, MAGLEV, AFFINITY_BACKENDS and LB_CONFIG, as the
//! agent writes them ([`writer::Lb`]) and the CLI lists them ([`LbMaps::list`]).
pub mod alloc;
pub mod writer;

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use netdp_common::{
    lb::{
        AffinityBackendKey, Backend, Frontend, FrontendKey, LbConfig, MaglevRow, SockNat,
        SockNatKey, frontend_flags,
    },
    map_names,
};

use super::{Dataplane, Pins, open_pinned};

pub use writer::{FrontendPlan, Lb, ServicePlan, Stats};

/// Typed handles on the service maps.
pub struct LbMaps {
    pub frontends: HashMap<MapData, FrontendKey, Frontend>,
    pub backends: Array<MapData, Backend>,
    pub maglev: Array<MapData, MaglevRow>,
    pub affinity_backends: HashMap<MapData, AffinityBackendKey, u32>,
    pub config: Array<MapData, LbConfig>,
    /// Node sockets the socket programs sent to a backend.
    pub sock_nat: HashMap<MapData, SockNatKey, SockNat>,
}

fn typed<T: TryFrom<Map>>(map: Map, name: &str) -> Result<T>
where
    <T as TryFrom<Map>>::Error: std::error::Error + Send + Sync + 'static,
{
    T::try_from(map).with_context(|| format!("{name} has an unexpected type"))
}

impl LbMaps {
    fn from_maps(mut get: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        Ok(LbMaps {
            frontends: typed(get(map_names::FRONTENDS)?, map_names::FRONTENDS)?,
            backends: typed(get(map_names::BACKENDS)?, map_names::BACKENDS)?,
            maglev: typed(get(map_names::MAGLEV)?, map_names::MAGLEV)?,
            affinity_backends: typed(
                get(map_names::AFFINITY_BACKENDS)?,
                map_names::AFFINITY_BACKENDS,
            )?,
            config: typed(get(map_names::LB_CONFIG)?, map_names::LB_CONFIG)?,
            sock_nat: typed(get(map_names::SOCK_NAT)?, map_names::SOCK_NAT)?,
        })
    }

    /// Takes the maps out of freshly loaded programs (the agent).
    pub fn take(dp: &mut Dataplane) -> Result<Self> {
        Self::from_maps(|name| dp.take_map(name))
    }

    /// Opens a node's pinned maps (the CLI).
    pub fn open(pins: &Pins) -> Result<Self> {
        Self::from_maps(|name| open_pinned(pins, name))
    }

    pub fn config(&self) -> LbConfig {
        self.config.get(&0, 0).unwrap_or_default()
    }

    /// Every frontend with the backends it currently balances over.
    pub fn list(&self) -> Vec<FrontendEntry> {
        let mut out: Vec<FrontendEntry> = self
            .frontends
            .iter()
            .filter_map(|r| r.ok())
            .map(|(key, fe)| self.entry(key, fe))
            .collect();
        out.sort_by_key(|f| (f.key.addr, f.key.port, f.key.proto));
        out
    }

    /// The frontend at `addr:port/proto`, with its backends.
    pub fn get(&self, addr: Ipv4Addr, port: u16, proto: u8) -> Option<FrontendEntry> {
        let key = frontend_key(addr, port, proto);
        let fe = self.frontends.get(&key, 0).ok()?;
        Some(self.entry(key, fe))
    }

    /// A frontend with the backends of its range.
    fn entry(&self, key: FrontendKey, fe: Frontend) -> FrontendEntry {
        let backends = (0..fe.count as u32)
            .filter_map(|i| self.backends.get(&(fe.backends + i), 0).ok())
            .collect();
        FrontendEntry { key, fe, backends }
    }
}

/// The map key of a frontend.
pub fn frontend_key(addr: Ipv4Addr, port: u16, proto: u8) -> FrontendKey {
    FrontendKey {
        addr: addr.octets(),
        port,
        proto,
        pad: 0,
    }
}

/// A FRONTENDS entry, with the backends of its range.
#[derive(Debug, Clone)]
pub struct FrontendEntry {
    pub key: FrontendKey,
    pub fe: Frontend,
    pub backends: Vec<Backend>,
}

impl FrontendEntry {
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.key.addr)
    }

    pub fn port(&self) -> u16 {
        self.key.port
    }

    pub fn target_port(&self) -> u16 {
        self.fe.target_port
    }

    pub fn proto_name(&self) -> &'static str {
        proto_name(self.key.proto)
    }

    pub fn algorithm(&self) -> &'static str {
        if self.fe.flags & frontend_flags::MAGLEV != 0 {
            "maglev"
        } else {
            "random"
        }
    }

    /// Human-readable flags.
    pub fn flag_names(&self) -> Vec<&'static str> {
        let f = self.fe.flags;
        [
            (frontend_flags::AFFINITY, "affinity"),
            (frontend_flags::EXTERNAL, "external"),
            (frontend_flags::LOCAL_ONLY, "local"),
            (frontend_flags::DSR, "dsr"),
        ]
        .into_iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| n)
        .collect()
    }
}

pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        1 => "ICMP",
        6 => "TCP",
        17 => "UDP",
        _ => "?",
    }
}
