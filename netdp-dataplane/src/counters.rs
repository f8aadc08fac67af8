//! Reading the COUNTERS map: per-CPU slots summed per (program, reason) and per (program,
//! event).
use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use netdp_common::{
    counters::{CounterValue, Event, Program, Reason, event_index, index},
    map_names,
};

use super::{Pins, open_pinned};

pub struct CounterMap(PerCpuArray<MapData, CounterValue>);

/// One non-zero counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub program: Program,
    pub reason: Reason,
    pub packets: u64,
    pub bytes: u64,
}

/// One event that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventCount {
    pub program: Program,
    pub event: Event,
    pub count: u64,
}

impl CounterMap {
    pub fn from_map(map: Map) -> Result<Self> {
        Ok(CounterMap(
            PerCpuArray::try_from(map).context("COUNTERS has an unexpected type")?,
        ))
    }

    pub fn open(pins: &Pins) -> Result<Self> {
        Self::from_map(open_pinned(pins, map_names::COUNTERS)?)
    }

    pub fn get(&self, program: Program, reason: Reason) -> Result<CounterValue> {
        self.slot(index(program, reason))
    }

    /// How often `event` happened in `program`.
    pub fn event(&self, program: Program, event: Event) -> Result<u64> {
        Ok(self.slot(event_index(program, event))?.packets)
    }

    fn slot(&self, slot: u32) -> Result<CounterValue> {
        let per_cpu = self.0.get(&slot, 0).context("reading COUNTERS")?;
        Ok(per_cpu
            .iter()
            .fold(CounterValue::default(), |acc, v| CounterValue {
                packets: acc.packets + v.packets,
                bytes: acc.bytes + v.bytes,
            }))
    }

    /// Every counter that is not zero.
    pub fn all(&self) -> Result<Vec<Count>> {
        let mut out = Vec::new();
        for program in Program::ALL {
            for reason in Reason::ALL {
                let v = self.get(program, reason)?;
                if v.packets > 0 {
                    out.push(Count {
                        program,
                        reason,
                        packets: v.packets,
                        bytes: v.bytes,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Every event that happened.
    pub fn events(&self) -> Result<Vec<EventCount>> {
        let mut out = Vec::new();
        for program in Program::ALL {
            for event in Event::ALL {
                let count = self.event(program, event)?;
                if count > 0 {
                    out.push(EventCount {
                        program,
                        event,
                        count,
                    });
                }
            }
        }
        Ok(out)
    }
}
