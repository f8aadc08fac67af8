//! Taking this node's lease: its own again if it still has one that fits, else the subnet
//! file's if free, else a random free one, each by a transaction that only succeeds when
//! nobody else holds the key, so any number of nodes can join at once.
//!
//! "Its own" is a lease the node can show it wrote ([`ownership`]), not merely one with its
//! PublicIP: anyone who can write to etcd can put a lease with our PublicIP at a subnet of
//! their choosing, and Flannel, which takes back any such lease, would adopt it.
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
    /// A lease claims this node's PublicIP but is not provably this node's.
    Claimed {
        key: String,
        public_ip: std::net::Ipv4Addr,
        why: String,
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
            AcquireError::Claimed {
                key,
                public_ip,
                why,
            } => write!(
                f,
                "lease {key} claims this node's PublicIP {public_ip} but {why}: not adopting it. \
                 If it is this node's from before, delete it (etcdctl del {key}); else give the \
                 node that wrote it its own PublicIP (or wait for it to expire)"
            ),
            AcquireError::Etcd(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for AcquireError {}

impl Registry {
    /// Leases a subnet for `attrs.public_ip`: the one it already holds, else `hint` (the
    /// subnet file's) if free, else a random free one. Lost races are retried with another
    /// subnet. Fails when the range is exhausted, on etcd errors, and when a lease with
    /// `attrs.public_ip` exists that is not provably ours ([`ownership`]): leasing a
    /// second subnet for the same PublicIP would only make the peers reject one of them.
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
            if let Some(mine) = self.own_lease(&leases, attrs, hint).await? {
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

    /// Of the leases with our PublicIP, the one to take back (the subnet file's, else the
    /// oldest); others that are ours too are released. `None` when there is none; an
    /// error when all of them are someone else's.
    async fn own_lease<'a>(
        &mut self,
        leases: &'a [PeerLease],
        attrs: &LeaseAttrs,
        hint: Option<Ipv4Network>,
    ) -> Result<Option<&'a PeerLease>, AcquireError> {
        let mut mine = Vec::new();
        let mut foreign = None;
        for lease in leases
            .iter()
            .filter(|l| l.attrs.public_ip == attrs.public_ip)
        {
            match ownership(lease, attrs, hint) {
                Ok(()) => mine.push(lease),
                Err(why) => {
                    let key = subnet_key(&self.prefix, &lease.subnet);
                    warn!(
                        "lease {key} claims this node's PublicIP {} but {why}: not adopting it",
                        attrs.public_ip
                    );
                    foreign.get_or_insert((key, why));
                }
            }
        }
        mine.sort_by_key(|l| (Some(l.subnet) != hint, l.create_revision));
        let Some((&first, rest)) = mine.split_first() else {
            return match foreign {
                Some((key, why)) => Err(AcquireError::Claimed {
                    key,
                    public_ip: attrs.public_ip,
                    why,
                }),
                None => Ok(None),
            };
        };
        for extra in rest {
            info!(
                "releasing lease {} of {}: this node holds {} too",
                extra.subnet, attrs.public_ip, first.subnet
            );
            self.delete_if_unchanged(extra)
                .await
                .map_err(AcquireError::Etcd)?;
        }
        Ok(Some(first))
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
        if let Some(id) = id
            && mine.etcd_lease != 0
            && mine.etcd_lease != id
        {
            self.revoke(mine.etcd_lease).await;
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

/// Whether `lease` (which has our PublicIP) is provably ours, to be taken back, and if
/// not, why. A lease is ours when it names our node (`NetdpNode`, which netdp writes and
/// flanneld ignores), or names no node and is the subnet of our subnet file (`hint`: a
/// local file only this node writes, covering leases from before `NetdpNode`, Flannel's
/// among them, across agent restarts). A caller that names no node itself gets Flannel's
/// rule narrowed to identical backend attributes. Anything else, a lease naming another
/// node above all, is not adopted: refusing to start (with the key to delete) beats
/// routing a subnet someone else chose.
pub fn ownership(
    lease: &PeerLease,
    ours: &LeaseAttrs,
    hint: Option<Ipv4Network>,
) -> Result<(), String> {
    let same_backend = || {
        lease.attrs.backend_type == ours.backend_type
            && lease.attrs.backend_data == ours.backend_data
    };
    match (&lease.attrs.node, &ours.node) {
        (Some(theirs), Some(me)) if theirs == me => Ok(()),
        (Some(theirs), _) => Err(format!("it was written by node {theirs:?}")),
        (None, _) if hint == Some(lease.subnet) => Ok(()),
        (None, Some(_)) => Err(
            "it names no node (NetdpNode) and is not the subnet in this node's subnet file".into(),
        ),
        (None, None) if same_backend() => Ok(()),
        (None, None) => Err("its backend type or data differ from this node's".into()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(subnet: &str, attrs: LeaseAttrs) -> PeerLease {
        PeerLease {
            subnet: subnet.parse().expect("a CIDR"),
            attrs,
            etcd_lease: 7,
            mod_revision: 3,
            create_revision: 3,
        }
    }

    fn vxlan(mac: &str) -> LeaseAttrs {
        let data = serde_json::json!({"VNI": 1, "VtepMAC": mac});
        LeaseAttrs::new([192, 168, 10, 11].into(), "vxlan", Some(data))
    }

    #[test]
    fn only_a_lease_that_names_us_or_our_subnet_file_is_ours() {
        let me = vxlan("0e:00:00:00:00:11").with_node("n1");
        let hint = Some("10.244.5.0/24".parse().expect("a CIDR"));
        // Written by this node before: taken back, whatever the subnet file says.
        let ours = lease("10.244.9.0/24", me.clone());
        assert_eq!(ownership(&ours, &me, None), Ok(()));
        assert_eq!(ownership(&ours, &me, hint), Ok(()));
        // Another node's name: never, not even at the subnet file's subnet.
        let other = lease("10.244.5.0/24", vxlan("0e:00:00:00:00:11").with_node("n2"));
        assert_eq!(
            ownership(&other, &me, hint),
            Err("it was written by node \"n2\"".into())
        );
        // No name (flanneld's, an older netdp's, a hand-written one): only at the subnet
        // file's subnet, even when every other attribute matches.
        let unnamed = lease("10.244.5.0/24", vxlan("0e:00:00:00:00:11"));
        assert_eq!(ownership(&unnamed, &me, hint), Ok(()));
        assert!(ownership(&unnamed, &me, None).is_err());
        let elsewhere = lease("10.244.6.0/24", vxlan("0e:00:00:00:00:11"));
        assert!(
            ownership(&elsewhere, &me, hint)
                .unwrap_err()
                .contains("not the subnet in this node's subnet file")
        );
    }

    #[test]
    fn a_caller_without_a_name_takes_back_only_identical_attributes() {
        let me = vxlan("0e:00:00:00:00:11");
        assert_eq!(
            ownership(&lease("10.244.9.0/24", me.clone()), &me, None),
            Ok(())
        );
        let other_mac = lease("10.244.9.0/24", vxlan("0e:00:00:00:00:99"));
        assert!(ownership(&other_mac, &me, None).is_err());
        let named = lease("10.244.9.0/24", me.clone().with_node("n7"));
        assert!(ownership(&named, &me, None).is_err());
    }
}
