//! A service's endpoints, checked: each address, node name and hint list, naming the
//! field of whatever is wrong (`endpoints[2].ip: ...`).
use std::{collections::HashSet, net::Ipv4Addr};

use super::{
    schema::{EndpointDoc, NameDoc},
    validate::{FieldPrefix, ipv4},
};

/// Endpoints a service may have (the dataplane indexes them with 16 bits; Maglev tables
/// want many more entries than backends).
pub const MAX_ENDPOINTS: usize = 4096;
/// Zones or nodes in one endpoint's hints (the API's limit).
const MAX_HINTS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointDef {
    pub ip: Ipv4Addr,
    pub node_name: Option<String>,
    pub ready: bool,
    /// EndpointSlice's conditions: a terminating endpoint that still serves gets traffic
    /// only when no endpoint is ready.
    pub serving: bool,
    pub terminating: bool,
    /// Topology hints (`hints.forZones`, `hints.forNodes`): where the endpoint should be
    /// used from, when every endpoint has them.
    pub zones: Vec<String>,
    pub for_nodes: Vec<String>,
}

/// The valid endpoints of `docs`; each problem goes to `err`.
pub(super) fn validate(docs: &[EndpointDoc], err: &mut impl FnMut(String)) -> Vec<EndpointDef> {
    let mut endpoints = Vec::new();
    let mut ips = HashSet::new();
    if docs.len() > MAX_ENDPOINTS {
        err(format!(
            "endpoints: {} endpoints, at most {MAX_ENDPOINTS} are supported",
            docs.len()
        ));
    }
    for (i, e) in docs.iter().enumerate() {
        let f = FieldPrefix("endpoints", i);
        let ip = match ipv4(|| format!("{f}.ip"), &e.ip) {
            Ok(a) if a.is_unspecified() || a.is_broadcast() || a.is_multicast() => {
                err(format!("{f}.ip: {a} cannot be an endpoint"));
                continue;
            }
            Ok(a) => a,
            Err(e) => {
                err(e);
                continue;
            }
        };
        if !ips.insert(ip) {
            err(format!("{f}.ip: {ip} is listed twice"));
        }
        if let Some(n) = &e.node_name
            && (n.is_empty() || n.len() > 253)
        {
            err(format!("{f}.nodeName: {n:?} is not a node name"));
        }
        let ready = e.ready.unwrap_or(true);
        let hints = e.hints.clone().unwrap_or_default();
        let mut names = |l: Vec<NameDoc>, field: &str| {
            if l.len() > MAX_HINTS || l.iter().any(|n| n.name.is_empty()) {
                err(format!(
                    "{f}.hints.{field}: at most {MAX_HINTS} entries, each with a name"
                ));
            }
            l.into_iter().map(|n| n.name).collect()
        };
        endpoints.push(EndpointDef {
            ip,
            node_name: e.node_name.clone(),
            ready,
            serving: e.serving.unwrap_or(ready),
            terminating: e.terminating.unwrap_or(false),
            zones: names(hints.for_zones, "forZones"),
            for_nodes: names(hints.for_nodes, "forNodes"),
        });
    }
    endpoints
}
