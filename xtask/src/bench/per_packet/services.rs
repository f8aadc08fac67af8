//! Per-packet cost of the service paths, on programs whose maps hold `SERVICES` ClusterIP
//! services of 3 endpoints each, as the agent programs them (one FRONTENDS entry, a range
//! of BACKENDS slots); the measured service is the last one, its endpoints pods on the
//! peer node, reached over the host-gw route like any remote pod.
//!
//! Every service path rewrites the packet into one that takes another path, so each runs
//! once per call on a fresh copy, next to the floor measured the same way:
//!
//! - first packet: a SYN of a flow conntrack has never seen (frontend lookup, random
//!   backend, both conntrack entries created, DNAT, routed to the peer). Each call is a new
//!   flow: the client's source port moves on every call, and the conntrack map is emptied
//!   (outside the timed runs) every `FLOWS_PER_TABLE` flows, so every flow finds a table
//!   with room and never evicts. Each sample must count exactly one `service_flow` event
//!   per call;
//! - established flow: a data packet of one flow both sides have answered (conntrack hit,
//!   DNAT, routed to the peer); no new flow may be counted;
//! - reverse NAT: the backend's reply arriving from the underlay (conntrack hit, source
//!   rewritten back to the ClusterIP, delivered to the client pod).
//!
//! Every call's output is checked: addresses, ports, TTL, MACs and both checksums.
use std::net::Ipv4Addr;

use anyhow::{Result, anyhow, bail};
use aya::maps::{HashMap, MapData};
use netdp_common::{
    conntrack::{CtEntry, CtKey, state},
    counters::{Event, Program, Reason},
    map_names,
    program_names::{FROM_NETDEV, FROM_POD},
};
use netdp_dataplane::{Dataplane, MapSizes};
use netdp_testbed::packet::{self, IPPROTO_TCP, Ipv4View, PacketSpec};

use super::{
    super::{
        kube_proxy::cluster_ip,
        report::{NS_PER_PACKET, Row, Section, count},
        runner::{self, Stats},
    },
    Backend, Node as Loaded, PEER_MAC, POD, UNDERLAY_MAC, load, timed_calls,
};

/// Services in the maps (the largest size of the services comparison).
const SERVICES: usize = 100_000;
const ENDPOINTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 1, 2, 5),
    Ipv4Addr::new(10, 1, 2, 6),
    Ipv4Addr::new(10, 1, 2, 7),
];
const PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
/// New flows between two emptyings of the conntrack maps: 2 entries each, well under the
/// 262,144 this bench gives HALF_OPEN (where new TCP flows start), so the LRU never evicts.
const FLOWS_PER_TABLE: u64 = 50_000;
const FIRST_PORT: u16 = 1024;
/// The established flow's client port, outside the first-packet flows' range.
const FLOW_PORT: u16 = 61_000;
/// The client pod's MACs (its endpoint entry in `load`).
const POD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 2];
const POD_HOST_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 2];
const TCP_SYN: u8 = 0x02;
const TCP_SYN_ACK: u8 = 0x12;
const TCP_ACK: u8 = 0x10;
const TCP_ACK_PSH: u8 = 0x18;

fn vip() -> Ipv4Addr {
    cluster_ip(SERVICES - 1)
}

pub const FIRST_PACKET: &str = "service DNAT, first packet (pod -> ClusterIP), 1 run per call";
pub const ESTABLISHED: &str = "service, established flow (pod -> ClusterIP), 1 run per call";
pub const REVERSE: &str = "service reverse NAT (backend -> pod), 1 run per call";

/// A client pod's packet to the service.
fn to_service(sport: u16, tcp_flags: u8, payload: usize) -> Vec<u8> {
    PacketSpec {
        src_mac: POD_MAC,
        dst_mac: POD_HOST_MAC,
        src: POD,
        dst: vip(),
        ttl: 64,
        proto: IPPROTO_TCP,
        sport,
        dport: PORT,
        tcp_flags,
        payload: vec![0x5a; payload],
        ..Default::default()
    }
    .build()
}

/// A backend's packet to the client, as it arrives from the peer node.
fn from_backend(backend: Ipv4Addr, dport: u16, tcp_flags: u8, payload: usize) -> Vec<u8> {
    PacketSpec {
        src_mac: PEER_MAC,
        dst_mac: UNDERLAY_MAC,
        src: backend,
        dst: POD,
        ttl: 63,
        proto: IPPROTO_TCP,
        sport: TARGET_PORT,
        dport,
        tcp_flags,
        payload: vec![0xa5; payload],
        ..Default::default()
    }
    .build()
}

/// Programs the services through the agent's own `Lb`: service `i` has cluster IP
/// `cluster_ip(i)`; the last one's backends are `ENDPOINTS`, the others' made-up pods of the
/// peer's subnet.
fn program(dp: &mut Dataplane, sizes: &MapSizes) -> Result<()> {
    let services = super::BenchServices {
        n: SERVICES,
        frontend: cluster_ip,
        external: false,
        real: ENDPOINTS,
        fake: |i, j| [10, 1, 3 + (i % 200) as u8, 1 + j as u8],
        snat: None,
    };
    super::program_services(dp, sizes, &services)
}

/// CONNTRACK and HALF_OPEN.
struct Tables {
    established: HashMap<MapData, CtKey, CtEntry>,
    half_open: HashMap<MapData, CtKey, CtEntry>,
}

fn conntrack(dp: &mut Dataplane) -> Result<Tables> {
    Ok(Tables {
        established: HashMap::try_from(dp.take_map(map_names::CONNTRACK)?)?,
        half_open: HashMap::try_from(dp.take_map(map_names::HALF_OPEN)?)?,
    })
}

/// Empties both conntrack maps.
fn clear(ct: &mut Tables) -> Result<()> {
    for t in [&mut ct.established, &mut ct.half_open] {
        let keys: Vec<CtKey> = t.keys().collect::<Result<_, _>>()?;
        for k in keys {
            t.remove(&k)?;
        }
    }
    Ok(())
}

/// A translated packet: both checksums valid, nothing but the tuple, TTL and MACs changed.
fn check_translated(input: &[u8], out: &[u8]) -> Result<Ipv4View, String> {
    if out.len() != input.len() {
        return Err(format!("{} bytes out of {}", out.len(), input.len()));
    }
    if !packet::ipv4_checksum_ok(out, 14) || !packet::l4_checksum_ok(out, 14) {
        return Err("bad checksum".into());
    }
    // Sequence numbers, flags, window and payload are the client's.
    if out[38..50] != input[38..50] || out[54..] != input[54..] {
        return Err("bytes beyond the ports changed".into());
    }
    Ipv4View::parse(out).ok_or_else(|| "not IPv4".to_string())
}

/// A packet to the service that left DNATed to one of `allowed` and routed to the peer.
fn check_dnat(
    input: &[u8],
    out: &[u8],
    sport: u16,
    allowed: &[Ipv4Addr],
) -> Result<Ipv4Addr, String> {
    let v = check_translated(input, out)?;
    let ok = v.src == POD
        && allowed.contains(&v.dst)
        && packet::ports(out) == (sport, TARGET_PORT)
        && v.ttl == input[22] - 1
        && (v.dst_mac, v.src_mac) == (PEER_MAC, UNDERLAY_MAC);
    if !ok {
        return Err(format!(
            "{}:{:?} -> {}:{:?} ttl {}, not DNATed to a backend and routed",
            v.src,
            packet::ports(out).0,
            v.dst,
            packet::ports(out).1,
            v.ttl
        ));
    }
    Ok(v.dst)
}

/// The loaded programs with the services, and the conntrack map (taken out to be emptied).
struct Node {
    node: Loaded,
    ct: Tables,
}

impl Node {
    fn flows(&self) -> Result<u64> {
        self.node
            .counters
            .event(Program::FromPod, Event::ServiceFlow)
    }

    fn counted(&self, counter: (Program, Reason)) -> Result<u64> {
        self.node.counted(counter)
    }

    /// One sample of first packets: `calls` new flows.
    fn first_packets(&mut self, calls: u64, next_flow: &mut u64) -> Result<f64> {
        let routed = (Program::FromPod, Reason::Direct);
        let (flows0, routed0) = (self.flows()?, self.counted(routed)?);
        let mut chosen = [0u64; 3];
        let ct = &mut self.ct;
        let base = *next_flow;
        let sport = |flow: u64| FIRST_PORT + (flow % FLOWS_PER_TABLE) as u16;
        let ns = timed_calls(
            &self.node.dp,
            FROM_POD,
            1,
            calls,
            to_service(FIRST_PORT, TCP_SYN, 0),
            |call, frame| {
                let flow = base + call;
                if flow.is_multiple_of(FLOWS_PER_TABLE) {
                    clear(ct)?;
                }
                *frame = to_service(sport(flow), TCP_SYN, 0);
                Ok(())
            },
            |call, input, out| {
                let be = check_dnat(input, out, sport(base + call), &ENDPOINTS)?;
                if let Some(i) = ENDPOINTS.iter().position(|e| *e == be) {
                    chosen[i] += 1;
                }
                Ok(())
            },
        )?;
        *next_flow += calls;
        let (new, sent) = (self.flows()? - flows0, self.counted(routed)? - routed0);
        if new != calls || sent != calls {
            bail!("{calls} first packets counted {new} new service flows and {sent} routed");
        }
        if calls >= 100 && chosen.contains(&0) {
            bail!("new flows per backend {chosen:?}: the service did not balance");
        }
        Ok(ns)
    }

    /// Opens the flow the established and reverse paths use: the client's SYN, the
    /// backend's SYN-ACK, the client's ACK. Returns the backend.
    fn open_flow(&mut self) -> Result<Ipv4Addr> {
        clear(&mut self.ct)?;
        let mut backend = None;
        timed_calls(
            &self.node.dp,
            FROM_POD,
            1,
            1,
            to_service(FLOW_PORT, TCP_SYN, 0),
            |_, _| Ok(()),
            |_, input, out| {
                backend = Some(check_dnat(input, out, FLOW_PORT, &ENDPOINTS)?);
                Ok(())
            },
        )?;
        let backend = backend.ok_or_else(|| anyhow!("the SYN was not checked"))?;
        timed_calls(
            &self.node.dp,
            FROM_NETDEV,
            1,
            1,
            from_backend(backend, FLOW_PORT, TCP_SYN_ACK, 0),
            |_, _| Ok(()),
            check_reverse,
        )?;
        // The client's ACK completes the handshake (the flow moves to CONNTRACK).
        timed_calls(
            &self.node.dp,
            FROM_POD,
            1,
            1,
            to_service(FLOW_PORT, TCP_ACK, 0),
            |_, _| Ok(()),
            |_, input, out| check_dnat(input, out, FLOW_PORT, &[backend]).map(|_| ()),
        )?;
        let key = CtKey {
            saddr: POD.octets(),
            daddr: vip().octets(),
            sport: FLOW_PORT,
            dport: PORT,
            proto: IPPROTO_TCP,
            pad: [0; 3],
        };
        let e = self.ct.established.get(&key, 0)?;
        if e.state != state::ESTABLISHED {
            bail!(
                "the flow is in conntrack state {} after the SYN-ACK",
                e.state
            );
        }
        Ok(backend)
    }

    /// One sample of `calls` packets of the open flow on `program`; `counter` must count
    /// each, and no new flow may start.
    fn flow_packets(
        &mut self,
        program: &str,
        frame: Vec<u8>,
        calls: u64,
        counter: (Program, Reason),
        check: impl FnMut(u64, &[u8], &[u8]) -> Result<(), String>,
    ) -> Result<f64> {
        let (flows0, n0) = (self.flows()?, self.counted(counter)?);
        let ns = timed_calls(
            &self.node.dp,
            program,
            1,
            calls,
            frame,
            |_, _| Ok(()),
            check,
        )?;
        let (new, n) = (self.flows()? - flows0, self.counted(counter)? - n0);
        if new != 0 || n != calls {
            bail!(
                "{calls} packets of one flow counted {n} as {} and {new} new service flows",
                counter.1.name()
            );
        }
        Ok(ns)
    }
}

/// The backend's reply translated back to the service and delivered to the client pod.
fn check_reverse(_: u64, input: &[u8], out: &[u8]) -> Result<(), String> {
    let v = check_translated(input, out)?;
    let (_, dport) = packet::ports(input);
    if v.src != vip()
        || v.dst != POD
        || packet::ports(out) != (PORT, dport)
        || (v.dst_mac, v.src_mac) != (POD_MAC, POD_HOST_MAC)
    {
        return Err(format!(
            "{}:{} -> {}, not translated back to the service and delivered",
            v.src,
            packet::ports(out).0,
            v.dst
        ));
    }
    Ok(())
}

fn setup(object: &[u8]) -> Result<Node> {
    let sizes = MapSizes {
        frontends: 2 * SERVICES as u32,
        half_open: 262_144,
        ..Default::default()
    };
    let mut node = load(object, Backend::HostGw, &sizes, true)?;
    program(&mut node.dp, &sizes)?;
    let ct = conntrack(&mut node.dp)?;
    Ok(Node { node, ct })
}

/// The three service paths' rows, each compared with the floor `(subject, case)`.
pub fn run(object: &[u8], calls: u64, repeats: usize, floor: (&str, &str)) -> Vec<Row> {
    let row = |case: &str, r: Result<Stats>| {
        let case = format!("{case}, 1 of {} services", count(SERVICES));
        Row::from_result(Section::PerPacket, "netdp", &case, NS_PER_PACKET, r)
            .compared_to_case(floor.0, floor.1)
    };
    let mut node = match setup(object) {
        Ok(n) => n,
        Err(e) => {
            return [FIRST_PACKET, ESTABLISHED, REVERSE]
                .iter()
                .map(|c| row(c, Err(runner::same_error(&e))))
                .collect();
        }
    };
    let mut next_flow = 0;
    let first = runner::repeat(FIRST_PACKET, repeats, |_| {
        node.first_packets(calls, &mut next_flow)
    });
    let (established, reverse) = match node.open_flow() {
        Ok(backend) => {
            let est = runner::repeat(ESTABLISHED, repeats, |_| {
                node.flow_packets(
                    FROM_POD,
                    to_service(FLOW_PORT, TCP_ACK_PSH, 64),
                    calls,
                    (Program::FromPod, Reason::Direct),
                    |_, input, out| check_dnat(input, out, FLOW_PORT, &[backend]).map(|_| ()),
                )
            });
            let rev = runner::repeat(REVERSE, repeats, |_| {
                node.flow_packets(
                    FROM_NETDEV,
                    from_backend(backend, FLOW_PORT, TCP_ACK_PSH, 64),
                    calls,
                    (Program::FromNetdev, Reason::LocalDelivery),
                    check_reverse,
                )
            });
            (est, rev)
        }
        Err(e) => (Err(runner::same_error(&e)), Err(runner::same_error(&e))),
    };
    vec![
        row(FIRST_PACKET, first),
        row(ESTABLISHED, established),
        row(REVERSE, reverse),
    ]
}
