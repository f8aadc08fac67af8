//! The testbed: underlay subnets (bridges in a namespace of their own) joined by a router,
//! an etcd host, nodes running real `netdp agent`s, pods wired in by the real CNI plugin,
//! an outside host and NAT gateways.
//!
//! Addressing: underlay `i` is `192.168.<10(i+1)>.0/24` with the router at `.1`, etcd at
//! `.2` of the first underlay, and nodes from `.11`. The outside host is `203.0.113.2` behind
//! the router (`203.0.113.1`). A node behind NAT sits at `172.16.<k>.2` behind a gateway
//! whose public side is `.250 - k` of its underlay.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::{cleanup, etcd::Etcd, netns, process, wait};

/// Where the netdp binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub netdp: PathBuf,
    pub cni: PathBuf,
}

impl Binaries {
    /// `NETDP_BIN_DIR`, or the directory of the running executable (and its parent, for
    /// test binaries in `target/debug/deps`).
    pub fn locate() -> Result<Self> {
        let mut dirs = Vec::new();
        if let Some(d) = std::env::var_os("NETDP_BIN_DIR") {
            dirs.push(PathBuf::from(d));
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(d) = exe.parent() {
                dirs.push(d.to_path_buf());
                if let Some(p) = d.parent() {
                    dirs.push(p.to_path_buf());
                }
            }
        }
        for d in &dirs {
            let (netdp, cni) = (d.join("netdp"), d.join("netdp-cni"));
            if netdp.is_file() && cni.is_file() {
                return Ok(Binaries { netdp, cni });
            }
        }
        bail!("netdp and netdp-cni binaries not found in {dirs:?}; build them or set NETDP_BIN_DIR")
    }
}

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub underlay: usize,
    /// Behind a NAT gateway on its underlay.
    pub nat: bool,
}

/// The shape of a testbed.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub underlays: usize,
    pub nodes: Vec<NodeSpec>,
    pub outside: bool,
    /// Written to `<prefix>/config` when the testbed starts.
    pub network_config: Option<String>,
    pub etcd_prefix: Option<String>,
    /// Binaries to run (default: [`Binaries::locate`]).
    pub bins: Option<Binaries>,
}

impl Spec {
    /// `n` nodes on one underlay subnet.
    pub fn flat(n: usize) -> Self {
        let mut s = Spec {
            underlays: 1,
            ..Default::default()
        };
        for i in 1..=n {
            s = s.node(&format!("n{i}"), 0);
        }
        s
    }

    pub fn underlays(mut self, n: usize) -> Self {
        self.underlays = n;
        self
    }

    pub fn node(mut self, name: &str, underlay: usize) -> Self {
        self.nodes.push(NodeSpec {
            name: name.into(),
            underlay,
            nat: false,
        });
        self
    }

    pub fn nat_node(mut self, name: &str, underlay: usize) -> Self {
        self.nodes.push(NodeSpec {
            name: name.into(),
            underlay,
            nat: true,
        });
        self
    }

    pub fn outside(mut self) -> Self {
        self.outside = true;
        self
    }

    pub fn binaries(mut self, bins: Binaries) -> Self {
        self.bins = Some(bins);
        self
    }

    pub fn network(mut self, json: &str) -> Self {
        self.network_config = Some(json.into());
        self
    }
}

pub fn underlay_prefix(i: usize) -> String {
    format!("192.168.{}", 10 * (i + 1))
}

pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const OUTSIDE_GW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const ETCD_PREFIX: &str = "/coreos.com/network";

pub struct Node {
    /// Short name in the spec (`n1`).
    pub name: String,
    /// Its namespace; also its `--node-name`, unique per run.
    pub ns: String,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// Address other nodes see (the NAT gateway's for a node behind NAT).
    pub public_ip: Ipv4Addr,
    pub underlay: usize,
    pub dir: PathBuf,
    agent: Option<Child>,
    pub pods: Vec<Pod>,
}

/// Where agents pin their programs and maps (the agent's default `--bpf-root`), one
/// directory per node name.
pub use netdp_common::BPF_ROOT;

/// A map an agent pinned, opened for reading.
pub fn open_pinned_map(pin: &Path) -> Result<aya::maps::Map> {
    let data =
        aya::maps::MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    Ok(aya::maps::Map::from_map_data(data)?)
}

impl Node {
    /// The node's pin directory: `maps/`, `progs/`, `links/`.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(BPF_ROOT).join(&self.ns)
    }

    /// A map the node's agent pinned.
    pub fn map_pin(&self, map: &str) -> PathBuf {
        self.pin_dir().join("maps").join(map)
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }

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

    /// The subnet this node leased (network address and prefix), from its subnet file.
    pub fn subnet(&self) -> Result<(Ipv4Addr, u8)> {
        let text = std::fs::read_to_string(self.subnet_file())
            .with_context(|| format!("reading {}", self.subnet_file().display()))?;
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .ok_or_else(|| anyhow!("no FLANNEL_SUBNET in {}", self.subnet_file().display()))?;
        let (ip, len) = v
            .split_once('/')
            .ok_or_else(|| anyhow!("FLANNEL_SUBNET={v} is not a CIDR"))?;
        let len: u8 = len.parse()?;
        let ip: Ipv4Addr = ip.parse()?;
        let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
        Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
    }
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub ns: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub container_id: String,
    /// The CNI ADD result.
    pub result: Value,
}

/// What a counter counted: one of a node's programs, or an interface's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

pub struct Testbed {
    pub id: String,
    pub dir: PathBuf,
    pub bins: Binaries,
    pub etcd: Option<Etcd>,
    pub nodes: Vec<Node>,
    pub spec: Spec,
    pub prefix: String,
    /// Namespace holding the underlay bridges.
    pub underlay_ns: String,
    pub router_ns: Option<String>,
    pub outside_ns: Option<String>,
    pub ctl_ns: String,
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut x = (std::process::id() as u64) << 32 ^ nanos as u64 ^ rand_seed();
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    format!("{:06x}", x & 0xff_ffff)
}

fn rand_seed() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed)
}

/// Gives `eth0` of a host namespace `ip`/24 and, optionally, a default route.
fn address_host(ns: &str, ip: Ipv4Addr, gateway: Option<&str>) -> Result<()> {
    netns::ip(&["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    if let Some(gw) = gateway {
        netns::ip(&["-n", ns, "route", "add", "default", "via", gw])?;
    }
    Ok(())
}

/// Fails loudly unless we are root with the namespace and BPF features the testbed needs.
pub fn require_privileges() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the testbed needs root (network namespaces, BPF); run the tests as root");
    }
    for tool in ["ip", "etcd", "etcdctl", "ping"] {
        if which(tool).is_none() {
            bail!("{tool} is not installed; `cargo xtask setup` installs the testbed's packages");
        }
    }
    if !Path::new("/sys/fs/bpf").exists() {
        bail!("/sys/fs/bpf is missing: mount bpffs with `mount -t bpf bpf /sys/fs/bpf`");
    }
    Ok(())
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

impl Testbed {
    pub fn new(spec: Spec) -> Result<Self> {
        require_privileges()?;
        cleanup::remove_stale();
        let bins = match &spec.bins {
            Some(b) => b.clone(),
            None => Binaries::locate()?,
        };
        let mut id = run_id();
        while netns::exists(&format!("nd{id}-ul")) {
            id = run_id();
        }
        let dir = cleanup::runs_dir().join(&id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        cleanup::register(&id, &dir);
        let mut tb = Testbed {
            prefix: spec
                .etcd_prefix
                .clone()
                .unwrap_or_else(|| ETCD_PREFIX.to_string()),
            underlay_ns: format!("nd{id}-ul"),
            ctl_ns: format!("nd{id}-ctl"),
            router_ns: None,
            outside_ns: None,
            id,
            dir,
            bins,
            etcd: None,
            nodes: Vec::new(),
            spec: spec.clone(),
        };
        tb.build().context("building the testbed")?;
        Ok(tb)
    }

    fn ns(&self, role: &str) -> String {
        format!("nd{}-{role}", self.id)
    }

    pub(crate) fn add_ns(&self, name: &str) -> Result<()> {
        netns::create(name)?;
        cleanup::record(&self.id, |r| r.namespaces.push(name.to_string()));
        Ok(())
    }

    /// A veth pair with ends in two of our namespaces.
    fn veth(&self, ns_a: &str, a: &str, ns_b: &str, b: &str) -> Result<()> {
        netns::ip(&[
            "-n", ns_a, "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b,
        ])?;
        netns::ip(&["-n", ns_a, "link", "set", a, "up"])?;
        netns::ip(&["-n", ns_b, "link", "set", b, "up"])?;
        Ok(())
    }

    /// Plugs `ifname` of namespace `ns` into underlay bridge `u` (port `port` there).
    fn plug(&self, u: usize, port: &str, ns: &str, ifname: &str) -> Result<()> {
        self.veth(&self.underlay_ns, port, ns, ifname)?;
        netns::ip(&[
            "-n",
            &self.underlay_ns,
            "link",
            "set",
            port,
            "master",
            &format!("br{u}"),
        ])?;
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let spec = self.spec.clone();
        let ul = self.underlay_ns.clone();
        self.add_ns(&ul)?;
        for u in 0..spec.underlays.max(1) {
            let br = format!("br{u}");
            netns::ip(&["-n", &ul, "link", "add", &br, "type", "bridge"])?;
            netns::ip(&["-n", &ul, "link", "set", &br, "up"])?;
        }
        let needs_router = spec.underlays > 1 || spec.outside || spec.nodes.iter().any(|n| n.nat);
        if needs_router {
            let rt = self.ns("rt");
            self.add_ns(&rt)?;
            netns::sysctl(&rt, "net.ipv4.ip_forward", "1")?;
            for u in 0..spec.underlays.max(1) {
                self.plug(u, &format!("rt{u}"), &rt, &format!("eth{u}"))?;
                netns::ip(&[
                    "-n",
                    &rt,
                    "addr",
                    "add",
                    &format!("{}.1/24", underlay_prefix(u)),
                    "dev",
                    &format!("eth{u}"),
                ])?;
            }
            if spec.outside {
                let out = self.ns("out");
                self.add_ns(&out)?;
                self.veth(&rt, "out", &out, "eth0")?;
                netns::ip(&[
                    "-n",
                    &rt,
                    "addr",
                    "add",
                    &format!("{OUTSIDE_GW}/24"),
                    "dev",
                    "out",
                ])?;
                netns::ip(&[
                    "-n",
                    &out,
                    "addr",
                    "add",
                    &format!("{OUTSIDE_IP}/24"),
                    "dev",
                    "eth0",
                ])?;
                netns::ip(&[
                    "-n",
                    &out,
                    "route",
                    "add",
                    "default",
                    "via",
                    &OUTSIDE_GW.to_string(),
                ])?;
                self.outside_ns = Some(out);
            }
            self.router_ns = Some(rt);
        }

        // etcd's host, on the first underlay.
        let ctl = self.ctl_ns.clone();
        self.add_ns(&ctl)?;
        self.plug(0, "ctl", &ctl, "eth0")?;
        let etcd_ip = Ipv4Addr::new(192, 168, 10, 2);
        netns::ip(&[
            "-n",
            &ctl,
            "addr",
            "add",
            &format!("{etcd_ip}/24"),
            "dev",
            "eth0",
        ])?;
        if needs_router {
            netns::ip(&["-n", &ctl, "route", "add", "default", "via", "192.168.10.1"])?;
        }
        let etcd = Etcd::start(&self.dir, Some(&ctl), etcd_ip, None)?;
        self.etcd = Some(etcd);
        if let Some(cfg) = &spec.network_config {
            self.set_network_config(cfg)?;
        }

        let mut next_host = vec![11u8; spec.underlays.max(1)];
        let mut nat_count = 0u8;
        for n in &spec.nodes {
            let ns = self.ns(&n.name);
            self.add_ns(&ns)?;
            // Only netdp's programs may forward on a node: a packet that crosses a node with
            // forwarding off was carried by eBPF, not by the kernel's routing.
            netns::sysctl(&ns, "net.ipv4.ip_forward", "0")?;
            let pfx = underlay_prefix(n.underlay);
            let (ip, public_ip) = if n.nat {
                nat_count += 1;
                let gw = self.ns(&format!("nat{nat_count}"));
                self.add_ns(&gw)?;
                netns::sysctl(&gw, "net.ipv4.ip_forward", "1")?;
                let wan: Ipv4Addr = format!("{pfx}.{}", 250 - nat_count).parse()?;
                self.plug(n.underlay, &format!("nat{nat_count}"), &gw, "wan")?;
                netns::ip(&["-n", &gw, "addr", "add", &format!("{wan}/24"), "dev", "wan"])?;
                netns::ip(&[
                    "-n",
                    &gw,
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("{pfx}.1"),
                ])?;
                self.veth(&gw, "lan", &ns, "eth0")?;
                let lan = format!("172.16.{nat_count}");
                netns::ip(&[
                    "-n",
                    &gw,
                    "addr",
                    "add",
                    &format!("{lan}.1/24"),
                    "dev",
                    "lan",
                ])?;
                netns::exec(
                    &gw,
                    &[
                        "iptables",
                        "-t",
                        "nat",
                        "-A",
                        "POSTROUTING",
                        "-o",
                        "wan",
                        "-j",
                        "MASQUERADE",
                    ],
                )?;
                let ip: Ipv4Addr = format!("{lan}.2").parse()?;
                address_host(&ns, ip, Some(&format!("{lan}.1")))?;
                (ip, wan)
            } else {
                let host = next_host[n.underlay];
                next_host[n.underlay] += 1;
                self.plug(n.underlay, &n.name, &ns, "eth0")?;
                let ip: Ipv4Addr = format!("{pfx}.{host}").parse()?;
                let gw = format!("{pfx}.1");
                address_host(&ns, ip, needs_router.then_some(gw.as_str()))?;
                (ip, ip)
            };
            let dir = self.dir.join(&n.name);
            std::fs::create_dir_all(&dir)?;
            cleanup::record(&self.id, |r| r.bpf_dirs.push(Path::new(BPF_ROOT).join(&ns)));
            self.nodes.push(Node {
                name: n.name.clone(),
                ns,
                ip,
                public_ip,
                underlay: n.underlay,
                dir,
                agent: None,
                pods: Vec::new(),
            });
        }
        Ok(())
    }

    pub fn etcd(&self) -> &Etcd {
        self.etcd.as_ref().expect("the testbed always has etcd")
    }

    pub fn etcd_mut(&mut self) -> &mut Etcd {
        self.etcd.as_mut().expect("the testbed always has etcd")
    }

    pub fn etcd_endpoint(&self) -> String {
        self.etcd().endpoint.clone()
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in this testbed"))
    }

    pub(crate) fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in this testbed"))
    }

    /// Writes (replaces) the network config in etcd.
    pub fn set_network_config(&self, json: &str) -> Result<()> {
        self.etcd().put(&format!("{}/config", self.prefix), json)
    }

    /// The arguments the testbed gives every agent.
    pub fn agent_args(&self, node: &str) -> Vec<String> {
        let n = self.node(node);
        let mut args = vec![
            "agent".to_string(),
            format!("--etcd-endpoints={}", self.etcd_endpoint()),
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

    /// The CNI network config a runtime on this node would pass.
    pub fn cni_config(&self, node: &str) -> Value {
        let n = self.node(node);
        json!({
            "cniVersion": "1.0.0",
            "name": format!("netdp-{}", self.id),
            "type": "netdp-cni",
            "nodeName": n.ns,
            "subnetFile": n.subnet_file(),
            "dataDir": n.dir.join("cni"),
        })
    }

    /// Calls the CNI plugin on a node as a container runtime would.
    pub fn cni(
        &self,
        node: &str,
        command: &str,
        env: &[(&str, &str)],
        conf: &Value,
    ) -> Result<(bool, Value)> {
        use std::io::Write;
        let n = self.node(node);
        let mut cmd = netns::command(&n.ns, &self.bins.cni)?;
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", self.bins.cni.parent().unwrap_or(Path::new("/")))
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running netdp-cni")?;
        let written = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin"))?
            .write_all(conf.to_string().as_bytes());
        match written {
            // A plugin refusing its environment may exit before reading its config.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r?,
        }
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(text.trim())
                .with_context(|| format!("CNI printed non-JSON: {text}"))?
        };
        Ok((out.status.success(), v))
    }

    /// Creates a pod namespace on `node` and wires it with CNI ADD.
    pub fn add_pod(&mut self, node: &str, name: &str) -> Result<Pod> {
        self.add_pod_with(node, name, None)
    }

    /// Like [`add_pod`](Self::add_pod), asking for a specific address (CNI_ARGS IP=).
    pub fn add_pod_with(&mut self, node: &str, name: &str, ip: Option<Ipv4Addr>) -> Result<Pod> {
        self.add_pod_with_conf(node, name, ip, json!({}))
    }

    /// Like [`add_pod_with`](Self::add_pod_with), with `extra` merged into the CNI network
    /// config (e.g. `{"mtu": 1500}`).
    pub fn add_pod_with_conf(
        &mut self,
        node: &str,
        name: &str,
        ip: Option<Ipv4Addr>,
        extra: Value,
    ) -> Result<Pod> {
        let ns = format!("{}-{name}", self.node(node).ns);
        if !netns::exists(&ns) {
            self.add_ns(&ns)?;
        }
        let container_id = format!("{}-{node}-{name}", self.id);
        let netns_path = netns::path(&ns).display().to_string();
        let args = ip.map(|ip| format!("IgnoreUnknown=1;IP={ip}"));
        let mut env = vec![
            ("CNI_CONTAINERID", container_id.as_str()),
            ("CNI_NETNS", netns_path.as_str()),
            ("CNI_IFNAME", "eth0"),
        ];
        if let Some(a) = &args {
            env.push(("CNI_ARGS", a.as_str()));
        }
        let mut conf = self.cni_config(node);
        if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let (ok, result) = self.cni(node, "ADD", &env, &conf)?;
        if !ok {
            bail!("CNI ADD for {name} on {node} failed: {result}");
        }
        let ip: Ipv4Addr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("CNI result without an address: {result}"))?;
        let pod = Pod {
            name: name.into(),
            ns,
            node: node.into(),
            ip,
            container_id,
            result,
        };
        self.node_mut(node).pods.push(pod.clone());
        Ok(pod)
    }

    /// CNI DEL for a pod (the namespace stays, as a runtime would delete it afterwards).
    pub fn del_pod(&mut self, pod: &Pod) -> Result<()> {
        let netns_path = netns::path(&pod.ns).display().to_string();
        let env = [
            ("CNI_CONTAINERID", pod.container_id.as_str()),
            ("CNI_NETNS", netns_path.as_str()),
            ("CNI_IFNAME", "eth0"),
        ];
        let conf = self.cni_config(&pod.node);
        let (ok, result) = self.cni(&pod.node, "DEL", &env, &conf)?;
        if !ok {
            bail!("CNI DEL for {} failed: {result}", pod.name);
        }
        self.node_mut(&pod.node).pods.retain(|p| p.name != pod.name);
        Ok(())
    }

    pub fn pod(&self, node: &str, name: &str) -> &Pod {
        self.node(node)
            .pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} on {node}"))
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

    /// This node's subnet as `a.b.c.d/len`, from its subnet file.
    pub fn subnet_of(&self, node: &str) -> Result<String> {
        let (net, len) = self.node(node).subnet()?;
        Ok(format!("{net}/{len}"))
    }

    /// [`wait::wait_until`], with the agents' logs in the error.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        f: impl FnMut() -> Result<bool>,
    ) -> Result<Duration> {
        wait::wait_until(what, timeout, f).map_err(|e| anyhow!("{e:#}\n{}", self.agent_logs(20)))
    }

    /// Adds a route on the router (e.g. a pod subnet via the node that leases it, as an
    /// operator would for pods to be reachable without masquerading, or an external IP of
    /// a service announced to a node).
    pub fn router_route(&self, dst: &str, via: Ipv4Addr) -> Result<()> {
        let rt = self
            .router_ns
            .as_ref()
            .ok_or_else(|| anyhow!("this testbed has no router"))?;
        netns::ip(&["-n", rt, "route", "replace", dst, "via", &via.to_string()])?;
        Ok(())
    }

    /// `netdp counters -o json` on a node: one object per reason and per event.
    fn counter_rows(&self, node: &str) -> Result<Vec<Value>> {
        let v = self.netdp_json(node, &["counters"])?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Counters of a node's programs: (program, reason) -> packets.
    pub fn counters(&self, node: &str) -> Result<std::collections::HashMap<(String, String), u64>> {
        Ok(self
            .counter_totals(node)?
            .into_iter()
            .map(|(k, c)| (k, c.packets))
            .collect())
    }

    /// Counters of a node's programs with bytes: (program, reason) -> packets and bytes.
    pub fn counter_totals(
        &self,
        node: &str,
    ) -> Result<std::collections::HashMap<(String, String), Count>> {
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
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "testbed {} failed; agent logs:\n{}",
                self.id,
                self.agent_logs(30)
            );
        }
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
        if let Some(mut e) = self.etcd.take() {
            e.stop();
        }
        cleanup::release(&self.id);
    }
}
