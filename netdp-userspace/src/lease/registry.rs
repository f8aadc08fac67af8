//! The registry of one prefix: its network config, every lease under it (read page by page
//! at one revision, malformed values logged once and skipped), and renewing and giving back
//! this node's lease.
use anyhow::{Result, anyhow, bail};
use etcd_client::Client;
use ipnetwork::Ipv4Network;
use log::warn;

use super::{Lease, LeaseAttrs, PeerLease, parse_subnet_key, subnet_key};
use crate::{
    config::NetworkConfig,
    etcd::{
        decode::{Decode, Reported, decode_all},
        watch::{Kv, list_prefix},
    },
    util::one_line,
};

/// Reads and writes the network config and leases under one prefix.
pub struct Registry {
    pub client: Client,
    pub(super) prefix: String,
    pub(super) decoder: LeaseDecoder,
}

/// Reads lease keys and values under a prefix.
pub(super) struct LeaseDecoder {
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
                LeaseAttrs::from_json(&kv.value)
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
                    create_revision: kv.create_revision,
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
