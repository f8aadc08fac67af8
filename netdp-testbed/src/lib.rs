//! netdp's testbed: namespaced clusters on one machine (underlay subnets, a router, an
//! outside host, NAT gateways, a real etcd, real agents and CNI-wired pods), reused by the
//! tests, the demo and the benchmarks.
pub mod cleanup;
pub mod etcd;
pub mod flannel;
pub mod netns;
pub mod packet;
pub mod process;
pub mod services;
pub mod testbed;
pub mod tls;
pub mod traffic;
pub mod wait;

pub use testbed::{BPF_ROOT, Binaries, Count, Node, Pod, Spec, Testbed};
