//! Per-program counters: what each program did with the packets it saw, and why.
//!
//! The COUNTERS map is a per-CPU array indexed by `program * REASONS + reason`; the agent
//! and the CLI sum the per-CPU slots.

/// Which program bumped a counter. Values are stable: they index the map (up to
/// [`PROGRAMS`] programs).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    FromPod = 0,
    FromNetdev = 1,
    FromHost = 2,
}

impl Program {
    pub const ALL: [Program; 3] = [Program::FromPod, Program::FromNetdev, Program::FromHost];

    pub const fn name(self) -> &'static str {
        match self {
            Program::FromPod => "from_pod",
            Program::FromNetdev => "from_netdev",
            Program::FromHost => "from_host",
        }
    }
}

/// What happened to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Forwarded,
    Passed,
    Dropped,
}

impl Verdict {
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Forwarded => "forwarded",
            Verdict::Passed => "passed",
            Verdict::Dropped => "dropped",
        }
    }
}

/// Why. Values are stable: they index the map. Ranges: 0-39 forwarded, 40-79 passed to
/// the kernel, 80-127 dropped. Within each range, the first half is pod routing and
/// backends, the second half services.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Redirected straight into a pod on this node.
    LocalDelivery = 0,
    /// Sent to a peer node by direct routing, next-hop MAC known.
    Direct = 1,
    /// Sent to a peer node by direct routing, neighbour resolved by the kernel.
    DirectNeigh = 2,
    /// A reverse-translated service reply sent to a client outside the cluster (the kernel
    /// resolves the next hop).
    ServiceReply = 20,
    /// The service has no ready endpoints: an ICMP port unreachable went back to the client.
    ServiceReject = 21,
    /// Not IPv4 (ARP, IPv6, ...): the kernel handles it.
    NonIpv4 = 40,
    /// Destination is not a pod we know: the kernel routes it.
    UnknownDestination = 41,
    /// TTL would expire: the kernel forwards it so it can send ICMP time exceeded.
    TtlExceeded = 42,
    /// The peer is known but the backend cannot reach it (e.g. host-gw across routers).
    PeerUnreachable = 43,
    /// IPv4 with options or fragments: the kernel handles it.
    Ipv4Options = 44,
    /// Translated, but the new destination is no pod we can reach: the kernel decides.
    ServiceToHost = 60,
    /// Frame shorter than its headers claim.
    Malformed = 80,
    /// A redirect helper failed.
    RedirectFailed = 81,
    /// externalTrafficPolicy Local and no endpoint on this node.
    ServiceNoLocalBackend = 104,
    /// Source NAT found no free port towards the chosen backend.
    ServiceSnatExhausted = 105,
    /// A conntrack entry could not be written.
    ServiceConntrackFull = 106,
    /// A frontend points at a backend slot that is not there (maps being rewritten).
    ServiceBadBackend = 107,
    /// The ICMP error for a rejected connection could not be built.
    ServiceRejectFailed = 108,
}

impl Reason {
    pub const ALL: [Reason; 18] = [
        Reason::LocalDelivery,
        Reason::Direct,
        Reason::DirectNeigh,
        Reason::ServiceReply,
        Reason::ServiceReject,
        Reason::NonIpv4,
        Reason::UnknownDestination,
        Reason::TtlExceeded,
        Reason::PeerUnreachable,
        Reason::Ipv4Options,
        Reason::ServiceToHost,
        Reason::Malformed,
        Reason::RedirectFailed,
        Reason::ServiceNoLocalBackend,
        Reason::ServiceSnatExhausted,
        Reason::ServiceConntrackFull,
        Reason::ServiceBadBackend,
        Reason::ServiceRejectFailed,
    ];

    pub const fn verdict(self) -> Verdict {
        match self as u32 {
            0..=39 => Verdict::Forwarded,
            40..=79 => Verdict::Passed,
            _ => Verdict::Dropped,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Reason::LocalDelivery => "local_delivery",
            Reason::Direct => "direct",
            Reason::DirectNeigh => "direct_neigh",
            Reason::NonIpv4 => "non_ipv4",
            Reason::UnknownDestination => "unknown_destination",
            Reason::TtlExceeded => "ttl_exceeded",
            Reason::PeerUnreachable => "peer_unreachable",
            Reason::Ipv4Options => "ipv4_options",
            Reason::Malformed => "malformed",
            Reason::RedirectFailed => "redirect_failed",
            Reason::ServiceReply => "service_reply",
            Reason::ServiceReject => "service_reject",
            Reason::ServiceToHost => "service_to_host",
            Reason::ServiceNoLocalBackend => "service_no_local_backend",
            Reason::ServiceSnatExhausted => "service_snat_exhausted",
            Reason::ServiceConntrackFull => "service_conntrack_full",
            Reason::ServiceBadBackend => "service_bad_backend",
            Reason::ServiceRejectFailed => "service_reject_failed",
        }
    }
}

/// Slots reserved per program.
pub const REASONS: u32 = 128;
/// Programs the map has room for.
pub const PROGRAMS: u32 = 8;
/// Size of the COUNTERS map.
pub const SLOTS: u32 = REASONS * PROGRAMS;

#[inline(always)]
pub const fn index(program: Program, reason: Reason) -> u32 {
    program as u32 * REASONS + reason as u32
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}
