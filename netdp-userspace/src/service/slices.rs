//! EndpointSlices (`discovery.k8s.io/v1`, k8s-openapi's types) into the endpoints of the
//! services they belong to, as kube-proxy reads them: a slice belongs to the service its
//! `kubernetes.io/service-name` label names in its namespace; an endpoint is its first
//! address with its node and conditions; a service port's endpoint port is the slice port
//! of the same name (and protocol). Several slices per service are merged. What cannot be
//! used is skipped with one line naming the slice and the field, and the rest goes on:
//! IPv6 and FQDN slices (IPv6 is not supported yet), slices of no service in hand, slices
//! missing a port the service has, and endpoints without an address.
use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::schema::{EndpointDoc, HintsDoc, IntOrString, NameDoc, ServiceDoc};

/// The label that ties a slice to its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A slice as kept: what the model uses of an EndpointSlice, read once (the API object
/// is several times larger, and the agent holds one per slice of the cluster).
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    /// Where it came from ("document 3", "kubernetes API").
    pub at: Cow<'static, str>,
    /// `namespace/name`.
    pub id: String,
    pub namespace: String,
    /// The service its label names.
    pub service: Option<String>,
    pub address_type: String,
    pub ports: Vec<SlicePort>,
    /// Each endpoint's first address and the rest of what kube-proxy reads (`None`: no
    /// address).
    pub endpoints: Vec<Option<EndpointDoc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlicePort {
    pub name: String,
    pub protocol: String,
    pub port: Option<i32>,
}

impl Slice {
    pub fn new(at: impl Into<Cow<'static, str>>, slice: EndpointSlice) -> Self {
        let m = slice.metadata;
        let namespace = m.namespace.unwrap_or_else(|| "default".into());
        let id = format!("{namespace}/{}", m.name.as_deref().unwrap_or(""));
        let ports = (slice.ports.into_iter().flatten())
            .map(|p| SlicePort {
                name: p.name.unwrap_or_default(),
                protocol: p.protocol.unwrap_or_else(|| "TCP".into()),
                port: p.port,
            })
            .collect();
        let endpoints = (slice.endpoints.into_iter().flatten())
            .map(|e| {
                let ip = e.addresses.into_iter().next()?;
                let c = e.conditions.unwrap_or_default();
                let ready = c.ready.unwrap_or(true);
                let names = |l: Option<Vec<String>>| {
                    (l.into_iter().flatten())
                        .map(|name| NameDoc { name })
                        .collect()
                };
                Some(EndpointDoc {
                    ip,
                    node_name: e.node_name,
                    ready: Some(ready),
                    serving: Some(c.serving.unwrap_or(ready)),
                    terminating: Some(c.terminating.unwrap_or(false)),
                    hints: e.hints.map(|h| HintsDoc {
                        for_zones: names(
                            h.for_zones.map(|z| z.into_iter().map(|z| z.name).collect()),
                        ),
                        for_nodes: names(
                            h.for_nodes.map(|n| n.into_iter().map(|n| n.name).collect()),
                        ),
                    }),
                })
            })
            .collect();
        Slice {
            at: at.into(),
            service: m.labels.and_then(|mut l| l.remove(SERVICE_NAME_LABEL)),
            id,
            namespace,
            address_type: slice.address_type,
            ports,
            endpoints,
        }
    }

    /// The service it belongs to, `namespace/name`.
    pub fn owner(&self) -> Option<String> {
        Some(format!("{}/{}", self.namespace, self.service.as_ref()?))
    }
}

fn namespace(doc: &ServiceDoc) -> &str {
    doc.metadata.namespace.as_deref().unwrap_or("default")
}

/// The protocol a port names, with Kubernetes' default.
fn protocol(p: Option<&str>) -> &str {
    p.unwrap_or("TCP")
}

/// Merges `slices` into the endpoints of `services`; returns a line for each slice or
/// endpoint skipped. A service with slices gets exactly their endpoints (any it listed
/// itself are replaced) and the target ports the slices resolve.
pub fn merge<'a>(
    services: &mut [ServiceDoc],
    slices: impl IntoIterator<Item = &'a Slice>,
) -> Vec<String> {
    let mut skipped = Vec::new();
    let index: HashMap<(String, String), usize> = services
        .iter()
        .enumerate()
        .map(|(i, d)| ((namespace(d).to_string(), d.metadata.name.clone()), i))
        .collect();
    // Per service: its endpoints by address, and each port's resolved number.
    let mut endpoints: BTreeMap<usize, BTreeMap<String, EndpointDoc>> = BTreeMap::new();
    let mut resolved: HashMap<(usize, usize), (i32, String)> = HashMap::new();
    for s in slices {
        let name = &s.id;
        let skip = |why: String| format!("{}: EndpointSlice {name}: {why}; skipped", s.at);
        if s.address_type != "IPv4" {
            skipped.push(skip(format!(
                "addressType: {} (only IPv4 is supported so far)",
                s.address_type
            )));
            continue;
        }
        let Some(svc) = &s.service else {
            skipped.push(skip(format!(
                "metadata.labels[\"{SERVICE_NAME_LABEL}\"]: missing, so it belongs to no service"
            )));
            continue;
        };
        let ns = s.namespace.as_str();
        let Some(&i) = index.get(&(ns.to_string(), svc.clone())) else {
            skipped.push(skip(format!(
                "metadata.labels[\"{SERVICE_NAME_LABEL}\"]: service {ns}/{svc} is not in the input"
            )));
            continue;
        };
        // Each service port's number in this slice, agreeing with the other slices'.
        let ports = &s.ports;
        let mut mine = Vec::new();
        let mut bad = None;
        for (j, p) in services[i].spec.ports.iter().enumerate() {
            let want = p.name.as_deref().unwrap_or("");
            let proto = protocol(p.protocol.as_deref());
            let found = ports
                .iter()
                .position(|sp| sp.name == want && sp.protocol == proto);
            let number = found.and_then(|k| ports[k].port.map(|n| (k, n)));
            match number {
                None => {
                    bad = Some(format!(
                        "ports: no {proto} port named {want:?} for the service's spec.ports[{j}]"
                    ));
                    break;
                }
                Some((k, n)) => match resolved.get(&(i, j)) {
                    Some((m, other)) if *m != n => {
                        bad = Some(format!(
                            "ports[{k}].port: {n} where {other} has {m} for port {want:?} \
                             (one number per service port is supported)"
                        ));
                        break;
                    }
                    _ => mine.push((j, n)),
                },
            }
        }
        if let Some(why) = bad {
            skipped.push(skip(why));
            continue;
        }
        for (j, n) in mine {
            resolved
                .entry((i, j))
                .or_insert((n, format!("EndpointSlice {name}")));
        }
        let list = endpoints.entry(i).or_default();
        for (k, e) in s.endpoints.iter().enumerate() {
            let Some(doc) = e else {
                skipped.push(format!(
                    "{}: EndpointSlice {name}: endpoints[{k}].addresses: empty; that endpoint skipped",
                    s.at
                ));
                continue;
            };
            let ip = &doc.ip;
            // An address in two slices (one moving between them): the ready copy wins.
            match list.get(ip) {
                Some(seen) if seen.ready == Some(true) => {}
                _ => {
                    list.insert(ip.clone(), doc.clone());
                }
            }
        }
    }
    for (i, list) in endpoints {
        services[i].endpoints = list.into_values().collect();
    }
    for ((i, j), (n, _)) in resolved {
        services[i].spec.ports[j].target_port = Some(IntOrString::Int(n as i64));
    }
    skipped
}
