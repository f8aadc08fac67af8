//! Conntrack of translated flows (see netdp_common::conntrack): lookups that ignore expired
//! entries, per-state lifetimes, and keeping the two directions of a flow in step.
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use netdp_common::conntrack::{CtEntry, CtKey, state, timeout};

use crate::{
    maps::{CONNTRACK, CT_TIMEOUTS},
    parse::{IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// Seconds of CLOCK_MONOTONIC, the clock entries expire by (the agent's GC reads the same).
#[inline(always)]
pub fn now() -> u32 {
    // SAFETY: no preconditions.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

#[inline(always)]
pub fn lifetime(st: u8) -> u32 {
    let t = CT_TIMEOUTS.load();
    match st {
        state::SYN_SENT => t[timeout::index::TCP_SYN],
        state::ESTABLISHED => t[timeout::index::TCP_ESTABLISHED],
        state::CLOSING => t[timeout::index::TCP_CLOSING],
        _ => t[timeout::index::OTHER],
    }
}

/// The tuple packets of the other direction arrive with.
#[inline(always)]
pub fn peer_key(e: &CtEntry, proto: u8) -> CtKey {
    e.nat_tuple(proto).reversed()
}

/// The live entry for a packet, and the time. An expired entry, or a closing TCP entry hit
/// by a fresh SYN (the tuple is being reused), is removed with its peer and reported as
/// absent. The clock is only read when there is an entry (most packets have none).
#[inline(always)]
pub fn lookup(key: &CtKey, tcp_flags: u8) -> Option<(*mut CtEntry, u32)> {
    let e = CONNTRACK.get_ptr_mut(key)?;
    let now = now();
    // SAFETY: a valid map value; read before any update of the map.
    let entry = unsafe { *e };
    let reopened = key.proto == IPPROTO_TCP
        && entry.state == state::CLOSING
        && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if entry.expires < now || reopened {
        let _ = CONNTRACK.remove(&peer_key(&entry, key.proto));
        let _ = CONNTRACK.remove(key);
        return None;
    }
    Some((e, now))
}

/// Advances the flow's state for a packet that matched `e` and pushes out its expiry. The
/// other direction's entry is only looked up when something changes for both: a state
/// transition, or the expiry moving on (at most once a second).
#[inline(always)]
pub fn track(e: *mut CtEntry, key: &CtKey, tcp_flags: u8, now: u32) {
    // SAFETY: a valid map value.
    let entry = unsafe { *e };
    let mut st = entry.state;
    if key.proto == IPPROTO_TCP {
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            st = state::CLOSING;
        } else if st == state::SYN_SENT && entry.flags & netdp_common::conntrack::flags::REPLY != 0
        {
            // The other side answered.
            st = state::ESTABLISHED;
        }
    }
    let expires = now + lifetime(st);
    if st == entry.state && expires == entry.expires {
        return;
    }
    // SAFETY: a valid map value; concurrent writers store the same kind of values.
    unsafe {
        (*e).state = st;
        (*e).expires = expires;
    }
    if let Some(p) = CONNTRACK.get_ptr_mut(peer_key(&entry, key.proto)) {
        // SAFETY: as above.
        unsafe {
            (*p).state = st;
            (*p).expires = expires;
        }
    }
}
