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
pub mod dsr;
pub mod encap;
pub mod endpoint;
pub mod fragment;
pub mod keepalive;
pub mod lb;
pub mod maps;
pub mod monitor;
pub mod nat;
pub mod node;
pub mod peer;
pub mod route;

pub use maps::{capacity, names as map_names};

/// An IPv4 address in network byte order, as it appears in a packet header.
pub type Ipv4 = [u8; 4];
/// An Ethernet address.
pub type Mac = [u8; 6];

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
    /// XDP on the node's underlay interface, ahead of `from_netdev`: the prefilter, and
    /// service traffic from outside balanced before the kernel allocates an skb.
    pub const XDP_NETDEV: &str = "xdp_netdev";
    pub const SOCKETS: &[&str] = &[
        SOCK_CONNECT4,
        SOCK_SENDMSG4,
        SOCK_RECVMSG4,
        SOCK_GETPEERNAME4,
    ];
    /// Redirects and nothing else: the floor `cargo xtask bench` measures the real paths
    /// against. Never loaded by the agent.
    pub const BENCH_REDIRECT: &str = "bench_redirect";
    /// XDP_TX and nothing else: the floor of the XDP paths. Never loaded by the agent.
    pub const BENCH_XDP_TX: &str = "bench_xdp_tx";
}

/// Where agents pin by default: `<BPF_ROOT>/<node>/{maps,progs,links}`.
pub const BPF_ROOT: &str = "/sys/fs/bpf/netdp";

/// IP protocol numbers, for headers and for the protocol field of map keys.
pub mod proto {
    pub const IPPROTO_ICMP: u8 = 1;
    pub const IPPROTO_IPIP: u8 = 4;
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;
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
    unsafe impl aya::Pod for keepalive::NatPeer {}
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
    unsafe impl aya::Pod for monitor::DropEvent {}
}
