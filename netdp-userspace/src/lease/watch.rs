//! Following everybody's leases: the prefix watch of `<prefix>/subnets/`, decoded into
//! lease events.
use anyhow::Result;
use ipnetwork::Ipv4Network;

use super::{PeerLease, Registry};
use crate::etcd::{
    decode::{Decoded, Event, decode},
    watch::PrefixWatch,
};

/// What changed in the set of leases: `Upsert(subnet, lease)` or `Removed(subnet)`.
pub type LeaseEvent = Event<Ipv4Network, PeerLease>;

/// One step of a [`LeaseWatch`]: lease events, or (after the watch had to start over) the
/// complete current set. [`Decoded::apply_to`] applies it to a set of leases by subnet.
pub type WatchUpdate = Decoded<Ipv4Network, PeerLease>;

/// A lease watch that never goes stale (see [`PrefixWatch`]).
pub struct LeaseWatch(PrefixWatch);

impl LeaseWatch {
    pub fn new(revision: i64) -> Self {
        LeaseWatch(PrefixWatch::new("lease", revision))
    }

    pub fn revision(&self) -> i64 {
        self.0.revision()
    }

    /// Waits for the next change. Errors mean etcd is unreachable; call again (after a
    /// pause) to resume from where the watch left off.
    pub async fn next(&mut self, registry: &mut Registry) -> Result<WatchUpdate> {
        let prefix = registry.subnets_prefix();
        loop {
            let update = self.0.next(&mut registry.client, &prefix).await?;
            match decode(&mut registry.decoder, update) {
                Decoded::Events(events) if events.is_empty() => continue,
                decoded => return Ok(decoded),
            }
        }
    }
}
