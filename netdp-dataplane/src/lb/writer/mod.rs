//! The writer of the service maps ([`Lb`]): service plans become map contents, one service
//! at a time and without disturbing any other. A changed backend set is written to fresh
//! BACKENDS slots (and fresh Maglev tables, [`tables`]) first, then each frontend is flipped
//! to it ([`frontends`]), and only then is the old range freed ([`release`]). A restarted
//! agent adopts what the previous one wrote instead of rewriting it ([`adopt`]).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::IterableMap;
use log::{info, warn};
use netdp_common::lb::{AffinityBackendKey, Backend, FrontendKey, LbConfig, maglev_rows};

mod adopt;
mod frontends;
mod release;
mod tables;

use frontends::frontend_value;
use release::Release;

use super::{
    LbMaps,
    alloc::{IndexAllocator, RangeAllocator},
};
use crate::maglev;

/// How one frontend of a service behaves on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendPlan {
    /// Host byte order.
    pub target_port: u16,
    /// Node port, external or load-balancer IP.
    pub external: bool,
    /// externalTrafficPolicy Local.
    pub local_only: bool,
    /// Direct server return to remote backends (with `external`).
    pub dsr: bool,
}

/// Everything one service needs from this node's dataplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    pub frontends: BTreeMap<FrontendKey, FrontendPlan>,
    /// Ready backends, the `local_count` local ones first.
    pub backends: Vec<Backend>,
    pub local_count: u16,
    pub maglev: bool,
    /// sessionAffinity ClientIP timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

/// What an [`Lb::apply`] or [`Lb::adopt`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
    pub adopted: usize,
    pub failed: usize,
}

/// A Maglev table in MAGLEV.
#[derive(Debug)]
struct Table {
    index: u32,
    backends: Vec<Ipv4Addr>,
    /// The entries, once known (tables adopted from a previous agent are read lazily).
    entries: Option<Vec<u16>>,
}

/// Where a service's backends are written: its id, BACKENDS range and Maglev tables.
#[derive(Debug)]
struct Slots {
    id: u32,
    range: Option<u32>,
    maglev: Option<Table>,
    maglev_local: Option<Table>,
}

/// A service as written to the maps.
#[derive(Debug)]
struct Written {
    plan: ServicePlan,
    slots: Slots,
    /// Frontends this service owns and has written.
    written: BTreeSet<FrontendKey>,
}

/// The agent's view of the service maps of this node.
pub struct Lb {
    maps: LbMaps,
    table_size: u32,
    rows: u32,
    services: HashMap<String, Written>,
    owners: HashMap<FrontendKey, String>,
    /// Services that want a frontend another one owns.
    waiting: HashMap<FrontendKey, BTreeSet<String>>,
    ranges: RangeAllocator,
    tables: IndexAllocator,
    ids: IndexAllocator,
    deferred: Vec<Release>,
    reported: HashSet<String>,
}

fn addrs(backends: &[Backend]) -> Vec<Ipv4Addr> {
    backends.iter().map(|b| Ipv4Addr::from(b.addr)).collect()
}

impl Lb {
    /// Capacities come from the maps themselves (pinned maps keep the size they were
    /// created with).
    pub fn new(maps: LbMaps, table_size: u32) -> Result<Self> {
        if !maglev::is_prime(table_size) {
            bail!("the Maglev table size {table_size} is not a prime");
        }
        let rows = maglev_rows(table_size);
        let backends = maps.backends.len();
        let tables = maps.maglev.len() / rows;
        let frontends = maps
            .frontends
            .map()
            .info()
            .map(|i| i.max_entries())
            .unwrap_or(0);
        Ok(Lb {
            table_size,
            rows,
            services: HashMap::new(),
            owners: HashMap::new(),
            waiting: HashMap::new(),
            ranges: RangeAllocator::new(backends),
            tables: IndexAllocator::new(0, tables),
            ids: IndexAllocator::new(1, frontends.max(1)),
            deferred: Vec::new(),
            reported: HashSet::new(),
            maps,
        })
    }

    pub fn maps(&self) -> &LbMaps {
        &self.maps
    }

    /// Services programmed.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The number a programmed service goes by in the maps.
    pub fn service_id(&self, name: &str) -> Option<u32> {
        self.services.get(name).map(|p| p.slots.id)
    }

    /// BACKENDS slots in use and available.
    pub fn backend_slots(&self) -> (u64, u32) {
        (self.ranges.in_use(), self.ranges.capacity())
    }

    /// Writes the per-node settings.
    pub fn set_config(&mut self, snat_addr: Ipv4Addr, netns_cookie: u64) -> Result<()> {
        let cfg = LbConfig {
            netns_cookie,
            snat_addr: snat_addr.octets(),
            // Masquerading's range, above the kernel's ephemeral ports. The two never claim
            // the same reply tuple: source NAT uses the gateway address, masquerading the
            // underlay's.
            snat_port_min: netdp_common::nat::PORT_MIN,
            snat_port_max: netdp_common::nat::PORT_MAX,
            maglev_table_size: self.table_size,
            pad: 0,
        };
        self.maps.config.set(0, cfg, 0).context("writing LB_CONFIG")
    }

    /// Applies changes (`None` removes the service). One service failing (a full map, say)
    /// is logged and leaves the others alone.
    pub fn apply(&mut self, changes: Vec<(String, Option<ServicePlan>)>) -> Stats {
        let mut stats = Stats::default();
        let mut released = Vec::new();
        for (name, plan) in changes {
            match plan {
                Some(plan) => self.upsert(&name, plan, &mut stats, &mut released),
                None => self.remove(&name, &mut stats, &mut released),
            }
        }
        // Frontends given up may be wanted by a service that lost the race for them.
        let mut seen = HashSet::new();
        while let Some(key) = released.pop() {
            let Some(name) = self
                .waiting
                .get(&key)
                .and_then(|w| w.iter().next().cloned())
            else {
                continue;
            };
            if !seen.insert((key, name.clone())) {
                continue;
            }
            if let Some(plan) = self.services.get(&name).map(|p| p.plan.clone()) {
                let mut s = Stats::default();
                self.upsert(&name, plan, &mut s, &mut released);
            }
        }
        self.flush();
        stats
    }

    fn report(&mut self, name: &str, msg: String) {
        if self.reported.insert(format!("{name}: {msg}")) {
            warn!("service {name}: {msg}");
        }
    }

    fn upsert(
        &mut self,
        name: &str,
        plan: ServicePlan,
        stats: &mut Stats,
        released: &mut Vec<FrontendKey>,
    ) {
        let old = match self.services.remove(name) {
            Some(o) if o.plan == plan && o.written.len() == plan.frontends.len() => {
                self.services.insert(name.to_string(), o);
                stats.unchanged += 1;
                return;
            }
            other => other,
        };
        let existed = old.is_some();
        match self.write(name, plan, old, released) {
            Ok(p) => {
                self.services.insert(name.to_string(), p);
                if existed {
                    stats.updated += 1;
                } else {
                    stats.added += 1;
                }
            }
            Err((e, old)) => {
                stats.failed += 1;
                self.report(name, format!("{e:#}"));
                if let Some(o) = old {
                    self.services.insert(name.to_string(), o);
                }
            }
        }
    }

    /// Writes `plan`: its backends first, then its frontends, flipped to them, then what
    /// `old` held and the new version does not is released. On error nothing that `old`
    /// uses has been touched, and `old` is handed back.
    #[allow(clippy::result_large_err)]
    fn write(
        &mut self,
        name: &str,
        plan: ServicePlan,
        mut old: Option<Written>,
        released: &mut Vec<FrontendKey>,
    ) -> std::result::Result<Written, (anyhow::Error, Option<Written>)> {
        let mut fresh: Vec<Release> = Vec::new();
        let slots = match self.write_backends(&plan, old.as_mut(), &mut fresh) {
            Ok(slots) => slots,
            Err(e) => {
                for r in fresh {
                    self.release(r);
                }
                return Err((e, old));
            }
        };
        // From here on the new backends are in place; flip the frontends.
        let written = self.write_frontends(name, &plan, &slots);
        let new = Written {
            plan,
            slots,
            written,
        };
        if let Some(o) = old {
            self.release_service(name, &o, Some(&new), released);
        }
        Ok(new)
    }

    /// Id, backend range and Maglev tables for `plan`, reusing what `old` has where nothing
    /// changed. What is newly taken is listed in `fresh`.
    fn write_backends(
        &mut self,
        plan: &ServicePlan,
        old: Option<&mut Written>,
        fresh: &mut Vec<Release>,
    ) -> Result<Slots> {
        let n = plan.backends.len();
        if n > u16::MAX as usize || plan.local_count as usize > n {
            bail!("{n} backends is more than a service can have");
        }
        let id = match old.as_ref().map(|o| o.slots.id) {
            Some(id) => id,
            None => {
                let id = self
                    .ids
                    .alloc()
                    .ok_or_else(|| anyhow!("out of service ids"))?;
                fresh.push(Release::Id(id));
                id
            }
        };
        let same = old.as_ref().is_some_and(|o| {
            o.plan.backends == plan.backends && o.slots.range.is_some() == (n > 0)
        });
        let range = if n == 0 {
            None
        } else if same {
            old.as_ref().and_then(|o| o.slots.range)
        } else {
            let base = self.ranges.alloc(n as u32).ok_or_else(|| {
                anyhow!(
                    "BACKENDS is full ({} of {} slots in use); raise --lb-backend-map-size",
                    self.ranges.in_use(),
                    self.ranges.capacity()
                )
            })?;
            fresh.push(Release::Range(base, n as u32));
            for (i, b) in plan.backends.iter().enumerate() {
                self.maps
                    .backends
                    .set(base + i as u32, b, 0)
                    .context("writing BACKENDS")?;
            }
            Some(base)
        };
        if plan.affinity_timeout.is_some() {
            self.add_members(id, &plan.backends);
        }
        let (old_all, old_local) = match old {
            Some(o) => (o.slots.maglev.take(), o.slots.maglev_local.take()),
            None => (None, None),
        };
        let all = addrs(&plan.backends);
        let want_all = plan.maglev && n > 0;
        let want_local =
            want_all && plan.local_count > 0 && plan.frontends.values().any(|f| f.local_only);
        let maglev = self.table(want_all, &all, old_all, fresh)?;
        let local = all[..plan.local_count as usize].to_vec();
        let maglev_local = match maglev {
            Some(_) => self.table(want_local, &local, old_local, fresh)?,
            None => None,
        };
        Ok(Slots {
            id,
            range,
            maglev,
            maglev_local,
        })
    }

    fn add_members(&mut self, id: u32, backends: &[Backend]) {
        for b in backends {
            let key = AffinityBackendKey {
                service_id: id,
                backend: b.addr,
            };
            let _ = self.maps.affinity_backends.insert(key, b.flags, 0);
        }
    }

    /// Logs a summary line.
    pub fn log_stats(&self, what: &str, stats: &Stats, elapsed: std::time::Duration) {
        let (used, cap) = self.backend_slots();
        info!(
            "services {what}: {} added, {} updated, {} removed, {} unchanged, {} adopted, {} failed \
             in {elapsed:.1?}; {} services, {used}/{cap} backend slots",
            stats.added,
            stats.updated,
            stats.removed,
            stats.unchanged,
            stats.adopted,
            stats.failed,
            self.len()
        );
    }
}
