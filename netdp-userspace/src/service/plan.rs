//! What a service needs from one node's dataplane: its frontends there (cluster IP, node
//! ports on the node's addresses, external IPs) and its ready endpoints, local ones first.
use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use netdp_common::lb::{Backend, backend_flags};

use super::validate::{Algorithm, ServiceDef};
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
            local_only: false,
        };
        let external = FrontendPlan {
            target_port: p.target_port,
            external: true,
            local_only: def.local_policy,
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
    let (mut local, mut remote): (Vec<_>, Vec<_>) = def
        .ready_endpoints()
        .map(|e| (e.ip, node.is_local(e.ip, e.node_name.as_deref())))
        .partition(|(_, l)| *l);
    local.sort();
    remote.sort();
    let local_count = local.len() as u16;
    let backends = local
        .into_iter()
        .chain(remote)
        .map(|(ip, l)| Backend {
            addr: ip.octets(),
            flags: if l { backend_flags::LOCAL } else { 0 },
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
