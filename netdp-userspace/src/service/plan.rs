//! What a service needs from one node's dataplane: its frontends there (cluster IP, node
//! ports on the node's addresses, external IPs) and its endpoints, local ones first, as
//! kube-proxy picks them: ready ones (else those terminating but serving), narrowed by
//! topology hints for cluster-wide traffic, this node's only for a Local traffic policy.
use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use netdp_common::lb::{Backend, backend_flags};

use super::validate::{Algorithm, EndpointDef, Forwarding, ServiceDef};
use crate::dataplane::lb::{FrontendPlan, ServicePlan, frontend_key};

/// The node the plan is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// As endpoints name it (`nodeName`).
    pub name: String,
    /// Addresses node ports listen on.
    pub addresses: Vec<Ipv4Addr>,
    /// The node's pod subnet: endpoints without a nodeName are local when inside it.
    pub subnet: Ipv4Network,
    /// Its `topology.kubernetes.io/zone`, for endpoints' zone hints.
    pub zone: Option<String>,
    /// How its node ports reach remote backends unless a service says (`--lb-mode`).
    pub forwarding: Forwarding,
}

impl NodeInfo {
    fn is_local(&self, ip: Ipv4Addr, node: Option<&str>) -> bool {
        match node {
            Some(n) => n == self.name,
            None => self.subnet.contains(ip),
        }
    }
}

/// The plan, or `None` when the service needs nothing here (headless, ExternalName).
pub fn plan(def: &ServiceDef, node: &NodeInfo) -> Option<ServicePlan> {
    def.cluster_ip?;
    let mut frontends = BTreeMap::new();
    for p in &def.ports {
        let cluster = FrontendPlan {
            target_port: p.target_port,
            external: false,
            local_only: def.internal_local,
            dsr: false,
        };
        let external = FrontendPlan {
            target_port: p.target_port,
            external: true,
            local_only: def.local_policy,
            dsr: def.forwarding.unwrap_or(node.forwarding) == Forwarding::Dsr,
        };
        if let Some(ip) = def.cluster_ip {
            frontends.insert(frontend_key(ip, p.port, p.proto), cluster);
        }
        for ip in &def.external_ips {
            frontends.insert(frontend_key(*ip, p.port, p.proto), external);
        }
        if let Some(np) = p.node_port {
            for ip in &node.addresses {
                frontends.insert(frontend_key(*ip, np, p.proto), external);
            }
        }
    }
    let cluster = cluster_endpoints(def, node);
    let is_local = |e: &EndpointDef| node.is_local(e.ip, e.node_name.as_deref());
    // Local-only frontends take the first `local_count`: this node's usable endpoints.
    // Others take them all, so where the two sets differ (a local endpoint terminating
    // while remote ones are ready, or hinted elsewhere) cluster-wide traffic can reach
    // that local one too; kube-proxy would send it none.
    let any_local_only = frontends.values().any(|f| f.local_only);
    let mut local: Vec<Ipv4Addr> = if any_local_only {
        local_endpoints(def, node).map(|e| e.ip).collect()
    } else {
        cluster
            .iter()
            .filter(|e| is_local(e))
            .map(|e| e.ip)
            .collect()
    };
    let mut remote: Vec<Ipv4Addr> = cluster
        .iter()
        .filter(|e| !is_local(e))
        .map(|e| e.ip)
        .collect();
    local.sort();
    remote.sort();
    let local_count = local.len() as u16;
    let backends = (local.iter().map(|ip| (ip, backend_flags::LOCAL)))
        .chain(remote.iter().map(|ip| (ip, 0)))
        .map(|(ip, flags)| Backend {
            addr: ip.octets(),
            flags,
        })
        .collect();
    Some(ServicePlan {
        frontends,
        backends,
        local_count,
        maglev: def.algorithm == Algorithm::Maglev,
        affinity_timeout: def.affinity_timeout,
    })
}

/// Endpoints for traffic from anywhere in the cluster: the ready ones narrowed by
/// topology hints (kube-proxy's `topologyModeFromHints`): to those hinted for this node,
/// when every ready endpoint has node hints and one names it; else to those hinted for
/// its zone, when every ready endpoint has zone hints and one names it. With none ready,
/// those terminating but serving, hints aside.
fn cluster_endpoints<'a>(def: &'a ServiceDef, node: &NodeInfo) -> Vec<&'a EndpointDef> {
    let ready: Vec<&EndpointDef> = def.endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return def.ready_endpoints().collect();
    }
    let for_node = |e: &&EndpointDef| e.for_nodes.contains(&node.name);
    if ready.iter().all(|e| !e.for_nodes.is_empty()) && ready.iter().any(for_node) {
        return ready.into_iter().filter(for_node).collect();
    }
    if let Some(zone) = &node.zone {
        let for_zone = |e: &&EndpointDef| e.zones.contains(zone);
        if ready.iter().all(|e| !e.zones.is_empty()) && ready.iter().any(for_zone) {
            return ready.into_iter().filter(for_zone).collect();
        }
    }
    ready
}

/// This node's endpoints for a Local traffic policy: its ready ones, else its terminating
/// but serving ones (KEP-1669: a node keeps serving through a rolling update).
fn local_endpoints<'a>(
    def: &'a ServiceDef,
    node: &'a NodeInfo,
) -> impl Iterator<Item = &'a EndpointDef> {
    let local = move |e: &&EndpointDef| node.is_local(e.ip, e.node_name.as_deref());
    let any_ready = def.endpoints.iter().filter(local).any(|e| e.ready);
    def.endpoints.iter().filter(local).filter(move |e| {
        if any_ready {
            e.ready
        } else {
            e.serving && e.terminating
        }
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
