//! A real etcd server (Debian's etcd-server) for one testbed run, alone or as a member of
//! an [`EtcdCluster`](crate::etcd_cluster::EtcdCluster).
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

pub use crate::tls::TlsFiles;
use crate::{netns, process, wait::wait_until};

pub struct Etcd {
    pub endpoint: String,
    /// Namespace it runs in (`None`: the root namespace, on loopback).
    pub netns: Option<String>,
    pub data_dir: PathBuf,
    pub tls: Option<TlsFiles>,
    /// Its place in a cluster (`None`: a cluster of one, peers on loopback).
    pub member: Option<Membership>,
    listen: (Ipv4Addr, u16, u16),
    pub log: PathBuf,
    child: Option<Child>,
}

/// How a cluster member is started: its name, every member's peer URL
/// (`--initial-cluster`), and a token unique to the run, so members of different runs can
/// never join each other.
#[derive(Debug, Clone)]
pub struct Membership {
    pub name: String,
    pub initial_cluster: String,
    pub token: String,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Etcd {
    /// Where clients reach it (address and client port), for talking to it directly.
    pub fn client_addr(&self) -> (Ipv4Addr, u16) {
        (self.listen.0, self.listen.1)
    }

    /// Starts etcd in namespace `ns` listening on `addr`, or on loopback of the root
    /// namespace with free ports when `ns` is `None`.
    pub fn start(
        dir: &Path,
        ns: Option<&str>,
        addr: Ipv4Addr,
        tls: Option<TlsFiles>,
    ) -> Result<Self> {
        let (client, peer) = match ns {
            Some(_) => (2379, 2380),
            None => (free_port()?, free_port()?),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut etcd = Etcd {
            endpoint: format!("{scheme}://{addr}:{client}"),
            netns: ns.map(String::from),
            data_dir: dir.join("etcd-data"),
            tls,
            member: None,
            listen: (addr, client, peer),
            log: dir.join("etcd.log"),
            child: None,
        };
        etcd.spawn()?;
        etcd.wait_ready(Duration::from_secs(30))?;
        Ok(etcd)
    }

    /// Starts cluster member `member` in namespace `ns` on `addr` (ports 2379 and 2380),
    /// without waiting: a member cannot answer health checks before a quorum is up.
    pub fn spawn_member(dir: &Path, ns: &str, addr: Ipv4Addr, member: Membership) -> Result<Self> {
        let mut etcd = Etcd {
            endpoint: format!("http://{addr}:2379"),
            netns: Some(ns.to_string()),
            data_dir: dir.join(format!("etcd-{}", member.name)),
            tls: None,
            log: dir.join(format!("etcd-{}.log", member.name)),
            member: Some(member),
            listen: (addr, 2379, 2380),
            child: None,
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    pub(crate) fn spawn(&mut self) -> Result<()> {
        let (addr, client, peer) = self.listen;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let (name, peer_url, cluster) = match &self.member {
            Some(m) => (
                m.name.clone(),
                format!("http://{addr}:{peer}"),
                m.initial_cluster.clone(),
            ),
            None => (
                "testbed".to_string(),
                format!("http://127.0.0.1:{peer}"),
                format!("testbed=http://127.0.0.1:{peer}"),
            ),
        };
        let mut args = vec![
            "--name".to_string(),
            name,
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--listen-client-urls".into(),
            format!("{scheme}://{addr}:{client}"),
            "--advertise-client-urls".into(),
            format!("{scheme}://{addr}:{client}"),
            "--listen-peer-urls".into(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            peer_url,
            "--initial-cluster".into(),
            cluster,
            "--logger".into(),
            "zap".into(),
        ];
        if let Some(m) = &self.member {
            args.extend([
                "--initial-cluster-token".to_string(),
                m.token.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
            ]);
        }
        if let Some(t) = &self.tls {
            for (flag, p) in [
                ("--trusted-ca-file", &t.ca),
                ("--cert-file", &t.server_cert),
                ("--key-file", &t.server_key),
            ] {
                args.push(flag.into());
                args.push(p.display().to_string());
            }
            args.push("--client-cert-auth".into());
        }
        let mut cmd = match &self.netns {
            Some(ns) => netns::command(ns, "etcd")?,
            None => Command::new("etcd"),
        };
        let log = std::fs::File::create(&self.log)?;
        cmd.args(&args)
            .env("ETCD_UNSUPPORTED_ARCH", "")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child =
            Some(process::spawn(cmd).context("starting etcd (is etcd-server installed?)")?);
        Ok(())
    }

    /// Arguments for etcdctl talking to this server.
    fn etcdctl_args(&self) -> Vec<String> {
        let mut a = vec![
            format!("--endpoints={}", self.endpoint),
            "--dial-timeout=2s".into(),
        ];
        if let Some(t) = &self.tls {
            a.push(format!("--cacert={}", t.ca.display()));
            a.push(format!("--cert={}", t.client_cert.display()));
            a.push(format!("--key={}", t.client_key.display()));
        }
        a
    }

    /// Runs etcdctl (v3 API) against this server.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = match &self.netns {
            Some(ns) => netns::command(ns, "etcdctl")?,
            None => Command::new("etcdctl"),
        };
        cmd.args(self.etcdctl_args());
        etcdctl(cmd, args)
    }

    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.ctl(&["put", key, value]).map(|_| ())
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let out = self.ctl(&["get", key, "--print-value-only"])?;
        let v = out.trim_end_matches('\n');
        Ok((!v.is_empty()).then(|| v.to_string()))
    }

    /// Keys and values under `prefix`.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let out = self.ctl(&["get", prefix, "--prefix"])?;
        let lines: Vec<&str> = out.lines().collect();
        Ok(lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect())
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.ctl(&["del", key]).map(|_| ())
    }

    /// Process id of the running server, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server is still running (it may have exited on its own).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    pub(crate) fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let mut exited = None;
        let healthy = wait_until("etcd to report itself healthy", timeout, || {
            if let Some(child) = self.child.as_mut() {
                exited = child.try_wait()?;
                if exited.is_some() {
                    return Ok(true);
                }
            }
            Ok(self.ctl(&["endpoint", "health"]).is_ok())
        });
        match (healthy, exited) {
            (_, Some(status)) => bail!(
                "etcd exited ({status}) at startup: {}",
                process::tail(&self.log, 10)
            ),
            (Ok(_), None) => Ok(()),
            (Err(e), None) => bail!("{e:#}: {}", process::tail(&self.log, 10)),
        }
    }

    /// Stops the server (its data stays), as an outage would.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            // Its data stays either way; a kill is only worth a line in the test's output.
            match process::terminate(child) {
                Ok(s) if s.killed => eprintln!("etcd {s}"),
                Ok(_) => {}
                Err(e) => eprintln!("stopping etcd: {e:#}"),
            }
        }
    }

    /// SIGKILL, as a crash would (its data stays).
    pub fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            process::kill(child);
        }
    }

    /// Starts it again on the same address and data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()?;
        self.wait_ready(Duration::from_secs(30))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An etcd on loopback of the root namespace with a directory of its own, for tests that
/// need etcd but no cluster (lease managers in-process, CLI against etcd). Everything is
/// removed when it is dropped.
pub struct LocalEtcd {
    pub etcd: Etcd,
    id: String,
    pub dir: PathBuf,
}

impl LocalEtcd {
    pub fn start() -> Result<Self> {
        Self::start_with(false)
    }

    /// With `tls`, etcd serves HTTPS and requires client certificates from a fresh CA.
    pub fn start_with(tls: bool) -> Result<Self> {
        crate::base::require_privileges()?;
        crate::cleanup::remove_stale();
        let id = format!("etcd-{}-{:x}", std::process::id(), rand_u32());
        let dir = crate::cleanup::runs_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        crate::cleanup::register(&id, &dir);
        let tls = if tls {
            Some(crate::tls::generate(&dir.join("pki"))?)
        } else {
            None
        };
        let etcd = Etcd::start(&dir, None, Ipv4Addr::LOCALHOST, tls)?;
        if let Some(c) = &etcd.child {
            let pg = c.id() as i32;
            crate::cleanup::record(&id, |r| r.pgids.push(pg));
        }
        Ok(LocalEtcd { etcd, id, dir })
    }
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ (std::process::id() << 16)
}

impl std::ops::Deref for LocalEtcd {
    type Target = Etcd;
    fn deref(&self) -> &Etcd {
        &self.etcd
    }
}

impl std::ops::DerefMut for LocalEtcd {
    fn deref_mut(&mut self) -> &mut Etcd {
        &mut self.etcd
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.etcd.stop();
        crate::cleanup::release(&self.id);
    }
}

/// Runs `cmd` (an etcdctl with its connection flags) with `args` on the v3 API: its output,
/// or its error.
pub(crate) fn etcdctl(mut cmd: Command, args: &[&str]) -> Result<String> {
    let out = cmd.args(args).env("ETCDCTL_API", "3").output()?;
    if !out.status.success() {
        bail!(
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
