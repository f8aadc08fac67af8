//! Per-program counters: what each program did with the packets it saw, and why.
//!
//! The COUNTERS map is a per-CPU array indexed by `program * REASONS + reason`, followed by
//! the per-program [`Event`] slots; the agent and the CLI sum the per-CPU slots.

/// Which program bumped a counter. Values are stable: they index the map (up to
/// [`PROGRAMS`] programs).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    FromPod = 0,
    FromNetdev = 1,
    FromHost = 2,
    /// XDP on the underlay interface, before `from_netdev`: the prefilter, and service
    /// traffic from outside it finishes itself.
    Xdp = 3,
}

impl Program {
    pub const ALL: [Program; 4] = [
        Program::FromPod,
        Program::FromNetdev,
        Program::FromHost,
        Program::Xdp,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Program::FromPod => "from_pod",
            Program::FromNetdev => "from_netdev",
            Program::FromHost => "from_host",
            Program::Xdp => "xdp",
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
    /// Encapsulated in VXLAN and sent to the peer node.
    EncapVxlan = 3,
    /// Encapsulated in IPv4 (IPIP) and sent to the peer node.
    EncapIpip = 4,
    /// Encapsulated in UDP (Flannel's udp format) and sent to the peer node.
    EncapUdp = 5,
    /// A VXLAN packet from a peer, decapsulated and delivered to a local pod.
    DecapVxlan = 6,
    /// An IPIP packet from a peer, decapsulated and delivered to a local pod.
    DecapIpip = 7,
    /// A udp-backend packet from a peer, decapsulated and delivered to a local pod.
    DecapUdp = 8,
    /// Pod traffic to outside the cluster, sent out of the underlay unchanged.
    Egress = 9,
    /// Pod traffic to outside the cluster, sent out with the node's address (--ip-masq).
    Masquerade = 10,
    /// A reply to masqueraded traffic, translated back and delivered to the pod.
    Unmasquerade = 11,
    /// Too big for the path with DF set: answered with ICMP "fragmentation needed".
    FragNeeded = 12,
    /// A peer's NAT keepalive, taken in: its NAT's port learned (NAT_PEERS), the packet
    /// consumed.
    NatKeepalive = 13,
    /// Encapsulated to another cluster's gateway (gateway mode).
    EncapGateway = 14,
    /// Decapsulated from another cluster's gateway (gateway mode).
    DecapGateway = 15,
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
    /// Addressed to the node itself (and not a tunnel or a masquerade reply).
    ToHost = 45,
    /// A fragment of a tunnel packet: only the kernel can reassemble it.
    DecapFragment = 46,
    /// XDP left the packet to the tc programs: not service traffic it finishes itself (a
    /// tunnel packet, a local backend, a destination it has no next-hop MAC for).
    ToTc = 47,
    /// Translated, but the new destination is no pod we can reach: the kernel decides.
    ServiceToHost = 60,
    /// Frame shorter than its headers claim.
    Malformed = 80,
    /// A redirect helper failed.
    RedirectFailed = 81,
    /// A tunnel packet whose outer source is not a known peer node.
    DecapUnknownPeer = 82,
    /// A tunnel packet with the wrong VNI, flags or inner protocol.
    DecapBadHeader = 83,
    /// A VXLAN packet whose inner frame is not addressed to this node's VTEP MAC.
    DecapWrongVtep = 84,
    /// A tunnel packet for an address that is no pod on this node.
    DecapNoEndpoint = 85,
    /// Too big for the path and fragmenting allowed: netdp does not fragment.
    TooBig = 86,
    /// Pushing or popping headers failed (bpf_skb_adjust_room and friends).
    AdjustFailed = 87,
    /// Masquerading cannot translate this protocol or fragment.
    NatUnsupported = 88,
    /// Every candidate masquerade port for this destination is in use.
    NatNoPort = 89,
    /// A pod sent with a source address or MAC that is not its own (another pod's, the
    /// node's, an outside address): source verification.
    SpoofedSource = 90,
    /// A plain packet from the underlay to a pod whose source is neither a pod of a peer
    /// routed directly to this node (from that peer's MAC) nor in a `--routed-networks`
    /// network.
    UnderlayForeignSource = 91,
    /// A tunnel packet whose inner source is outside the sending peer's subnet.
    DecapSpoofedSource = 92,
    /// A TCP packet other than a SYN for a flow masquerading does not track: it cannot
    /// start one (Linux's conntrack calls it invalid).
    NatNotSyn = 93,
    /// A RST or FIN of a tracked TCP flow with a sequence number outside the flow's
    /// window (a blind reset or close from someone who knows only the tuple): dropped, the
    /// flow untouched (nf_conntrack calls it invalid, and kube-proxy drops those).
    OutOfWindow = 94,
    /// The source is in the prefilter's deny list (`--deny-sources`), dropped by XDP.
    DeniedSource = 95,
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
    /// A TCP packet other than a SYN to a frontend, for no tracked flow: it cannot start
    /// one (kube-proxy drops these as conntrack-invalid).
    ServiceNotSyn = 109,
    /// A DSR option naming a backend that is no pod on this node.
    ServiceDsrNoEndpoint = 110,
    /// A DSR flow's reply tuple is another live flow's (the same client port to two
    /// services sharing a backend): source NAT, which would resolve it, is what DSR does
    /// without.
    ServiceDsrTupleTaken = 111,
}

impl Reason {
    pub const ALL: [Reason; 51] = [
        Reason::LocalDelivery,
        Reason::Direct,
        Reason::DirectNeigh,
        Reason::EncapVxlan,
        Reason::EncapIpip,
        Reason::EncapUdp,
        Reason::DecapVxlan,
        Reason::DecapIpip,
        Reason::DecapUdp,
        Reason::Egress,
        Reason::Masquerade,
        Reason::Unmasquerade,
        Reason::FragNeeded,
        Reason::NatKeepalive,
        Reason::EncapGateway,
        Reason::DecapGateway,
        Reason::ServiceReply,
        Reason::ServiceReject,
        Reason::NonIpv4,
        Reason::UnknownDestination,
        Reason::TtlExceeded,
        Reason::PeerUnreachable,
        Reason::Ipv4Options,
        Reason::ToHost,
        Reason::DecapFragment,
        Reason::ToTc,
        Reason::ServiceToHost,
        Reason::Malformed,
        Reason::RedirectFailed,
        Reason::DecapUnknownPeer,
        Reason::DecapBadHeader,
        Reason::DecapWrongVtep,
        Reason::DecapNoEndpoint,
        Reason::TooBig,
        Reason::AdjustFailed,
        Reason::NatUnsupported,
        Reason::NatNoPort,
        Reason::SpoofedSource,
        Reason::UnderlayForeignSource,
        Reason::DecapSpoofedSource,
        Reason::NatNotSyn,
        Reason::OutOfWindow,
        Reason::DeniedSource,
        Reason::ServiceNoLocalBackend,
        Reason::ServiceSnatExhausted,
        Reason::ServiceConntrackFull,
        Reason::ServiceBadBackend,
        Reason::ServiceRejectFailed,
        Reason::ServiceNotSyn,
        Reason::ServiceDsrNoEndpoint,
        Reason::ServiceDsrTupleTaken,
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
            Reason::EncapVxlan => "encap_vxlan",
            Reason::EncapIpip => "encap_ipip",
            Reason::EncapUdp => "encap_udp",
            Reason::DecapVxlan => "decap_vxlan",
            Reason::DecapIpip => "decap_ipip",
            Reason::DecapUdp => "decap_udp",
            Reason::Egress => "egress",
            Reason::Masquerade => "masquerade",
            Reason::Unmasquerade => "unmasquerade",
            Reason::FragNeeded => "frag_needed",
            Reason::NatKeepalive => "nat_keepalive",
            Reason::EncapGateway => "encap_gateway",
            Reason::DecapGateway => "decap_gateway",
            Reason::ServiceReply => "service_reply",
            Reason::ServiceReject => "service_reject",
            Reason::NonIpv4 => "non_ipv4",
            Reason::UnknownDestination => "unknown_destination",
            Reason::TtlExceeded => "ttl_exceeded",
            Reason::PeerUnreachable => "peer_unreachable",
            Reason::Ipv4Options => "ipv4_options",
            Reason::ToHost => "to_host",
            Reason::DecapFragment => "decap_fragment",
            Reason::ToTc => "to_tc",
            Reason::ServiceToHost => "service_to_host",
            Reason::Malformed => "malformed",
            Reason::RedirectFailed => "redirect_failed",
            Reason::DecapUnknownPeer => "decap_unknown_peer",
            Reason::DecapBadHeader => "decap_bad_header",
            Reason::DecapWrongVtep => "decap_wrong_vtep",
            Reason::DecapNoEndpoint => "decap_no_endpoint",
            Reason::TooBig => "too_big",
            Reason::AdjustFailed => "adjust_failed",
            Reason::NatUnsupported => "nat_unsupported",
            Reason::NatNoPort => "nat_no_port",
            Reason::SpoofedSource => "spoofed_source",
            Reason::UnderlayForeignSource => "underlay_foreign_source",
            Reason::DecapSpoofedSource => "decap_spoofed_source",
            Reason::NatNotSyn => "nat_not_syn",
            Reason::OutOfWindow => "out_of_window",
            Reason::DeniedSource => "denied_source",
            Reason::ServiceNoLocalBackend => "service_no_local_backend",
            Reason::ServiceSnatExhausted => "service_snat_exhausted",
            Reason::ServiceConntrackFull => "service_conntrack_full",
            Reason::ServiceBadBackend => "service_bad_backend",
            Reason::ServiceRejectFailed => "service_reject_failed",
            Reason::ServiceNotSyn => "service_not_syn",
            Reason::ServiceDsrNoEndpoint => "service_dsr_no_endpoint",
            Reason::ServiceDsrTupleTaken => "service_dsr_tuple_taken",
        }
    }
}

/// What a program set up besides deciding the packet's fate, counted once per occurrence
/// (the packet that caused it is counted under its own [`Reason`] as well). A packet has
/// one reason, so these are where translations show: a service flow sent to a remote
/// backend is counted as encapsulated, and here as load balanced. Values are stable.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A new flow to a service got a backend and its two conntrack entries.
    ServiceFlow = 0,
    /// ... and was source-NATed to the node (node port to a remote backend, hairpin).
    ServiceSnat = 1,
    /// A new pod flow to the outside got a masquerade port and its two conntrack entries.
    MasqueradeFlow = 2,
    /// A translation's port was taken over from a flow that had expired or lost its other
    /// direction.
    PortReclaimed = 3,
    /// A new flow to a node port went to its remote backend with direct server return
    /// (this node will not see the replies).
    ServiceDsr = 4,
    /// A flow another node sent here with direct server return opened: its packets are
    /// translated to the local backend, and its replies leave from here to the client.
    DsrFlow = 5,
}

impl Event {
    pub const ALL: [Event; 6] = [
        Event::ServiceFlow,
        Event::ServiceSnat,
        Event::MasqueradeFlow,
        Event::PortReclaimed,
        Event::ServiceDsr,
        Event::DsrFlow,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Event::ServiceFlow => "service_flow",
            Event::ServiceSnat => "service_snat",
            Event::MasqueradeFlow => "masquerade_flow",
            Event::PortReclaimed => "port_reclaimed",
            Event::ServiceDsr => "service_dsr",
            Event::DsrFlow => "dsr_flow",
        }
    }
}

/// Slots reserved per program.
pub const REASONS: u32 = 128;
/// Event slots reserved per program.
pub const EVENTS: u32 = 16;
/// Programs the map has room for.
pub const PROGRAMS: u32 = 8;
/// Size of the COUNTERS map: every program's reasons, then every program's events.
pub const SLOTS: u32 = (REASONS + EVENTS) * PROGRAMS;

#[inline(always)]
pub const fn index(program: Program, reason: Reason) -> u32 {
    program as u32 * REASONS + reason as u32
}

#[inline(always)]
pub const fn event_index(program: Program, event: Event) -> u32 {
    REASONS * PROGRAMS + program as u32 * EVENTS + event as u32
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    /// Packets, or occurrences of an event.
    pub packets: u64,
    /// Bytes of those packets (of the packet that caused an event).
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_keep_their_ranges_and_never_collide() {
        let mut seen = [false; REASONS as usize];
        for r in Reason::ALL {
            let v = r as u32;
            assert!(v < REASONS, "{r:?}");
            assert!(!seen[v as usize], "{r:?} reuses {v}");
            seen[v as usize] = true;
            // Services take the second half of each range.
            let (start, end) = match r.verdict() {
                Verdict::Forwarded => (0, 40),
                Verdict::Passed => (40, 80),
                Verdict::Dropped => (80, 128),
            };
            let service = r.name().starts_with("service_");
            let half = start + (end - start) / 2;
            assert_eq!(
                service,
                v >= half,
                "{r:?} in the wrong half of {start}-{end}"
            );
        }
        let names: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        for e in Event::ALL {
            assert!((e as u32) < EVENTS);
        }
        let last = event_index(Program::Xdp, Event::PortReclaimed);
        assert!((REASONS * PROGRAMS..SLOTS).contains(&last));
    }
}
