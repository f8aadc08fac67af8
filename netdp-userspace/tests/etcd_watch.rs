//! The prefix watch that leases and services share, against a real etcd: changes arrive in
//! order, a broken stream resumes after the last revision seen, and a revision compacted
//! away makes it re-list the complete set; a backlog far larger than one gRPC message arrives
//! whole, and the watch's revision never runs ahead of the changes it handed out.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result, bail};
use etcd_client::Client;
use netdp::etcd::watch::{Change, PrefixWatch, Update, list_prefix};
use netdp_testbed::etcd::Etcd;

const PREFIX: &str = "/netdp/services/";

async fn next(w: &mut PrefixWatch, c: &mut Client) -> Result<Update> {
    // An outage shows as errors until etcd is back; the watch resumes on the next call,
    // which is retried until it gives an update or the deadline passes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, w.next(c, PREFIX)).await {
            Ok(Ok(u)) => return Ok(u),
            Ok(Err(e)) => {
                if tokio::time::Instant::now() >= deadline {
                    bail!("the watch did not recover within 30s: {e:#}");
                }
                // Between attempts against an etcd that is not back yet.
                tokio::time::sleep(Duration::from_millis(100).min(left)).await;
            }
            Err(_) => bail!("timed out after 30s waiting for the watch's next update"),
        }
    }
}

fn keys(u: &Update) -> Vec<String> {
    let name = |k: &[u8]| {
        String::from_utf8_lossy(k)
            .trim_start_matches(PREFIX)
            .to_string()
    };
    match u {
        Update::Changes(c) => c
            .iter()
            .map(|c| match c {
                Change::Put(kv) => format!("+{}", name(&kv.key)),
                Change::Delete(k) => format!("-{}", name(k)),
            })
            .collect(),
        Update::Resync(kvs) => kvs.iter().map(|kv| format!("={}", name(&kv.key))).collect(),
    }
}

/// Removes the data directory however the test ends.
struct Dir(std::path::PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn etcd_dir(name: &str) -> Result<Dir> {
    let dir = Dir(std::env::temp_dir().join(format!("netdp-{name}-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    Ok(dir)
}

#[tokio::test]
async fn the_watch_resumes_and_relists_after_compaction() -> Result<()> {
    netdp_testbed::testbed::require_privileges()?;
    let dir = etcd_dir("watch")?;
    let mut etcd = Etcd::start(&dir.0, None, Ipv4Addr::LOCALHOST, None)?;
    let result = async {
        let mut c = Client::connect([etcd.endpoint.as_str()], None)
            .await
            .context("connecting")?;
        c.put(format!("{PREFIX}default/a"), "1", None).await?;
        let (kvs, rev) = list_prefix(&mut c, PREFIX).await?;
        assert_eq!(kvs.len(), 1);

        // Changes after the listed revision, in order.
        let mut w = PrefixWatch::new("service", rev);
        c.put(format!("{PREFIX}default/b"), "2", None).await?;
        c.delete(format!("{PREFIX}default/a"), None).await?;
        let mut seen = Vec::new();
        while seen.len() < 2 {
            seen.extend(keys(&next(&mut w, &mut c).await?));
        }
        assert_eq!(seen, ["+default/b", "-default/a"]);

        // etcd goes away and comes back: the watch picks up where it was.
        etcd.restart()?;
        let mut c = Client::connect([etcd.endpoint.as_str()], None).await?;
        c.put(format!("{PREFIX}default/c"), "3", None).await?;
        assert_eq!(keys(&next(&mut w, &mut c).await?), ["+default/c"]);

        // A watch that fell behind a compaction gets the whole set again.
        let behind = w.revision();
        let mut late = PrefixWatch::new("service", behind);
        c.put(format!("{PREFIX}default/d"), "4", None).await?;
        c.delete(format!("{PREFIX}default/b"), None).await?;
        let head = c.put(format!("{PREFIX}default/e"), "5", None).await?;
        let head = head.header().map(|h| h.revision()).unwrap_or(0);
        c.compact(head, None).await?;
        let u = next(&mut late, &mut c).await?;
        assert_eq!(keys(&u), ["=default/c", "=default/d", "=default/e"]);
        assert!(late.revision() >= head);
        c.put(format!("{PREFIX}default/f"), "6", None).await?;
        assert_eq!(keys(&next(&mut late, &mut c).await?), ["+default/f"]);
        Ok(())
    }
    .await;
    etcd.stop();
    result
}

/// A watch that starts behind a backlog of 1,500 revisions of 14 kB values (21 MB): etcd
/// sends a lagging watch up to 1,000 revisions in one response (14 MB, over tonic's default
/// 4 MiB limit, which broke the watch), and announces the watch with its current revision
/// before sending them (taking that revision skipped the backlog when the stream broke).
#[tokio::test]
async fn a_backlog_larger_than_a_message_arrives_whole_and_in_order() -> Result<()> {
    netdp_testbed::testbed::require_privileges()?;
    const REVISIONS: usize = 1500;
    let dir = etcd_dir("backlog")?;
    let mut etcd = Etcd::start(&dir.0, None, Ipv4Addr::LOCALHOST, None)?;
    let result = async {
        let mut c = Client::connect([etcd.endpoint.as_str()], None).await?;
        let (_, start) = list_prefix(&mut c, PREFIX).await?;
        let value = "x".repeat(14_000);
        let mut head = start;
        for i in 0..REVISIONS {
            let put = c.put(format!("{PREFIX}default/s{i:04}"), value.as_str(), None);
            head = put.await?.header().map(|h| h.revision()).unwrap_or(0);
        }
        let mut w = PrefixWatch::new("service", start);
        let mut seen = Vec::new();
        let mut updates = 0;
        while seen.len() < REVISIONS {
            // No retries: a response the client refuses is an error here.
            let update = tokio::time::timeout(Duration::from_secs(30), w.next(&mut c, PREFIX))
                .await
                .context("timed out waiting for the backlog")??;
            let Update::Changes(changes) = update else {
                bail!("a resync where changes were due")
            };
            let mut last = 0;
            for change in changes {
                let Change::Put(kv) = change else {
                    bail!("a delete in a backlog of puts")
                };
                last = kv.mod_revision;
                seen.push(String::from_utf8_lossy(&kv.key).to_string());
            }
            assert_eq!(
                w.revision(),
                last,
                "the watch's revision ran ahead of the changes it handed out"
            );
            updates += 1;
        }
        let expected: Vec<_> = (0..REVISIONS)
            .map(|i| format!("{PREFIX}default/s{i:04}"))
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(w.revision(), head);
        // More than one update proves etcd split the backlog as described above, so the
        // revision check saw a watch that was still behind.
        assert!(updates > 1, "the backlog came in {updates} update");
        Ok(())
    }
    .await;
    etcd.stop();
    result
}
