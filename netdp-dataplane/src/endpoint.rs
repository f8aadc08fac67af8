//! The ENDPOINTS map: pods on this node, written by the CNI plugin.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use netdp_common::{
    endpoint::{Endpoint, EndpointKey},
    map_names,
};

use super::{Pins, open_pinned};

pub struct EndpointMap(HashMap<MapData, EndpointKey, Endpoint>);

impl EndpointMap {
    pub fn from_map(map: Map) -> Result<Self> {
        Ok(EndpointMap(
            HashMap::try_from(map).context("ENDPOINTS has an unexpected type")?,
        ))
    }

    pub fn open(pins: &Pins) -> Result<Self> {
        Self::from_map(open_pinned(pins, map_names::ENDPOINTS)?)
    }

    pub fn insert(&mut self, addr: Ipv4Addr, ep: &Endpoint) -> Result<()> {
        self.0
            .insert(
                EndpointKey {
                    addr: addr.octets(),
                },
                ep,
                0,
            )
            .with_context(|| format!("adding endpoint {addr}"))
    }

    pub fn get(&self, addr: Ipv4Addr) -> Option<Endpoint> {
        self.0
            .get(
                &EndpointKey {
                    addr: addr.octets(),
                },
                0,
            )
            .ok()
    }

    /// Removes an endpoint; absent is fine.
    pub fn remove(&mut self, addr: Ipv4Addr) -> Result<()> {
        match self.0.remove(&EndpointKey {
            addr: addr.octets(),
        }) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing endpoint {addr}")),
        }
    }

    pub fn list(&self) -> Vec<(Ipv4Addr, Endpoint)> {
        let mut v: Vec<_> = self
            .0
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, e)| (Ipv4Addr::from(k.addr), e))
            .collect();
        v.sort_by_key(|(a, _)| *a);
        v
    }
}
