//! Taking this node's lease: its own again if it still has one that fits, else the subnet
//! file's if free, else a random free one, each by a transaction that only succeeds when
//! nobody else holds the key, so any number of nodes can join at once.
use std::{collections::HashSet, time::Duration};

use anyhow::{Result, anyhow};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use ipnetwork::Ipv4Network;
use log::{info, warn};
use rand::Rng;

use super::{Lease, LeaseAttrs, LeaseOptions, PeerLease, Registry, subnet_key};
use crate::{config::NetworkConfig, util::one_line};

/// A lease that could not be had.
#[derive(Debug)]
pub enum AcquireError {
    /// Every subnet between SubnetMin and SubnetMax is leased by someone else.
    Exhausted {
        subnets: u32,
    },
    Etcd(anyhow::Error),
}

impl std::fmt::Display for AcquireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcquireError::Exhausted { subnets } => write!(
                f,
                "no free subnet: all {subnets} subnets between SubnetMin and SubnetMax are leased"
            ),
            AcquireError::Etcd(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for AcquireError {}

impl Registry {
    /// Leases a subnet for `attrs.public_ip`: the one it already holds, else `hint` (the
    /// subnet file's) if free, else a random free one. Lost races are retried with another
    /// subnet; the only failures are an exhausted range and etcd errors.
    pub async fn acquire(
        &mut self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
        hint: Option<Ipv4Network>,
        opts: &LeaseOptions,
    ) -> Result<Lease, AcquireError> {
        let value = serde_json::to_string(attrs).map_err(|e| AcquireError::Etcd(e.into()))?;
        let mut lost: HashSet<Ipv4Network> = HashSet::new();
        for attempt in 0.. {
            if attempt > 0 && attempt % 16 == 0 {
                // Heavy contention: give the others a moment.
                let pause = Duration::from_millis(rand::rng().random_range(10..100));
                tokio::time::sleep(pause).await;
            }
            let (leases, _) = self.leases().await.map_err(AcquireError::Etcd)?;
            let mine = leases.iter().find(|l| l.attrs.public_ip == attrs.public_ip);
            if let Some(mine) = mine {
                let retaken = self.take_back(config, mine, attrs, &value, opts).await;
                match retaken.map_err(AcquireError::Etcd)? {
                    Some(lease) => return Ok(lease),
                    None => continue,
                }
            }
            let taken: HashSet<Ipv4Network> = leases.iter().map(|l| l.subnet).collect();
            let candidate = hint
                .filter(|h| config.fits(h) && !taken.contains(h) && !lost.contains(h))
                .or_else(|| random_free(config, &taken, &lost));
            let Some(subnet) = candidate else {
                if lost.is_empty() || taken.len() as u32 >= config.subnet_count() {
                    return Err(AcquireError::Exhausted {
                        subnets: config.subnet_count(),
                    });
                }
                lost.clear();
                continue;
            };
            match self
                .create(&subnet, &value, opts)
                .await
                .map_err(AcquireError::Etcd)?
            {
                Some(etcd_lease) => {
                    return Ok(Lease {
                        subnet,
                        attrs: attrs.clone(),
                        etcd_lease,
                    });
                }
                None => {
                    lost.insert(subnet);
                }
            }
        }
        unreachable!("the acquire loop only ends by returning")
    }

    /// The lease `mine` that `attrs.public_ip` already holds, with a fresh TTL, if it still
    /// fits `config`; else it is released. `None` when it was not taken back (released, or
    /// changed meanwhile): look again.
    async fn take_back(
        &mut self,
        config: &NetworkConfig,
        mine: &PeerLease,
        attrs: &LeaseAttrs,
        value: &str,
        opts: &LeaseOptions,
    ) -> Result<Option<Lease>> {
        if config.fits(&mine.subnet) {
            let retaken = self.retake(mine, value, opts).await?;
            return Ok(retaken.map(|etcd_lease| Lease {
                subnet: mine.subnet,
                attrs: attrs.clone(),
                etcd_lease,
            }));
        }
        info!(
            "releasing lease {} of {}: it no longer fits the network config",
            mine.subnet, attrs.public_ip
        );
        self.delete_if_unchanged(mine).await?;
        Ok(None)
    }

    async fn grant(&mut self, opts: &LeaseOptions) -> Result<i64> {
        let ttl = opts.ttl.as_secs().max(1) as i64;
        let resp = self
            .client
            .lease_grant(ttl, None)
            .await
            .map_err(|e| anyhow!("granting an etcd lease: {}", one_line(&e)))?;
        Ok(resp.id())
    }

    async fn revoke(&mut self, id: i64) {
        if let Err(e) = self.client.lease_revoke(id).await {
            warn!("revoking unused etcd lease {id:x}: {}", one_line(&e));
        }
    }

    /// Creates the key only if nobody has it. `None` when someone else was faster.
    async fn create(
        &mut self,
        subnet: &Ipv4Network,
        value: &str,
        opts: &LeaseOptions,
    ) -> Result<Option<i64>> {
        let key = subnet_key(&self.prefix, subnet);
        let unclaimed = Compare::version(key.as_str(), CompareOp::Equal, 0);
        self.put_with_fresh_lease(&key, unclaimed, value, opts, "creating")
            .await
    }

    /// Takes over our own existing lease with a fresh TTL and our current attributes.
    async fn retake(
        &mut self,
        mine: &PeerLease,
        value: &str,
        opts: &LeaseOptions,
    ) -> Result<Option<i64>> {
        let key = subnet_key(&self.prefix, &mine.subnet);
        let unchanged = Compare::mod_revision(key.as_str(), CompareOp::Equal, mine.mod_revision);
        let id = self
            .put_with_fresh_lease(&key, unchanged, value, opts, "renewing")
            .await?;
        if let Some(id) = id {
            if mine.etcd_lease != 0 && mine.etcd_lease != id {
                self.revoke(mine.etcd_lease).await;
            }
        }
        Ok(id)
    }

    /// Puts `value` at `key` attached to a newly granted etcd lease, if `guard` holds.
    /// Returns the lease id, or `None` (and revokes the unused lease) if it did not.
    async fn put_with_fresh_lease(
        &mut self,
        key: &str,
        guard: Compare,
        value: &str,
        opts: &LeaseOptions,
        what: &str,
    ) -> Result<Option<i64>> {
        let id = self.grant(opts).await?;
        let txn = Txn::new().when([guard]).and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(id)),
        )]);
        let resp = self
            .client
            .txn(txn)
            .await
            .map_err(|e| anyhow!("{what} lease {key}: {}", one_line(&e)))?;
        if resp.succeeded() {
            Ok(Some(id))
        } else {
            self.revoke(id).await;
            Ok(None)
        }
    }

    async fn delete_if_unchanged(&mut self, lease: &PeerLease) -> Result<()> {
        let key = subnet_key(&self.prefix, &lease.subnet);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                lease.mod_revision,
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        self.client
            .txn(txn)
            .await
            .map_err(|e| anyhow!("releasing lease {key}: {}", one_line(&e)))?;
        Ok(())
    }
}

fn random_free(
    config: &NetworkConfig,
    taken: &HashSet<Ipv4Network>,
    lost: &HashSet<Ipv4Network>,
) -> Option<Ipv4Network> {
    let count = config.subnet_count();
    let start = rand::rng().random_range(0..count);
    (0..count)
        .map(|i| config.subnet((start + i) % count))
        .find(|s| !taken.contains(s) && !lost.contains(s))
}
