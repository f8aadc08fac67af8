//! Liveness and readiness. Live: the agent's loops keep beating. Ready: the node holds its
//! lease, its programs are attached, and the first sync of leases and services is done, so
//! a pod scheduled here gets a working network and every service.
use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

/// How long the agent's loops may go without a beat before it is reported not live.
pub const STALL: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Health {
    lease: AtomicBool,
    attached: AtomicBool,
    leases_synced: AtomicBool,
    services_synced: AtomicBool,
    /// Unix seconds: the last beat, and when the node's lease expires.
    beat: AtomicU64,
    lease_expiry: AtomicU64,
    /// The clusters of the mesh and where each stands (the agent's `mesh`).
    clusters: std::sync::Mutex<Value>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One readiness check and whether it passes.
pub type Check = (&'static str, bool);

impl Health {
    pub fn new() -> Self {
        let h = Health::default();
        h.beat();
        h
    }

    /// The loops are alive (called on every pass of the agent's main loop).
    pub fn beat(&self) {
        self.beat.store(unix_now(), Ordering::Relaxed);
    }

    /// The node holds its lease until `expiry` (or lost it: `None`).
    pub fn set_lease(&self, expiry: Option<SystemTime>) {
        let secs = expiry
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        self.lease_expiry.store(secs, Ordering::Relaxed);
        self.lease.store(expiry.is_some(), Ordering::Relaxed);
    }

    pub fn set_attached(&self) {
        self.attached.store(true, Ordering::Relaxed);
    }

    pub fn set_leases_synced(&self) {
        self.leases_synced.store(true, Ordering::Relaxed);
    }

    pub fn set_clusters(&self, clusters: Value) {
        if let Ok(mut c) = self.clusters.lock() {
            *c = clusters;
        }
    }

    pub fn set_services_synced(&self) {
        self.services_synced.store(true, Ordering::Relaxed);
    }

    /// Seconds until the node's lease expires, if it holds one.
    pub fn lease_expires_in(&self) -> Option<i64> {
        self.lease
            .load(Ordering::Relaxed)
            .then(|| self.lease_expiry.load(Ordering::Relaxed) as i64 - unix_now() as i64)
    }

    pub fn live(&self) -> bool {
        unix_now().saturating_sub(self.beat.load(Ordering::Relaxed)) <= STALL.as_secs()
    }

    pub fn checks(&self) -> [Check; 5] {
        [
            ("live", self.live()),
            ("lease held", self.lease.load(Ordering::Relaxed)),
            ("programs attached", self.attached.load(Ordering::Relaxed)),
            ("leases synced", self.leases_synced.load(Ordering::Relaxed)),
            (
                "services synced",
                self.services_synced.load(Ordering::Relaxed),
            ),
        ]
    }

    pub fn ready(&self) -> bool {
        self.checks().iter().all(|(_, ok)| *ok)
    }

    /// Everything above, for `/status` and `netdp status`.
    pub fn status(&self) -> Value {
        json!({
            "ready": self.ready(),
            "checks": self.checks().iter().map(|(name, ok)| json!({"check": name, "ok": ok})).collect::<Vec<_>>(),
            "leaseExpiresInSeconds": self.lease_expires_in(),
            "clusters": self.clusters.lock().map(|c| c.clone()).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes() {
        let h = Health::new();
        assert!(h.live() && !h.ready());
        h.set_lease(Some(SystemTime::now() + Duration::from_secs(3600)));
        h.set_attached();
        h.set_leases_synced();
        assert!(!h.ready(), "services not synced yet");
        h.set_services_synced();
        assert!(h.ready());
        let left = h.lease_expires_in().unwrap_or(0);
        assert!((3590..=3600).contains(&left), "{left}");
        h.set_lease(None);
        assert!(!h.ready() && h.lease_expires_in().is_none());
        h.beat
            .store(unix_now() - STALL.as_secs() - 5, Ordering::Relaxed);
        assert!(!h.live());
    }
}
