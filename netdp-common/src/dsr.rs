//! Direct server return's wire format. The frontend's node leaves a node port packet
//! untranslated and carries it to the backend's node through the tunnel, with the backend
//! it chose in an IPv4 option right after the (inner) IP header; the backend's node, which
//! trusts the option only inside a tunnel from a peer, takes it out, translates the packet
//! to that backend and answers the client itself, from the service's address.
//!
//! Cilium's DSR carries the service address in such an option (and translates on the
//! frontend); netdp carries the backend instead, so the backend's node sees the flow as the
//! client sent it and tracks it like any other service flow (both directions of one
//! translation). The option's type is RFC 4727's experimental one, with the copied flag
//! set (fragments carry it too).
use crate::Ipv4;

/// Option type: copied (0x80), class 0, number 30 (RFC 4727 experiments).
pub const OPTION_TYPE: u8 = 0x9e;
/// The option's length, its type and length bytes included (a multiple of 4, so the IP
/// header needs no padding).
pub const OPTION_LEN: usize = 8;
/// `version_ihl` of an IP header carrying the option and nothing else.
pub const VERSION_IHL: u8 = 0x45 + (OPTION_LEN / 4) as u8;

/// The option as it sits on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsrOption {
    pub kind: u8,
    pub len: u8,
    /// The backend's port, network byte order.
    pub port: u16,
    /// The backend's address.
    pub addr: Ipv4,
}

const _: () = assert!(core::mem::size_of::<DsrOption>() == OPTION_LEN);

impl DsrOption {
    /// The option naming backend `addr:port` (port in host byte order).
    pub const fn new(addr: Ipv4, port: u16) -> Self {
        DsrOption {
            kind: OPTION_TYPE,
            len: OPTION_LEN as u8,
            port: port.to_be(),
            addr,
        }
    }
}
