//! A 3-member etcd cluster as users run one: each member in a network namespace of its own
//! on the testbed's underlay, so a member can be killed (SIGKILL, as a crash) or partitioned
//! (every packet in and out of its underlay interface dropped, as a cut cable does: no
//! reset, no ICMP), then restarted or healed. Clients get every member's endpoint.
use std::{net::Ipv4Addr, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::{
    cleanup,
    etcd::{Etcd, Membership},
    netns,
    wait::wait_until,
};

/// The members and where clients run etcdctl from.
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
    /// A namespace that reaches every member (the testbed's etcd host), for etcdctl.
    client_ns: String,
    /// The testbed run whose cleanup record holds the members' process groups.
    run: String,
    partitioned: Vec<bool>,
}

/// The iptables rules that cut a member off (inserted to partition, deleted to heal).
const CUT: [[&str; 4]; 2] = [
    ["INPUT", "-i", "eth0", "DROP"],
    ["OUTPUT", "-o", "eth0", "DROP"],
];

impl EtcdCluster {
    /// Starts one member per `(namespace, address)`, each serving clients on `address:2379`
    /// and peers on `address:2380`, and waits until every member reports itself healthy
    /// (which takes an elected leader). `run` names the testbed run (for cleanup and for
    /// the cluster token); `client_ns` reaches every member.
    pub fn start(
        dir: &Path,
        run: &str,
        client_ns: &str,
        members: &[(String, Ipv4Addr)],
    ) -> Result<Self> {
        let initial_cluster = members
            .iter()
            .enumerate()
            .map(|(i, (_, addr))| format!("m{i}=http://{addr}:2380"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            client_ns: client_ns.to_string(),
            run: run.to_string(),
            partitioned: vec![false; members.len()],
        };
        for (i, (ns, addr)) in members.iter().enumerate() {
            let member = Membership {
                name: format!("m{i}"),
                initial_cluster: initial_cluster.clone(),
                token: format!("netdp-{run}"),
            };
            cluster
                .members
                .push(Etcd::spawn_member(dir, ns, *addr, member)?);
            cluster.record(i);
        }
        for i in 0..cluster.members.len() {
            let m = &mut cluster.members[i];
            m.wait_ready(Duration::from_secs(30))
                .with_context(|| format!("etcd member m{i} starting"))?;
        }
        Ok(cluster)
    }

    /// Records member `i`'s process group with the run, so it dies with the run even if
    /// this process is killed.
    fn record(&self, i: usize) {
        if let Some(pid) = self.members[i].pid() {
            cleanup::record(&self.run, |r| r.pgids.push(pid as i32));
        }
    }

    /// Every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// The client URLs as `--etcd-endpoints` takes them (comma separated).
    pub fn endpoint_list(&self) -> String {
        self.endpoints().join(",")
    }

    /// Members that run and are not partitioned: the ones a client can reach.
    fn reachable(&mut self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| !self.partitioned[i] && self.members[i].running())
            .collect()
    }

    /// The member reachable members agree is the leader, if they know one (none while an
    /// election runs or without quorum). Partitioned and stopped members are not asked: a
    /// cut-off leader may still believe it leads.
    pub fn leader(&mut self) -> Result<Option<usize>> {
        let mut ids = Vec::new();
        let mut leader = 0u64;
        for i in self.reachable() {
            let Ok(out) = self.ctl_on(i, &["endpoint", "status", "-w", "json"]) else {
                continue;
            };
            let v: Value = serde_json::from_str(&out)
                .with_context(|| format!("etcdctl endpoint status of m{i}: {out}"))?;
            let status = &v[0]["Status"];
            let id = status["header"]["member_id"].as_u64();
            let l = status["leader"].as_u64().unwrap_or(0);
            if let Some(id) = id {
                ids.push((i, id));
            }
            if l != 0 {
                leader = l;
            }
        }
        Ok(ids.iter().find(|(_, id)| *id == leader).map(|(i, _)| *i))
    }

    /// Waits until a reachable member leads; returns it and how long that took.
    pub fn wait_leader(&mut self, timeout: Duration) -> Result<(usize, Duration)> {
        let mut found = None;
        let took = wait_until("an etcd leader", timeout, || {
            found = self.leader()?;
            Ok(found.is_some())
        })?;
        Ok((found.ok_or_else(|| anyhow!("no leader"))?, took))
    }

    /// SIGKILLs member `i` (its data stays, for [`restart`](Self::restart)).
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts a stopped member again on its data and waits until it serves clients (not
    /// for quorum: a member may come back into a cluster that has none).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.members[i].kill();
        self.members[i].spawn()?;
        self.record(i);
        let what = format!("etcd member m{i} to serve clients again");
        wait_until(&what, Duration::from_secs(30), || {
            if !self.members[i].running() {
                bail!(
                    "etcd member m{i} exited: {}",
                    crate::process::tail(&self.members[i].log, 10)
                );
            }
            Ok(self.ctl_on(i, &["endpoint", "status"]).is_ok())
        })?;
        Ok(())
    }

    /// Cuts member `i` off from clients and peers alike.
    pub fn partition(&mut self, i: usize) -> Result<()> {
        if !self.partitioned[i] {
            self.iptables(i, "-I")?;
            self.partitioned[i] = true;
        }
        Ok(())
    }

    /// Undoes [`partition`](Self::partition).
    pub fn heal(&mut self, i: usize) -> Result<()> {
        if self.partitioned[i] {
            self.iptables(i, "-D")?;
            self.partitioned[i] = false;
        }
        Ok(())
    }

    fn iptables(&self, i: usize, op: &str) -> Result<()> {
        let ns = self.members[i]
            .netns
            .as_deref()
            .ok_or_else(|| anyhow!("member m{i} has no namespace"))?;
        for [chain, dir, dev, target] in CUT {
            netns::exec(ns, &["iptables", op, chain, dir, dev, "-j", target]).with_context(
                || format!("iptables {op} {chain} in {ns} (is iptables installed?)"),
            )?;
        }
        Ok(())
    }

    /// etcdctl against member `i` alone, from the client namespace.
    pub fn ctl_on(&self, i: usize, args: &[&str]) -> Result<String> {
        self.run_ctl(&self.members[i].endpoint, args)
    }

    /// etcdctl against every endpoint, as a client given all of them.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.run_ctl(&self.endpoint_list(), args)
    }

    fn run_ctl(&self, endpoints: &str, args: &[&str]) -> Result<String> {
        let mut cmd: Command = netns::command(&self.client_ns, "etcdctl")?;
        cmd.arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout=1s", "--command-timeout=3s"]);
        crate::etcd::etcdctl(cmd, args)
    }

    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.ctl(&["put", key, value]).map(|_| ())
    }

    /// Keys under `prefix` with their values and the etcd lease each is attached to (read
    /// from etcdctl's `-w fields`, where every field is one `"Name" : value` line).
    pub fn get_prefix_leases(&self, prefix: &str) -> Result<Vec<(String, String, i64)>> {
        let out = self.ctl(&["get", prefix, "--prefix", "-w", "fields"])?;
        let quoted = |v: &str| -> Result<String> {
            serde_json::from_str(v).with_context(|| format!("etcdctl printed {v}"))
        };
        let (mut kvs, mut key, mut value) = (Vec::new(), String::new(), String::new());
        for line in out.lines() {
            let Some((name, v)) = line.split_once(" : ") else {
                continue;
            };
            match name {
                "\"Key\"" => key = quoted(v)?,
                "\"Value\"" => value = quoted(v)?,
                "\"Lease\"" => kvs.push((
                    std::mem::take(&mut key),
                    std::mem::take(&mut value),
                    v.trim().parse().with_context(|| format!("lease {v}"))?,
                )),
                _ => {}
            }
        }
        Ok(kvs)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
    }
}
