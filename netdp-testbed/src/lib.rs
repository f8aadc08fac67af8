//! netdp's testbed: namespaced clusters on one machine, reused by tests, the demo and the
//! benchmarks.
pub mod packet;
