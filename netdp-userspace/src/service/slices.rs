//! EndpointSlices (`discovery.k8s.io/v1`, k8s-openapi's types) into the endpoints of the
//! services they belong to, as kube-proxy reads them: a slice belongs to the service its
//! `kubernetes.io/service-name` label names in its namespace; an endpoint is its first
//! address with its node and conditions; a service port's endpoint port is the slice port
//! of the same name (and protocol). Several slices per service are merged. What cannot be
//! used is skipped with one line naming the slice and the field, and the rest goes on:
//! IPv6 and FQDN slices (IPv6 is not supported yet), slices of no service in hand, slices
//! missing a port the service has, and endpoints without an address.
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::schema::{EndpointDoc, HintsDoc, IntOrString, NameDoc, ServiceDoc};

/// The label that ties a slice to its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A slice as read, with where it came from ("document 3", "kubernetes API").
pub struct Slice {
    pub at: String,
    pub slice: EndpointSlice,
}

impl Slice {
    fn name(&self) -> String {
        let m = &self.slice.metadata;
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or("default"),
            m.name.as_deref().unwrap_or("")
        )
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
        let name = s.name();
        let skip = |why: String| format!("{}: EndpointSlice {name}: {why}; skipped", s.at);
        let slice = &s.slice;
        if slice.address_type != "IPv4" {
            skipped.push(skip(format!(
                "addressType: {} (only IPv4 is supported so far)",
                slice.address_type
            )));
            continue;
        }
        let labels = slice.metadata.labels.as_ref();
        let Some(svc) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            skipped.push(skip(format!(
                "metadata.labels[\"{SERVICE_NAME_LABEL}\"]: missing, so it belongs to no service"
            )));
            continue;
        };
        let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
        let Some(&i) = index.get(&(ns.to_string(), svc.clone())) else {
            skipped.push(skip(format!(
                "metadata.labels[\"{SERVICE_NAME_LABEL}\"]: service {ns}/{svc} is not in the input"
            )));
            continue;
        };
        // Each service port's number in this slice, agreeing with the other slices'.
        let ports = slice.ports.as_deref().unwrap_or_default();
        let mut mine = Vec::new();
        let mut bad = None;
        for (j, p) in services[i].spec.ports.iter().enumerate() {
            let want = p.name.as_deref().unwrap_or("");
            let proto = protocol(p.protocol.as_deref());
            let found = ports.iter().position(|sp| {
                sp.name.as_deref().unwrap_or("") == want
                    && protocol(sp.protocol.as_deref()) == proto
            });
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
        for (k, e) in slice
            .endpoints
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let Some(ip) = e.addresses.first() else {
                skipped.push(format!(
                    "{}: EndpointSlice {name}: endpoints[{k}].addresses: empty; that endpoint skipped",
                    s.at
                ));
                continue;
            };
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let doc = EndpointDoc {
                ip: ip.clone(),
                node_name: e.node_name.clone(),
                ready: Some(ready),
                serving: Some(c.and_then(|c| c.serving).unwrap_or(ready)),
                terminating: Some(c.and_then(|c| c.terminating).unwrap_or(false)),
                hints: e.hints.as_ref().map(|h| HintsDoc {
                    for_zones: (h.for_zones.iter().flatten())
                        .map(|z| NameDoc {
                            name: z.name.clone(),
                        })
                        .collect(),
                    for_nodes: (h.for_nodes.iter().flatten())
                        .map(|n| NameDoc {
                            name: n.name.clone(),
                        })
                        .collect(),
                }),
            };
            // An address in two slices (one moving between them): the ready copy wins.
            match list.get(ip) {
                Some(seen) if seen.ready == Some(true) => {}
                _ => {
                    list.insert(ip.clone(), doc);
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
