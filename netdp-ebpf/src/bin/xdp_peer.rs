//! XDP programs for the far end of a node's veth (never loaded by the agent):
//!
//! - `xdp_pass` passes everything. A veth delivers the frames its peer's XDP program sends
//!   (XDP_TX, XDP_REDIRECT) only while it has an XDP program itself; without one they wait
//!   in its ring until other traffic comes by. The testbed attaches it to the underlay's
//!   side of each node's veth, as a machine with a veth-based underlay would have to;
//!   physical NICs need nothing of the kind.
//! - `xdp_gen` is `cargo xtask bench`'s packet generator, run with BPF_PROG_TEST_RUN's live
//!   frames: it writes the frame's headers from `TEMPLATE` (whatever a previous trip
//!   through the node rewrote in the recycled page) and sends it out (XDP_TX).
//! - `xdp_sink` counts what comes back in `SINK` and drops it.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Header bytes the generator writes into every frame.
const TEMPLATE_LEN: usize = 64;

#[map]
static TEMPLATE: Array<[u8; TEMPLATE_LEN]> = Array::with_max_entries(1, 0);

#[map]
static SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn xdp_gen(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + TEMPLATE_LEN > end {
        return xdp_action::XDP_ABORTED;
    }
    let Some(t) = TEMPLATE.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: bounds checked above; the template is a valid map value.
    unsafe { core::ptr::copy_nonoverlapping(t.as_ptr(), start as *mut u8, TEMPLATE_LEN) };
    xdp_action::XDP_TX
}

#[xdp]
pub fn xdp_sink(_ctx: XdpContext) -> u32 {
    if let Some(n) = SINK.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, only this CPU writes it.
        unsafe { *n += 1 };
    }
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
