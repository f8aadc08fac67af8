//! Source ports the dataplane hands out when it rewrites a flow's source: masquerading
//! (pod traffic leaving the cluster with the node's address) and source NAT of service
//! flows that must return through this node (the node's gateway address). The flows live
//! in conntrack (see [`crate::conntrack`]), whose reply tuples are claimed atomically, so a
//! port is never used twice towards the same remote address and port.

/// Candidate ports tried for a new flow before giving up (taking over expired flows).
pub const PORT_PROBES: u32 = 32;

/// The port range: above Linux's default ephemeral range (32768-60999), so the node's own
/// connections never collide with translations.
pub const PORT_MIN: u16 = 61000;
pub const PORT_MAX: u16 = 65535;
