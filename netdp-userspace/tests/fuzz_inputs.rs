//! Property tests of everything netdp parses from outside: the network config, lease keys
//! and values (and the watch decoding over them), service documents, the CNI config and
//! the subnet file. Inputs are random bytes, random JSON (deep, huge numbers, unicode),
//! documents with the right keys and wrong values, and valid documents with one field
//! mutated. Properties: nothing panics; a rejection names the field that was mutated;
//! valid documents are accepted as written and survive a round trip through their printer.
//!
//! Bounded for CI (the whole file takes seconds); `PROPTEST_CASES=100000 cargo test
//! --test fuzz_inputs` runs longer.
mod fuzz_inputs {
    pub mod cni;
    pub mod config;
    pub mod inputs;
    pub mod lease;
    pub mod service;
    pub mod service_gen;
}
