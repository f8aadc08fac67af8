//! The maps, sized by the defaults in netdp-common; the agent can resize them at load
//! time. Also the node's load-time settings.
use aya_ebpf::{
    Global,
    btf_maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use netdp_common::{
    Ipv4,
    counters::{CounterValue, SLOTS},
    endpoint::{Endpoint, EndpointKey},
    nat::{CtEntry, CtKey, NatEntry, NatKey},
    node::NodeConfig,
    peer::{Peer, PeerKey},
    route::Route,
};

#[btf_map]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint, 16384> = HashMap::new();

#[btf_map]
pub static ROUTES: LpmTrie<Ipv4, Route, 16384> = LpmTrie::new();

#[btf_map]
pub static COUNTERS: PerCpuArray<CounterValue, { SLOTS as usize }> = PerCpuArray::new();

#[btf_map]
pub static PEERS: HashMap<PeerKey, Peer, 16384> = HashMap::new();

#[btf_map]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry, 65536> = LruHashMap::new();

#[btf_map]
pub static NAT: LruHashMap<NatKey, NatEntry, 65536> = LruHashMap::new();

/// Set by the agent at load time (`netdp_common::node::GLOBAL`); all zero means no
/// tunnels, no masquerading and no egress.
#[unsafe(no_mangle)]
static NODE: Global<NodeConfig> = Global::new(NodeConfig {
    node_ip: [0; 4],
    cluster: [0; 4],
    cluster_mask: [0; 4],
    underlay_ifindex: 0,
    decap: 0,
    flags: 0,
    vni: 0,
    port: 0,
    nat_port_min: 0,
    nat_port_max: 0,
    vtep_mac: [0; 6],
});

#[inline(always)]
pub fn node() -> NodeConfig {
    NODE.load()
}
