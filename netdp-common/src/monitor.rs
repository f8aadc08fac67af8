//! Drop events for `netdp monitor` (like `cilium-dbg monitor --type drop`): written to the
//! EVENTS ring buffer only while MONITOR counts a listener, so the packet path pays one
//! array lookup per dropped packet when nobody listens, and nothing on any other packet.
use crate::Ipv4;

/// A dropped packet: which program dropped it, why, and its addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// `counters::Program` and `counters::Reason`, as numbers.
    pub program: u32,
    pub reason: u32,
    /// The interface it arrived on, and its length (Ethernet frame).
    pub ifindex: u32,
    pub len: u32,
    pub saddr: Ipv4,
    pub daddr: Ipv4,
    /// Host byte order; 0 for protocols without ports.
    pub sport: u16,
    pub dport: u16,
    /// IP protocol; 0 when the packet is not IPv4.
    pub proto: u8,
    pub pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<DropEvent>() == 32);

/// MONITOR's one element: how many listeners want drop events.
pub const LISTENERS: u32 = 0;
