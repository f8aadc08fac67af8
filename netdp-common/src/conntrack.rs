//! Connection tracking of translated flows, load balanced or masqueraded alike: one entry
//! per direction, keyed by the packet's tuple as it arrives, saying what to rewrite it to.
//!
//! A service flow from client C to VIP V gets two entries: `C:c -> V:v` rewrites to
//! `C:c -> B:t` (or `S:s -> B:t` when source-NATed to the node), and the reply
//! `B:t -> C:c` rewrites back to `V:v -> C:c`. A masqueraded flow from pod P to remote R is
//! the same shape: `P:p -> R:r` rewrites to `N:n -> R:r` (N the node, n a port of its
//! masquerade range) and `R:r -> N:n` back to `R:r -> P:p`. One table serves both, so a
//! packet costs one lookup whichever kind of flow it belongs to, and the reply tuples of
//! both kinds are claimed in the same key space (a port cannot be handed out twice).
//! Entries live in an LRU map, so a full table evicts the oldest instead of refusing new
//! flows; each carries its expiry, refreshed by traffic, and the agent reclaims expired
//! ones.
//!
//! ICMP echo (masquerading only) uses the identifier as the port of the side that chose it:
//! a request `P -> R` is `sport = id, dport = 0`, its reply `R -> P` `sport = 0, dport = id`.
use crate::Ipv4;

/// A packet's tuple. Ports in host byte order, so map dumps read naturally.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: Ipv4,
    pub daddr: Ipv4,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

impl CtKey {
    /// The tuple of a packet going the other way.
    #[inline(always)]
    pub const fn reversed(&self) -> CtKey {
        CtKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            pad: [0; 3],
        }
    }

    /// The hash of the tuple (see [`crate::lb::flow_hash`]): Maglev's entry for a flow, and
    /// the first port a translation tries.
    #[inline(always)]
    pub const fn hash(&self) -> u32 {
        crate::lb::flow_hash(self.saddr, self.daddr, self.sport, self.dport, self.proto)
    }
}

/// Connection states; each has its own lifetime ([`timeout`]).
pub mod state {
    /// TCP: only the opening direction has been seen.
    pub const SYN_SENT: u8 = 1;
    /// TCP: both directions seen.
    pub const ESTABLISHED: u8 = 2;
    /// TCP: a FIN or RST was seen.
    pub const CLOSING: u8 = 3;
    /// UDP and ICMP echo.
    pub const OTHER: u8 = 4;
}

/// Lifetimes in seconds after the last packet, per state (Cilium's defaults). The agent
/// can change them at load time (global `CT_TIMEOUTS`, indexed by [`timeout::index`]).
pub mod timeout {
    pub const TCP_SYN: u32 = 60;
    pub const TCP_ESTABLISHED: u32 = 6 * 3600;
    pub const TCP_CLOSING: u32 = 10;
    pub const OTHER: u32 = 60;
    /// The defaults, in `CT_TIMEOUTS` order.
    pub const DEFAULTS: [u32; 4] = [TCP_SYN, TCP_ESTABLISHED, TCP_CLOSING, OTHER];

    /// Positions in `CT_TIMEOUTS`.
    pub mod index {
        pub const TCP_SYN: usize = 0;
        pub const TCP_ESTABLISHED: usize = 1;
        pub const TCP_CLOSING: usize = 2;
        pub const OTHER: usize = 3;
    }
}

/// Entry flags.
pub mod flags {
    /// The entry translates replies (backend to client).
    pub const REPLY: u8 = 1;
    /// The flow is source-NATed to the node (node port to a remote backend, hairpin).
    pub const SNAT: u8 = 2;
    /// A pod's flow to the outside, masqueraded to the node's address (`--ip-masq`): its
    /// original direction leaves through the underlay, its replies are counted as
    /// unmasqueraded.
    pub const MASQ: u8 = 4;
    /// A node port flow sent on with direct server return (on the frontend's node): its
    /// packets are not rewritten but carried to the backend's node with the backend in a
    /// [`crate::dsr`] IP option, whose node translates them and answers the client itself.
    pub const DSR: u8 = 8;
}

/// What to do with packets of one direction of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// The tuple the packet is rewritten to (ports in host byte order).
    pub nat_saddr: Ipv4,
    pub nat_daddr: Ipv4,
    pub nat_sport: u16,
    pub nat_dport: u16,
    /// When the entry expires, in seconds of CLOCK_MONOTONIC.
    pub expires: u32,
    /// For replies to a client outside the cluster: the interface the flow came in on, where
    /// the kernel's neighbour table takes the reply on (0: forward like any pod traffic).
    /// Both directions carry it, so either can rebuild the other if the LRU evicted it.
    pub ifindex: u32,
    /// The agent's number of the service (0 for masqueraded flows).
    pub service_id: u32,
    /// One of [`state`].
    pub state: u8,
    /// Bit set of [`flags`].
    pub flags: u8,
    pub pad: u16,
    /// TCP: the sequence number this direction's sender uses next (the highest seen so far
    /// plus its segment's length); 0 until known. A RST or FIN is believed only near it
    /// (the eBPF `window` module).
    pub seq_next: u32,
}

impl CtEntry {
    /// The tuple packets of this direction are rewritten to.
    #[inline(always)]
    pub const fn nat_tuple(&self, proto: u8) -> CtKey {
        CtKey {
            saddr: self.nat_saddr,
            daddr: self.nat_daddr,
            sport: self.nat_sport,
            dport: self.nat_dport,
            proto,
            pad: [0; 3],
        }
    }
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 16);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 32);
