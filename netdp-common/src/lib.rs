//! Map key and value types shared by netdp's eBPF programs and its agent.
//!
//! Every type is `#[repr(C)]` with explicit padding so the layout the agent writes is the
//! layout the programs read, and so `bpftool map dump` (which reads the BTF of the programs)
//! shows named fields. Addresses are kept as byte arrays in network order: that is how they
//! sit in packet headers, and bpftool prints them as readable `[10,1,15,2]` lists.
#![no_std]
#[cfg(test)]
extern crate std;

pub mod conntrack;
pub mod counters;
pub mod encap;
pub mod endpoint;
pub mod lb;
pub mod nat;
pub mod node;
pub mod peer;
pub mod route;

/// An IPv4 address in network byte order, as it appears in a packet header.
pub type Ipv4 = [u8; 4];
/// An Ethernet address.
pub type Mac = [u8; 6];

/// Names of the pinned maps. The agent pins them under `<bpf-root>/<node>/maps/<name>`.
pub mod map_names {
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const ROUTES: &str = "ROUTES";
    pub const COUNTERS: &str = "COUNTERS";
    pub const PEERS: &str = "PEERS";
    pub const FRONTENDS: &str = "FRONTENDS";
    pub const BACKENDS: &str = "BACKENDS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const AFFINITY: &str = "AFFINITY";
    pub const AFFINITY_BACKENDS: &str = "AFFINITY_BACKENDS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const LB_CONFIG: &str = "LB_CONFIG";
    pub const SOCK_NAT: &str = "SOCK_NAT";
    pub const ALL: &[&str] = &[
        ENDPOINTS,
        ROUTES,
        COUNTERS,
        PEERS,
        FRONTENDS,
        BACKENDS,
        MAGLEV,
        AFFINITY,
        AFFINITY_BACKENDS,
        CONNTRACK,
        LB_CONFIG,
        SOCK_NAT,
    ];
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// tc ingress of a pod's host-side veth: everything a pod sends.
    pub const FROM_POD: &str = "from_pod";
    /// tc ingress of the node's underlay interface: everything the node receives.
    pub const FROM_NETDEV: &str = "from_netdev";
    /// tc ingress of the gateway device's peer: what the node itself sends to pods.
    pub const FROM_HOST: &str = "from_host";
    /// cgroup socket programs: the node's own connections to services, translated when
    /// the socket connects or sends (and replies shown as coming from the service).
    pub const SOCK_CONNECT4: &str = "sock_connect4";
    pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
    pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
    pub const SOCK_GETPEERNAME4: &str = "sock_getpeername4";
    pub const CLASSIFIERS: &[&str] = &[FROM_POD, FROM_NETDEV, FROM_HOST];
    pub const SOCKETS: &[&str] = &[
        SOCK_CONNECT4,
        SOCK_SENDMSG4,
        SOCK_RECVMSG4,
        SOCK_GETPEERNAME4,
    ];
    /// Redirects and nothing else: the floor `cargo xtask bench` measures the real paths
    /// against. Never loaded by the agent.
    pub const BENCH_REDIRECT: &str = "bench_redirect";
}

/// Default capacities; the agent can override each with a flag at load time.
pub mod capacity {
    pub const ENDPOINTS: u32 = 16_384;
    pub const ROUTES: u32 = 16_384;
    pub const PEERS: u32 = 16_384;
    /// Service frontends (address, port, protocol).
    pub const FRONTENDS: u32 = 65_536;
    /// Backend slots of all services together.
    pub const BACKENDS: u32 = 1 << 20;
    /// Maglev tables (services asking for Maglev; each change needs a spare while it swaps).
    pub const MAGLEV_TABLES: u32 = 256;
    /// Session affinity entries (clients of services with sessionAffinity ClientIP).
    pub const AFFINITY: u32 = 65_536;
    /// Backends of services with session affinity.
    pub const AFFINITY_BACKENDS: u32 = 65_536;
    /// Conntrack entries: two per translated flow, load balanced or masqueraded.
    pub const CONNTRACK: u32 = 262_144;
    /// Node sockets sent to a backend by the socket programs.
    pub const SOCK_NAT: u32 = 65_536;
}

/// Names of the globals the agent sets when it loads the programs.
pub mod global_names {
    /// This node's settings ([`crate::node::NodeConfig`]).
    pub const NODE: &str = "NODE";
    /// Entries per Maglev table (u32).
    pub const MAGLEV_TABLE_SIZE: &str = "MAGLEV_TABLE_SIZE";
    /// Conntrack lifetimes per state ([u32; 4], see `conntrack::timeout`).
    pub const CT_TIMEOUTS: &str = "CT_TIMEOUTS";
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all of these are repr(C), contain only integers and byte arrays, and have no
    // implicit padding (checked by the size assertions next to each type).
    unsafe impl aya::Pod for endpoint::EndpointKey {}
    unsafe impl aya::Pod for endpoint::Endpoint {}
    unsafe impl aya::Pod for route::Route {}
    unsafe impl aya::Pod for counters::CounterValue {}
    unsafe impl aya::Pod for node::NodeConfig {}
    unsafe impl aya::Pod for peer::PeerKey {}
    unsafe impl aya::Pod for peer::Peer {}
    unsafe impl aya::Pod for lb::FrontendKey {}
    unsafe impl aya::Pod for lb::Frontend {}
    unsafe impl aya::Pod for lb::Backend {}
    unsafe impl aya::Pod for lb::MaglevRow {}
    unsafe impl aya::Pod for lb::AffinityKey {}
    unsafe impl aya::Pod for lb::Affinity {}
    unsafe impl aya::Pod for lb::AffinityBackendKey {}
    unsafe impl aya::Pod for lb::LbConfig {}
    unsafe impl aya::Pod for lb::SockNatKey {}
    unsafe impl aya::Pod for lb::SockNat {}
    unsafe impl aya::Pod for conntrack::CtKey {}
    unsafe impl aya::Pod for conntrack::CtEntry {}
}
