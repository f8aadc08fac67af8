//! Endpoints: the pods attached to this node, keyed by pod address.
use crate::{Ipv4, Mac};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub addr: Ipv4,
}

/// How to hand a packet to a local pod without the kernel's routing: the host-side veth to
/// redirect through and the MACs the pod expects.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// ifindex of the host-side veth, in the node's network namespace.
    pub ifindex: u32,
    pub flags: u32,
    /// The pod's interface MAC (destination of delivered frames).
    pub mac: Mac,
    /// The host-side veth MAC (source of delivered frames, and the pod's gateway MAC).
    pub host_mac: Mac,
}

const _: () = assert!(core::mem::size_of::<Endpoint>() == 20);
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 4);
