//! The nodes' `netdp agent` processes: the flags the testbed gives them, starting one and
//! waiting until it is ready, stopping it as an operator would or killing it, and its log.
use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Result, anyhow, bail};

use crate::{Node, Testbed, cleanup, netns, process, wait};

impl Node {
    /// Where the node's agents write, appended to across restarts.
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    pub fn agent_running(&self) -> bool {
        self.agent.is_some()
    }

    /// Process id of the node's agent, if one runs (for resource measurements).
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }
}

impl Testbed {
    /// The arguments the testbed gives every agent.
    pub fn agent_args(&self, node: &str) -> Vec<String> {
        let n = self.node(node);
        let mut args = vec![
            "agent".to_string(),
            format!("--etcd-endpoints={}", self.etcd_endpoint_of(n.cluster)),
            format!("--etcd-prefix={}", self.prefix),
            "--iface=eth0".into(),
            format!("--node-name={}", n.ns),
            format!("--subnet-file={}", n.subnet_file().display()),
            "--resync-interval=1s".into(),
        ];
        if n.public_ip != n.ip {
            args.push(format!("--public-ip={}", n.public_ip));
        }
        args
    }

    /// Starts `netdp agent` in the node's namespace and waits until it is ready.
    pub fn start_agent(&mut self, node: &str, extra: &[&str]) -> Result<()> {
        let mut args = self.agent_args(node);
        args.extend(extra.iter().map(|s| s.to_string()));
        // Only this run's part of the (appended) log counts.
        let log = self.node(node).agent_log();
        let skip = std::fs::metadata(&log)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let child = self.spawn_agent(node, &args)?;
        self.node_mut(node).agent = Some(child);
        let mut exited = None;
        let ready = wait::wait_until(
            &format!("the agent on {node} to log \"netdp agent ready\""),
            Duration::from_secs(60),
            || {
                let text = std::fs::read(&log).unwrap_or_default();
                if String::from_utf8_lossy(text.get(skip..).unwrap_or_default())
                    .contains("netdp agent ready")
                {
                    return Ok(true);
                }
                let n = self.node_mut(node);
                exited = n.agent.as_mut().and_then(|c| c.try_wait().ok().flatten());
                if exited.is_some() {
                    n.agent = None;
                }
                Ok(exited.is_some())
            },
        );
        match (ready, exited) {
            (Ok(_), None) => Ok(()),
            (_, Some(status)) => bail!(
                "agent on {node} exited ({status}): {}",
                process::tail(&log, 15)
            ),
            (Err(e), None) => bail!("{e:#}: {}", process::tail(&log, 15)),
        }
    }

    /// Spawns an agent with exactly `args` (appending to its log) without waiting.
    pub fn spawn_agent(&self, node: &str, args: &[String]) -> Result<Child> {
        let n = self.node(node);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.agent_log())?;
        let mut cmd = netns::command(&n.ns, &self.bins.netdp)?;
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = process::spawn(cmd)?;
        cleanup::record(&self.id, |r| r.pgids.push(child.id() as i32));
        Ok(child)
    }

    /// Stops a node's agent as an operator would (SIGTERM; the dataplane stays pinned) and
    /// fails unless it exited on its own, with status 0, within [`process::GRACE`]: an agent
    /// that had to be killed, or that exited with an error, is a failure. Returns how it
    /// stopped.
    pub fn stop_agent(&mut self, node: &str) -> Result<process::Stopped> {
        let child = self
            .node_mut(node)
            .agent
            .take()
            .ok_or_else(|| anyhow!("no agent runs on {node}"))?;
        let stopped = process::terminate(child)?;
        if !stopped.clean() {
            bail!(
                "the agent on {node} {stopped}: {}",
                process::tail(&self.node(node).agent_log(), 15)
            );
        }
        Ok(stopped)
    }

    /// Whether the node's agent still runs (`false` once it has exited, whatever the cause).
    pub fn agent_alive(&mut self, node: &str) -> bool {
        let n = self.node_mut(node);
        matches!(n.agent.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// GET `path` of the agent's health server (`--healthz-addr`, default port 9876) from
    /// inside the node: the HTTP status and the body.
    pub fn agent_http(&self, node: &str, path: &str) -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let ns = self.node(node).ns.clone();
        let text = netns::join(netns::in_netns(&ns, move || -> Result<String> {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9876));
            let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            conn.write_all(request.as_bytes())?;
            let mut text = String::new();
            conn.read_to_string(&mut text)?;
            Ok(text)
        })?)?;
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP response from the agent on {node}: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        Ok((status, body.to_string()))
    }

    /// Kills a node's agent without warning.
    pub fn kill_agent(&mut self, node: &str) {
        if let Some(child) = self.node_mut(node).agent.take() {
            process::kill(child);
        }
    }

    pub fn start_all_agents(&mut self, extra: &[&str]) -> Result<()> {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for n in names {
            self.start_agent(&n, extra)?;
        }
        Ok(())
    }

    /// The tail of every agent's log, for failure reports.
    pub fn agent_logs(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- agent {} ---\n{}",
                    n.name,
                    process::tail(&n.agent_log(), lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops every agent still running, reporting (not failing on) an unclean exit: the
    /// testbed is going away, possibly because a test already failed.
    pub(crate) fn stop_remaining_agents(&mut self) {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for n in names {
            if let Some(child) = self.node_mut(&n).agent.take() {
                match process::terminate(child) {
                    Ok(s) if !s.clean() => eprintln!("agent on {n} {s}"),
                    Ok(_) => {}
                    Err(e) => eprintln!("stopping the agent on {n}: {e:#}"),
                }
            }
        }
    }
}
