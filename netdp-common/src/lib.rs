//! Map key and value types shared by netdp's eBPF programs and its agent.
//!
//! Every type is `#[repr(C)]` with explicit padding so the layout the agent writes is the
//! layout the programs read, and so `bpftool map dump` (which reads the BTF of the programs)
//! shows named fields. Addresses are kept as byte arrays in network order: that is how they
//! sit in packet headers, and bpftool prints them as readable `[10,1,15,2]` lists.
#![no_std]

pub mod counters;
pub mod encap;
pub mod endpoint;
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
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const NAT: &str = "NAT";
    pub const ALL: &[&str] = &[ENDPOINTS, ROUTES, COUNTERS, PEERS, CONNTRACK, NAT];
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// tc ingress of a pod's host-side veth: everything a pod sends.
    pub const FROM_POD: &str = "from_pod";
    /// tc ingress of the node's underlay interface: everything the node receives.
    pub const FROM_NETDEV: &str = "from_netdev";
    /// Redirects and nothing else: the floor `cargo xtask bench` measures the real paths
    /// against. Never loaded by the agent.
    pub const BENCH_REDIRECT: &str = "bench_redirect";
}

/// Default capacities; the agent can override each with a flag at load time.
pub mod capacity {
    pub const ENDPOINTS: u32 = 16_384;
    pub const ROUTES: u32 = 16_384;
    pub const PEERS: u32 = 16_384;
    /// Masqueraded flows (each has a conntrack and a NAT entry).
    pub const NAT: u32 = 65_536;
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
    unsafe impl aya::Pod for nat::CtKey {}
    unsafe impl aya::Pod for nat::CtEntry {}
    unsafe impl aya::Pod for nat::NatKey {}
    unsafe impl aya::Pod for nat::NatEntry {}
}
