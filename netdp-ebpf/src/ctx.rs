//! The packet context the shared stages run on: tc's skb or XDP's frame (Cilium's `ctx_`
//! layer). Parsing, source checks, conntrack, translation and load balancing are written
//! once and compiled for both hooks; what differs is how bytes are stored, how checksums
//! are patched (the skb has checksum state the kernel's helpers keep right; an XDP frame
//! from the wire has full checksums, patched in place) and how verdicts are spelt.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_MARK_MANGLED_0, TC_ACT_OK, TC_ACT_SHOT,
        bpf_adj_room_mode::{BPF_ADJ_ROOM_MAC, BPF_ADJ_ROOM_NET},
        xdp_action,
    },
    helpers::{bpf_skb_load_bytes, bpf_xdp_adjust_head, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};

use crate::csum;

pub trait Ctx {
    /// Hand the packet on unchanged: to the kernel (tc), to the tc programs (XDP).
    const PASS: i32;
    const DROP: i32;

    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The packet's length (all of it, not only the linear part).
    fn len(&self) -> u32;
    /// The interface the packet came in on.
    fn ifindex(&self) -> u32;
    /// `data` and `data_end` read volatile (`window::follow` says why).
    fn bounds_volatile(&self) -> (usize, usize);
    /// Writes `v` at `off`.
    fn store<T>(&self, off: usize, v: &T) -> Result<(), ()>;
    /// Replaces `from` by `to` (`size` bytes, as they sit in memory) in the IP checksum at
    /// `off`.
    fn l3_csum_replace(&self, off: usize, from: u64, to: u64, size: u64) -> Result<(), ()>;
    /// The same for the L4 checksum at `off`; `flags` as bpf_l4_csum_replace takes them
    /// (size in the low bits, pseudo-header, UDP's mangled 0).
    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), ()>;
    /// The context as the helpers take it, for out-of-line callees ([`Ctx::load_raw`]).
    fn raw(&self) -> *mut c_void;
    /// Copies `n` bytes at `off` of the packet behind `raw` to `to`.
    ///
    /// # Safety
    /// `raw` is this kind's context and `to` has room for `n` bytes.
    unsafe fn load_raw(raw: *mut c_void, off: usize, to: *mut u8, n: u32) -> bool;
    /// Ingress interface and length of the packet behind `raw`.
    ///
    /// # Safety
    /// `raw` is this kind's context.
    unsafe fn raw_ifindex_len(raw: *mut c_void) -> (u32, u32);
    /// Makes room for `len` bytes of outer headers in front of the frame's IP header (the
    /// Ethernet header in front of that room is the caller's to rewrite). `tc_flags` are
    /// bpf_skb_adjust_room's encapsulation flags, for the skb's GSO state; XDP frames
    /// have none and just grow at the front. Packet pointers are invalid afterwards.
    fn push_outer(&self, len: u32, tc_flags: u64) -> Result<(), ()>;
    /// Makes room for `len` bytes right after a 20-byte IP header (an IP option). tc moves
    /// the Ethernet and IP headers to the front; XDP just grows at the front, so the bytes
    /// before the room are the caller's to write whole. Packet pointers are invalid
    /// afterwards.
    fn insert_after_ip(&self, len: u32) -> Result<(), ()>;
    /// The tc context, where the caller needs what only tc can do (build an ICMP error);
    /// `None` in XDP, which leaves those packets to tc.
    fn as_tc(&self) -> Option<&TcContext>;
}

impl Ctx for TcContext {
    const PASS: i32 = TC_ACT_OK;
    const DROP: i32 = TC_ACT_SHOT;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reading our own skb.
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    fn bounds_volatile(&self) -> (usize, usize) {
        let skb = self.skb.skb;
        // SAFETY: the program's own skb.
        unsafe {
            (
                core::ptr::read_volatile(&(*skb).data) as usize,
                core::ptr::read_volatile(&(*skb).data_end) as usize,
            )
        }
    }
    #[inline(always)]
    fn store<T>(&self, off: usize, v: &T) -> Result<(), ()> {
        TcContext::store(self, off, v, 0).map_err(|_| ())
    }
    #[inline(always)]
    fn l3_csum_replace(&self, off: usize, from: u64, to: u64, size: u64) -> Result<(), ()> {
        TcContext::l3_csum_replace(self, off, from, to, size).map_err(|_| ())
    }
    #[inline(always)]
    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), ()> {
        TcContext::l4_csum_replace(self, off, from, to, flags).map_err(|_| ())
    }
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.as_ptr()
    }
    #[inline(always)]
    unsafe fn load_raw(raw: *mut c_void, off: usize, to: *mut u8, n: u32) -> bool {
        // SAFETY: as the caller promises.
        unsafe { bpf_skb_load_bytes(raw as *const _, off as u32, to as *mut _, n) == 0 }
    }
    #[inline(always)]
    unsafe fn raw_ifindex_len(raw: *mut c_void) -> (u32, u32) {
        let skb = raw as *mut aya_ebpf::bindings::__sk_buff;
        // SAFETY: as the caller promises.
        unsafe { ((*skb).ifindex, (*skb).len) }
    }
    #[inline(always)]
    fn push_outer(&self, len: u32, tc_flags: u64) -> Result<(), ()> {
        if self
            .adjust_room(len as i32, BPF_ADJ_ROOM_MAC, tc_flags)
            .is_ok()
        {
            return Ok(());
        }
        // The kernel encapsulates an skb only once (-EALREADY): one a gateway just took out
        // of a tunnel may still be marked encapsulated (an skb that came over a veth keeps
        // the mark). Its segments keep their size (fixed GSO); the headers are ours.
        self.adjust_room(
            len as i32,
            BPF_ADJ_ROOM_MAC,
            BPF_F_ADJ_ROOM_FIXED_GSO as u64,
        )
        .map_err(|_| ())
    }
    #[inline(always)]
    fn insert_after_ip(&self, len: u32) -> Result<(), ()> {
        self.adjust_room(len as i32, BPF_ADJ_ROOM_NET, 0)
            .map_err(|_| ())
    }
    #[inline(always)]
    fn as_tc(&self) -> Option<&TcContext> {
        Some(self)
    }
}

impl Ctx for XdpContext {
    const PASS: i32 = xdp_action::XDP_PASS as i32;
    const DROP: i32 = xdp_action::XDP_DROP as i32;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }
    #[inline(always)]
    fn bounds_volatile(&self) -> (usize, usize) {
        let md = self.ctx;
        // SAFETY: the program's own context.
        unsafe {
            (
                core::ptr::read_volatile(&(*md).data) as usize,
                core::ptr::read_volatile(&(*md).data_end) as usize,
            )
        }
    }
    #[inline(always)]
    fn store<T>(&self, off: usize, v: &T) -> Result<(), ()> {
        let at = at::<T>(self, off)?;
        // SAFETY: bounds checked; the frame has no alignment guarantee.
        unsafe { core::ptr::write_unaligned(at, core::ptr::read(v)) };
        Ok(())
    }
    #[inline(always)]
    fn l3_csum_replace(&self, off: usize, from: u64, to: u64, size: u64) -> Result<(), ()> {
        patch(self, off, from, to, size, false)
    }
    #[inline(always)]
    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), ()> {
        patch(
            self,
            off,
            from,
            to,
            flags & 0xf,
            flags & BPF_F_MARK_MANGLED_0 as u64 != 0,
        )
    }
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.as_ptr()
    }
    #[inline(always)]
    unsafe fn load_raw(raw: *mut c_void, off: usize, to: *mut u8, n: u32) -> bool {
        // SAFETY: as the caller promises.
        unsafe { bpf_xdp_load_bytes(raw as *mut _, off as u32, to as *mut _, n) == 0 }
    }
    #[inline(always)]
    unsafe fn raw_ifindex_len(raw: *mut c_void) -> (u32, u32) {
        let md = raw as *mut aya_ebpf::bindings::xdp_md;
        // SAFETY: as the caller promises.
        unsafe { ((*md).ingress_ifindex, (*md).data_end - (*md).data) }
    }
    #[inline(always)]
    fn push_outer(&self, len: u32, _tc_flags: u64) -> Result<(), ()> {
        // SAFETY: the program's own context.
        match unsafe { bpf_xdp_adjust_head(self.ctx, -(len as i32)) } {
            0 => Ok(()),
            _ => Err(()),
        }
    }
    #[inline(always)]
    fn insert_after_ip(&self, len: u32) -> Result<(), ()> {
        self.push_outer(len, 0)
    }
    #[inline(always)]
    fn as_tc(&self) -> Option<&TcContext> {
        None
    }
}

/// A pointer to a `T` at `off` of an XDP frame, bounds checked.
#[inline(always)]
fn at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, ()> {
    let start = XdpContext::data(ctx);
    if start + off + core::mem::size_of::<T>() > XdpContext::data_end(ctx) {
        return Err(());
    }
    Ok((start + off) as *mut T)
}

/// RFC 1624 in place: the checksum at `off` after `size` bytes (2 or 4) `from` became
/// `to`. With `keep_zero` (UDP) a checksum of 0, "none", stays 0 and a computed 0 is sent
/// as 0xffff.
#[inline(always)]
fn patch(
    ctx: &XdpContext,
    off: usize,
    from: u64,
    to: u64,
    size: u64,
    keep_zero: bool,
) -> Result<(), ()> {
    let at = at::<u16>(ctx, off)?;
    // SAFETY: bounds checked.
    let check = unsafe { core::ptr::read_unaligned(at) };
    if keep_zero && check == 0 {
        return Ok(());
    }
    let (removed, added) = if size == 4 {
        (
            csum::addr_sum((from as u32).to_ne_bytes()),
            csum::addr_sum((to as u32).to_ne_bytes()),
        )
    } else {
        (from as u16 as u32, to as u16 as u32)
    };
    let mut new = csum::update(check, removed, added);
    if keep_zero && new == 0 {
        new = 0xffff;
    }
    // SAFETY: bounds checked.
    unsafe { core::ptr::write_unaligned(at, new) };
    Ok(())
}
