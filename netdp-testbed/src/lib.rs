//! netdp's testbed: namespaced clusters on one machine (underlay subnets, a router, an
//! outside host, NAT gateways, a real etcd, real agents and CNI-wired pods), reused by the
//! tests, the demo and the benchmarks.
//!
//! A test holds one [`Testbed`] (`testbed.rs`). What it builds is in `topology.rs`, its
//! agents in `agents.rs`, its pods in `cni.rs`, `netdp` CLI calls in `cli.rs`, services
//! in `services.rs` with their backends and clients in `echo.rs`. Below those: `netns`,
//! `process`, `etcd` (and `etcd_cluster`, three of them), `cleanup`, `wait` and the leaf
//! `base`, none of which knows about the testbed. `packet.rs` crafts frames for the packet tests and needs none of it.
mod agents;
pub mod base;
pub mod cleanup;
mod cli;
mod cni;
pub mod echo;
pub mod etcd;
pub mod etcd_cluster;
pub mod flannel;
pub mod flood;
pub mod hold;
pub mod kube_api;
pub mod netns;
pub mod packet;
mod peer_xdp;
pub use peer_xdp::object as peer_xdp_object;
pub mod process;
pub mod services;
pub mod testbed;
pub mod tls;
pub mod topology;
pub mod traffic;
pub mod wait;

pub use testbed::{BPF_ROOT, Binaries, Count, Node, Pod, Spec, Testbed};
