//! netdp: an eBPF pod-networking dataplane with Flannel-compatible subnet leases.
//!
//! The agent (`netdp agent`) leases the node's subnet in etcd and keeps the eBPF maps in
//! step with the other nodes' leases; the CNI plugin (`netdp-cni`) wires pods in.
pub mod agent;
pub mod cli;
pub mod cni;
pub mod etcd;
pub mod k8s;
pub mod lease;
pub mod netlink;
pub mod netns;
pub mod observe;
pub mod service;
pub mod subnet_file;
pub mod util;

/// The dataplane library, under the name the agent's modules use.
pub use netdp_dataplane as dataplane;
/// Flannel's network config (the planners in the dataplane library read it).
pub use netdp_dataplane::config;

/// The eBPF object, built by `cargo xtask build-ebpf` and embedded at compile time: what
/// the binaries hand to [`dataplane::Dataplane::load_for`].
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(env!("NETDP_EBPF_OBJECT"))
}
