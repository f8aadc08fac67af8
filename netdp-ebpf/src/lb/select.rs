//! Frontend lookup and backend selection: uniformly at random (kube-proxy's behaviour) or
//! by Maglev table (consistent hashing), optionally sticky per client (session affinity).
use aya_ebpf::helpers::bpf_get_prandom_u32;
use netdp_common::{
    conntrack::CtKey,
    lb::{
        Affinity, AffinityBackendKey, AffinityKey, Backend, Frontend, FrontendKey, MAGLEV_LANES,
        frontend_flags, scope,
    },
};

use crate::maps::{AFFINITY, AFFINITY_BACKENDS, BACKENDS, FRONTENDS, MAGLEV, MAGLEV_TABLE_SIZE};

/// The frontend a packet's destination matches, if any.
#[inline(always)]
pub fn frontend(key: &CtKey) -> Option<Frontend> {
    let fk = FrontendKey {
        addr: key.daddr,
        port: key.dport,
        proto: key.proto,
        pad: 0,
    };
    // SAFETY: copied out at once.
    unsafe { FRONTENDS.get(fk) }.copied()
}

/// Picks the backend for a new flow. `local_only`: among the local backends only. `None`
/// when the maps are inconsistent (the caller counts it).
#[inline(always)]
pub fn select(fe: &Frontend, key: &CtKey, local_only: bool, now: u32) -> Option<Backend> {
    let (count, table, scope) = if local_only {
        (fe.local_count as u32, fe.maglev_local, scope::LOCAL)
    } else {
        (fe.count as u32, fe.maglev, scope::ALL)
    };
    if fe.flags & frontend_flags::AFFINITY == 0 {
        return pick(fe, key, count, table);
    }
    let akey = AffinityKey {
        service_id: fe.service_id,
        client: key.saddr,
        target_port: fe.target_port,
        proto: key.proto,
        scope,
    };
    if let Some(a) = AFFINITY.get_ptr_mut(akey) {
        // SAFETY: a valid map value, copied out.
        let prev = unsafe { *a };
        let member = AffinityBackendKey {
            service_id: fe.service_id,
            backend: prev.backend,
        };
        if now.wrapping_sub(prev.last_used) <= fe.affinity_timeout {
            // SAFETY: copied out at once.
            if let Some(flags) = unsafe { AFFINITY_BACKENDS.get(member) }.copied() {
                // SAFETY: a valid map value; a racing writer stores the same kind of value.
                unsafe { (*a).last_used = now };
                return Some(Backend {
                    addr: prev.backend,
                    flags,
                });
            }
        }
    }
    let be = pick(fe, key, count, table)?;
    let _ = AFFINITY.insert(
        akey,
        Affinity {
            backend: be.addr,
            last_used: now,
        },
        0,
    );
    Some(be)
}

#[inline(always)]
fn pick(fe: &Frontend, key: &CtKey, count: u32, table: u32) -> Option<Backend> {
    if count == 0 {
        return None;
    }
    let slot = if fe.flags & frontend_flags::MAGLEV != 0 {
        let size = MAGLEV_TABLE_SIZE.load();
        if size == 0 {
            return None;
        }
        let i = key.hash() % size;
        // SAFETY: copied out at once.
        let row = MAGLEV.get_ptr(table + i / MAGLEV_LANES)?;
        // The row as one little-endian word (indexing the array makes pointer arithmetic
        // the verifier refuses): lane k is bits 16k..16k+16.
        // SAFETY: a valid map value of 8 bytes, 8-byte aligned.
        let word = unsafe { *(row as *const u64) };
        ((word >> (16 * (i & (MAGLEV_LANES - 1)))) & 0xffff) as u32
    } else {
        // SAFETY: no preconditions.
        (unsafe { bpf_get_prandom_u32() }) % count
    };
    if slot >= count {
        return None;
    }
    BACKENDS.get(fe.backends + slot).copied()
}
