//! Reading and following everything under an etcd prefix: listing it page by page at one
//! revision, and a watch that never goes stale. The watch resumes after the last revision it
//! saw when the stream breaks, and re-lists (handing back the complete set) when that
//! revision was compacted away. Leases and services both follow their prefix with it.
use anyhow::{Context, Result, anyhow, bail};
use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions, WatchStream};
use log::warn;

use crate::util::one_line;

/// Keys per page when listing.
const PAGE: i64 = 5000;

/// The largest etcd response this client accepts. tonic's default (4 MiB) is far below
/// what etcd sends: a watch catching up delivers up to 1,000 revisions in one response and a
/// page of large values can pass it too, so like etcd's own Go client (`MaxCallRecvMsgSize`
/// math.MaxInt32) the limit is what a protobuf message can be.
pub const MAX_RESPONSE: usize = i32::MAX as usize;

/// A key and its value as read from etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The etcd lease the key is attached to (0: none).
    pub lease: i64,
    pub mod_revision: i64,
    /// When the key was created: of two conflicting leases, the older one wins.
    pub create_revision: i64,
}

impl From<&KeyValue> for Kv {
    fn from(kv: &KeyValue) -> Self {
        Kv {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            lease: kv.lease(),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
        }
    }
}

/// One change under the prefix.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Put(Kv),
    Delete(Vec<u8>),
}

/// One step of a [`PrefixWatch`].
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Changes(Vec<Change>),
    /// The watch had to start over: the complete current set.
    Resync(Vec<Kv>),
}

/// The first key after every key starting with `prefix`.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Everything under `prefix` at one revision (read page by page, so a large set neither
/// needs one huge response nor can change half-way), and that revision.
pub async fn list_prefix(client: &mut Client, prefix: &str) -> Result<(Vec<Kv>, i64)> {
    let mut out = Vec::new();
    let revision = list_pages(client, prefix, |page| out.extend(page)).await?;
    Ok((out, revision))
}

/// Lists every key under `prefix` as [`list_prefix`] does, handing each page (`PAGE` keys,
/// all at one revision) to `page` as it arrives, so a caller that keeps only what it
/// decodes never holds the whole listing. Returns the revision listed at.
pub async fn list_pages(
    client: &mut Client,
    prefix: &str,
    mut page: impl FnMut(Vec<Kv>),
) -> Result<i64> {
    let end = range_end(prefix.as_bytes());
    let mut start = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE)
            .get(start.clone(), Some(opts))
            .await
            .map_err(|e| anyhow!("listing {prefix} in etcd: {}", one_line(&e)))?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        let kvs: Vec<Kv> = resp.kvs().iter().map(Kv::from).collect();
        let next = resp
            .more()
            .then(|| kvs.last().map(|last| last.key.clone()))
            .flatten();
        drop(resp);
        page(kvs);
        match next {
            Some(mut key) => {
                key.push(0);
                start = key;
            }
            None => return Ok(revision),
        }
    }
}

/// A watch that yields updates and knows the last revision it saw.
pub trait Follow {
    type Update: Send;
    /// Waits for the next update; an error means etcd is unreachable, and calling again
    /// resumes where the watch left off.
    fn next(&mut self) -> impl std::future::Future<Output = Result<Self::Update>> + Send;
    fn revision(&self) -> i64;
}

/// Times any watch of this process broke or had to re-list: a process-wide count because
/// the watch tasks outlive every handle the agent could give them (read by the metrics).
pub static RECONNECTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Streams a watch's updates to `tx` until its receiver is gone. A broken watch is
/// resumed after a pause that doubles from 200 ms to 5 s, and is reset by a success.
pub async fn forward<W: Follow>(mut watch: W, tx: tokio::sync::mpsc::Sender<W::Update>) {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(200);
    let mut backoff = FIRST;
    loop {
        match watch.next().await {
            Ok(update) => {
                backoff = FIRST;
                if tx.send(update).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                RECONNECTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(
                    "{e:#}; resuming after revision {} in {backoff:?}",
                    watch.revision()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// A watch of everything under a prefix, from a revision on.
pub struct PrefixWatch {
    what: &'static str,
    revision: i64,
    stream: Option<WatchStream>,
}

impl PrefixWatch {
    /// `what` names the watched things in messages ("lease", "service").
    pub fn new(what: &'static str, revision: i64) -> Self {
        PrefixWatch {
            what,
            revision,
            stream: None,
        }
    }

    /// The last revision seen.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Waits for the next changes under `prefix`. Errors mean etcd is unreachable; call
    /// again (after a pause) to resume from where the watch left off.
    pub async fn next(&mut self, client: &mut Client, prefix: &str) -> Result<Update> {
        loop {
            if self.stream.is_none() {
                let opts = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(self.revision + 1)
                    .with_progress_notify();
                let stream = client
                    .watch_client()
                    .max_decoding_message_size(MAX_RESPONSE)
                    .watch(prefix, Some(opts))
                    .await
                    .map_err(|e| anyhow!("watching {prefix}: {}", one_line(&e)))?;
                self.stream = Some(stream);
            }
            let stream = self.stream.as_mut().context("watch stream")?;
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    self.stream = None;
                    bail!("{} watch closed by etcd", self.what);
                }
                Err(e) => {
                    self.stream = None;
                    bail!("{} watch broken: {}", self.what, one_line(&e));
                }
            };
            if resp.compact_revision() > 0 || resp.canceled() {
                warn!(
                    "{} watch at revision {} cannot resume ({}); re-listing",
                    self.what,
                    self.revision,
                    if resp.compact_revision() > 0 {
                        format!("compacted up to {}", resp.compact_revision())
                    } else {
                        format!("canceled: {}", resp.cancel_reason())
                    }
                );
                self.stream = None;
                RECONNECTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (kvs, revision) = list_prefix(client, prefix).await?;
                self.revision = revision;
                return Ok(Update::Resync(kvs));
            }
            if resp.created() {
                // The created response carries etcd's current revision while the events
                // from the start revision are still to come: taking it would skip them
                // if the stream broke before they arrived.
                continue;
            }
            if resp.events().is_empty() {
                // Progress notifications carry the current revision and no events (etcd
                // sends them only to a watch that has caught up).
                if let Some(h) = resp.header() {
                    self.revision = self.revision.max(h.revision());
                }
                continue;
            }
            let mut changes = Vec::with_capacity(resp.events().len());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                self.revision = self.revision.max(kv.mod_revision());
                changes.push(match ev.event_type() {
                    EventType::Put => Change::Put(Kv::from(kv)),
                    EventType::Delete => Change::Delete(kv.key().to_vec()),
                });
            }
            if !changes.is_empty() {
                return Ok(Update::Changes(changes));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_ends() {
        assert_eq!(range_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(range_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(range_end(&[0xff]), vec![0]);
    }
}
