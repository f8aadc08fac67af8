//! The drop-event stream behind `netdp monitor`: registering as a listener in MONITOR (so
//! the programs start writing EVENTS) for as long as the handle lives, and reading events.
use anyhow::{Context, Result};
use aya::maps::{Array, MapData, RingBuf};
use netdp_common::{
    map_names,
    monitor::{DropEvent, LISTENERS},
};

use crate::{Pins, open_pinned};

pub struct Monitor {
    listeners: Array<MapData, u32>,
    events: RingBuf<MapData>,
}

impl Monitor {
    /// Opens the node's maps and counts this listener in. Two listeners starting at the
    /// same instant may both read the old count; the agent resets it when it starts.
    pub fn open(pins: &Pins) -> Result<Self> {
        let mut listeners = Array::try_from(open_pinned(pins, map_names::MONITOR)?)
            .context("MONITOR has an unexpected type")?;
        let events = RingBuf::try_from(open_pinned(pins, map_names::EVENTS)?)
            .context("EVENTS has an unexpected type")?;
        let n: u32 = listeners.get(&LISTENERS, 0).unwrap_or(0);
        listeners
            .set(LISTENERS, n.saturating_add(1), 0)
            .context("turning drop events on")?;
        Ok(Monitor { listeners, events })
    }

    /// The next event already written, if any (it does not wait).
    pub fn next_event(&mut self) -> Option<DropEvent> {
        let item = self.events.next()?;
        (item.len() >= size_of::<DropEvent>())
            // SAFETY: the programs write whole DropEvents; read unaligned from the ring.
            .then(|| unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let n: u32 = self.listeners.get(&LISTENERS, 0).unwrap_or(1);
        let _ = self.listeners.set(LISTENERS, n.saturating_sub(1), 0);
    }
}

/// Turns drop events off whoever left them on (the agent, when it starts).
pub fn reset(pins: &Pins) -> Result<()> {
    let mut listeners: Array<MapData, u32> =
        Array::try_from(open_pinned(pins, map_names::MONITOR)?)?;
    listeners.set(LISTENERS, 0, 0)?;
    Ok(())
}
