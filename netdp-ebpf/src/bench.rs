//! The floors for per-packet cost benchmarks: a tc program that does nothing but redirect,
//! and an XDP program that does nothing but send the frame back out.
//!
//! `cargo xtask bench` runs them with BPF_PROG_TEST_RUN next to the real paths, so their
//! cost is reported above what any redirecting program pays (entry, one helper call,
//! return). The agent never loads or attaches them.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// Any ifindex: under BPF_PROG_TEST_RUN the redirect is decided but never carried out.
const FLOOR_IFINDEX: u32 = 1;

#[classifier]
pub fn bench_redirect(_ctx: TcContext) -> i32 {
    // SAFETY: bpf_redirect only records the target; it has no memory preconditions.
    unsafe { bpf_redirect(FLOOR_IFINDEX, 0) as i32 }
}

#[xdp]
pub fn bench_xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}
