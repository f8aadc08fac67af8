//! Services in a testbed: applying them with the real CLI, waiting until every node has
//! programmed them, and reading from an agent's log how long programming took. The
//! backends and clients that check service traffic are in `echo.rs`.
use std::{sync::atomic::Ordering, time::Duration};

use anyhow::{Result, anyhow, bail};
use serde_json::Value;

// Where the echo backends and clients lived before `echo.rs`; callers use these paths.
pub use crate::echo::{
    Connect, EchoServer, HeldEcho, SERVER_IDLE, connect_error, echo_many, echo_once, udp_many,
};
use crate::{Testbed, netns, wait::wait_until};

impl Testbed {
    /// The etcd flags for a CLI call.
    pub fn etcd_flags(&self) -> Vec<String> {
        vec![format!("--etcd-endpoints={}", self.etcd_endpoint())]
    }

    /// Runs `netdp <args>` on the etcd host (a client outside the nodes).
    pub fn netdp_ctl(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(netns::command(&self.ctl_ns, &self.bins.netdp)?
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()?)
    }

    /// `netdp service apply -f` with `services` (a JSON array, or any text the CLI reads)
    /// written to a file; fails with the CLI's message if it refuses.
    pub fn apply_services(&self, services: &str) -> Result<String> {
        let n = APPLIED.fetch_add(1, Ordering::Relaxed);
        let file = self.dir.join(format!("services-{n}.json"));
        std::fs::write(&file, services)?;
        let mut args = vec!["service".to_string(), "apply".into(), "-f".into()];
        args.push(file.display().to_string());
        args.extend(self.etcd_flags());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.netdp_ctl(&argv)?;
        if !out.status.success() {
            bail!(
                "netdp service apply refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `netdp service delete`.
    pub fn delete_service(&self, namespace: &str, name: &str) -> Result<()> {
        let mut args = vec!["service", "delete", name, "-n", namespace];
        let flags = self.etcd_flags();
        args.extend(flags.iter().map(String::as_str));
        let out = self.netdp_ctl(&args)?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Services (as `netdp service list -o json` reports them) with their programmed state
    /// on `node`.
    pub fn service_status(&self, node: &str) -> Result<Vec<Value>> {
        let etcd = self.etcd_flags();
        let mut args = vec!["service", "list"];
        args.extend(etcd.iter().map(String::as_str));
        let v = self.netdp_json(node, &args)?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Waits until every node with an agent has programmed every (valid) service as stored.
    pub fn wait_services_programmed(&self, timeout: Duration) -> Result<()> {
        let mut pending = Vec::new();
        wait_until("every node to program every service", timeout, || {
            pending.clear();
            for n in self.nodes.iter().filter(|n| n.agent_running()) {
                for s in self.service_status(&n.name)? {
                    if s.get("error").is_none() && s["programmed"] != Value::Bool(true) {
                        pending.push(format!("{} on {}", s["name"], n.name));
                    }
                }
            }
            Ok(pending.is_empty())
        })
        .map_err(|e| anyhow!("{e:#}; still pending: {pending:?}"))?;
        Ok(())
    }
}

static APPLIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One batch of service changes an agent logged having programmed:
/// `services updated: 5 added, ... 0 failed in 1.2s; 100000 services, ...`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgrammedBatch {
    /// The agent's own time for the batch.
    pub took: Duration,
    /// Services programmed on the node after it.
    pub total: usize,
    pub failed: usize,
}

/// The batches in an agent's log text (`what`: "updated" for watched changes,
/// "programmed" for what it read at start), in order.
pub fn programmed_batches(log: &str, what: &str) -> Vec<ProgrammedBatch> {
    let marker = format!("services {what}: ");
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&marker)? + marker.len()..];
            let (counts, after) = rest.split_once(" in ")?;
            let (took, totals) = after.split_once("; ")?;
            let failed = counts
                .split(", ")
                .find_map(|c| c.strip_suffix(" failed"))?
                .parse()
                .ok()?;
            let total = totals.split(' ').next()?.parse().ok()?;
            Some(ProgrammedBatch {
                took: debug_duration(took)?,
                total,
                failed,
            })
        })
        .collect()
}

/// A Debug-formatted duration ("12.3ms", "1.2s", "850.0µs") as a Duration.
fn debug_duration(d: &str) -> Option<Duration> {
    let d = d.trim();
    for (unit, nanos) in [("ms", 1e6), ("µs", 1e3), ("ns", 1.0), ("s", 1e9)] {
        if let Some(n) = d.strip_suffix(unit) {
            let v = n.parse::<f64>().ok().filter(|v| *v >= 0.0)?;
            return Some(Duration::from_nanos((v * nanos).round() as u64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_read_from_the_agent_log() {
        let log = "\
[2024 INFO netdp::dataplane::lb] services updated: 3 added, 0 updated, 0 removed, 0 unchanged, 0 adopted, 0 failed in 850.0µs; 3 services, 12/1048576 backend slots
[2024 INFO netdp::agent] something else in 1s; 7 services
[2024 INFO netdp::dataplane::lb] services updated: 99997 added, 0 updated, 0 removed, 0 unchanged, 0 adopted, 2 failed in 1.5s; 100000 services, 400000/1048576 backend slots
[2024 INFO netdp::dataplane::lb] services programmed: 0 added, 0 updated, 0 removed, 0 unchanged, 5 adopted, 0 failed in 12.0ms; 5 services, 20/1048576 backend slots";
        let b = programmed_batches(log, "updated");
        assert_eq!(
            b,
            vec![
                ProgrammedBatch {
                    took: Duration::from_micros(850),
                    total: 3,
                    failed: 0
                },
                ProgrammedBatch {
                    took: Duration::from_millis(1500),
                    total: 100_000,
                    failed: 2
                },
            ]
        );
        let p = programmed_batches(log, "programmed");
        assert_eq!((p.len(), p[0].total), (1, 5));
        assert_eq!(debug_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(debug_duration("soon"), None);
    }
}
