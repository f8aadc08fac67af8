//! Maglev tables in the MAGLEV array: computed, stabilized against the table they
//! replace, and written to a free slot (or the service falls back to random selection).
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use log::warn;
use netdp_common::lb::{MAGLEV_LANES, MaglevRow};

use super::{Lb, Release, Table};
use crate::maglev;

impl Lb {
    /// The Maglev table over `backends`, kept if `old` already is one, else computed (and
    /// stabilized against `old`) into a fresh slot. `None` when not wanted, or when every
    /// table is taken (the service then falls back to random selection).
    pub(super) fn table(
        &mut self,
        want: bool,
        backends: &[Ipv4Addr],
        old: Option<Table>,
        fresh: &mut Vec<Release>,
    ) -> Result<Option<Table>> {
        if !want {
            if let Some(t) = old {
                self.deferred.push(Release::Table(t.index));
            }
            return Ok(None);
        }
        if let Some(t) = &old
            && t.backends == backends
        {
            return Ok(old);
        }
        let mut entries = maglev::table(backends, self.table_size);
        if let Some(o) = &old {
            let before = match &o.entries {
                Some(e) => e.clone(),
                None => self.read_table(o.index),
            };
            maglev::stabilize(&mut entries, backends, &before, &o.backends);
        }
        let Some(index) = self.tables.alloc() else {
            warn!(
                "all {} Maglev tables are in use; a service falls back to random selection \
                 (raise --maglev-tables)",
                self.tables.capacity()
            );
            if let Some(t) = old {
                self.deferred.push(Release::Table(t.index));
            }
            return Ok(None);
        };
        fresh.push(Release::Table(index));
        let base = index * self.rows;
        for (r, chunk) in entries.chunks(MAGLEV_LANES as usize).enumerate() {
            let mut row = MaglevRow::default();
            row.slots[..chunk.len()].copy_from_slice(chunk);
            self.maps
                .maglev
                .set(base + r as u32, row, 0)
                .context("writing MAGLEV")?;
        }
        if let Some(t) = old {
            self.deferred.push(Release::Table(t.index));
        }
        Ok(Some(Table {
            index,
            backends: backends.to_vec(),
            entries: Some(entries),
        }))
    }

    fn read_table(&self, index: u32) -> Vec<u16> {
        let base = index * self.rows;
        let mut out = Vec::with_capacity(self.table_size as usize);
        for r in 0..self.rows {
            let row = self.maps.maglev.get(&(base + r), 0).unwrap_or_default();
            out.extend_from_slice(&row.slots);
        }
        out.truncate(self.table_size as usize);
        out
    }
}
