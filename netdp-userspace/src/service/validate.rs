//! Checking a [`ServiceDoc`] and turning it into the [`ServiceDef`] the dataplane is
//! planned from. Every error names the field, as `spec.ports[1].nodePort: ...`.
use std::{collections::HashSet, net::Ipv4Addr};

pub use super::endpoints::{EndpointDef, MAX_ENDPOINTS};
use super::schema::{IntOrString, ServiceDoc};
use crate::dataplane::lb::proto_name;

/// The annotation choosing the backend selection of a service.
pub const ALGORITHM_ANNOTATION: &str = "netdp.io/lb-algorithm";
/// The annotation choosing how node port traffic reaches a remote backend.
pub const FORWARDING_ANNOTATION: &str = "netdp.io/forwarding-mode";
/// Cilium's name for it, taken as well so services move over unchanged.
pub const CILIUM_FORWARDING_ANNOTATION: &str = "service.cilium.io/forwarding-mode";
/// Kubernetes' default and maximum sessionAffinity timeouts.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
pub const MAX_AFFINITY_TIMEOUT: u32 = 86400;

pub use netdp_common::proto::{IPPROTO_TCP, IPPROTO_UDP};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// How traffic from outside to a node port, external or load-balancer IP reaches a backend
/// on another node (Cilium's `loadBalancer.mode`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Forwarding {
    /// Source-NATed to this node, whose replies come back through it (kube-proxy's way).
    #[default]
    Snat,
    /// Direct server return: the client's address kept, the backend's node answering the
    /// client itself (needs a tunnel to that node: vxlan, ipip or udp; host-gw peers are
    /// source-NATed).
    Dsr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Random,
    Maglev,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortDef {
    pub name: String,
    pub proto: u8,
    pub port: u16,
    pub target_port: u16,
    pub node_port: Option<u16>,
}

/// Where an external address of a service was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalField {
    /// `spec.externalIPs[i]`.
    ExternalIp(usize),
    /// `spec.loadBalancerIP`.
    LoadBalancerIp,
    /// `status.loadBalancer.ingress[i].ip`.
    Ingress(usize),
}

impl std::fmt::Display for ExternalField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExternalField::ExternalIp(i) => write!(f, "spec.externalIPs[{i}]"),
            ExternalField::LoadBalancerIp => f.write_str("spec.loadBalancerIP"),
            ExternalField::Ingress(i) => write!(f, "status.loadBalancer.ingress[{i}].ip"),
        }
    }
}

/// A valid service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceType,
    /// `None`: headless (clusterIP "None") or ExternalName; nothing to program.
    pub cluster_ip: Option<Ipv4Addr>,
    /// externalIPs, loadBalancerIP and load-balancer ingress IPs.
    pub external_ips: Vec<Ipv4Addr>,
    /// The same addresses with the field each came from, as given (for
    /// [`super::addresses::AddressPolicy`], which holds them to different rules).
    pub external_fields: Vec<(Ipv4Addr, ExternalField)>,
    pub ports: Vec<PortDef>,
    pub affinity_timeout: Option<u32>,
    /// externalTrafficPolicy: Local.
    pub local_policy: bool,
    /// internalTrafficPolicy: Local: cluster IP traffic only to this node's endpoints.
    pub internal_local: bool,
    pub algorithm: Algorithm,
    /// The forwarding-mode annotation's choice; `None`: the node's (`--lb-mode`).
    pub forwarding: Option<Forwarding>,
    /// Global across the clusters of a mesh (`netdp.io/global`), with its affinity.
    pub global: Option<super::global::Affinity>,
    pub endpoints: Vec<EndpointDef>,
}

impl ServiceDef {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The endpoints traffic goes to: the ready ones, or when none is, those terminating
    /// but still serving, as kube-proxy does (KEP-1669), so a rolling update that replaces
    /// every pod does not drop the connections it could still take.
    pub fn ready_endpoints(&self) -> impl Iterator<Item = &EndpointDef> {
        let any_ready = self.endpoints.iter().any(|e| e.ready);
        self.endpoints.iter().filter(move |e| {
            if any_ready {
                e.ready
            } else {
                e.serving && e.terminating
            }
        })
    }
}

/// A DNS-1123 label, as Kubernetes requires of namespaces and service names.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

// Field names are only formatted for errors: valid services (100,000 of them at startup)
// should cost no string building.
pub(super) fn ipv4(field: impl FnOnce() -> String, s: &str) -> Result<Ipv4Addr, String> {
    s.parse::<Ipv4Addr>()
        .map_err(|_| format!("{}: {s:?} is not an IPv4 address", field()))
}

fn port(field: impl FnOnce() -> String, v: i64) -> Result<u16, String> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{}: {v} is not a port (1-65535)", field()))
}

/// `name[i]`, formatted only when an error needs it.
#[derive(Clone, Copy)]
pub(super) struct FieldPrefix(pub &'static str, pub usize);

impl std::fmt::Display for FieldPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.0, self.1)
    }
}

/// Checks a service; the error lists every problem found, each naming its field.
pub fn validate(doc: &ServiceDoc) -> Result<ServiceDef, String> {
    let mut errs = Vec::new();
    let mut err = |e: String| errs.push(e);

    let name = doc.metadata.name.clone();
    if !dns_label(&name) {
        err(format!(
            "metadata.name: {name:?} must be 1-63 lowercase letters, digits and '-'"
        ));
    }
    let namespace = doc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    if !dns_label(&namespace) {
        err(format!(
            "metadata.namespace: {namespace:?} must be 1-63 lowercase letters, digits and '-'"
        ));
    }
    if let Some(k) = &doc.kind
        && k != "Service"
    {
        err(format!("kind: {k:?} is not Service"));
    }
    let spec = &doc.spec;
    let kind = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => ServiceType::ClusterIp,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        "ExternalName" => ServiceType::ExternalName,
        other => {
            err(format!(
                "spec.type: {other:?} is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"
            ));
            ServiceType::ClusterIp
        }
    };
    let cluster_ip = match (kind, spec.cluster_ip.as_deref()) {
        (ServiceType::ExternalName, _) => None,
        (_, Some("None")) => {
            if kind != ServiceType::ClusterIp {
                err(
                    "spec.clusterIP: a headless service (\"None\") must be of type ClusterIP"
                        .into(),
                );
            }
            None
        }
        (_, Some(ip)) => match ipv4(|| "spec.clusterIP".into(), ip) {
            Ok(a) if a.is_unspecified() || a.is_broadcast() || a.is_loopback() => {
                err(format!("spec.clusterIP: {a} cannot be a service address"));
                None
            }
            Ok(a) => Some(a),
            Err(e) => {
                err(e);
                None
            }
        },
        (_, None) => {
            err("spec.clusterIP: required (`netdp service apply` allocates one from the service range when there is one); use \"None\" for a headless service".into());
            None
        }
    };
    let mut external_fields = Vec::new();
    for (i, s) in spec.external_ips.iter().enumerate() {
        match ipv4(|| format!("spec.externalIPs[{i}]"), s) {
            Ok(a) => external_fields.push((a, ExternalField::ExternalIp(i))),
            Err(e) => err(e),
        }
    }
    if let Some(s) = &spec.load_balancer_ip
        && !s.is_empty()
    {
        match ipv4(|| "spec.loadBalancerIP".into(), s) {
            Ok(a) => external_fields.push((a, ExternalField::LoadBalancerIp)),
            Err(e) => err(e),
        }
    }
    if let Some(lb) = doc.status.as_ref().and_then(|s| s.load_balancer.as_ref()) {
        for (i, ing) in lb.ingress.iter().enumerate() {
            if let Some(s) = &ing.ip {
                match ipv4(|| format!("status.loadBalancer.ingress[{i}].ip"), s) {
                    Ok(a) => external_fields.push((a, ExternalField::Ingress(i))),
                    Err(e) => err(e),
                }
            }
        }
    }
    let mut external_ips: Vec<Ipv4Addr> = external_fields.iter().map(|(a, _)| *a).collect();
    if !external_ips.is_empty() && cluster_ip.is_none() && kind != ServiceType::ExternalName {
        err("spec.externalIPs: a headless service cannot have external addresses".into());
    }
    external_ips.sort();
    external_ips.dedup();

    let node_ports_allowed = matches!(kind, ServiceType::NodePort | ServiceType::LoadBalancer);
    let mut ports = Vec::new();
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    let mut node_ports = HashSet::new();
    if spec.ports.is_empty() && cluster_ip.is_some() {
        err("spec.ports: a service with a cluster IP needs at least one port".into());
    }
    for (i, p) in spec.ports.iter().enumerate() {
        let f = FieldPrefix("spec.ports", i);
        let pname = p.name.clone().unwrap_or_default();
        if spec.ports.len() > 1 && pname.is_empty() {
            err(format!(
                "{f}.name: required when a service has several ports"
            ));
        }
        if !pname.is_empty() && !names.insert(pname.clone()) {
            err(format!("{f}.name: {pname:?} is used twice"));
        }
        let proto = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => IPPROTO_TCP,
            "UDP" => IPPROTO_UDP,
            other => {
                err(format!(
                    "{f}.protocol: {other:?} is not supported (TCP or UDP)"
                ));
                continue;
            }
        };
        let service_port = match port(|| format!("{f}.port"), p.port) {
            Ok(v) => v,
            Err(e) => {
                err(e);
                continue;
            }
        };
        if !seen.insert((service_port, proto)) {
            err(format!(
                "{f}.port: {service_port}/{} is listed twice",
                proto_name(proto)
            ));
        }
        let target_port = match &p.target_port {
            None => service_port,
            Some(IntOrString::Int(v)) => match port(|| format!("{f}.targetPort"), *v) {
                Ok(v) => v,
                Err(e) => {
                    err(e);
                    continue;
                }
            },
            Some(IntOrString::Str(s)) => match s.parse::<i64>() {
                Ok(v) => match port(|| format!("{f}.targetPort"), v) {
                    Ok(v) => v,
                    Err(e) => {
                        err(e);
                        continue;
                    }
                },
                Err(_) => {
                    err(format!(
                        "{f}.targetPort: named ports ({s:?}) are not supported; give the container port number"
                    ));
                    continue;
                }
            },
        };
        let node_port = match (p.node_port, node_ports_allowed) {
            (Some(v), true) => match port(|| format!("{f}.nodePort"), v) {
                Ok(v) => {
                    if !node_ports.insert((v, proto)) {
                        err(format!(
                            "{f}.nodePort: {v}/{} is used twice",
                            proto_name(proto)
                        ));
                    }
                    Some(v)
                }
                Err(e) => {
                    err(e);
                    None
                }
            },
            (None, true) => {
                err(format!(
                    "{f}.nodePort: required for type {} (`netdp service apply` allocates one)",
                    spec.type_.as_deref().unwrap_or("")
                ));
                None
            }
            (Some(_), false) => {
                err(format!(
                    "{f}.nodePort: only NodePort and LoadBalancer services have node ports"
                ));
                None
            }
            (None, false) => None,
        };
        ports.push(PortDef {
            name: pname,
            proto,
            port: service_port,
            target_port,
            node_port,
        });
    }

    let affinity_timeout = match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => None,
        "ClientIP" => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match t {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(t) if t >= 1 && t <= MAX_AFFINITY_TIMEOUT as i64 => Some(t as u32),
                Some(t) => {
                    err(format!(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is not within 1-{MAX_AFFINITY_TIMEOUT}"
                    ));
                    None
                }
            }
        }
        other => {
            err(format!(
                "spec.sessionAffinity: {other:?} is not one of None, ClientIP"
            ));
            None
        }
    };
    let local_policy = match spec.external_traffic_policy.as_deref().unwrap_or("Cluster") {
        "Cluster" => false,
        "Local" => {
            if !node_ports_allowed && external_ips.is_empty() {
                err("spec.externalTrafficPolicy: Local only applies to services reachable from outside (NodePort, LoadBalancer, external IPs)".into());
            }
            true
        }
        other => {
            err(format!(
                "spec.externalTrafficPolicy: {other:?} is not one of Cluster, Local"
            ));
            false
        }
    };
    let internal_local = match spec.internal_traffic_policy.as_deref().unwrap_or("Cluster") {
        "Cluster" => false,
        "Local" => true,
        other => {
            err(format!(
                "spec.internalTrafficPolicy: {other:?} is not one of Cluster, Local"
            ));
            false
        }
    };
    let algorithm = match doc
        .metadata
        .annotations
        .get(ALGORITHM_ANNOTATION)
        .map(String::as_str)
    {
        None | Some("random") => Algorithm::Random,
        Some("maglev") => Algorithm::Maglev,
        Some(other) => {
            err(format!(
                "metadata.annotations[\"{ALGORITHM_ANNOTATION}\"]: {other:?} is not one of random, maglev"
            ));
            Algorithm::Random
        }
    };

    let annotations = &doc.metadata.annotations;
    let forwarding = match [FORWARDING_ANNOTATION, CILIUM_FORWARDING_ANNOTATION]
        .into_iter()
        .find_map(|k| annotations.get(k).map(|v| (k, v.as_str())))
    {
        None => None,
        Some((_, "snat")) => Some(Forwarding::Snat),
        Some((_, "dsr")) => Some(Forwarding::Dsr),
        Some((key, other)) => {
            err(format!(
                "metadata.annotations[\"{key}\"]: {other:?} is not one of snat, dsr"
            ));
            None
        }
    };
    let global = super::global::parse(annotations, &mut err);
    let endpoints = super::endpoints::validate(&doc.endpoints, &mut err);
    if !errs.is_empty() {
        return Err(errs.join("; "));
    }
    Ok(ServiceDef {
        namespace,
        name,
        kind,
        cluster_ip,
        external_ips,
        external_fields,
        ports,
        affinity_timeout,
        local_policy,
        internal_local,
        algorithm,
        forwarding,
        global,
        endpoints,
    })
}

/// The addresses, ports and protocols a service claims cluster-wide, for conflicts: cluster
/// and external IP frontends, and node ports (`None` address).
pub fn claims(def: &ServiceDef) -> Vec<(Option<Ipv4Addr>, u16, u8, String)> {
    let mut out = Vec::new();
    for (i, p) in def.ports.iter().enumerate() {
        if let Some(ip) = def.cluster_ip {
            out.push((Some(ip), p.port, p.proto, format!("spec.ports[{i}].port")));
            for e in &def.external_ips {
                out.push((Some(*e), p.port, p.proto, format!("spec.ports[{i}].port")));
            }
        }
        if let Some(np) = p.node_port {
            out.push((None, np, p.proto, format!("spec.ports[{i}].nodePort")));
        }
    }
    out
}
