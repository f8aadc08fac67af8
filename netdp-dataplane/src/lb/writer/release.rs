//! Releasing what a service no longer uses. Frontends go at once; backend ranges, Maglev
//! tables, affinity memberships and ids only after every flip of the batch, so no frontend
//! ever points at something freed.
use std::collections::{BTreeSet, HashSet};

use netdp_common::lb::{AffinityBackendKey, FrontendKey};

use super::{Lb, Stats, Written};

/// Something to give back after the batch.
pub(super) enum Release {
    Range(u32, u32),
    Table(u32),
    Id(u32),
    Member(AffinityBackendKey),
}

impl Lb {
    /// Removes service `name`, releasing everything it holds.
    pub(super) fn remove(
        &mut self,
        name: &str,
        stats: &mut Stats,
        released: &mut Vec<FrontendKey>,
    ) {
        let Some(o) = self.services.remove(name) else {
            return;
        };
        self.release_service(name, &o, None, released);
        stats.removed += 1;
    }

    /// Releases what `old`, a service as it was, holds and its new version `new` (`None`:
    /// the service is gone) does not: its frontends at once (listed in `released` for the
    /// services waiting for them); after the batch's flips, its backend range, Maglev
    /// tables, affinity memberships and id.
    pub(super) fn release_service(
        &mut self,
        name: &str,
        old: &Written,
        new: Option<&Written>,
        released: &mut Vec<FrontendKey>,
    ) {
        let kept = BTreeSet::new();
        // Frontends the service no longer has (or could not rewrite: they must not point
        // at the range about to be freed).
        for key in old.written.difference(new.map_or(&kept, |n| &n.written)) {
            let _ = self.maps.frontends.remove(key);
            self.owners.remove(key);
            released.push(*key);
        }
        for key in old.plan.frontends.keys() {
            if !new.is_some_and(|n| n.plan.frontends.contains_key(key))
                && let Some(w) = self.waiting.get_mut(key)
            {
                w.remove(name);
            }
        }
        let range = new.and_then(|n| n.slots.range);
        if let Some(base) = old.slots.range.filter(|base| Some(*base) != range) {
            self.deferred
                .push(Release::Range(base, old.plan.backends.len() as u32));
        }
        let tables = [
            (&old.slots.maglev, new.and_then(|n| n.slots.maglev.as_ref())),
            (
                &old.slots.maglev_local,
                new.and_then(|n| n.slots.maglev_local.as_ref()),
            ),
        ];
        for (was, now) in tables {
            if let Some(t) = was
                && now.map(|n| n.index) != Some(t.index)
            {
                self.deferred.push(Release::Table(t.index));
            }
        }
        if old.plan.affinity_timeout.is_some() {
            let keep: HashSet<[u8; 4]> = match new {
                Some(n) if n.plan.affinity_timeout.is_some() => {
                    n.plan.backends.iter().map(|b| b.addr).collect()
                }
                _ => HashSet::new(),
            };
            for b in &old.plan.backends {
                if !keep.contains(&b.addr) {
                    self.deferred.push(Release::Member(AffinityBackendKey {
                        service_id: old.slots.id,
                        backend: b.addr,
                    }));
                }
            }
        }
        if new.is_none_or(|n| n.slots.id != old.slots.id) {
            self.deferred.push(Release::Id(old.slots.id));
        }
    }

    pub(super) fn release(&mut self, r: Release) {
        match r {
            Release::Range(base, len) => self.ranges.free(base, len),
            Release::Table(i) => self.tables.free(i),
            Release::Id(i) => self.ids.free(i),
            Release::Member(k) => {
                let _ = self.maps.affinity_backends.remove(&k);
            }
        }
    }

    /// Frees what no frontend points at any more (after all of a batch's flips).
    pub(super) fn flush(&mut self) {
        for r in std::mem::take(&mut self.deferred) {
            self.release(r);
        }
        self.waiting.retain(|_, w| !w.is_empty());
    }
}
