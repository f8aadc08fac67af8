//! The agent's flags (flanneld's names where they overlap).
use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use super::{conntrack, services};
use crate::{
    etcd::EtcdArgs,
    lease::LeaseOptions,
    util::{parse_duration, parse_minutes},
};

#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Underlay interface (default: the one holding the default route).
    #[arg(long, env = "NETDP_IFACE")]
    pub iface: Option<String>,
    /// Address other nodes reach this one at (default: the first IPv4 address of --iface).
    #[arg(long = "public-ip", env = "NETDP_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// Where to write the node's lease for the CNI plugin.
    #[arg(long = "subnet-file", default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,
    /// Name of this node; its pins live under <bpf-root>/<node-name>.
    #[arg(long = "node-name", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// This node's topology zone, for endpoints' zone hints (default: its Node's
    /// topology.kubernetes.io/zone label, when the Kubernetes API is used).
    #[arg(long = "node-zone", env = "NETDP_NODE_ZONE")]
    pub node_zone: Option<String>,
    /// bpffs directory for netdp's pinned objects.
    #[arg(long = "bpf-root", default_value = netdp_common::BPF_ROOT)]
    pub bpf_root: PathBuf,
    /// Masquerade pod traffic leaving the cluster Network.
    #[arg(long = "ip-masq", env = "NETDP_IP_MASQ")]
    pub ip_masq: bool,
    /// Lifetime of the subnet lease.
    #[arg(long = "subnet-lease-ttl", value_parser = parse_duration, default_value = "24h")]
    pub lease_ttl: Duration,
    /// Renew the lease this long before it expires: minutes, as flanneld, or a duration (1h30m).
    #[arg(long = "subnet-lease-renew-margin", value_parser = parse_minutes, default_value = "60")]
    pub renew_margin: Duration,
    /// Pause between failed renewals.
    #[arg(long = "subnet-lease-retry", value_parser = parse_duration, default_value = "1m")]
    pub retry_interval: Duration,
    /// Capacity of the endpoint map.
    #[arg(long = "endpoint-map-size", default_value_t = netdp_common::capacity::ENDPOINTS)]
    pub endpoint_map_size: u32,
    /// Capacity of the route map.
    #[arg(long = "route-map-size", default_value_t = netdp_common::capacity::ROUTES)]
    pub route_map_size: u32,
    /// How often a node behind a NAT (its --public-ip not an address of its own) sends
    /// every peer a keepalive through it, so peers can send first and learn the NAT's
    /// port ("0s": never; NATs forget idle UDP mappings after 30 s or more).
    #[arg(long = "nat-keepalive", value_parser = parse_duration, default_value = "10s", env = "NETDP_NAT_KEEPALIVE")]
    pub nat_keepalive: Duration,
    /// How often to re-check next-hop MACs and the network config.
    #[arg(long = "resync-interval", value_parser = parse_duration, default_value = "5s")]
    pub resync_interval: Duration,
    /// Where to serve /healthz, /readyz and /status for probes ("off": nowhere).
    #[arg(
        long = "healthz-addr",
        env = "NETDP_HEALTHZ_ADDR",
        default_value = "0.0.0.0:9876",
        value_parser = parse_listen
    )]
    pub healthz_addr: Listen,
    /// Where to serve Prometheus /metrics ("off": nowhere); loopback by default, as
    /// kube-proxy's, since the counters describe the node's traffic.
    #[arg(
        long = "metrics-addr",
        env = "NETDP_METRICS_ADDR",
        default_value = "127.0.0.1:9962",
        value_parser = parse_listen
    )]
    pub metrics_addr: Listen,
    /// kubeconfig for --kube-subnet-mgr and --service-source=kubernetes (default:
    /// $KUBECONFIG, ~/.kube/config, or the pod's service account).
    #[arg(
        long = "kubeconfig",
        alias = "kubeconfig-file",
        env = "NETDP_KUBECONFIG"
    )]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub kube: super::KubeSubnetArgs,
    #[command(flatten)]
    pub services: services::ServiceArgs,
    #[command(flatten)]
    pub conntrack: conntrack::ConntrackArgs,
    #[command(flatten)]
    pub underlay: super::underlay::UnderlayArgs,
    #[command(flatten)]
    pub xdp: super::xdp::XdpArgs,
    #[command(flatten)]
    pub gateway: super::gateways::GatewayArgs,
}

/// An address to listen on, or none ("off").
#[derive(Debug, Clone, Copy)]
pub struct Listen(pub Option<std::net::SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    match s {
        "off" | "" => Ok(Listen(None)),
        _ => s
            .parse()
            .map(|a| Listen(Some(a)))
            .map_err(|_| format!("{s:?} is not an address:port (like 0.0.0.0:9876) or \"off\"")),
    }
}

impl AgentArgs {
    pub(super) fn lease_options(&self) -> LeaseOptions {
        LeaseOptions {
            ttl: self.lease_ttl,
            renew_margin: self.renew_margin,
            retry_interval: self.retry_interval,
        }
    }
}
