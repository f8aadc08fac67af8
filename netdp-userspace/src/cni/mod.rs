//! `netdp-cni`: wires a pod into the node's dataplane the way a container runtime expects
//! (CNI spec 1.x: env vars in, network config on stdin, result or error JSON on stdout).
//!
//! ADD creates a veth pair, moves one end into the pod as CNI_IFNAME with an address from
//! the node's subnet, registers the pod in ENDPOINTS and attaches `from_pod` to the host
//! end. It needs no agent round trip: the agent's pinned program and maps are enough.
pub mod ipam;
pub mod types;

use std::{collections::HashMap, net::Ipv4Addr, os::fd::AsRawFd, path::Path};

use anyhow::anyhow;
use aya::programs::SchedClassifier;
use ipnetwork::Ipv4Network;
use netdp_common::{endpoint::Endpoint, program_names};
use serde_json::{Value, json};

use crate::{
    dataplane::{Hook, Pins, attach_and_pin, endpoint::EndpointMap, node_name},
    netlink::Netlink,
    netns,
    subnet_file::SubnetFile,
    util::mac_string,
};
use types::{CniError, CniResult, IpConfig, NetConf, Route, SUPPORTED_VERSIONS, code};

/// What the runtime passed in the environment.
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            command: var("CNI_COMMAND").unwrap_or_default(),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
        }
    }

    fn require(&self, name: &str, v: &Option<String>) -> Result<String, CniError> {
        v.clone()
            .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("{name} is not set")))
    }

    /// `IP=` from CNI_ARGS (`K=V;K=V`), as host-local honours it.
    fn requested_ip(&self) -> Result<Option<Ipv4Addr>, CniError> {
        let Some(args) = &self.args else {
            return Ok(None);
        };
        for kv in args.split(';') {
            if let Some(v) = kv.strip_prefix("IP=") {
                return v.parse().map(Some).map_err(|_| {
                    CniError::new(
                        code::INVALID_ENV,
                        format!("CNI_ARGS IP={v} is not an IPv4 address"),
                    )
                });
            }
        }
        Ok(None)
    }
}

/// Runs one plugin invocation. Returns the text for stdout and whether it succeeded.
pub fn run(env: &Env, stdin: &str) -> (String, bool) {
    let version_of = |stdin: &str| {
        serde_json::from_str::<Value>(stdin)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(|s| s.as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| "1.1.0".into())
    };
    let version = version_of(stdin);
    let outcome = dispatch(env, stdin);
    match outcome {
        Ok(Some(v)) => (serde_json::to_string(&v).unwrap_or_default(), true),
        Ok(None) => (String::new(), true),
        Err(e) => (e.to_json(&version).to_string(), false),
    }
}

/// A config on stdin that does not decode; `path` (`.` for the whole) names the field,
/// which serde's own messages only give as a line and column.
fn decode_error(path: &str, e: serde_json::Error) -> CniError {
    let at = if path == "." {
        String::new()
    } else {
        format!("{path}: ")
    };
    CniError::new(code::DECODE, format!("network config on stdin: {at}{e}"))
}

/// Parses and checks the network config on stdin; errors name the field.
pub fn parse_conf(stdin: &str) -> Result<NetConf, CniError> {
    let mut de = serde_json::Deserializer::from_str(stdin);
    let conf: NetConf = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| decode_error(&e.path().to_string(), e.into_inner()))?;
    de.end().map_err(|e| decode_error(".", e))?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {} is not supported (supported: {})",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if let Some(mtu) = conf.mtu.filter(|m| !(576..=65535).contains(m)) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("mtu: {mtu} is not an IPv4 MTU (576-65535)"),
        ));
    }
    Ok(conf)
}

fn dispatch(env: &Env, stdin: &str) -> Result<Option<Value>, CniError> {
    match env.command.as_str() {
        "VERSION" => Ok(Some(json!({
            "cniVersion": "1.1.0",
            "supportedVersions": SUPPORTED_VERSIONS,
        }))),
        "ADD" => {
            let conf = parse_conf(stdin)?;
            let result = block_on(add(env, &conf))?;
            Ok(Some(
                serde_json::to_value(result).map_err(|e| CniError::internal(e.into()))?,
            ))
        }
        "DEL" => {
            let conf = parse_conf(stdin)?;
            block_on(del(env, &conf))?;
            Ok(None)
        }
        "CHECK" => {
            let conf = parse_conf(stdin)?;
            block_on(check(env, &conf))?;
            Ok(None)
        }
        "STATUS" => {
            let conf = parse_conf(stdin)?;
            status(&conf)?;
            Ok(None)
        }
        "GC" => {
            let conf = parse_conf(stdin)?;
            block_on(gc(&conf))?;
            Ok(None)
        }
        "" => Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, VERSION, GC"),
        )),
    }
}

fn block_on<T>(f: impl Future<Output = Result<T, CniError>>) -> Result<T, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::internal(e.into()))?
        .block_on(f)
}

fn node_pins(conf: &NetConf) -> Result<Pins, CniError> {
    let node = node_name(conf.node_name.as_deref()).map_err(CniError::internal)?;
    Pins::new(Path::new(&conf.bpf_root), &node)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("nodeName: {e:#}")))
}

/// The node's lease and dataplane, or "try again later" while the agent is starting.
fn node_ready(conf: &NetConf) -> Result<(SubnetFile, Pins), CniError> {
    let pins = node_pins(conf)?;
    let sf = SubnetFile::read(Path::new(&conf.subnet_file)).map_err(|e| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!("the netdp agent has not leased a subnet yet: {e:#}"),
        )
    })?;
    if !pins.exists() {
        return Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "the netdp agent has not set up the dataplane at {} yet (is it running, \
                 and does it see the host's /sys/fs/bpf?)",
                pins.dir().display()
            ),
        ));
    }
    Ok((sf, pins))
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    node_ready(conf)
        .map(|_| ())
        .map_err(|e| CniError::new(code::NOT_AVAILABLE, e.msg))
}

/// Host-side veth name: stable for (container, ifname), short enough for IFNAMSIZ.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("nd{:012x}", h & 0xffff_ffff_ffff)
}

fn store(conf: &NetConf) -> Result<ipam::Store, CniError> {
    ipam::Store::open(Path::new(&conf.data_dir), &conf.name).map_err(CniError::internal)
}

async fn add(env: &Env, conf: &NetConf) -> Result<CniResult, CniError> {
    let cid = env.require("CNI_CONTAINERID", &env.container_id)?;
    let netns = env.require("CNI_NETNS", &env.netns)?;
    let ifname = env.require("CNI_IFNAME", &env.ifname)?;
    if ifname.len() > 15 || ifname.contains('/') {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_IFNAME {ifname:?} is not a valid interface name"),
        ));
    }
    let requested = env.requested_ip()?;
    let (sf, pins) = node_ready(conf)?;
    let mtu = conf.mtu.unwrap_or(sf.mtu);
    let host_if = host_ifname(&cid, &ifname);
    let store = store(conf)?;
    let alloc = store
        .allocate(sf.subnet, &cid, &ifname, &host_if, requested)
        .map_err(|e| CniError::new(code::NO_ADDRESSES, format!("{e:#}")))?;
    let nl = Netlink::connect().map_err(CniError::internal)?;
    match wire(&nl, &pins, &sf, &alloc, &netns, &ifname, mtu).await {
        Ok((host_mac, pod_mac)) => {
            let gateway = sf.gateway().to_string();
            let v11 = conf.cni_version == "1.1.0";
            Ok(CniResult {
                cni_version: conf.cni_version.clone(),
                interfaces: vec![
                    types::Interface {
                        name: host_if,
                        mac: mac_string(&host_mac),
                        mtu: v11.then_some(mtu),
                        sandbox: None,
                    },
                    types::Interface {
                        name: ifname,
                        mac: mac_string(&pod_mac),
                        mtu: v11.then_some(mtu),
                        sandbox: Some(netns),
                    },
                ],
                ips: vec![IpConfig {
                    address: format!("{}/32", alloc.addr),
                    gateway: gateway.clone(),
                    interface: 1,
                }],
                routes: vec![Route {
                    dst: "0.0.0.0/0".into(),
                    gw: gateway,
                }],
                dns: json!({}),
            })
        }
        Err(e) => {
            // Leave nothing behind: the runtime will call ADD again or give up.
            unwire(&nl, &pins, &alloc).await;
            let _ = store.release(alloc.addr);
            Err(e)
        }
    }
}

/// Creates and configures the veth pair, registers the endpoint and attaches the program.
async fn wire(
    nl: &Netlink,
    pins: &Pins,
    sf: &SubnetFile,
    alloc: &ipam::Allocation,
    netns: &str,
    ifname: &str,
    mtu: u32,
) -> Result<([u8; 6], [u8; 6]), CniError> {
    let ns_file = std::fs::File::open(netns)
        .map_err(|e| CniError::new(code::INVALID_ENV, format!("CNI_NETNS {netns}: {e}")))?;
    let host_if = &alloc.host_ifname;
    if let Some(stale) = nl.link(host_if).await? {
        nl.delete_link(stale.index).await?;
    }
    let tmp_peer = format!("ndt{:08x}", rand::random::<u32>());
    nl.add_veth(host_if, &tmp_peer).await?;
    let host = nl.require_link(host_if).await?;
    let peer = nl.require_link(&tmp_peer).await?;
    nl.move_to_netns(peer.index, ns_file.as_raw_fd()).await?;
    nl.configure_link(host.index, None, Some(mtu)).await?;

    let (addr, gateway, host_mac, ifname_owned) =
        (alloc.addr, sf.gateway(), host.mac, ifname.to_string());
    let pod_mac = netns::run_in(Path::new(netns), async move || {
        let nl = Netlink::connect()?;
        if let Some(lo) = nl.link("lo").await? {
            nl.configure_link(lo.index, None, None).await?;
        }
        if nl.link(&ifname_owned).await?.is_some() {
            anyhow::bail!("the pod already has an interface called {ifname_owned}");
        }
        let link = nl.require_link(&tmp_peer).await?;
        nl.configure_link(link.index, Some(&ifname_owned), Some(mtu))
            .await?;
        nl.add_addr(link.index, addr, 32).await?;
        // Everything goes via the node; the gateway's MAC is fixed, so no ARP is needed.
        nl.set_neighbour(link.index, gateway, host_mac).await?;
        nl.add_route(Ipv4Network::new(gateway, 32)?, link.index, None, false)
            .await?;
        nl.add_route(
            Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0)?,
            link.index,
            Some(gateway),
            false,
        )
        .await?;
        Ok(link.mac)
    })
    .map_err(CniError::internal)?;

    // The node reaches the pod through its veth, without ARP.
    nl.add_route(
        Ipv4Network::new(addr, 32).map_err(|e| CniError::internal(e.into()))?,
        host.index,
        None,
        false,
    )
    .await?;
    nl.set_neighbour(host.index, addr, pod_mac).await?;

    let mut endpoints = EndpointMap::open(pins)
        .map_err(|e| CniError::new(code::TRY_AGAIN_LATER, format!("{e:#}")))?;
    endpoints.insert(
        addr,
        &Endpoint {
            ifindex: host.index,
            flags: 0,
            mac: pod_mac,
            host_mac,
        },
    )?;
    let mut prog =
        SchedClassifier::from_pin(pins.program(program_names::FROM_POD)).map_err(|e| {
            CniError::new(
                code::TRY_AGAIN_LATER,
                format!("opening the pinned from_pod program: {e}"),
            )
        })?;
    let pin = pins.link(Hook::Pod, host_if);
    let _ = std::fs::remove_file(&pin);
    attach_and_pin(&mut prog, host_if, &pin)?;
    Ok((host_mac, pod_mac))
}

/// Undoes [`wire`]; every step tolerates what is already gone.
async fn unwire(nl: &Netlink, pins: &Pins, alloc: &ipam::Allocation) {
    if let Ok(mut endpoints) = EndpointMap::open(pins) {
        // Only remove the entry if it still points at this pod's veth.
        let ours = match (endpoints.get(alloc.addr), nl.link(&alloc.host_ifname).await) {
            (Some(ep), Ok(Some(link))) => ep.ifindex == link.index,
            (Some(_), _) => true,
            (None, _) => false,
        };
        if ours {
            let _ = endpoints.remove(alloc.addr);
        }
    }
    let _ = std::fs::remove_file(pins.link(Hook::Pod, &alloc.host_ifname));
    if let Ok(Some(link)) = nl.link(&alloc.host_ifname).await {
        let _ = nl.delete_link(link.index).await;
    }
}

async fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let cid = env.require("CNI_CONTAINERID", &env.container_id)?;
    let ifname = env.require("CNI_IFNAME", &env.ifname)?;
    let pins = node_pins(conf)?;
    let store = store(conf)?;
    let nl = Netlink::connect().map_err(CniError::internal)?;
    match store.find(&cid, &ifname)? {
        Some(alloc) => {
            unwire(&nl, &pins, &alloc).await;
            store.release(alloc.addr)?;
        }
        None => {
            // Nothing recorded: make sure no veth of ours lingers either.
            let host_if = host_ifname(&cid, &ifname);
            let _ = std::fs::remove_file(pins.link(Hook::Pod, &host_if));
            if let Some(link) = nl.link(&host_if).await? {
                nl.delete_link(link.index).await?;
            }
        }
    }
    Ok(())
}

async fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let cid = env.require("CNI_CONTAINERID", &env.container_id)?;
    let netns = env.require("CNI_NETNS", &env.netns)?;
    let ifname = env.require("CNI_IFNAME", &env.ifname)?;
    let (_, pins) = node_ready(conf)?;
    let fail = |msg: String| CniError::new(code::CHECK_FAILED, msg);
    let alloc = store(conf)?
        .find(&cid, &ifname)?
        .ok_or_else(|| fail(format!("no address is recorded for {cid}/{ifname}")))?;
    let nl = Netlink::connect().map_err(CniError::internal)?;
    let host = nl
        .link(&alloc.host_ifname)
        .await?
        .ok_or_else(|| fail(format!("host interface {} is missing", alloc.host_ifname)))?;
    let ep = EndpointMap::open(&pins)?
        .get(alloc.addr)
        .ok_or_else(|| fail(format!("{} is not in the endpoint map", alloc.addr)))?;
    if ep.ifindex != host.index {
        return Err(fail(format!(
            "the endpoint map sends {} to another interface",
            alloc.addr
        )));
    }
    if !pins.link(Hook::Pod, &alloc.host_ifname).exists() {
        return Err(fail(format!(
            "from_pod is not attached to {}",
            alloc.host_ifname
        )));
    }
    let addr = alloc.addr;
    let ok = netns::run_in(Path::new(&netns), async move || {
        let nl = Netlink::connect()?;
        let link = nl
            .link(&ifname)
            .await?
            .ok_or_else(|| anyhow!("{ifname} is missing in the pod"))?;
        let addrs = nl.ipv4_addrs(link.index).await?;
        if link.mac != ep.mac {
            anyhow::bail!("{ifname}'s MAC changed");
        }
        if !addrs.iter().any(|a| a.ip() == addr) {
            anyhow::bail!("{ifname} lost its address {addr}");
        }
        Ok(())
    });
    ok.map_err(|e| fail(format!("{e:#}")))
}

/// Removes every attachment not in `cni.dev/valid-attachments`.
async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let pins = node_pins(conf)?;
    let store = store(conf)?;
    let nl = Netlink::connect().map_err(CniError::internal)?;
    let keep: HashMap<(String, String), ()> = valid
        .into_iter()
        .map(|a| ((a.container_id, a.ifname), ()))
        .collect();
    for alloc in store.list()? {
        if !keep.contains_key(&(alloc.container_id.clone(), alloc.ifname.clone())) {
            unwire(&nl, &pins, &alloc).await;
            store.release(alloc.addr)?;
        }
    }
    Ok(())
}
