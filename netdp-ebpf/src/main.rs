//! netdp's tc programs.
//!
//! `from_pod` runs on tc ingress of every pod's host-side veth and sees everything a pod
//! sends; `from_netdev` runs on tc ingress of the node's underlay interface and sees
//! everything the node receives. Both forward by redirect when the maps say where a packet
//! goes, and hand it to the kernel unchanged otherwise.
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod csum;
mod endpoint;
mod forward;
mod icmp;
mod lb;
mod maps;
mod nat;
mod parse;
mod route;
mod service;

use aya_ebpf::{macros::classifier, programs::TcContext};
use netdp_common::counters::Program;

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    forward::ipv4(&ctx, Program::FromPod)
}

#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    forward::ipv4(&ctx, Program::FromNetdev)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
