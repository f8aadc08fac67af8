//! `netdp` CLI calls on a node, as an operator would make them, and what their JSON says:
//! routes and the programs' counters.
use std::{collections::HashMap, net::Ipv4Addr, process::Stdio};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::{Count, Testbed, netns};

impl Testbed {
    /// Waits until every node's routes carry their next hop's MAC, as the agents read them
    /// from the neighbour table once the kernel resolved them (a ping between each pair of
    /// nodes does): both hooks then send straight to the next hop, and XDP only then.
    pub fn wait_next_hops_resolved(&self, timeout: std::time::Duration) -> Result<()> {
        for n in &self.nodes {
            for m in self.nodes.iter().filter(|m| m.name != n.name) {
                netns::exec(&n.ns, &["ping", "-c1", "-W1", &m.ip.to_string()])?;
            }
        }
        crate::wait::wait_until("every route's next-hop MAC", timeout, || {
            for n in &self.nodes {
                let routes = self.netdp_json(&n.name, &["route", "list"])?;
                let resolved = routes.as_array().is_some_and(|r| {
                    r.len() + 1 == self.nodes.len()
                        && r.iter().all(|r| r["nexthopMac"] != "(kernel resolves)")
                });
                if !resolved {
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        Ok(())
    }

    /// Runs `netdp <args>` once in the node's namespace (a CLI call, or an agent expected to
    /// fail) and returns its output.
    pub fn netdp(&self, node: &str, args: &[&str]) -> Result<std::process::Output> {
        let n = self.node(node);
        let out = netns::command(&n.ns, &self.bins.netdp)?
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        Ok(out)
    }

    /// Runs a `netdp` CLI command that prints JSON (`-o json` is appended) for a node's
    /// dataplane (`--node-name` is appended too) and parses it.
    pub fn netdp_json(&self, node: &str, args: &[&str]) -> Result<Value> {
        let name = format!("--node-name={}", self.node(node).ns);
        let mut all: Vec<&str> = args.to_vec();
        all.extend([name.as_str(), "-o", "json"]);
        let out = self.netdp(node, &all)?;
        if !out.status.success() {
            bail!(
                "netdp {args:?} on {node}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The subnets in a node's ROUTES map, with the peer each one goes to.
    pub fn routes(&self, node: &str) -> Result<Vec<(String, Ipv4Addr)>> {
        let v = self.netdp_json(node, &["route", "list"])?;
        let mut out: Vec<(String, Ipv4Addr)> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some((
                    r["subnet"].as_str()?.to_string(),
                    r["node"].as_str()?.parse().ok()?,
                ))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// `netdp counters -o json` on a node: one object per reason and per event.
    fn counter_rows(&self, node: &str) -> Result<Vec<Value>> {
        let v = self.netdp_json(node, &["counters"])?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Counters of a node's programs: (program, reason) -> packets.
    pub fn counters(&self, node: &str) -> Result<HashMap<(String, String), u64>> {
        Ok(self
            .counter_totals(node)?
            .into_iter()
            .map(|(k, c)| (k, c.packets))
            .collect())
    }

    /// Counters of a node's programs with bytes: (program, reason) -> packets and bytes.
    pub fn counter_totals(&self, node: &str) -> Result<HashMap<(String, String), Count>> {
        Ok(self
            .counter_rows(node)?
            .iter()
            .filter_map(|c| {
                let key = (
                    c["program"].as_str()?.to_string(),
                    c["reason"].as_str()?.to_string(),
                );
                let count = Count {
                    packets: c["packets"].as_u64().unwrap_or(0),
                    bytes: c["bytes"].as_u64().unwrap_or(0),
                };
                Some((key, count))
            })
            .collect())
    }

    /// One counter of a node's programs.
    pub fn counter(&self, node: &str, program: &str, reason: &str) -> Result<u64> {
        Ok(self
            .counters(node)?
            .get(&(program.to_string(), reason.to_string()))
            .copied()
            .unwrap_or(0))
    }

    /// How often `event` (a flow load balanced, masqueraded, ...) happened in a node's
    /// `program`.
    pub fn event(&self, node: &str, program: &str, event: &str) -> Result<u64> {
        Ok(self
            .counter_rows(node)?
            .iter()
            .find(|c| c["program"] == program && c["event"] == event)
            .and_then(|c| c["count"].as_u64())
            .unwrap_or(0))
    }

    /// The programs that see what a node receives on its underlay: XDP first (when it
    /// runs, it takes node port traffic), then `from_netdev`.
    pub const UNDERLAY_PROGRAMS: [&str; 2] = ["xdp", "from_netdev"];

    /// Packets the underlay's programs together counted for `reason`.
    pub fn underlay_counter(&self, node: &str, reason: &str) -> Result<u64> {
        let all = self.counters(node)?;
        Ok(Self::UNDERLAY_PROGRAMS
            .iter()
            .map(|p| {
                all.get(&(p.to_string(), reason.to_string()))
                    .copied()
                    .unwrap_or(0)
            })
            .sum())
    }

    /// How often the underlay's programs together saw `event`.
    pub fn underlay_event(&self, node: &str, event: &str) -> Result<u64> {
        let mut n = 0;
        for p in Self::UNDERLAY_PROGRAMS {
            n += self.event(node, p, event)?;
        }
        Ok(n)
    }
}
