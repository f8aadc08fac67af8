//! netdp's tc programs.
//!
//! `from_pod` runs on tc ingress of every pod's host-side veth and sees everything a pod
//! sends; `from_netdev` runs on tc ingress of the node's underlay interface and sees
//! everything the node receives. Both forward by redirect when the maps say where a packet
//! goes, and hand it to the kernel unchanged otherwise.
#![no_std]
#![no_main]

mod bench;
mod conntrack;
mod counters;
mod csum;
mod decap;
mod egress;
mod encap;
mod endpoint;
mod forward;
mod icmp;
mod maps;
mod mtu;
mod nat;
mod parse;
mod route;

use aya_ebpf::{macros::classifier, programs::TcContext};

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    forward::from_pod(&ctx)
}

#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    forward::from_netdev(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
