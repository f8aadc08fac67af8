//! Taking over the maps a previous agent programmed: services whose maps already match
//! their plan are adopted as they are (no rewrite, so no flow notices the restart); the
//! others are programmed around them, and leftovers removed.
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use netdp_common::lb::{AffinityBackendKey, Frontend, FrontendKey, frontend_flags};

use super::{Lb, ServicePlan, Slots, Stats, Table, Written, addrs, frontend_value};

impl Lb {
    /// Takes over what a previous agent programmed: services whose maps already match
    /// their plan are adopted untouched, the others programmed, leftovers removed.
    pub fn adopt(&mut self, plans: Vec<(String, ServicePlan)>) -> Stats {
        let existing: HashMap<FrontendKey, Frontend> =
            self.maps.frontends.iter().filter_map(|r| r.ok()).collect();
        let tables_valid = self.maps.config().maglev_table_size == self.table_size;
        for fe in existing.values() {
            if fe.count > 0 {
                self.ranges.reserve(fe.backends, fe.count as u32);
            }
            if tables_valid && fe.flags & frontend_flags::MAGLEV != 0 {
                self.tables.reserve(fe.maglev / self.rows);
                if fe.flags & frontend_flags::LOCAL_ONLY != 0 && fe.local_count > 0 {
                    self.tables.reserve(fe.maglev_local / self.rows);
                }
            }
            self.ids.reserve(fe.service_id);
        }
        self.ranges.finish_reserve();
        self.tables.finish_reserve();
        self.ids.finish_reserve();

        let mut stats = Stats::default();
        let mut adopted_ids = HashSet::new();
        let mut pending = Vec::new();
        for (name, plan) in plans {
            match self.try_adopt(&plan, &existing, tables_valid, &adopted_ids) {
                Some(p) => {
                    adopted_ids.insert(p.slots.id);
                    for k in &p.written {
                        self.owners.insert(*k, name.clone());
                    }
                    if plan.affinity_timeout.is_some() {
                        self.add_members(p.slots.id, &plan.backends);
                    }
                    self.services.insert(name, p);
                    stats.adopted += 1;
                }
                None => pending.push((name, plan)),
            }
        }
        let more = self.apply(pending.into_iter().map(|(n, p)| (n, Some(p))).collect());
        stats.added += more.added;
        stats.failed += more.failed;

        // Leftovers of services that are gone or were reprogrammed.
        let mut freed_ranges = HashSet::new();
        let mut freed_tables = HashSet::new();
        for (key, fe) in &existing {
            if !self.owners.contains_key(key) {
                let _ = self.maps.frontends.remove(key);
                stats.removed += 1;
            }
            if adopted_ids.contains(&fe.service_id) {
                continue;
            }
            if fe.count > 0 && freed_ranges.insert(fe.backends) {
                self.ranges.free(fe.backends, fe.count as u32);
            }
            if tables_valid && fe.flags & frontend_flags::MAGLEV != 0 {
                if freed_tables.insert(fe.maglev) {
                    self.tables.free(fe.maglev / self.rows);
                }
                if fe.flags & frontend_flags::LOCAL_ONLY != 0
                    && fe.local_count > 0
                    && freed_tables.insert(fe.maglev_local)
                {
                    self.tables.free(fe.maglev_local / self.rows);
                }
            }
        }
        let mut in_use: HashSet<u32> = self.services.values().map(|p| p.slots.id).collect();
        for fe in existing.values() {
            // Freed once each: the set grows as ids are handed back.
            if in_use.insert(fe.service_id) {
                self.ids.free(fe.service_id);
            }
        }
        // Affinity memberships of services that no longer have them.
        let want: HashSet<AffinityBackendKey> = self
            .services
            .values()
            .filter(|p| p.plan.affinity_timeout.is_some())
            .flat_map(|p| {
                p.plan.backends.iter().map(|b| AffinityBackendKey {
                    service_id: p.slots.id,
                    backend: b.addr,
                })
            })
            .collect();
        let stale: Vec<AffinityBackendKey> = self
            .maps
            .affinity_backends
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !want.contains(k))
            .collect();
        for k in stale {
            let _ = self.maps.affinity_backends.remove(&k);
        }
        stats
    }

    fn try_adopt(
        &self,
        plan: &ServicePlan,
        existing: &HashMap<FrontendKey, Frontend>,
        tables_valid: bool,
        taken_ids: &HashSet<u32>,
    ) -> Option<Written> {
        let first = existing.get(plan.frontends.keys().next()?)?;
        if taken_ids.contains(&first.service_id) {
            return None;
        }
        let count = plan.backends.len();
        if first.count as usize != count || first.local_count != plan.local_count {
            return None;
        }
        let uses_maglev = plan.maglev && count > 0;
        if uses_maglev && !tables_valid {
            return None;
        }
        let local_table =
            uses_maglev && plan.local_count > 0 && plan.frontends.values().any(|f| f.local_only);
        for (key, fp) in &plan.frontends {
            let fe = existing.get(key)?;
            let want = frontend_value(
                first.service_id,
                first.backends,
                plan,
                fp,
                uses_maglev.then_some(first.maglev),
                local_table.then_some(first.maglev_local),
            );
            if *fe != want {
                return None;
            }
        }
        for (i, b) in plan.backends.iter().enumerate() {
            if self
                .maps
                .backends
                .get(&(first.backends + i as u32), 0)
                .ok()?
                != *b
            {
                return None;
            }
        }
        let table = |row: u32, backends: Vec<Ipv4Addr>| Table {
            index: row / self.rows,
            backends,
            entries: None,
        };
        let all = addrs(&plan.backends);
        let local = all[..plan.local_count as usize].to_vec();
        Some(Written {
            plan: plan.clone(),
            slots: Slots {
                id: first.service_id,
                range: (count > 0).then_some(first.backends),
                maglev: uses_maglev.then(|| table(first.maglev, all)),
                maglev_local: local_table.then(|| table(first.maglev_local, local)),
            },
            written: plan.frontends.keys().copied().collect(),
        })
    }
}
