//! netdp: an eBPF pod-networking dataplane with Flannel-compatible subnet leases.
//!
//! The agent (`netdp agent`) leases the node's subnet in etcd and keeps the eBPF maps in
//! step with the other nodes' leases; the CNI plugin (`netdp-cni`) wires pods in.
pub mod agent;
pub mod cli;
pub mod cni;
pub mod config;
pub mod dataplane;
pub mod etcd;
pub mod lease;
pub mod netlink;
pub mod netns;
pub mod service;
pub mod subnet_file;
pub mod util;
