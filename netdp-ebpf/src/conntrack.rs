//! Conntrack of translated flows, load balanced and masqueraded alike (see
//! netdp_common::conntrack). A lookup gives its caller one state, as Cilium's
//! `ct_lookup4` does: new, established, reply, or related (an ICMP error about a flow);
//! the translation stage switches on it. Also per-state lifetimes, keeping the two
//! directions of a flow in step, and claiming the reply tuple of a new flow.
//!
//! A TCP flow lives in HALF_OPEN until its handshake completes (the SYN answered, then the
//! client's ACK), and only then moves to CONNTRACK: both are LRU tables, so a flood of
//! SYNs (spoofed or not, answered by the backends or not) evicts half-open flows only,
//! never established ones. Only SYN and RST segments, and the completing ACK to a frontend
//! or a masqueraded destination, look in HALF_OPEN, so every other packet costs the one
//! CONNTRACK lookup it always did.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    btf_maps::LruHashMap,
    helpers::bpf_ktime_get_coarse_ns,
};
use netdp_common::{
    conntrack::{CtEntry, CtKey, flags, state, timeout},
    counters::{Event, Program},
};

use crate::{
    counters,
    ctx::Ctx,
    maps::{CONNTRACK, CT_TIMEOUTS, HALF_OPEN},
    parse::{IPPROTO_TCP, Ipv4Frame, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    window,
};

const EEXIST: i32 = -17;

/// CONNTRACK or HALF_OPEN (their capacities differ, hence the parameter).
type Table<const N: usize> = LruHashMap<CtKey, CtEntry, N>;

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

/// The state a new flow starts in.
#[inline(always)]
pub fn first_state(proto: u8) -> u8 {
    if proto == IPPROTO_TCP {
        state::SYN_SENT
    } else {
        state::OTHER
    }
}

/// A packet's tuple as conntrack keys it (ports in host byte order).
#[inline(always)]
pub fn key(frame: &Ipv4Frame, l4: &L4) -> CtKey {
    // SAFETY: the IP header was bounds checked by the parser.
    let (saddr, daddr) = unsafe { ((*frame.ip).saddr, (*frame.ip).daddr) };
    CtKey {
        saddr,
        daddr,
        sport: u16::from_be(l4.sport),
        dport: u16::from_be(l4.dport),
        proto: l4.proto,
        pad: [0; 3],
    }
}

/// The tuple packets of the other direction arrive with.
#[inline(always)]
pub fn peer_key(e: &CtEntry, proto: u8) -> CtKey {
    e.nat_tuple(proto).reversed()
}

/// The other direction's entry as `e` (at `key`) implies it: exactly what was written for
/// it when the flow started, but for the state and expiry, which follow `e`, and its next
/// sequence number, unknown until it sends again.
#[inline(always)]
pub fn peer_entry(key: &CtKey, e: &CtEntry) -> CtEntry {
    rewriting_to(
        &key.reversed(),
        CtEntry {
            flags: e.flags ^ flags::REPLY,
            seq_next: 0,
            ..*e
        },
    )
}

/// `e`, rewriting packets to tuple `t`.
#[inline(always)]
fn rewriting_to(t: &CtKey, e: CtEntry) -> CtEntry {
    CtEntry {
        nat_saddr: t.saddr,
        nat_daddr: t.daddr,
        nat_sport: t.sport,
        nat_dport: t.dport,
        ..e
    }
}

/// Whether the entry at `pk` is the other direction of the flow whose entry is at `key`.
#[inline(always)]
fn pairs_with(p: &CtEntry, pk: &CtKey, key: &CtKey) -> bool {
    peer_key(p, pk.proto) == *key
}

/// A flow direction's entry where it lives in its map, for the rest of the program's run:
/// read in place rather than copied, as the programs' frames have no room for copies.
pub type Entry = &'static CtEntry;

/// What conntrack says of a packet: the state its flow is in for it, with the flow's
/// entry for the packet's direction when it has one.
pub enum CtState {
    /// No live flow has this tuple: the packet may start one.
    New,
    /// A packet of a tracked flow, in the direction that started it.
    Established(Entry),
    /// A packet of a tracked flow's reply direction.
    Reply(Entry),
    /// An ICMP error quoting a packet of a tracked flow; the entry is for the quoted
    /// packet's reply direction (how its sender sees the flow).
    Related(Entry),
    /// A RST or FIN of a tracked flow outside its window: the caller drops it
    /// (`Reason::OutOfWindow`), and the flow goes on as if it had not been sent.
    Invalid,
}

impl CtState {
    #[inline(always)]
    fn of(entry: Entry) -> Self {
        if entry.flags & flags::REPLY != 0 {
            CtState::Reply(entry)
        } else {
            CtState::Established(entry)
        }
    }
}

/// The live entry at `key` (a pointer into the map, and the same as a reference) and the
/// time. An expired entry, or a closing TCP entry hit by a fresh SYN (the tuple is being
/// reused), is removed with its peer and reported as absent. The clock is only read when
/// there is an entry (most packets have none).
#[inline(always)]
fn live<const N: usize>(
    table: &Table<N>,
    key: &CtKey,
    tcp_flags: u8,
) -> Option<(*mut CtEntry, Entry, u32)> {
    let e = table.get_ptr_mut(key)?;
    let now = now();
    // SAFETY: a valid map value, which stays valid for the program's run (BPF programs
    // run under RCU); other CPUs write only fields of the same flow.
    let entry: Entry = unsafe { &*e };
    let reopened = key.proto == IPPROTO_TCP
        && entry.state == state::CLOSING
        && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if entry.expires < now || reopened {
        let pk = peer_key(entry, key.proto);
        // The other direction's tuple may have gone to another flow since (a reclaimed
        // port): only ours is removed.
        // SAFETY: copied out at once.
        if let Some(p) = unsafe { table.get(pk) }.copied()
            && pairs_with(&p, &pk, key)
        {
            let _ = table.remove(pk);
        }
        let _ = table.remove(key);
        return None;
    }
    Some((e, entry, now))
}

/// Whether a segment with `tcp_flags` can belong to a half-open flow: its SYN
/// (retransmitted), the answering SYN-ACK, or a RST refusing it.
#[inline(always)]
fn may_be_half_open(key: &CtKey, tcp_flags: u8) -> bool {
    key.proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_RST) != 0
}

/// The state of packet `l4`'s flow (`key` its tuple); a tracked packet also
/// advances its flow ([`track`]).
#[inline(always)]
pub fn lookup<C: Ctx>(ctx: &C, key: &CtKey, l4: &L4) -> CtState {
    let tcp_flags = l4.tcp_flags;
    if let Some((ptr, entry, now)) = live(&CONNTRACK, key, tcp_flags) {
        if !track(ctx, ptr, entry, now, key, l4) {
            return CtState::Invalid;
        }
        return CtState::of(entry);
    }
    if may_be_half_open(key, tcp_flags)
        && let Some((ptr, entry, now)) = live(&HALF_OPEN, key, tcp_flags)
    {
        answered(ptr, entry, now, key, tcp_flags);
        return CtState::of(entry);
    }
    CtState::New
}

/// A half-open flow's segment (its entry `entry` at `e`): the SYN-ACK answering it marks
/// both directions answered (state established, still in HALF_OPEN: a backend answers
/// spoofed SYNs too); a RST ends it; a retransmitted SYN changes nothing. The client's ACK
/// completes it ([`complete`]). The packet's own entry is changed in place, never replaced
/// or removed (a RST expires it), as the caller goes on reading it.
#[inline(always)]
fn answered(e: *mut CtEntry, entry: Entry, now: u32, key: &CtKey, tcp_flags: u8) {
    let pk = peer_key(entry, key.proto);
    if tcp_flags & TCP_RST != 0 {
        let _ = HALF_OPEN.remove(pk);
        // SAFETY: a valid map value.
        unsafe { (*e).expires = 0 };
        return;
    }
    if entry.flags & flags::REPLY == 0 || tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK {
        return;
    }
    let expires = now + lifetime(state::SYN_SENT);
    // SAFETY: a valid map value.
    unsafe {
        (*e).state = state::ESTABLISHED;
        (*e).expires = expires;
    }
    match HALF_OPEN.get_ptr_mut(pk) {
        // SAFETY: as above.
        Some(p) => unsafe {
            (*p).state = state::ESTABLISHED;
            (*p).expires = expires;
        },
        None => {
            let _ = HALF_OPEN.insert(pk, peer_entry(key, entry), BPF_ANY as u64);
        }
    }
}

/// The client's ACK of an answered half-open flow (a segment without SYN of the opening
/// direction, which found no flow in CONNTRACK: the callers ask only for a frontend's or a
/// masqueraded destination's, so plain pod traffic never looks here). The handshake is
/// complete, as nf_conntrack's ASSURED: both directions move to CONNTRACK, established.
/// Returns the opening direction's entry to translate the segment with.
#[inline(always)]
pub fn complete<C: Ctx>(ctx: &C, key: &CtKey, l4: &L4) -> Option<CtEntry> {
    let tcp_flags = l4.tcp_flags;
    if tcp_flags & (TCP_SYN | TCP_RST | TCP_ACK) != TCP_ACK {
        return None;
    }
    let (_, entry, now) = live(&HALF_OPEN, key, tcp_flags)?;
    // A flow sent on with direct server return is answered past this node: the client's
    // ACK is all of the handshake it sees.
    if entry.flags & flags::REPLY != 0
        || (entry.state != state::ESTABLISHED && entry.flags & flags::DSR == 0)
    {
        return None;
    }
    let e = CtEntry {
        state: state::ESTABLISHED,
        expires: now + lifetime(state::ESTABLISHED),
        ..*entry
    };
    let pk = peer_key(&e, key.proto);
    // Overwriting: whatever CONNTRACK still holds at these tuples is dead (claiming the
    // reply tuple checked it).
    if CONNTRACK.insert(key, e, BPF_ANY as u64).is_err() {
        return None;
    }
    if CONNTRACK
        .insert(pk, peer_entry(key, &e), BPF_ANY as u64)
        .is_err()
    {
        let _ = CONNTRACK.remove(key);
        return None;
    }
    let _ = HALF_OPEN.remove(pk);
    let _ = HALF_OPEN.remove(key);
    // The ACK's sequence number is the flow's first ([`window`]).
    if let Some(ptr) = CONNTRACK.get_ptr_mut(key) {
        window::follow(ctx, ptr, l4.off, l4.tcp_flags);
    }
    Some(e)
}

/// The state of the flow an ICMP error quotes (`quoted`, the packet as it was sent):
/// related, with the entry of the direction the error travels, or new. An error does not
/// advance its flow.
#[inline(always)]
pub fn lookup_related(quoted: &CtKey) -> CtState {
    let key = quoted.reversed();
    if let Some((_, entry, _)) = live(&CONNTRACK, &key, 0) {
        return CtState::Related(entry);
    }
    if key.proto == IPPROTO_TCP
        && let Some((_, entry, _)) = live(&HALF_OPEN, &key, 0)
    {
        return CtState::Related(entry);
    }
    CtState::New
}

/// Advances the flow's state for a packet `l4` that matched `entry` (at `e`), records its
/// sequence numbers and pushes out its expiry; false for a RST or FIN outside the window,
/// which changes nothing. The other direction's entry is only looked up when something
/// changes for both: a state transition (a RST or FIN checks the window with it), or the
/// expiry moving on (at most once a second). That is also when a lost other direction
/// (evicted by the LRU) is written again; if its tuple went to another flow meanwhile,
/// this direction is expired too (not removed: the caller goes on reading it), so the next
/// packet starts the flow anew (a new masquerade port, a backend chosen again) instead of
/// sharing it.
#[inline(always)]
fn track<C: Ctx>(
    ctx: &C,
    e: *mut CtEntry,
    entry: &CtEntry,
    now: u32,
    key: &CtKey,
    l4: &L4,
) -> bool {
    let mut st = entry.state;
    if key.proto == IPPROTO_TCP {
        if !window::follow(ctx, e, l4.off, l4.tcp_flags) {
            return false;
        }
        if l4.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            st = state::CLOSING;
        } else if st == state::SYN_SENT && entry.flags & flags::REPLY != 0 {
            // The other side answered.
            st = state::ESTABLISHED;
        }
    }
    let expires = now + lifetime(st);
    if st == entry.state && expires == entry.expires {
        return true;
    }
    // SAFETY: a valid map value; concurrent writers store the same kind of values.
    unsafe {
        (*e).state = st;
        (*e).expires = expires;
    }
    let pk = peer_key(entry, key.proto);
    match CONNTRACK.get_ptr_mut(pk) {
        // SAFETY: as above.
        Some(p) if pairs_with(unsafe { &*p }, &pk, key) => unsafe {
            (*p).state = st;
            (*p).expires = expires;
        },
        // SAFETY: a valid map value.
        Some(_) => unsafe { (*e).expires = 0 },
        None => {
            let updated = CtEntry {
                state: st,
                expires,
                ..*entry
            };
            let restored = peer_entry(key, &updated);
            if CONNTRACK.insert(pk, restored, BPF_NOEXIST as u64).is_err() {
                // SAFETY: a valid map value.
                unsafe { (*e).expires = 0 };
            }
        }
    }
    true
}

/// What claiming a reply tuple came to.
pub enum Claim {
    Claimed,
    /// A live flow has it.
    Taken,
    /// The table refused the write.
    Failed,
}

/// Writes `e` at `key`, the reply tuple of a new flow, unless a live flow has it. A flow
/// that expired, or whose original direction is gone (evicted) or leads elsewhere, gives it
/// up: that is how ports of forgotten flows are reused before the agent's GC comes by. A
/// new TCP flow claims it in HALF_OPEN, unless an established flow holds it in CONNTRACK.
#[inline(always)]
pub fn claim<C: Ctx>(ctx: &C, program: Program, key: &CtKey, e: &CtEntry, now: u32) -> Claim {
    if key.proto != IPPROTO_TCP {
        return claim_in(&CONNTRACK, ctx, program, key, e, now);
    }
    // SAFETY: a valid map value, copied out.
    if let Some(current) = unsafe { CONNTRACK.get(key) }.copied()
        && holds(&CONNTRACK, key, &current, now)
    {
        return Claim::Taken;
    }
    claim_in(&HALF_OPEN, ctx, program, key, e, now)
}

/// Whether `current` (at `key` of `table`) belongs to a live flow: not expired, and its
/// other direction still pairs with it.
#[inline(always)]
fn holds<const N: usize>(table: &Table<N>, key: &CtKey, current: &CtEntry, now: u32) -> bool {
    let pk = peer_key(current, key.proto);
    current.expires >= now
        // SAFETY: copied out at once.
        && match unsafe { table.get(pk) }.copied() {
            Some(p) => pairs_with(&p, &pk, key),
            None => false,
        }
}

#[inline(always)]
fn claim_in<C: Ctx, const N: usize>(
    table: &Table<N>,
    ctx: &C,
    program: Program,
    key: &CtKey,
    e: &CtEntry,
    now: u32,
) -> Claim {
    match table.insert(key, e, BPF_NOEXIST as u64) {
        Ok(()) => return Claim::Claimed,
        Err(EEXIST) => {}
        Err(_) => return Claim::Failed,
    }
    let Some(old) = table.get_ptr_mut(key) else {
        return Claim::Taken;
    };
    // SAFETY: a valid map value, copied out.
    let current = unsafe { *old };
    if holds(table, key, &current, now) {
        return Claim::Taken;
    }
    // SAFETY: a valid map value; losing a race with another claimer only costs that one a
    // probe (its own original entry then finds the tuple taken and starts over).
    unsafe { *old = *e };
    counters::event(ctx, program, Event::PortReclaimed);
    Claim::Claimed
}

/// The reply-direction entry of a new flow `key`: replies are rewritten back to the flow's
/// own tuple. Its original-direction entry follows from it by [`peer_entry`].
#[inline(always)]
pub fn new_reply(key: &CtKey, now: u32, ifindex: u32, service_id: u32, kind: u8) -> CtEntry {
    let st = first_state(key.proto);
    rewriting_to(
        &key.reversed(),
        CtEntry {
            expires: now + lifetime(st),
            ifindex,
            service_id,
            state: st,
            flags: kind | flags::REPLY,
            ..Default::default()
        },
    )
}

/// Starts a new flow `key` translated to `to`, whose reply tuple has been claimed with
/// `reply` ([`claim`], [`new_reply`]): writes the original direction's entry, which follows
/// from the reply's, and returns the tuple packets are rewritten to with that entry. If
/// another CPU started the same flow first, the claim is given back and that flow's
/// translation is followed. TCP flows start in HALF_OPEN.
#[inline(always)]
pub fn open(key: &CtKey, to: &CtKey, reply: &CtEntry) -> Result<(CtKey, CtEntry), ()> {
    if key.proto == IPPROTO_TCP {
        open_in(&HALF_OPEN, key, to, reply)
    } else {
        open_in(&CONNTRACK, key, to, reply)
    }
}

#[inline(always)]
fn open_in<const N: usize>(
    table: &Table<N>,
    key: &CtKey,
    to: &CtKey,
    reply: &CtEntry,
) -> Result<(CtKey, CtEntry), ()> {
    let reply_key = &to.reversed();
    let e = peer_entry(reply_key, reply);
    match table.insert(key, e, BPF_NOEXIST as u64) {
        Ok(()) => Ok((e.nat_tuple(key.proto), e)),
        Err(EEXIST) => {
            // SAFETY: copied out at once.
            let won = unsafe { table.get(key) }.copied();
            let tuple = won.map(|w| w.nat_tuple(key.proto));
            // Both may have picked the same tuple (the same flow hashes alike): then the
            // reply entry is the winner's as much as ours.
            if tuple != Some(e.nat_tuple(key.proto)) {
                let _ = table.remove(reply_key);
            }
            match (tuple, won) {
                (Some(t), Some(w)) => Ok((t, w)),
                _ => Err(()),
            }
        }
        Err(_) => {
            let _ = table.remove(reply_key);
            Err(())
        }
    }
}
