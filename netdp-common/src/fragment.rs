//! IP fragments of translated flows. Only a datagram's first fragment carries its ports,
//! so when a first fragment is translated its ports are remembered under the datagram's
//! identity, and the following fragments find their flow through them (Cilium's
//! `ipv4_frag` map does the same). Fragments that arrive before their first one are not
//! translated.
use crate::Ipv4;

/// A datagram's identity: addresses, IP identification and protocol, as the fragments
/// carry them before translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub saddr: Ipv4,
    pub daddr: Ipv4,
    /// The IP header's identification field (network order, as in the header).
    pub id: u16,
    pub proto: u8,
    pub pad: u8,
}

/// The ports of the datagram's first fragment (host order), which key its flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentPorts {
    pub sport: u16,
    pub dport: u16,
}

const _: () = assert!(core::mem::size_of::<FragmentKey>() == 12);
const _: () = assert!(core::mem::size_of::<FragmentPorts>() == 4);
