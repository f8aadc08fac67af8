//! Turning the set of leases into the ROUTES map.
use std::collections::HashMap;

use anyhow::Result;
use log::{info, warn};
use netdp_common::route::{flags, mode};

use super::State;
use crate::dataplane::route::plan;

impl State {
    /// Recomputes every route from the leases and writes the difference to the map.
    pub(super) async fn sync_routes(&mut self) -> Result<()> {
        let mut desired = HashMap::new();
        for peer in self.peers.values() {
            if peer.subnet == self.lease.subnet
                || peer.attrs.public_ip == self.lease.attrs.public_ip
            {
                continue;
            }
            let ip = peer.attrs.public_ip;
            let mac = self
                .nl
                .neighbour(self.underlay.link.index, ip)
                .await
                .unwrap_or(None);
            let route = plan(&self.underlay, &self.config.backend, ip, mac);
            if route.mode == mode::UNREACHABLE {
                if self.reported_unreachable.insert(ip) {
                    warn!(
                        "peer {} ({}) is not on this node's underlay subnet {}: the {} backend cannot reach it",
                        ip,
                        peer.subnet,
                        self.underlay.addr,
                        self.config.backend.type_name()
                    );
                }
            } else {
                self.reported_unreachable.remove(&ip);
            }
            desired.insert(peer.subnet, route);
        }
        let stats = self.routes.sync(&desired)?;
        if !stats.is_empty() {
            let unresolved = desired
                .values()
                .filter(|r| r.flags & flags::HAS_MAC == 0)
                .count();
            info!(
                "routes: {} added, {} updated, {} removed; {} peers, {} awaiting neighbour resolution",
                stats.added,
                stats.updated,
                stats.removed,
                desired.len(),
                unresolved
            );
        }
        Ok(())
    }
}
