//! Where a service's addresses may lie: the mitigation of CVE-2020-8554. Whoever may write
//! a service may otherwise give it an externalIP (or a LoadBalancer IP, or a clusterIP)
//! that is somebody else's address (a pod's, a node's, a DNS server's), and every node
//! would then send that address's traffic to the service's backends: a man in the middle.
//! So, for a service to be programmed,
//!
//! - its clusterIP lies in the service range (`--service-cluster-ip-range`, else the
//!   network config's `ServiceNetwork`; unchecked when neither is set), and never in the
//!   pod Network nor on a node;
//! - its externalIPs and LoadBalancer IPs are never in the pod Network, the service range
//!   or a node address (the node's own, every routed lease's PublicIP);
//! - its externalIPs come from `--external-ip-allow`, when it is given (Kubernetes'
//!   `DenyServiceExternalIPs`/allow-list admission, as a flag).
//!
//! Endpoints are held to the same idea: whoever may write an EndpointSlice could point a
//! service at any address the node reaches (a cloud metadata server, the node's own
//! loopback). An endpoint is used only inside the pod Network, at a node address
//! (host-network pods) or in `--endpoint-allow`, and never at a loopback, link-local,
//! unspecified or multicast address; others are skipped with a line, the rest of the
//! service programmed.
use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnetwork::Ipv4Network;

use super::validate::{ExternalField, ServiceDef};
use crate::config::NetworkConfig;

/// A CIDR flag value, refused with the network it probably means when host bits are set.
pub(crate) fn parse_range(s: &str) -> Result<Ipv4Network, String> {
    let net: Ipv4Network = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 CIDR (like 10.96.0.0/12)"))?;
    if net.network() != net.ip() {
        return Err(format!(
            "{s} has host bits set; did you mean {}/{}?",
            net.network(),
            net.prefix()
        ));
    }
    Ok(net)
}

/// Where service addresses may come from: flags of the agent and of `netdp service apply`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AddressArgs {
    /// The range every clusterIP lies in, as kube-apiserver's flag of the same name (wins
    /// over the network config's ServiceNetwork). Services outside it are not programmed.
    #[arg(
        long = "service-cluster-ip-range",
        env = "NETDP_SERVICE_CLUSTER_IP_RANGE",
        value_parser = parse_range
    )]
    pub service_cluster_ip_range: Option<Ipv4Network>,
    /// The only ranges externalIPs may come from (comma-separated CIDRs). Default: any
    /// address outside the pod Network, the service range and the nodes' addresses.
    #[arg(
        long = "external-ip-allow",
        env = "NETDP_EXTERNAL_IP_ALLOW",
        value_delimiter = ',',
        value_parser = parse_range
    )]
    pub external_ip_allow: Vec<Ipv4Network>,
    /// Ranges endpoints may lie in besides the pod Network and the nodes' addresses
    /// (comma-separated CIDRs), for services whose endpoints are written by hand to
    /// reach something outside the cluster.
    #[arg(
        long = "endpoint-allow",
        env = "NETDP_ENDPOINT_ALLOW",
        value_delimiter = ',',
        value_parser = parse_range
    )]
    pub endpoint_allow: Vec<Ipv4Network>,
}

/// The rules one node (or `netdp service apply`) holds services' addresses to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// The pod Network (unknown to a client without a network config).
    pub pod_network: Option<Ipv4Network>,
    /// The service range and where it was set.
    pub service_range: Option<(Ipv4Network, &'static str)>,
    pub external_allow: Vec<Ipv4Network>,
    pub endpoint_allow: Vec<Ipv4Network>,
    /// Node addresses: this node's, and every routed lease's PublicIP.
    pub node_ips: BTreeSet<Ipv4Addr>,
}

impl AddressPolicy {
    /// The flags win over the network config.
    pub fn new(
        args: &AddressArgs,
        config: Option<&NetworkConfig>,
        node_ips: impl IntoIterator<Item = Ipv4Addr>,
    ) -> Self {
        let service_range = match args.service_cluster_ip_range {
            Some(r) => Some((r, "--service-cluster-ip-range")),
            None => config
                .and_then(|c| c.service_network)
                .map(|r| (r, "ServiceNetwork")),
        };
        AddressPolicy {
            pod_network: config.map(|c| c.network),
            service_range,
            external_allow: args.external_ip_allow.clone(),
            endpoint_allow: args.endpoint_allow.clone(),
            node_ips: node_ips.into_iter().collect(),
        }
    }

    /// The node addresses in one of `self` and `other` but not both, if that is all that
    /// differs between them (`None`: something else changed too).
    pub fn node_ips_changed(&self, other: &AddressPolicy) -> Option<BTreeSet<Ipv4Addr>> {
        let same_rest = self.pod_network == other.pod_network
            && self.service_range == other.service_range
            && self.external_allow == other.external_allow
            && self.endpoint_allow == other.endpoint_allow;
        same_rest.then(|| {
            self.node_ips
                .symmetric_difference(&other.node_ips)
                .copied()
                .collect()
        })
    }

    /// Whether the verdict on `def` can depend on whether the addresses `ips` are node
    /// addresses: one of its service addresses or endpoints is among them.
    pub fn touches(def: &ServiceDef, ips: &BTreeSet<Ipv4Addr>) -> bool {
        def.cluster_ip.is_some_and(|ip| ips.contains(&ip))
            || def.external_fields.iter().any(|(ip, _)| ips.contains(ip))
            || def.endpoints.iter().any(|e| ips.contains(&e.ip))
    }

    /// Why `ip` may not be a service address of any kind, if it may not.
    fn forbidden(&self, ip: Ipv4Addr) -> Option<String> {
        if let Some(n) = self.pod_network.filter(|n| n.contains(ip)) {
            return Some(format!("{ip} is inside the pod Network {n}"));
        }
        if self.node_ips.contains(&ip) {
            return Some(format!("{ip} is a node address"));
        }
        None
    }

    /// Why `ip` may not be an endpoint, if it may not.
    pub fn endpoint_refused(&self, ip: Ipv4Addr) -> Option<String> {
        let never = if ip.is_loopback() {
            Some("a loopback address")
        } else if ip.is_link_local() {
            Some("a link-local address (cloud metadata lives there)")
        } else if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            Some("not a unicast address")
        } else {
            None
        };
        if let Some(why) = never {
            return Some(format!("{ip} is {why}"));
        }
        let network = self.pod_network?;
        if network.contains(ip)
            || self.node_ips.contains(&ip)
            || self.endpoint_allow.iter().any(|n| n.contains(ip))
        {
            return None;
        }
        Some(format!(
            "{ip} is outside the pod Network {network} and not a node address (--endpoint-allow admits other ranges)"
        ))
    }

    /// The endpoints of `def` that may not be used: their index and why.
    pub fn refused_endpoints(&self, def: &ServiceDef) -> Vec<(usize, String)> {
        (def.endpoints.iter().enumerate())
            .filter_map(|(i, e)| Some((i, self.endpoint_refused(e.ip)?)))
            .collect()
    }

    /// Checks the addresses of a (valid) service; the error names every field at fault.
    /// Services without a cluster IP program nothing and pass.
    pub fn check(&self, def: &ServiceDef) -> Result<(), String> {
        let Some(cip) = def.cluster_ip else {
            return Ok(());
        };
        let mut errs = Vec::new();
        if let Some(why) = self.forbidden(cip) {
            errs.push(format!("spec.clusterIP: {why}"));
        } else if let Some((r, from)) = self.service_range.filter(|(r, _)| !r.contains(cip)) {
            errs.push(format!(
                "spec.clusterIP: {cip} is outside the service range {r} ({from})"
            ));
        }
        for (ip, field) in &def.external_fields {
            if let Some(why) = self.forbidden(*ip) {
                errs.push(format!("{field}: {why}"));
            } else if let Some((r, from)) = self.service_range.filter(|(r, _)| r.contains(*ip)) {
                errs.push(format!(
                    "{field}: {ip} is inside the service range {r} ({from})"
                ));
            } else if matches!(field, ExternalField::ExternalIp(_))
                && !self.external_allow.is_empty()
                && !self.external_allow.iter().any(|n| n.contains(*ip))
            {
                let allowed: Vec<String> =
                    self.external_allow.iter().map(|n| n.to_string()).collect();
                errs.push(format!(
                    "{field}: {ip} is not in --external-ip-allow ({})",
                    allowed.join(",")
                ));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

#[cfg(test)]
#[path = "addresses_tests.rs"]
mod tests;
