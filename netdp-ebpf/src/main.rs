//! netdp's tc programs.
//!
//! `from_pod` runs on tc ingress of every pod's host-side veth and sees everything a pod
//! sends; `from_netdev` runs on tc ingress of the node's underlay interface and sees
//! everything the node receives; `from_host` runs on the peer of the node's gateway device
//! and sees what the node itself sends into the pod network. They forward by redirect when
//! the maps say where a packet goes, and hand it to the kernel unchanged otherwise. The
//! `xdp_netdev` runs before `from_netdev` on the underlay (the prefilter, and node port
//! traffic balanced before an skb exists). The `sock_*` cgroup programs send the node's own connections to services straight to a
//! backend.
#![no_std]
#![no_main]

mod bench;
mod conntrack;
mod counters;
mod csum;
mod ctx;
mod decap;
mod dsr;
mod egress;
mod encap;
mod endpoint;
mod forward;
mod fragment;
mod hop;
mod icmp;
mod lb;
mod maps;
mod mtu;
mod nat;
mod parse;
mod route;
mod sock;
mod source;
mod window;
mod xdp;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    forward::from_pod(&ctx)
}

#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    forward::from_netdev(&ctx)
}

#[classifier]
pub fn from_host(ctx: TcContext) -> i32 {
    forward::from_host(&ctx)
}

#[xdp]
pub fn xdp_netdev(ctx: XdpContext) -> u32 {
    xdp::netdev(&ctx)
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_service(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::to_service(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
