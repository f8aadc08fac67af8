//! XDP_PASS and nothing else, for the far end of a veth a node's XDP transmits on.
//!
//! A veth delivers frames its peer's XDP program sends (XDP_TX, XDP_REDIRECT) only while it
//! has an XDP program itself; without one they wait in its ring until other traffic comes
//! by. The testbed attaches this to the underlay's side of each node's veth, as a machine
//! with a veth-based underlay would have to; physical NICs need nothing of the kind. The
//! agent never loads it.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
