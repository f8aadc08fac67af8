//! The map catalogue: every map the programs share with the agent, declared once. The
//! programs size their maps from [`capacity`]; the agent creates, pins, resizes and checks
//! pinned maps from [`CATALOGUE`]; `netdp map list` prints it. Adding a map is an entry
//! here plus its code on both sides.
use core::mem::size_of;

use crate::{Ipv4, conntrack, counters, endpoint, fragment, keepalive, lb, peer, route};

/// Ring buffers have no key or value (their records are `monitor::DropEvent`s).
struct NoKey;

/// Names of the pinned maps. The agent pins them under `<bpf-root>/<node>/maps/<name>`.
pub mod names {
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
    pub const HALF_OPEN: &str = "HALF_OPEN";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const LB_CONFIG: &str = "LB_CONFIG";
    pub const SOCK_NAT: &str = "SOCK_NAT";
    pub const EVENTS: &str = "EVENTS";
    pub const MONITOR: &str = "MONITOR";
    pub const ROUTED_NETWORKS: &str = "ROUTED_NETWORKS";
    pub const DENIED_SOURCES: &str = "DENIED_SOURCES";
    pub const CLUSTER_NETWORKS: &str = "CLUSTER_NETWORKS";
    pub const NAT_PEERS: &str = "NAT_PEERS";
}

/// Default capacities, as the programs declare them; the agent can override the
/// resizable ones with a flag at load time.
pub mod capacity {
    use crate::{counters, lb};

    /// Pods on this node.
    pub const ENDPOINTS: u32 = 16_384;
    /// Remote pod subnets (one per peer node).
    pub const ROUTES: u32 = 16_384;
    /// Peer nodes whose tunnels are accepted.
    pub const PEERS: u32 = 16_384;
    /// Counter slots: every (program, reason or event).
    pub const COUNTERS: u32 = counters::SLOTS;
    /// Service frontends (address, port, protocol).
    pub const FRONTENDS: u32 = 65_536;
    /// Backend slots of all services together.
    pub const BACKENDS: u32 = 1 << 20;
    /// Maglev tables (services asking for Maglev; each change needs a spare while it swaps).
    pub const MAGLEV_TABLES: u32 = 256;
    /// MAGLEV rows: every table at the default table size.
    pub const MAGLEV: u32 = MAGLEV_TABLES * lb::maglev_rows(lb::MAGLEV_TABLE_SIZE);
    /// Session affinity entries (clients of services with sessionAffinity ClientIP).
    pub const AFFINITY: u32 = 65_536;
    /// Backends of services with session affinity.
    pub const AFFINITY_BACKENDS: u32 = 65_536;
    /// Conntrack entries: two per translated flow, load balanced or masqueraded.
    pub const CONNTRACK: u32 = 262_144;
    /// Conntrack entries of TCP flows until their SYN is answered (two per flow): a SYN
    /// flood fills this table, not CONNTRACK.
    pub const HALF_OPEN: u32 = 65_536;
    /// Fragmented datagrams of translated flows in flight (a short-lived LRU).
    pub const FRAGMENTS: u32 = 8_192;
    /// The load balancer's node-wide settings: one entry.
    pub const LB_CONFIG: u32 = 1;
    /// Node sockets sent to a backend by the socket programs.
    pub const SOCK_NAT: u32 = 65_536;
    /// Bytes of the drop-event ring buffer (a power of two of pages): 8,192 events.
    pub const EVENTS: u32 = 256 * 1024;
    /// The monitor switch: one entry.
    pub const MONITOR: u32 = 1;
    /// Networks outside the cluster allowed to send straight to pods (`--routed-networks`).
    pub const ROUTED_NETWORKS: u32 = 256;
    /// Source networks the XDP prefilter drops (`--deny-sources`).
    pub const DENIED_SOURCES: u32 = 16_384;
    /// The other clusters of a mesh (one pod Network each; Cilium's ids go to 255).
    pub const CLUSTER_NETWORKS: u32 = 255;
    /// Peers behind a NAT, learned from their keepalives (at most every peer).
    pub const NAT_PEERS: u32 = PEERS;
}

/// The kernel's map types netdp uses (`enum bpf_map_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    PerCpuArray = 6,
    LruHash = 9,
    LpmTrie = 11,
    RingBuf = 27,
}

impl MapKind {
    pub const fn name(self) -> &'static str {
        match self {
            MapKind::Hash => "hash",
            MapKind::Array => "array",
            MapKind::PerCpuArray => "percpu_array",
            MapKind::LruHash => "lru_hash",
            MapKind::LpmTrie => "lpm_trie",
            MapKind::RingBuf => "ringbuf",
        }
    }
}

/// One map as both sides know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: usize,
    pub value_size: usize,
    /// Entries the programs declare (the default).
    pub capacity: u32,
    /// Whether the agent sizes it at load time; a fixed map's size is part of its layout.
    pub resizable: bool,
    /// What it holds, and who writes it.
    pub doc: &'static str,
}

const fn spec<K, V>(
    name: &'static str,
    kind: MapKind,
    capacity: u32,
    resizable: bool,
    doc: &'static str,
) -> MapSpec {
    MapSpec {
        name,
        kind,
        key_size: size_of::<K>(),
        value_size: size_of::<V>(),
        capacity,
        resizable,
        doc,
    }
}

/// LPM trie keys: a 32-bit prefix length, then the address.
struct LpmKey {
    _prefix_len: u32,
    _addr: Ipv4,
}

/// Every map, in the order `netdp map list` prints them.
pub const CATALOGUE: &[MapSpec] = &[
    spec::<endpoint::EndpointKey, endpoint::Endpoint>(
        names::ENDPOINTS,
        MapKind::Hash,
        capacity::ENDPOINTS,
        true,
        "pod address -> its veth and MACs (written by the CNI plugin)",
    ),
    spec::<LpmKey, route::Route>(
        names::ROUTES,
        MapKind::LpmTrie,
        capacity::ROUTES,
        true,
        "remote pod subnet -> peer, mode and every outer header field (agent, from leases)",
    ),
    spec::<u32, counters::CounterValue>(
        names::COUNTERS,
        MapKind::PerCpuArray,
        capacity::COUNTERS,
        false,
        "packets and bytes per program and reason, and events (programs)",
    ),
    spec::<peer::PeerKey, peer::Peer>(
        names::PEERS,
        MapKind::Hash,
        capacity::PEERS,
        true,
        "underlay address of a peer -> its pod subnet: tunnels are accepted from these (agent)",
    ),
    spec::<lb::FrontendKey, lb::Frontend>(
        names::FRONTENDS,
        MapKind::Hash,
        capacity::FRONTENDS,
        true,
        "service address, port, protocol -> its backend range and algorithm (agent)",
    ),
    spec::<u32, lb::Backend>(
        names::BACKENDS,
        MapKind::Array,
        capacity::BACKENDS,
        true,
        "backend slots, one contiguous range per service (agent)",
    ),
    spec::<u32, lb::MaglevRow>(
        names::MAGLEV,
        MapKind::Array,
        capacity::MAGLEV,
        true,
        "Maglev lookup tables, rows of backend indexes (agent)",
    ),
    spec::<lb::AffinityKey, lb::Affinity>(
        names::AFFINITY,
        MapKind::LruHash,
        capacity::AFFINITY,
        true,
        "client and service -> the backend it sticks to (programs, sessionAffinity ClientIP)",
    ),
    spec::<lb::AffinityBackendKey, u32>(
        names::AFFINITY_BACKENDS,
        MapKind::Hash,
        capacity::AFFINITY_BACKENDS,
        true,
        "service and backend -> flags: whether an affinity entry's backend is still in (agent)",
    ),
    spec::<conntrack::CtKey, conntrack::CtEntry>(
        names::CONNTRACK,
        MapKind::LruHash,
        capacity::CONNTRACK,
        true,
        "translated flows, both directions, services and masquerading (programs; agent GC)",
    ),
    spec::<conntrack::CtKey, conntrack::CtEntry>(
        names::HALF_OPEN,
        MapKind::LruHash,
        capacity::HALF_OPEN,
        true,
        "TCP flows until their SYN is answered, then moved to CONNTRACK (programs; agent GC)",
    ),
    spec::<fragment::FragmentKey, fragment::FragmentPorts>(
        names::FRAGMENTS,
        MapKind::LruHash,
        capacity::FRAGMENTS,
        false,
        "fragmented datagram of a translated flow -> its first fragment's ports (programs)",
    ),
    spec::<u32, lb::LbConfig>(
        names::LB_CONFIG,
        MapKind::Array,
        capacity::LB_CONFIG,
        false,
        "the load balancer's node-wide settings (agent)",
    ),
    spec::<lb::SockNatKey, lb::SockNat>(
        names::SOCK_NAT,
        MapKind::LruHash,
        capacity::SOCK_NAT,
        true,
        "node socket -> the service it connected to, for replies (socket programs)",
    ),
    spec::<NoKey, NoKey>(
        names::EVENTS,
        MapKind::RingBuf,
        capacity::EVENTS,
        false,
        "drop events for netdp monitor, while MONITOR counts a listener (programs)",
    ),
    spec::<u32, u32>(
        names::MONITOR,
        MapKind::Array,
        capacity::MONITOR,
        false,
        "how many netdp monitor listeners want drop events (netdp monitor)",
    ),
    spec::<LpmKey, u32>(
        names::ROUTED_NETWORKS,
        MapKind::LpmTrie,
        capacity::ROUTED_NETWORKS,
        false,
        "networks outside the cluster that may send straight to pods (agent, --routed-networks)",
    ),
    spec::<LpmKey, u32>(
        names::DENIED_SOURCES,
        MapKind::LpmTrie,
        capacity::DENIED_SOURCES,
        false,
        "source networks XDP drops before the stack sees them (agent, --deny-sources)",
    ),
    spec::<LpmKey, u32>(
        names::CLUSTER_NETWORKS,
        MapKind::LpmTrie,
        capacity::CLUSTER_NETWORKS,
        false,
        "the other clusters' pod Networks -> cluster id, counted as the cluster's own (agent, Clusters)",
    ),
    spec::<peer::PeerKey, keepalive::NatPeer>(
        names::NAT_PEERS,
        MapKind::LruHash,
        capacity::NAT_PEERS,
        false,
        "peers behind a NAT: the port their keepalives arrive from (from_netdev; the agent sends there)",
    ),
];

/// The catalogue entry of map `name`.
pub fn spec_of(name: &str) -> Option<&'static MapSpec> {
    CATALOGUE.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, m) in CATALOGUE.iter().enumerate() {
            assert!(
                CATALOGUE[..i].iter().all(|o| o.name != m.name),
                "{}",
                m.name
            );
            // Ring buffers alone have neither key nor value.
            let sized = m.kind == MapKind::RingBuf || (m.key_size > 0 && m.value_size > 0);
            assert!(m.capacity > 0 && sized, "{m:?}");
        }
        assert_eq!(spec_of(names::ROUTES).map(|m| m.key_size), Some(8));
    }
}
