//! Per-packet cost of each program path, measured in the kernel with BPF_PROG_TEST_RUN next
//! to `bench_redirect`, a program that only redirects (the floor).
//!
//! The kernel runs a program `repeat` times on the same buffer, so a path that rewrites the
//! packet takes another path on the next run. Paths that route in place (every forwarding
//! path decrements the TTL) therefore run a fresh copy `PER_CALL` times per call, and the
//! TTL after the call proves that each run took the path. A path that encapsulates or
//! decapsulates turns the packet into one that would take another path, so it runs once
//! per call on a fresh copy; the kernel's time for a single run includes a clock read that
//! batched runs share, so those paths are compared with the floor measured the same way.
//! The kernel's average of a call is weighted over many calls; after every call the verdict
//! and the bytes the path writes are checked, and after every sample the path's counter
//! must have grown by exactly the runs made.
//!
//! Each backend gets its own load of the programs: the node's settings are a load-time
//! constant, as the agent sets them. The service paths (`services`) get one more, with
//! services in its maps. Every load and every map entry goes through the dataplane library
//! the agent uses (`netdp-dataplane`): the node settings and the peer's route come from its
//! planners (`node::node_config`, `route::mode_for`/`route::entry_for`) fed a Flannel network
//! config and the peer's lease, the services from `lb::Lb::apply`, so the rows measure what
//! the agent programs ([`MAPS_FILLED`] says so in the results).
//! (Over 500 lines: most of it is the PATHS table, one entry per measured path with the
//! bytes it must write; a path's frame, runs and checks stay side by side.)
mod node_ports;
mod services;

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::programs::{TestRun, TestRunOptions, TestRunResult};
use ipnetwork::Ipv4Network;
use netdp_common::{
    Mac,
    counters::{Program, Reason},
    encap::{self, IPIP_OVERHEAD, UDP_OVERHEAD, VXLAN_OVERHEAD},
    endpoint::Endpoint,
    lb::Backend as LbBackend,
    map_names,
    program_names::{BENCH_REDIRECT, BENCH_XDP_TX, FROM_NETDEV, FROM_POD, XDP_NETDEV},
};
use netdp_dataplane::{
    Dataplane, Link, MapSizes,
    config::NetworkConfig,
    counters::CounterMap,
    endpoint::EndpointMap,
    lb::{FrontendPlan, Lb, LbMaps, ServicePlan, frontend_key},
    lease::LeaseAttrs,
    node,
    peer::PeerMap,
    route,
    route::RouteMap,
};
use netdp_testbed::{
    flannel::{VNI, VXLAN_PORT},
    packet::{self, IPPROTO_TCP, Outer, PacketSpec, TC_ACT_REDIRECT},
};

use super::{
    report::{NS_PER_PACKET, Outcome, Row, Section},
    runner::{self, Stats},
};

/// Runs per call of a path that routes in place: less than the 255 TTL decrements a
/// fresh packet allows.
const PER_CALL: u32 = 250;
const FLOOR: &str = "floor: redirect only";
const FLOOR_CASE: &str = "bench_redirect";
const FLOOR_ONCE_CASE: &str = "bench_redirect, 1 run per call";

/// How every row's maps were filled, for the results' header.
pub const MAPS_FILLED: &str = "per-packet rows: programs loaded and maps filled through netdp-dataplane, \
the library the agent uses: node settings and the peer's route planned from a Flannel network config \
and the peer's lease, the pod's endpoint as the CNI plugin writes it, services applied with lb::Lb";

/// This node and its underlay interface.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 11);
const UNDERLAY_IFINDEX: u32 = 7;
const UNDERLAY_MAC: Mac = [0x52, 0x54, 0, 0, 0, 0x11];
/// The peer node leasing 10.1.2.0/24, on the same underlay.
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 12);
const PEER_MAC: Mac = [0x52, 0x54, 0, 0, 0, 0x12];
const PEER_SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 1, 2, 0), 24);
/// Two pods on this node and one on the peer.
const POD: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
const OTHER_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 2);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 5);
/// The pod that sends to the peer (in place: the frame it leaves carries the underlay MAC).
const ROUTING_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 4);
/// The pods' MACs. All are attached to lo, where BPF_PROG_TEST_RUN runs the programs, so
/// source verification finds their packets on their own veth. The senders of the paths
/// run in place have the MAC the previous run leaves as the source (the host side of
/// POD's veth, the underlay's), so every run passes the check the first one did.
const POD_MAC: Mac = [0x0a, 0, 0, 0, 0, 2];
const POD_HOST_MAC: Mac = [0x0e, 0, 0, 0, 0, 2];
const OTHER_POD_MAC: Mac = POD_HOST_MAC;
const TEST_RUN_IFINDEX: u32 = 1;
const UDP_PORT: u16 = 8285;

/// The VTEP MACs the two nodes publish, as the agent derives them.
fn our_vtep() -> Mac {
    node::vtep_mac(UNDERLAY_MAC)
}

fn peer_vtep() -> Mac {
    node::vtep_mac(PEER_MAC)
}

/// The backend the programs of a path were loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    HostGw,
    Vxlan,
    Ipip,
    Udp,
}

impl Backend {
    const ALL: [Backend; 4] = [Backend::HostGw, Backend::Vxlan, Backend::Ipip, Backend::Udp];

    /// The network config in Flannel's format, defaults (VNI 1, ports 8472 and 8285) left
    /// to the config parser as a user would.
    fn network(self) -> Result<NetworkConfig> {
        let kind = match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
            Backend::Ipip => "ipip",
            Backend::Udp => "udp",
        };
        let json = format!(r#"{{"Network": "10.1.0.0/16", "Backend": {{"Type": "{kind}"}}}}"#);
        NetworkConfig::parse(&json).map_err(|e| anyhow!("network config {json}: {e}"))
    }
}

/// This node's underlay as the agent finds it.
fn underlay() -> Result<route::Underlay> {
    Ok(route::Underlay {
        link: Link {
            name: "eth0".into(),
            index: UNDERLAY_IFINDEX,
            mac: UNDERLAY_MAC,
            mtu: 1500,
        },
        addr: Ipv4Network::new(NODE_IP, 24)?,
    })
}

/// One load of the programs for a backend, with the counters to check paths by.
struct Node {
    dp: Dataplane,
    counters: CounterMap,
}

impl Node {
    /// Packets a counter has counted, over every CPU.
    fn counted(&self, (program, reason): (Program, Reason)) -> Result<u64> {
        Ok(self.counters.get(program, reason)?.packets)
    }
}

/// How a path is run and what every call must leave behind.
#[derive(Debug, Clone, Copy)]
enum Runs {
    /// `PER_CALL` runs on one copy, each decrementing the TTL by `ttl_step`.
    InPlace { ttl_step: u8 },
    /// One run per call: the output is `len_delta` bytes longer and holds `bytes` (offset,
    /// value).
    Once {
        len_delta: i32,
        bytes: &'static [(usize, u8)],
    },
}

/// One program path and the packet that takes it.
struct Path_ {
    case: &'static str,
    backend: Backend,
    program: &'static str,
    frame: fn() -> Vec<u8>,
    runs: Runs,
    /// The counter each run bumps; none for the floor, which counts nothing.
    counter: Option<(Program, Reason)>,
}

/// Delivered into our pod: its address and the TTL of [`from_peer`]'s inner packet, less one.
const DELIVERED: &[(usize, u8)] = &[(30, 10), (31, 1), (32, 1), (33, 3), (22, 62)];
const ROUTED: Runs = Runs::InPlace { ttl_step: 1 };

const FLOORS: [(&str, Runs); 2] = [
    (FLOOR_CASE, Runs::InPlace { ttl_step: 0 }),
    (
        FLOOR_ONCE_CASE,
        Runs::Once {
            len_delta: 0,
            bytes: &[],
        },
    ),
];

const POD_DELIVERY: &str = "local delivery (pod -> pod on this node)";
const UNDERLAY_DELIVERY: &str =
    "local delivery (underlay -> pod, from a host-gw peer's pod), 1 run per call";

/// The paths measured again on a node with `--source-verification=false`: what the
/// checks cost.
const UNVERIFIED: [&str; 2] = [POD_DELIVERY, UNDERLAY_DELIVERY];

const PATHS: &[Path_] = &[
    Path_ {
        case: POD_DELIVERY,
        backend: Backend::HostGw,
        program: FROM_POD,
        frame: to_local_pod,
        runs: ROUTED,
        counter: Some((Program::FromPod, Reason::LocalDelivery)),
    },
    Path_ {
        case: UNDERLAY_DELIVERY,
        backend: Backend::HostGw,
        program: FROM_NETDEV,
        frame: from_direct_peer,
        // A run leaves the pod's MACs on the frame, which the underlay check refuses.
        runs: Runs::Once {
            len_delta: 0,
            bytes: &[(0, POD_MAC[0]), (5, POD_MAC[5]), (22, 254)],
        },
        counter: Some((Program::FromNetdev, Reason::LocalDelivery)),
    },
    Path_ {
        case: "remote forward, host-gw (pod -> peer node)",
        backend: Backend::HostGw,
        program: FROM_POD,
        frame: to_remote_pod,
        runs: ROUTED,
        counter: Some((Program::FromPod, Reason::Direct)),
    },
    Path_ {
        case: "encapsulation, vxlan (pod -> peer node), 1 run per call",
        backend: Backend::Vxlan,
        program: FROM_POD,
        frame: to_remote_pod,
        runs: Runs::Once {
            len_delta: VXLAN_OVERHEAD as i32,
            // Outer protocol UDP to the VXLAN port.
            bytes: &[
                (23, encap::IPPROTO_UDP),
                (36, (VXLAN_PORT >> 8) as u8),
                (37, VXLAN_PORT as u8),
            ],
        },
        counter: Some((Program::FromPod, Reason::EncapVxlan)),
    },
    Path_ {
        case: "encapsulation, ipip (pod -> peer node), 1 run per call",
        backend: Backend::Ipip,
        program: FROM_POD,
        frame: to_remote_pod,
        runs: Runs::Once {
            len_delta: IPIP_OVERHEAD as i32,
            bytes: &[(23, encap::IPPROTO_IPIP)],
        },
        counter: Some((Program::FromPod, Reason::EncapIpip)),
    },
    Path_ {
        case: "encapsulation, udp (pod -> peer node), 1 run per call",
        backend: Backend::Udp,
        program: FROM_POD,
        frame: to_remote_pod,
        runs: Runs::Once {
            len_delta: UDP_OVERHEAD as i32,
            bytes: &[
                (23, encap::IPPROTO_UDP),
                (36, (UDP_PORT >> 8) as u8),
                (37, UDP_PORT as u8),
            ],
        },
        counter: Some((Program::FromPod, Reason::EncapUdp)),
    },
    Path_ {
        case: "decapsulation, vxlan (underlay -> pod), 1 run per call",
        backend: Backend::Vxlan,
        program: FROM_NETDEV,
        frame: || {
            let inner = from_peer();
            packet::vxlan(
                &outer(),
                41234,
                VXLAN_PORT,
                VNI,
                our_vtep(),
                peer_vtep(),
                &inner,
            )
        },
        runs: Runs::Once {
            len_delta: -(VXLAN_OVERHEAD as i32),
            bytes: DELIVERED,
        },
        counter: Some((Program::FromNetdev, Reason::DecapVxlan)),
    },
    Path_ {
        case: "decapsulation, ipip (underlay -> pod), 1 run per call",
        backend: Backend::Ipip,
        program: FROM_NETDEV,
        frame: || packet::ipip(&outer(), &from_peer()),
        runs: Runs::Once {
            len_delta: -(IPIP_OVERHEAD as i32),
            bytes: DELIVERED,
        },
        counter: Some((Program::FromNetdev, Reason::DecapIpip)),
    },
    Path_ {
        case: "decapsulation, udp (underlay -> pod), 1 run per call",
        backend: Backend::Udp,
        program: FROM_NETDEV,
        frame: || packet::udp_encap(&outer(), UDP_PORT, UDP_PORT, &from_peer()),
        runs: Runs::Once {
            len_delta: -(UDP_OVERHEAD as i32),
            bytes: DELIVERED,
        },
        counter: Some((Program::FromNetdev, Reason::DecapUdp)),
    },
];

fn tcp(src: Ipv4Addr, src_mac: Mac, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    PacketSpec {
        src,
        src_mac,
        dst,
        ttl,
        proto: IPPROTO_TCP,
        payload: vec![0; 6],
        ..Default::default()
    }
    .build()
}

fn to_local_pod() -> Vec<u8> {
    tcp(OTHER_POD, OTHER_POD_MAC, POD, 255)
}

fn to_remote_pod() -> Vec<u8> {
    tcp(ROUTING_POD, UNDERLAY_MAC, REMOTE_POD, 255)
}

/// The peer's pod to ours, as the peer's tunnel carries it (routed once already).
fn from_peer() -> Vec<u8> {
    tcp(REMOTE_POD, PEER_MAC, POD, 63)
}

/// The host-gw peer's pod to ours, routed straight from the peer.
fn from_direct_peer() -> Vec<u8> {
    tcp(REMOTE_POD, PEER_MAC, POD, 255)
}

/// Outer addresses of a tunnel packet from the peer.
fn outer() -> Outer {
    Outer {
        src_mac: PEER_MAC,
        dst_mac: UNDERLAY_MAC,
        src: PEER_IP,
        dst: NODE_IP,
    }
}

/// The built eBPF object (`cargo xtask build-ebpf`).
pub fn object_path() -> std::path::PathBuf {
    crate::build::workspace().join("target/ebpf/bpfel-unknown-none/release/netdp")
}

/// The programs loaded for `backend` as the agent loads them, with one local pod and one
/// peer in their maps, written by the library's planners and typed maps.
fn load(object: &[u8], backend: Backend, sizes: &MapSizes, verify: bool) -> Result<Node> {
    let config = backend.network()?;
    let underlay = underlay()?;
    let mut settings = node::node_config(&config, &underlay, our_vtep(), false);
    if !verify {
        settings.flags |= netdp_common::node::flags::TRUST_SOURCES;
    }
    let mut dp = Dataplane::load_for(object, None, sizes, &settings)
        .with_context(|| format!("loading the programs for {backend:?}"))?;
    dp.program(BENCH_REDIRECT)?
        .load()
        .context("loading the floor program")?;
    dp.xdp_named(BENCH_XDP_TX)?
        .load()
        .context("loading the XDP floor program")?;
    let mut endpoints = EndpointMap::from_map(dp.take_map(map_names::ENDPOINTS)?)?;
    for (pod, mac) in [
        (POD, POD_MAC),
        (OTHER_POD, OTHER_POD_MAC),
        (ROUTING_POD, UNDERLAY_MAC),
    ] {
        let ep = Endpoint {
            ifindex: TEST_RUN_IFINDEX,
            flags: 0,
            mac,
            host_mac: POD_HOST_MAC,
        };
        endpoints.insert(pod, &ep)?;
    }
    // The peer's lease as its agent writes it; the route as this node's agent plans it.
    let peer = LeaseAttrs::new(
        PEER_IP,
        config.backend.type_name(),
        node::backend_data(&config.backend, peer_vtep()),
    );
    let mode = route::mode_for(&underlay, &config.backend, &peer)
        .map_err(|e| anyhow!("the peer is unreachable: {e}"))?;
    let planned = route::entry_for(
        &underlay,
        &config.backend,
        &peer,
        mode,
        PEER_IP,
        Some(PEER_MAC),
    );
    let subnet = Ipv4Network::new(PEER_SUBNET.0, PEER_SUBNET.1)?;
    RouteMap::from_map(dp.take_map(map_names::ROUTES)?)?
        .sync(&HashMap::from([(subnet, planned)]))?;
    PeerMap::from_map(dp.take_map(map_names::PEERS)?)?.sync(&HashMap::from([(PEER_IP, subnet)]))?;
    let counters = CounterMap::from_map(dp.take_map(map_names::COUNTERS)?)?;
    Ok(Node { dp, counters })
}

/// A benchmark's services: `n` of one TCP port each; service `i` answers on
/// `frontend(i)`:80 (an external frontend, as node ports, external and load-balancer IPs
/// are, when `external`) with 3 backends on port 8080, the last service's `real` and the
/// others' `fake(i, j)`; `snat` is the node's source NAT address.
#[derive(Clone, Copy)]
pub(super) struct BenchServices {
    pub n: usize,
    pub frontend: fn(usize) -> Ipv4Addr,
    pub external: bool,
    pub real: [Ipv4Addr; 3],
    pub fake: fn(usize, usize) -> [u8; 4],
    pub snat: Option<Ipv4Addr>,
}

/// Programs `services` through the agent's own `Lb`.
pub(super) fn program_services(
    dp: &mut Dataplane,
    sizes: &MapSizes,
    services: &BenchServices,
) -> Result<()> {
    let BenchServices {
        n,
        frontend,
        external,
        real,
        fake,
        snat,
    } = *services;
    let mut lb = Lb::new(LbMaps::take(dp)?, sizes.maglev_table_size)?;
    if let Some(addr) = snat {
        lb.set_config(addr, 0)?;
    }
    let plans = (0..n)
        .map(|i| {
            let backends = (0..3)
                .map(|j| LbBackend {
                    addr: if i + 1 == n {
                        real[j].octets()
                    } else {
                        fake(i, j)
                    },
                    flags: 0,
                })
                .collect();
            let plan = ServicePlan {
                frontends: BTreeMap::from([(
                    frontend_key(frontend(i), 80, IPPROTO_TCP),
                    FrontendPlan {
                        target_port: 8080,
                        external,
                        local_only: false,
                        dsr: false,
                    },
                )]),
                backends,
                local_count: 0,
                maglev: false,
                affinity_timeout: None,
            };
            (format!("bench/service-{i}"), Some(plan))
        })
        .collect();
    let stats = lb.apply(plans);
    if stats.added != n || stats.failed != 0 {
        bail!("programming {n} services: {stats:?}");
    }
    Ok(())
}

/// Checks what one call left behind; `Err` says how the path was left.
fn check_call(runs: Runs, frame: &[u8], out: &[u8]) -> Result<(), String> {
    match runs {
        Runs::InPlace { ttl_step } => {
            let want = frame[22].wrapping_sub(ttl_step.wrapping_mul(PER_CALL as u8));
            if out.len() != frame.len() || out[22] != want {
                return Err(format!(
                    "TTL {} after {PER_CALL} runs, expected {want}",
                    out.get(22).copied().unwrap_or(0)
                ));
            }
        }
        Runs::Once { len_delta, bytes } => {
            let want = frame.len() as i64 + len_delta as i64;
            if out.len() as i64 != want {
                return Err(format!("{} bytes out, expected {want}", out.len()));
            }
            for &(at, value) in bytes {
                if out[at] != value {
                    return Err(format!("byte {at} is {}, expected {value}", out[at]));
                }
            }
        }
    }
    Ok(())
}

/// The kernel's average ns per run of `program` over `calls` calls of `per_call` runs.
/// `next(call, frame)` sets up the frame of each call (paths that run one packet over and
/// over leave it as it is); every call must end in TC_ACT_REDIRECT, and `check(call,
/// frame, out)` says whether its output is what the path writes.
fn timed_calls(
    dp: &Dataplane,
    program: &str,
    per_call: u32,
    calls: u64,
    mut frame: Vec<u8>,
    mut next: impl FnMut(u64, &mut Vec<u8>) -> Result<()>,
    mut check: impl FnMut(u64, &[u8], &[u8]) -> Result<(), String>,
) -> Result<f64> {
    let xdp = [XDP_NETDEV, BENCH_XDP_TX].contains(&program);
    let run = |opts: TestRunOptions| -> Result<TestRunResult> {
        if xdp {
            dp.xdp_ref(program)?.test_run(opts)
        } else {
            dp.classifier(program)?.test_run(opts)
        }
        .context("BPF_PROG_TEST_RUN")
    };
    let mut out = vec![0u8; frame.len() + 256];
    let mut total_ns = 0f64;
    for call in 0..calls {
        next(call, &mut frame)?;
        let res = run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            repeat: per_call,
            ..Default::default()
        })?;
        // Sent on: redirected (tc), or back out or redirected (XDP).
        let sent = if xdp {
            [packet::XDP_TX, packet::XDP_REDIRECT].contains(&res.return_value)
        } else {
            res.return_value == TC_ACT_REDIRECT
        };
        if !sent {
            bail!(
                "{program} returned {} on call {call}, not a verdict that sends it on",
                res.return_value
            );
        }
        let len = (res.data_size_out as usize).min(out.len());
        check(call, &frame, &out[..len])
            .map_err(|e| anyhow!("{program}, call {call}: {e}: a run left the path"))?;
        total_ns += res.duration.as_nanos() as f64;
    }
    // The kernel reports each call's average per run.
    Ok(total_ns / calls as f64)
}

/// Average ns per run of `program` over about `packets` runs, checking every call and
/// the path's counter.
fn ns_per_packet(
    node: &Node,
    program: &str,
    frame: &[u8],
    runs: Runs,
    counter: Option<(Program, Reason)>,
    packets: u64,
) -> Result<f64> {
    let per_call = match runs {
        Runs::InPlace { .. } => PER_CALL,
        Runs::Once { .. } => 1,
    };
    let calls = packets.div_ceil(per_call as u64);
    let before = counter.map(|c| node.counted(c)).transpose()?;
    let ns = timed_calls(
        &node.dp,
        program,
        per_call,
        calls,
        frame.to_vec(),
        |_, _| Ok(()),
        |_, frame, out| check_call(runs, frame, out),
    )?;
    if let (Some(c), Some(before)) = (counter, before) {
        let n = node.counted(c)? - before;
        if n != calls * per_call as u64 {
            bail!(
                "{program} counted {n} packets as {}, of {} runs",
                c.1.name(),
                calls * per_call as u64
            );
        }
    }
    Ok(ns)
}

pub fn run(packets: u64, single_runs: u64, repeats: usize) -> Vec<Row> {
    let loaded = std::fs::read(object_path())
        .with_context(|| format!("reading {}", object_path().display()))
        .and_then(|object| {
            let nodes = Backend::ALL
                .iter()
                .map(|&b| Ok((b, load(&object, b, &MapSizes::default(), true)?)))
                .collect::<Result<Vec<(Backend, Node)>>>()?;
            let unverified = load(&object, Backend::HostGw, &MapSizes::default(), false)?;
            Ok((object, nodes, unverified))
        });
    let (object, nodes, unverified) = match loaded {
        Ok(l) => l,
        Err(e) => {
            return vec![Row::new(
                Section::PerPacket,
                "netdp",
                "all paths",
                NS_PER_PACKET,
                Outcome::Failed(format!("{e:#}")),
            )];
        }
    };
    let node = |b: Backend| {
        &nodes
            .iter()
            .find(|(n, _)| *n == b)
            .expect("every backend is loaded")
            .1
    };
    let measure = |backend, program: &str, frame: &[u8], runs, counter| -> Result<Stats> {
        let n = match runs {
            Runs::InPlace { .. } => packets,
            Runs::Once { .. } => single_runs,
        };
        runner::repeat(program, repeats, |_| {
            ns_per_packet(node(backend), program, frame, runs, counter, n)
        })
    };
    let mut rows: Vec<Row> = FLOORS
        .iter()
        .map(|&(case, runs)| {
            let frame = tcp(POD, POD_MAC, Ipv4Addr::new(10, 9, 9, 9), 255);
            Row::from_result(
                Section::PerPacket,
                FLOOR,
                case,
                NS_PER_PACKET,
                measure(Backend::HostGw, BENCH_REDIRECT, &frame, runs, None),
            )
        })
        .collect();
    for p in PATHS {
        let floor = match p.runs {
            Runs::InPlace { .. } => FLOOR_CASE,
            Runs::Once { .. } => FLOOR_ONCE_CASE,
        };
        rows.push(
            Row::from_result(
                Section::PerPacket,
                "netdp",
                p.case,
                NS_PER_PACKET,
                measure(p.backend, p.program, &(p.frame)(), p.runs, p.counter)
                    .with_context(|| p.case),
            )
            .compared_to_case(FLOOR, floor),
        );
    }
    for p in PATHS.iter().filter(|p| UNVERIFIED.contains(&p.case)) {
        let frame = (p.frame)();
        let n = match p.runs {
            Runs::InPlace { .. } => packets,
            Runs::Once { .. } => single_runs,
        };
        let stats = runner::repeat(p.program, repeats, |_| {
            ns_per_packet(&unverified, p.program, &frame, p.runs, p.counter, n)
        });
        rows.push(
            Row::from_result(
                Section::PerPacket,
                "netdp, --source-verification=false",
                p.case,
                NS_PER_PACKET,
                stats.with_context(|| p.case),
            )
            .compared_to_case("netdp", p.case),
        );
    }
    rows.extend(services::run(
        &object,
        single_runs,
        repeats,
        (FLOOR, FLOOR_ONCE_CASE),
    ));
    rows.extend(node_ports::run(
        &object,
        single_runs,
        repeats,
        (FLOOR, FLOOR_ONCE_CASE),
    ));
    rows
}
