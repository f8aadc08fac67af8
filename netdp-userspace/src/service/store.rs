//! Services in etcd: one key per service, `<prefix><namespace>/<name>`, holding the
//! service's JSON ([`super::schema::ServiceDoc`]).
use anyhow::{Result, anyhow};
use etcd_client::{Client, GetOptions, Txn, TxnOp};
use futures::StreamExt;

use log::warn;

use super::{ServiceDef, schema::ServiceDoc};
use crate::{
    etcd::{
        decode::{Decode, Reported},
        watch::{Kv, list_prefix},
    },
    util::one_line,
};

/// The default prefix.
pub const DEFAULT_PREFIX: &str = "/netdp/services/";
/// Puts per transaction (etcd's default --max-txn-ops is 128).
const TXN_OPS: usize = 128;
/// Bytes per transaction, under etcd's default 1.5 MiB request limit.
const TXN_BYTES: usize = 1 << 20;
/// Transactions in flight at once.
const IN_FLIGHT: usize = 16;

/// The prefix with exactly one trailing slash.
pub fn normalize_prefix(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

pub fn key(prefix: &str, namespace: &str, name: &str) -> String {
    format!("{}{namespace}/{name}", normalize_prefix(prefix))
}

/// `namespace/name` of a key under `prefix`.
pub fn parse_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(&normalize_prefix(prefix))?;
    let (ns, name) = rest.split_once('/')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then_some(rest)
}

/// Reads service keys and values under a prefix: `namespace/name` ids and valid services.
pub struct ServiceDecoder {
    prefix: String,
    reported: Reported,
}

impl ServiceDecoder {
    pub fn new(prefix: &str) -> Self {
        ServiceDecoder {
            prefix: normalize_prefix(prefix),
            reported: Reported::default(),
        }
    }

    /// The prefix with exactly one trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Decode for ServiceDecoder {
    type Id = String;
    type Item = ServiceDef;

    fn id(&self, key: &str) -> Option<String> {
        parse_key(&self.prefix, key).map(str::to_string)
    }

    /// The valid service at `key`, or `None` (reported once per revision) if it is not one.
    fn decode(&mut self, key: &str, kv: &Kv) -> Option<(String, ServiceDef)> {
        let rev = kv.mod_revision;
        let Some(id) = parse_key(&self.prefix, key) else {
            if self.reported.first(key, rev) {
                warn!(
                    "skipping {key}: not a <namespace>/<name> key under {}",
                    self.prefix
                );
            }
            return None;
        };
        let result = super::decode(&kv.value).and_then(|def| {
            if def.id() == id {
                Ok(def)
            } else {
                Err(format!("metadata says {} but the key says {id}", def.id()))
            }
        });
        match result {
            Ok(def) => {
                self.reported.forget(key);
                Some((id.to_string(), def))
            }
            Err(e) => {
                if self.reported.first(key, rev) {
                    warn!("skipping invalid service {key} (revision {rev}): {e}");
                }
                None
            }
        }
    }
}

pub struct ServiceStore {
    pub client: Client,
    prefix: String,
}

impl ServiceStore {
    pub fn new(client: Client, prefix: &str) -> Self {
        ServiceStore {
            client,
            prefix: normalize_prefix(prefix),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every stored service as (key, value), and the revision they were read at.
    pub async fn list(&mut self) -> Result<(Vec<(String, Vec<u8>)>, i64)> {
        let (kvs, rev) = list_prefix(&mut self.client, &self.prefix).await?;
        Ok((
            kvs.into_iter()
                .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.value))
                .collect(),
            rev,
        ))
    }

    pub async fn get(&mut self, namespace: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let k = key(&self.prefix, namespace, name);
        let resp = self
            .client
            .get(k.as_str(), None::<GetOptions>)
            .await
            .map_err(|e| anyhow!("reading {k}: {}", one_line(&e)))?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Writes services, many per transaction and several transactions in flight (etcd
    /// commits concurrent requests together). Returns how many were written.
    pub async fn put_all(&mut self, docs: &[(String, ServiceDoc)]) -> Result<usize> {
        let mut batches: Vec<Vec<TxnOp>> = Vec::new();
        let mut ops = Vec::new();
        let mut bytes = 0;
        for (k, doc) in docs {
            let v = serde_json::to_string(doc)?;
            if !ops.is_empty() && (ops.len() >= TXN_OPS || bytes + v.len() > TXN_BYTES) {
                batches.push(std::mem::take(&mut ops));
                bytes = 0;
            }
            bytes += k.len() + v.len();
            ops.push(TxnOp::put(k.as_str(), v, None));
        }
        if !ops.is_empty() {
            batches.push(ops);
        }
        let client = self.client.clone();
        let mut commits = futures::stream::iter(batches.into_iter().map(|ops| {
            let mut c = client.clone();
            async move {
                let n = ops.len();
                c.txn(Txn::new().and_then(ops))
                    .await
                    .map_err(|e| anyhow!("writing services to etcd: {}", one_line(&e)))?;
                Ok::<usize, anyhow::Error>(n)
            }
        }))
        .buffer_unordered(IN_FLIGHT);
        let mut done = 0;
        while let Some(n) = commits.next().await {
            done += n?;
        }
        Ok(done)
    }

    /// Deletes a service; `false` if there was none.
    pub async fn delete(&mut self, namespace: &str, name: &str) -> Result<bool> {
        let k = key(&self.prefix, namespace, name);
        let resp = self
            .client
            .delete(k.as_str(), None)
            .await
            .map_err(|e| anyhow!("deleting {k}: {}", one_line(&e)))?;
        Ok(resp.deleted() > 0)
    }
}
