//! Service load balancing: frontends (a service address, port and protocol) to ranges of
//! backends, Maglev lookup tables, session affinity.
//!
//! A service's ready endpoints sit in one contiguous range of the BACKENDS array, local ones
//! first, shared by all of the service's frontends. Changing a service writes a new range
//! (and new Maglev tables) and then flips each frontend to it, so new flows see either the
//! old or the new backend set, never a mix.
use crate::Ipv4;

/// What packets are matched against: destination address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub addr: Ipv4,
    /// Host byte order (so map dumps read naturally).
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub pad: u8,
}

/// Frontend flags.
pub mod frontend_flags {
    /// New flows pick their backend from a Maglev table (else uniformly at random).
    pub const MAGLEV: u16 = 1;
    /// sessionAffinity ClientIP: a client keeps its backend for `affinity_timeout` seconds.
    pub const AFFINITY: u16 = 2;
    /// Reachable from outside the cluster (node port, external or load-balancer IP): a
    /// remote backend is reached with the client source-NATed to this node.
    pub const EXTERNAL: u16 = 4;
    /// A Local traffic policy: local backends only. On an EXTERNAL frontend
    /// (externalTrafficPolicy) for traffic arriving from outside, which keeps its source
    /// address; on a cluster IP (internalTrafficPolicy) for all of its traffic.
    pub const LOCAL_ONLY: u16 = 8;
    /// Direct server return (on an EXTERNAL frontend): a remote backend behind a tunnel gets
    /// the client's packets with the client's address, and its node answers the client
    /// directly, instead of source NAT to this node (`netdp.io/forwarding-mode: dsr`).
    pub const DSR: u16 = 16;
}

/// A frontend: where its backends are and how to pick one. Precomputed by the agent so a
/// new flow costs one lookup here, at most one Maglev row, and one backend slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    /// The agent's number for the service (affinity and conntrack entries carry it).
    pub service_id: u32,
    /// BACKENDS index of the service's first backend.
    pub backends: u32,
    /// Ready backends; 0 means the service rejects connections.
    pub count: u16,
    /// How many of them (the first ones) run on this node.
    pub local_count: u16,
    /// Backend port, host byte order.
    pub target_port: u16,
    /// Bit set of [`frontend_flags`].
    pub flags: u16,
    /// First MAGLEV row of the table over all backends (with [`frontend_flags::MAGLEV`]).
    pub maglev: u32,
    /// First MAGLEV row of the table over the local backends (with MAGLEV and LOCAL_ONLY).
    pub maglev_local: u32,
    /// sessionAffinity timeout in seconds (with [`frontend_flags::AFFINITY`]).
    pub affinity_timeout: u32,
}

/// Backend flags.
pub mod backend_flags {
    /// The backend is a pod on this node.
    pub const LOCAL: u32 = 1;
}

/// One backend slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// The pod's address.
    pub addr: Ipv4,
    /// Bit set of [`backend_flags`].
    pub flags: u32,
}

/// Maglev table entries per MAGLEV array element. Entries are backend offsets within the
/// frontend's range; four of them fill an 8-byte array element without padding.
pub const MAGLEV_LANES: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaglevRow {
    pub slots: [u16; MAGLEV_LANES as usize],
}

/// The default Maglev table size: a prime, Cilium's default.
pub const MAGLEV_TABLE_SIZE: u32 = 16381;

/// MAGLEV rows of one table of `size` entries.
pub const fn maglev_rows(size: u32) -> u32 {
    size.div_ceil(MAGLEV_LANES)
}

/// Which backends an affinity entry chose among.
pub mod scope {
    /// All backends.
    pub const ALL: u8 = 0;
    /// Local backends only (externalTrafficPolicy Local, traffic from outside).
    pub const LOCAL: u8 = 1;
}

/// A client of one service port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub service_id: u32,
    pub client: Ipv4,
    /// The frontend's target port: one affinity per service port.
    pub target_port: u16,
    pub proto: u8,
    /// One of [`scope`].
    pub scope: u8,
}

/// The backend a client was last sent to, and when (seconds of CLOCK_MONOTONIC).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    pub backend: Ipv4,
    pub last_used: u32,
}

/// Membership of a backend in a service with session affinity: an affinity entry is only
/// honoured while its backend is still one of the service's (removed endpoints stop getting
/// new flows at once).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityBackendKey {
    pub service_id: u32,
    pub backend: Ipv4,
}

/// A socket of the node and the backend it was sent to by the socket programs (cookie,
/// backend address and port): replies it receives are shown as coming from the service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockNatKey {
    pub cookie: u64,
    pub addr: Ipv4,
    /// Host byte order.
    pub port: u16,
    pub pad: u16,
}

/// The service address and port a socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockNat {
    pub addr: Ipv4,
    /// Host byte order.
    pub port: u16,
    pub pad: u16,
}

/// Per-node settings of the service dataplane (LB_CONFIG, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// Network namespace cookie of the node; the socket programs act only on sockets in it.
    pub netns_cookie: u64,
    /// Source address for flows that must return through this node (node port traffic to
    /// remote backends, hairpin): the node's address in its own pod subnet, which every
    /// backend mode routes back here.
    pub snat_addr: Ipv4,
    /// Source ports to pick from when the client's own port is taken (host byte order).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// The Maglev table size the tables in MAGLEV were computed for (the agent's record, so
    /// a restart with another size knows to recompute them).
    pub maglev_table_size: u32,
    pub pad: u32,
}

/// Hash of a flow's tuple (addresses as in the packet, ports in host byte order) that
/// picks its Maglev entry: Bob Jenkins' final mix of three words. Shared so tools can tell
/// which entry a flow uses.
#[inline(always)]
pub const fn flow_hash(saddr: Ipv4, daddr: Ipv4, sport: u16, dport: u16, proto: u8) -> u32 {
    const INIT: u32 = 0xdead_beef + 12;
    let mut a = u32::from_ne_bytes(saddr).wrapping_add(INIT);
    let mut b = u32::from_ne_bytes(daddr).wrapping_add(INIT);
    let mut c = ((sport as u32) << 16 | dport as u32)
        .wrapping_add(INIT)
        .wrapping_add(proto as u32);
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

const _: () = assert!(core::mem::size_of::<FrontendKey>() == 8);
const _: () = assert!(core::mem::size_of::<Frontend>() == 28);
const _: () = assert!(core::mem::size_of::<Backend>() == 8);
const _: () = assert!(core::mem::size_of::<MaglevRow>() == 8);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 12);
const _: () = assert!(core::mem::size_of::<Affinity>() == 8);
const _: () = assert!(core::mem::size_of::<AffinityBackendKey>() == 8);
const _: () = assert!(core::mem::size_of::<LbConfig>() == 24);
const _: () = assert!(core::mem::size_of::<SockNatKey>() == 16);
const _: () = assert!(core::mem::size_of::<SockNat>() == 8);
