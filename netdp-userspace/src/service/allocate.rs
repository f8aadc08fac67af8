//! What kube-apiserver fills in for a Service written without it, done by `netdp service
//! apply` (there is no API server in front of etcd): a clusterIP from the service range
//! and node ports from the node-port range. A service applied again keeps what it was
//! given: the stored service is the record, as the API server's allocation is.
use std::{collections::HashSet, net::Ipv4Addr, ops::RangeInclusive};

use anyhow::{Result, bail};
use ipnetwork::Ipv4Network;

use super::schema::ServiceDoc;

/// kube-apiserver's default `--service-node-port-range`.
pub const NODE_PORTS: RangeInclusive<u16> = 30000..=32767;

/// Hands out what the services in hand and in etcd do not use.
pub struct Allocator {
    range: Option<Ipv4Network>,
    node_ports: RangeInclusive<u16>,
    ips: HashSet<Ipv4Addr>,
    /// (node port, protocol)
    ports: HashSet<(u16, String)>,
}

fn protocol(p: Option<&str>) -> String {
    p.unwrap_or("TCP").to_string()
}

fn wants_node_ports(doc: &ServiceDoc) -> bool {
    matches!(
        doc.spec.type_.as_deref(),
        Some("NodePort") | Some("LoadBalancer")
    )
}

fn headless_or_external(doc: &ServiceDoc) -> bool {
    doc.spec.cluster_ip.as_deref() == Some("None")
        || doc.spec.type_.as_deref() == Some("ExternalName")
}

impl Allocator {
    /// `taken`: every service that keeps its addresses (those in etcd that are not being
    /// applied, and those applied with them set).
    pub fn new<'a>(
        range: Option<Ipv4Network>,
        node_ports: RangeInclusive<u16>,
        taken: impl IntoIterator<Item = &'a ServiceDoc>,
    ) -> Self {
        let mut a = Allocator {
            range,
            node_ports,
            ips: HashSet::new(),
            ports: HashSet::new(),
        };
        for doc in taken {
            a.take(doc);
        }
        a
    }

    /// Marks what `doc` uses as used.
    pub fn take(&mut self, doc: &ServiceDoc) {
        if let Some(ip) = doc.spec.cluster_ip.as_deref().and_then(|s| s.parse().ok()) {
            self.ips.insert(ip);
        }
        for p in &doc.spec.ports {
            if let Some(np) = p.node_port.and_then(|n| u16::try_from(n).ok()) {
                self.ports.insert((np, protocol(p.protocol.as_deref())));
            }
        }
    }

    /// Fills in `doc`'s missing clusterIP and node ports, from `previous` (the same
    /// service as stored) where it has them, else the first free ones. Returns what was
    /// allocated anew, for the user ("clusterIP 10.96.0.10").
    pub fn fill(
        &mut self,
        doc: &mut ServiceDoc,
        previous: Option<&ServiceDoc>,
    ) -> Result<Vec<String>> {
        let mut given = Vec::new();
        let missing = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
        if !headless_or_external(doc) && missing(&doc.spec.cluster_ip) {
            let kept = previous
                .and_then(|p| p.spec.cluster_ip.as_deref())
                .and_then(|s| s.parse::<Ipv4Addr>().ok());
            let ip = match kept {
                Some(ip) => ip,
                None => {
                    let ip = self.free_ip()?;
                    given.push(format!("clusterIP {ip}"));
                    ip
                }
            };
            self.ips.insert(ip);
            doc.spec.cluster_ip = Some(ip.to_string());
        }
        if wants_node_ports(doc) {
            for (i, p) in doc.spec.ports.iter_mut().enumerate() {
                if p.node_port.is_some() {
                    continue;
                }
                let proto = protocol(p.protocol.as_deref());
                let kept = previous.and_then(|prev| {
                    prev.spec.ports.iter().find_map(|q| {
                        (q.port == p.port && protocol(q.protocol.as_deref()) == proto)
                            .then_some(q.node_port)
                            .flatten()
                    })
                });
                let np = match kept.and_then(|n| u16::try_from(n).ok()) {
                    Some(n) => n,
                    None => {
                        let n = self.free_node_port(&proto)?;
                        given.push(format!("spec.ports[{i}].nodePort {n}"));
                        n
                    }
                };
                self.ports.insert((np, proto));
                p.node_port = Some(np as i64);
            }
        }
        Ok(given)
    }

    fn free_ip(&self) -> Result<Ipv4Addr> {
        let Some(range) = self.range else {
            bail!(
                "spec.clusterIP: not given, and there is no service range to allocate one from \
                 (--service-cluster-ip-range, or the network config's ServiceNetwork)"
            );
        };
        // Neither the network's nor its broadcast address.
        let (first, last) = (u32::from(range.network()), u32::from(range.broadcast()));
        let found = (first.saturating_add(1)..last)
            .map(Ipv4Addr::from)
            .find(|ip| !self.ips.contains(ip));
        match found {
            Some(ip) => Ok(ip),
            None => bail!("spec.clusterIP: the service range {range} has no free address left"),
        }
    }

    fn free_node_port(&self, proto: &str) -> Result<u16> {
        let found = self
            .node_ports
            .clone()
            .find(|n| !self.ports.contains(&(*n, proto.to_string())));
        match found {
            Some(n) => Ok(n),
            None => bail!(
                "nodePort: the node port range {}-{} has no free {proto} port left",
                self.node_ports.start(),
                self.node_ports.end()
            ),
        }
    }
}
