//! Turning the set of leases into the ROUTES and PEERS maps: the ones
//! [`crate::lease::LeaseSet`] accepts.
use std::collections::{HashMap, HashSet};

use anyhow::Result;
use ipnetwork::Ipv4Network;
use log::{info, warn};
use netdp_common::{
    keepalive,
    peer::flags as peer_flags,
    route::{Route, flags, mode},
};
use std::net::Ipv4Addr;

use crate::{config::Backend, dataplane::peer::PeerEntry, lease::LeaseAttrs};

use super::State;
use crate::dataplane::route::{entry_for, mode_for};

/// `route` to `peer` as a NAT between the two needs it: to the port the peer's NAT maps
/// (learned from its keepalives, `nat_ports`), and for vxlan from this node's own tunnel
/// port when either side is behind a NAT.
fn through_nat(
    nat_ports: &super::keepalive::NatPorts,
    behind_nat: bool,
    mut route: Route,
    peer: std::net::Ipv4Addr,
) -> Route {
    if route.mode != mode::VXLAN && route.mode != mode::UDP {
        return route;
    }
    let learned = nat_ports.get(&peer).copied();
    if let Some(port) = learned.filter(|p| *p != keepalive::NO_PORT) {
        route.port = port;
    }
    if route.mode == mode::VXLAN && (behind_nat || learned.is_some()) {
        route.flags |= flags::FIXED_SPORT;
    }
    route
}

impl State {
    /// The next hop to `ip` on the underlay: itself when adjacent, else the router the
    /// kernel's table names (looked up once per resync).
    async fn nexthop_of(&mut self, ip: Ipv4Addr) -> Ipv4Addr {
        if self.underlay.is_adjacent(ip) {
            return ip;
        }
        if let Some(nh) = self.nexthops.get(&ip) {
            return *nh;
        }
        let nh = match self.nl.route_get(ip).await {
            Ok(nh) => nh.addr,
            Err(e) => {
                warn!("{ip}: {e:#}; sending to it as if on-link");
                ip
            }
        };
        self.nexthops.insert(ip, nh);
        nh
    }

    /// Routes to the clusters reached through gateways (`agent/gateways.rs`): on the
    /// active gateway, each cluster's Network into the gateway tunnel to its active
    /// gateway (at the port its NAT maps, if it is behind one), which becomes a peer that
    /// may send that Network; on the other nodes, each Network the way this cluster's
    /// active gateway's own subnet goes, that gateway a peer that may send any of them.
    async fn gateway_routes(
        &mut self,
        desired: &mut HashMap<Ipv4Network, Route>,
        peers: &mut HashMap<Ipv4Addr, PeerEntry>,
        neighbours: &HashMap<Ipv4Addr, [u8; 6]>,
    ) {
        let mut keepalives = Vec::new();
        for (network, remote) in self.mesh.gateway_clusters() {
            let Some(local) = self.local_gateway.clone() else {
                continue;
            };
            if local.node != self.node {
                if let Some(route) = desired.get(&local.subnet).copied() {
                    desired.insert(network, route);
                    if let Some(p) = peers.get_mut(&local.public_ip) {
                        p.1 |= peer_flags::GATEWAY;
                    }
                }
                continue;
            }
            let Some(remote) = remote else { continue };
            let ip = *remote.endpoint.ip();
            let nexthop = self.nexthop_of(ip).await;
            let attrs = LeaseAttrs::new(ip, "udp", None);
            let backend = Backend::Udp {
                port: remote.endpoint.port(),
            };
            let mac = neighbours.get(&nexthop).copied();
            let mut route = entry_for(&self.underlay, &backend, &attrs, mode::UDP, nexthop, mac);
            route.mode = mode::GATEWAY;
            if let Some(port) = self
                .nat_ports
                .get(&ip)
                .copied()
                .filter(|p| *p != keepalive::NO_PORT)
            {
                route.port = port;
            }
            keepalives.push((ip, route.port));
            peers.insert(ip, (network, peer_flags::GATEWAY));
            desired.insert(network, route);
        }
        self.gateway_keepalive_to.send_if_modified(|k| {
            let changed = *k != keepalives;
            *k = keepalives;
            changed
        });
    }

    /// Recomputes every route from the leases and writes the difference to the maps.
    pub(super) async fn sync_routes(&mut self) -> Result<()> {
        let link = self.underlay.link.index;
        let neighbours = match self.nl.neighbours(link).await {
            Ok(n) => n,
            Err(e) => {
                warn!("reading the neighbour table: {e:#}; next hops are left to the kernel");
                HashMap::new()
            }
        };
        let mut desired = HashMap::new();
        let mut peers = HashMap::new();
        // Only leases that pass validation (in the Network, of SubnetLen, no overlap, one
        // PublicIP each; ours first) become routes and peers.
        let mut routed = self
            .admission
            .admit(&self.config, Some(&self.lease), self.peers.values());
        // The other clusters' leases, as if they were this cluster's (their own configs
        // validated them), but for a PublicIP some node here has already.
        let taken: HashSet<_> = routed
            .iter()
            .map(|l| l.attrs.public_ip)
            .chain([self.lease.attrs.public_ip])
            .collect();
        routed.extend(self.mesh.routed(&taken));
        for peer in routed {
            let ip = peer.attrs.public_ip;
            peers.insert(ip, (peer.subnet, 0));
            let route = match mode_for(&self.underlay, &self.config.backend, &peer.attrs) {
                Ok(m) => {
                    self.reported_unreachable.remove(&ip);
                    // Direct routes and adjacent peers: the peer is its own next hop.
                    // Tunnels to other subnets go through whatever router the kernel's
                    // table names.
                    let nexthop = if m == mode::DIRECT || self.underlay.is_adjacent(ip) {
                        ip
                    } else if let Some(nh) = self.nexthops.get(&ip) {
                        *nh
                    } else {
                        let nh = match self.nl.route_get(ip).await {
                            Ok(nh) => nh.addr,
                            Err(e) => {
                                warn!("peer {ip}: {e:#}; sending to it as if on-link");
                                ip
                            }
                        };
                        self.nexthops.insert(ip, nh);
                        nh
                    };
                    let mac = neighbours.get(&nexthop).copied();
                    entry_for(
                        &self.underlay,
                        &self.config.backend,
                        &peer.attrs,
                        m,
                        nexthop,
                        mac,
                    )
                }
                Err(why) => {
                    if self.reported_unreachable.insert(ip) {
                        warn!(
                            "peer {ip} ({}) is unreachable with the {} backend: {why}",
                            peer.subnet,
                            self.config.backend.type_name(),
                        );
                    }
                    entry_for(
                        &self.underlay,
                        &self.config.backend,
                        &peer.attrs,
                        mode::UNREACHABLE,
                        ip,
                        None,
                    )
                }
            };
            let route = through_nat(&self.nat_ports, self.behind_nat, route, ip);
            desired.insert(peer.subnet, route);
        }
        // Other clusters reached through gateways.
        self.gateway_routes(&mut desired, &mut peers, &neighbours)
            .await;
        let keepalives: Vec<(std::net::Ipv4Addr, u16)> = desired
            .values()
            .filter(|r| mode::is_tunnel(r.mode))
            .map(|r| (r.node_ip.into(), r.port))
            .collect();
        self.keepalive_to.send_if_modified(|k| {
            let changed = *k != keepalives;
            *k = keepalives;
            changed
        });
        let stats = self.routes.sync(&desired)?;
        let peer_stats = self.peer_map.sync_flagged(&peers)?;
        if !stats.is_empty() || !peer_stats.is_empty() {
            let unresolved = desired
                .values()
                .filter(|r| r.mode != mode::UNREACHABLE && r.flags & flags::HAS_MAC == 0)
                .count();
            let mut by_mode: Vec<String> = [
                mode::DIRECT,
                mode::VXLAN,
                mode::IPIP,
                mode::UDP,
                mode::GATEWAY,
                mode::UNREACHABLE,
            ]
            .iter()
            .filter_map(|&m| {
                let n = desired.values().filter(|r| r.mode == m).count();
                (n > 0).then(|| format!("{n} {}", mode::name(m)))
            })
            .collect();
            if by_mode.is_empty() {
                by_mode.push("none".into());
            }
            info!(
                "routes: {} added, {} updated, {} removed; peers: {}; {} awaiting neighbour resolution",
                stats.added,
                stats.updated,
                stats.removed,
                by_mode.join(", "),
                unresolved
            );
        }
        Ok(())
    }
}
