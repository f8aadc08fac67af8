//! The maps, as netdp-common's catalogue (`netdp_common::maps`) declares them: names, types
//! and capacities; the agent can resize them at load time. Also the node's load-time
//! settings.
use aya_ebpf::{
    Global,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use netdp_common::{
    Ipv4, capacity,
    conntrack::{CtEntry, CtKey, timeout},
    counters::CounterValue,
    endpoint::{Endpoint, EndpointKey},
    fragment::{FragmentKey, FragmentPorts},
    keepalive::NatPeer,
    lb::{
        Affinity, AffinityBackendKey, AffinityKey, Backend, Frontend, FrontendKey, LbConfig,
        MAGLEV_TABLE_SIZE as DEFAULT_MAGLEV_TABLE_SIZE, MaglevRow, SockNat, SockNatKey,
    },
    monitor::DropEvent,
    node::NodeConfig,
    peer::{Peer, PeerKey},
    route::Route,
};

#[btf_map]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint, { capacity::ENDPOINTS as usize }> =
    HashMap::new();

#[btf_map]
pub static ROUTES: LpmTrie<Ipv4, Route, { capacity::ROUTES as usize }> = LpmTrie::new();

#[btf_map]
pub static COUNTERS: PerCpuArray<CounterValue, { capacity::COUNTERS as usize }> =
    PerCpuArray::new();

#[btf_map]
pub static PEERS: HashMap<PeerKey, Peer, { capacity::PEERS as usize }> = HashMap::new();

#[btf_map]
pub static FRONTENDS: HashMap<FrontendKey, Frontend, { capacity::FRONTENDS as usize }> =
    HashMap::new();

#[btf_map]
pub static BACKENDS: Array<Backend, { capacity::BACKENDS as usize }> = Array::new();

#[btf_map]
pub static MAGLEV: Array<MaglevRow, { capacity::MAGLEV as usize }> = Array::new();

#[btf_map]
pub static AFFINITY: LruHashMap<AffinityKey, Affinity, { capacity::AFFINITY as usize }> =
    LruHashMap::new();

/// Value: the backend's flags.
#[btf_map]
pub static AFFINITY_BACKENDS: HashMap<
    AffinityBackendKey,
    u32,
    { capacity::AFFINITY_BACKENDS as usize },
> = HashMap::new();

/// Translated flows of both kinds, services and masquerading (see netdp_common::conntrack).
#[btf_map]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry, { capacity::CONNTRACK as usize }> =
    LruHashMap::new();

/// TCP flows whose SYN has not been answered yet; the SYN-ACK moves them to CONNTRACK.
#[btf_map]
pub static HALF_OPEN: LruHashMap<CtKey, CtEntry, { capacity::HALF_OPEN as usize }> =
    LruHashMap::new();

/// Datagrams whose first fragment was translated: their ports, for the later fragments.
#[btf_map]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentPorts, { capacity::FRAGMENTS as usize }> =
    LruHashMap::new();

#[btf_map]
pub static LB_CONFIG: Array<LbConfig, { capacity::LB_CONFIG as usize }> = Array::new();

#[btf_map]
pub static SOCK_NAT: LruHashMap<SockNatKey, SockNat, { capacity::SOCK_NAT as usize }> =
    LruHashMap::new();

/// Drop events for `netdp monitor` (see netdp_common::monitor).
#[btf_map]
pub static EVENTS: RingBuf<DropEvent, { capacity::EVENTS as usize }> = RingBuf::new();

/// How many `netdp monitor` listeners want drop events.
#[btf_map]
pub static MONITOR: Array<u32, { capacity::MONITOR as usize }> = Array::new();

/// Networks outside the cluster that may send straight to pods (value unused).
#[btf_map]
pub static ROUTED_NETWORKS: LpmTrie<Ipv4, u32, { capacity::ROUTED_NETWORKS as usize }> =
    LpmTrie::new();

/// Source networks the XDP prefilter drops (value unused).
#[btf_map]
pub static DENIED_SOURCES: LpmTrie<Ipv4, u32, { capacity::DENIED_SOURCES as usize }> =
    LpmTrie::new();

/// Peers behind a NAT: where their keepalives arrive from (written by `decap`).
#[btf_map]
pub static NAT_PEERS: LruHashMap<PeerKey, NatPeer, { capacity::NAT_PEERS as usize }> =
    LruHashMap::new();

/// The other clusters' pod Networks (value: the cluster's id), read only on a node of a
/// mesh (`node::flags::MESH`).
#[btf_map]
pub static CLUSTER_NETWORKS: LpmTrie<Ipv4, u32, { capacity::CLUSTER_NETWORKS as usize }> =
    LpmTrie::new();

/// Conntrack lifetimes per state; the agent sets them at load time.
#[unsafe(no_mangle)]
pub static CT_TIMEOUTS: Global<[u32; 4]> = Global::new(timeout::DEFAULTS);

/// Entries per Maglev table; the agent sets it at load time.
#[unsafe(no_mangle)]
pub static MAGLEV_TABLE_SIZE: Global<u32> = Global::new(DEFAULT_MAGLEV_TABLE_SIZE);

/// Set by the agent at load time (`netdp_common::global_names::NODE`); all zero means no
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
    gateway_port: 0,
});

#[inline(always)]
pub fn node() -> NodeConfig {
    NODE.load()
}
