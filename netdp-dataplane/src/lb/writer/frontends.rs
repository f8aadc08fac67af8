//! Writing a service's frontends: the FRONTENDS value a frontend gets, and who may write
//! a frontend that several services ask for (the first; the others wait for it).
use std::{collections::BTreeSet, net::Ipv4Addr};

use netdp_common::lb::{Frontend, FrontendKey, frontend_flags};

use super::{FrontendPlan, Lb, ServicePlan, Slots};

impl Lb {
    /// Writes the frontends of `plan` that no other service owns, pointing at `slots`.
    /// Returns the ones written.
    pub(super) fn write_frontends(
        &mut self,
        name: &str,
        plan: &ServicePlan,
        slots: &Slots,
    ) -> BTreeSet<FrontendKey> {
        let mut written = BTreeSet::new();
        for (key, fp) in &plan.frontends {
            if !self.may_write(name, key) {
                continue;
            }
            let value = frontend_value(
                slots.id,
                slots.range.unwrap_or(0),
                plan,
                fp,
                slots.maglev.as_ref().map(|t| t.index * self.rows),
                slots.maglev_local.as_ref().map(|t| t.index * self.rows),
            );
            match self.maps.frontends.insert(key, value, 0) {
                Ok(()) => {
                    self.owners.insert(*key, name.to_string());
                    if let Some(w) = self.waiting.get_mut(key) {
                        w.remove(name);
                    }
                    written.insert(*key);
                }
                Err(e) => self.report(
                    name,
                    format!(
                        "writing frontend {}:{}: {e} (is FRONTENDS full? raise --lb-frontend-map-size)",
                        Ipv4Addr::from(key.addr),
                        key.port
                    ),
                ),
            }
        }
        written
    }

    /// Whether service `name` may write frontend `key`: no other service owns it. If one
    /// does, `name` waits for it (and is told once).
    fn may_write(&mut self, name: &str, key: &FrontendKey) -> bool {
        let Some(owner) = self.owners.get(key).filter(|owner| *owner != name) else {
            return true;
        };
        let msg = format!(
            "{}:{}/{} is already served by {owner}; not programming it",
            Ipv4Addr::from(key.addr),
            key.port,
            crate::lb::proto_name(key.proto)
        );
        self.waiting
            .entry(*key)
            .or_default()
            .insert(name.to_string());
        self.report(name, msg);
        false
    }
}

pub(super) fn frontend_value(
    id: u32,
    base: u32,
    plan: &ServicePlan,
    fp: &FrontendPlan,
    maglev_row: Option<u32>,
    maglev_local_row: Option<u32>,
) -> Frontend {
    let mut flags = 0;
    // A Local frontend only uses Maglev when its local table exists too.
    let maglev = maglev_row.is_some()
        && (!fp.local_only || plan.local_count == 0 || maglev_local_row.is_some());
    if maglev {
        flags |= frontend_flags::MAGLEV;
    }
    if plan.affinity_timeout.is_some() {
        flags |= frontend_flags::AFFINITY;
    }
    if fp.external {
        flags |= frontend_flags::EXTERNAL;
    }
    if fp.local_only {
        flags |= frontend_flags::LOCAL_ONLY;
    }
    if fp.external && fp.dsr {
        flags |= frontend_flags::DSR;
    }
    Frontend {
        service_id: id,
        backends: base,
        count: plan.backends.len() as u16,
        local_count: plan.local_count,
        target_port: fp.target_port,
        flags,
        maglev: if maglev { maglev_row.unwrap_or(0) } else { 0 },
        maglev_local: if maglev && fp.local_only {
            maglev_local_row.unwrap_or(0)
        } else {
            0
        },
        affinity_timeout: plan.affinity_timeout.unwrap_or(0),
    }
}
