//! Subnet leases in etcd, in Flannel's layout: `<prefix>/subnets/<a.b.c.d>-<len>` holding
//! Flannel's `LeaseAttrs` JSON, attached to an etcd lease so it expires unless renewed.
use std::{collections::HashSet, net::Ipv4Addr, time::Duration};

use anyhow::{Result, anyhow, bail};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use ipnetwork::Ipv4Network;
use log::{info, warn};
use rand::Rng;

pub use netdp_dataplane::lease::LeaseAttrs;

use crate::{
    config::NetworkConfig,
    etcd::{
        decode::{Decode, Decoded, Event, Reported, decode, decode_all},
        watch::{Kv, PrefixWatch, list_prefix},
    },
    util::one_line,
};

/// `10.1.15.0/24` -> `<prefix>/subnets/10.1.15.0-24`.
pub fn subnet_key(prefix: &str, subnet: &Ipv4Network) -> String {
    format!("{prefix}/subnets/{}-{}", subnet.network(), subnet.prefix())
}

/// The inverse of [`subnet_key`]; `None` for keys that are not a subnet lease.
pub fn parse_subnet_key(prefix: &str, key: &str) -> Option<Ipv4Network> {
    let rest = key.strip_prefix(prefix)?.strip_prefix("/subnets/")?;
    let (ip, len) = rest.split_once('-')?;
    let net = Ipv4Network::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    (net.network() == net.ip()).then_some(net)
}

/// Somebody's lease as read from etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerLease {
    pub subnet: Ipv4Network,
    pub attrs: LeaseAttrs,
    /// The etcd lease the key is attached to (0: none).
    pub etcd_lease: i64,
    pub mod_revision: i64,
}

/// How long leases live and when they are renewed.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    pub ttl: Duration,
    pub renew_margin: Duration,
    pub retry_interval: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            ttl: Duration::from_secs(24 * 3600),
            renew_margin: Duration::from_secs(3600),
            retry_interval: Duration::from_secs(60),
        }
    }
}

impl LeaseOptions {
    /// Time between renewals: a margin before the TTL runs out (at least a second).
    pub fn renew_every(&self) -> Duration {
        self.ttl
            .checked_sub(self.renew_margin)
            .filter(|d| !d.is_zero())
            .unwrap_or(self.ttl / 2)
            .max(Duration::from_secs(1))
    }
}

/// This node's lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub subnet: Ipv4Network,
    pub attrs: LeaseAttrs,
    pub etcd_lease: i64,
}

/// The node's address in a pod subnet it leases (its first host address, as Flannel's
/// FLANNEL_SUBNET): the pods' gateway, and where flows that must come back through the
/// node are source-NATed to.
pub fn gateway(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

impl Lease {
    pub fn gateway(&self) -> Ipv4Addr {
        gateway(self.subnet)
    }
}

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

/// Reads and writes the network config and leases under one prefix.
pub struct Registry {
    pub client: Client,
    prefix: String,
    decoder: LeaseDecoder,
}

/// Reads lease keys and values under a prefix.
struct LeaseDecoder {
    prefix: String,
    reported: Reported,
}

impl Decode for LeaseDecoder {
    type Id = Ipv4Network;
    type Item = PeerLease;

    fn id(&self, key: &str) -> Option<Ipv4Network> {
        parse_subnet_key(&self.prefix, key)
    }

    fn decode(&mut self, key: &str, kv: &Kv) -> Option<(Ipv4Network, PeerLease)> {
        let parsed = parse_subnet_key(&self.prefix, key)
            .ok_or_else(|| "key is not <ip>-<prefixlen>".to_string())
            .and_then(|subnet| {
                serde_json::from_slice::<LeaseAttrs>(&kv.value)
                    .map(|attrs| (subnet, attrs))
                    .map_err(|e| format!("value is not a lease: {e}"))
            });
        match parsed {
            Ok((subnet, attrs)) => Some((
                subnet,
                PeerLease {
                    subnet,
                    attrs,
                    etcd_lease: kv.lease,
                    mod_revision: kv.mod_revision,
                },
            )),
            Err(why) => {
                if self.reported.first(key, kv.mod_revision) {
                    warn!("skipping malformed lease {key}: {why}");
                }
                None
            }
        }
    }
}

impl Registry {
    pub fn new(client: Client, prefix: &str) -> Self {
        let prefix = prefix.trim_end_matches('/').to_string();
        Registry {
            client,
            decoder: LeaseDecoder {
                prefix: prefix.clone(),
                reported: Reported::default(),
            },
            prefix,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// The network config, validated, with its mod revision.
    pub async fn config(&mut self) -> Result<(NetworkConfig, i64)> {
        let key = self.config_key();
        let resp = self
            .client
            .get(key.as_str(), None)
            .await
            .map_err(|e| anyhow!("reading {key} from etcd: {}", one_line(&e)))?;
        let kv = resp.kvs().first().ok_or_else(|| {
            anyhow!("no network config at {key} (write one, e.g. {{\"Network\": \"10.1.0.0/16\"}})")
        })?;
        let text = std::str::from_utf8(kv.value())
            .map_err(|_| anyhow!("invalid network config at {key}: not UTF-8"))?;
        let config = NetworkConfig::parse(text)
            .map_err(|e| anyhow!("invalid network config at {key}: {e}"))?;
        Ok((config, kv.mod_revision()))
    }

    /// All parseable leases and the revision they were read at (page by page, at one
    /// revision). Malformed ones are logged once and skipped.
    pub async fn leases(&mut self) -> Result<(Vec<PeerLease>, i64)> {
        let prefix = self.subnets_prefix();
        let (kvs, revision) = list_prefix(&mut self.client, &prefix).await?;
        let leases = decode_all(&mut self.decoder, &kvs);
        Ok((leases.into_iter().map(|(_, l)| l).collect(), revision))
    }

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
                if config.fits(&mine.subnet) {
                    match self
                        .retake(mine, &value, opts)
                        .await
                        .map_err(AcquireError::Etcd)?
                    {
                        Some(etcd_lease) => {
                            return Ok(Lease {
                                subnet: mine.subnet,
                                attrs: attrs.clone(),
                                etcd_lease,
                            });
                        }
                        None => continue,
                    }
                }
                info!(
                    "releasing lease {} of {}: it no longer fits the network config",
                    mine.subnet, attrs.public_ip
                );
                self.delete_if_unchanged(mine)
                    .await
                    .map_err(AcquireError::Etcd)?;
                continue;
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

    /// Refreshes the TTL of our lease. `Ok(false)` when the lease is gone (expired, or the
    /// key deleted), so the caller re-acquires.
    pub async fn renew(&mut self, lease: &Lease) -> Result<bool> {
        let key = subnet_key(&self.prefix, &lease.subnet);
        let resp = self
            .client
            .get(key.as_str(), None)
            .await
            .map_err(|e| anyhow!("reading {key}: {}", one_line(&e)))?;
        match resp.kvs().first() {
            Some(kv) if kv.lease() == lease.etcd_lease => {}
            _ => return Ok(false),
        }
        let (mut keeper, mut stream) = self
            .client
            .lease_keep_alive(lease.etcd_lease)
            .await
            .map_err(|e| anyhow!("renewing lease {key}: {}", one_line(&e)))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| anyhow!("renewing lease {key}: {}", one_line(&e)))?;
        match stream.message().await {
            Ok(Some(resp)) if resp.ttl() > 0 => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => bail!("renewing lease {key}: {}", one_line(&e)),
        }
    }

    /// Gives the subnet back (deletes the key by revoking its etcd lease).
    pub async fn release(&mut self, lease: &Lease) -> Result<()> {
        self.client
            .lease_revoke(lease.etcd_lease)
            .await
            .map_err(|e| anyhow!("releasing lease {}: {}", lease.subnet, one_line(&e)))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let net: Ipv4Network = "10.1.15.0/24".parse().unwrap();
        let key = subnet_key("/coreos.com/network", &net);
        assert_eq!(key, "/coreos.com/network/subnets/10.1.15.0-24");
        assert_eq!(parse_subnet_key("/coreos.com/network", &key), Some(net));
        assert_eq!(
            parse_subnet_key(
                "/coreos.com/network",
                "/coreos.com/network/subnets/10.1.15.1-24"
            ),
            None
        );
        assert_eq!(
            parse_subnet_key("/coreos.com/network", "/coreos.com/network/subnets/garbage"),
            None
        );
        assert_eq!(
            parse_subnet_key("/coreos.com/network", "/other/subnets/10.1.15.0-24"),
            None
        );
    }

    #[test]
    fn flannel_lease_json() {
        // As flanneld's vxlan backend writes it.
        let flannel = r#"{"PublicIP":"192.168.0.100","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}"#;
        let attrs: LeaseAttrs = serde_json::from_str(flannel).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(192, 168, 0, 100));
        assert_eq!(attrs.backend_type, "vxlan");
        assert_eq!(attrs.vtep_mac(), Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01]));
        // host-gw: no BackendData at all.
        let hostgw: LeaseAttrs =
            serde_json::from_str(r#"{"PublicIP":"10.0.0.1","BackendType":"host-gw"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&hostgw).unwrap(),
            r#"{"PublicIP":"10.0.0.1","BackendType":"host-gw"}"#
        );
        // Ours parse with the same schema.
        let ours = LeaseAttrs::new(
            Ipv4Addr::new(192, 168, 0, 200),
            "vxlan",
            Some(serde_json::json!({"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"})),
        );
        let text = serde_json::to_string(&ours).unwrap();
        assert_eq!(
            text,
            r#"{"PublicIP":"192.168.0.200","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}"#
        );
        assert_eq!(serde_json::from_str::<LeaseAttrs>(&text).unwrap(), ours);
    }

    #[test]
    fn renew_schedule() {
        let o = LeaseOptions::default();
        assert_eq!(o.renew_every(), Duration::from_secs(23 * 3600));
        let short = LeaseOptions {
            ttl: Duration::from_secs(4),
            renew_margin: Duration::from_secs(60),
            retry_interval: Duration::from_secs(1),
        };
        assert_eq!(short.renew_every(), Duration::from_secs(2));
    }
}
