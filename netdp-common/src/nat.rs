//! Masquerade state: a conntrack entry per pod flow (original direction, from the pod)
//! holding its translation, and a NAT entry per translated flow (reply direction, from
//! outside) leading back to the pod. Both maps are LRU: when full, the least recently
//! used flows are forgotten rather than new ones refused.
use crate::Ipv4;

/// A pod flow to the outside as the pod sends it. Ports are in network order; for ICMP
/// echo `sport` is the identifier and `dport` is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: Ipv4,
    pub daddr: Ipv4,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// The translation of a pod flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// Source address and port (network order) the flow leaves with.
    pub nat_addr: Ipv4,
    pub nat_port: u16,
    /// Bit set of [`flags`].
    pub flags: u16,
    /// Last packet from the pod (bpf_ktime_get_coarse_ns).
    pub last_seen: u64,
}

/// A reply as it arrives from outside: from `remote_addr:remote_port` to
/// `nat_addr:nat_port` (ports network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub remote_addr: Ipv4,
    pub nat_addr: Ipv4,
    pub remote_port: u16,
    pub nat_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Where replies go back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub pod_addr: Ipv4,
    /// Network order.
    pub pod_port: u16,
    /// Bit set of [`flags`].
    pub flags: u16,
    /// Last reply from outside; creation time until the first one.
    pub last_seen: u64,
}

pub mod flags {
    /// A FIN or RST was seen in this direction.
    pub const CLOSING: u16 = 1;
    /// At least one reply came back (NAT entries).
    pub const REPLIED: u16 = 2;
}

/// How long an idle translation keeps its port once another flow needs it, in ns.
/// Idle flows keep their port as long as nobody else wants it.
pub mod timeout {
    const S: u64 = 1_000_000_000;
    pub const TCP_ESTABLISHED: u64 = 7200 * S;
    pub const TCP_CLOSING: u64 = 30 * S;
    /// Any flow that never saw a reply.
    pub const UNREPLIED: u64 = 30 * S;
    pub const UDP: u64 = 120 * S;
    pub const ICMP: u64 = 30 * S;
}

/// Candidate ports tried for a new flow before giving up.
pub const PORT_PROBES: u32 = 32;

/// Default masquerade source port range: above Linux's default ephemeral range
/// (32768-60999), so the node's own connections never collide with translations.
pub const PORT_MIN: u16 = 61000;
pub const PORT_MAX: u16 = 65535;

const _: () = assert!(core::mem::size_of::<CtKey>() == 16);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 16);
const _: () = assert!(core::mem::size_of::<NatKey>() == 16);
const _: () = assert!(core::mem::size_of::<NatEntry>() == 16);
