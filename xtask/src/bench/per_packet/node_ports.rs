//! Per-packet cost of service traffic from outside the cluster to a remote backend (node
//! ports, external and load-balancer IPs take the same path), in XDP (`xdp_netdev`) and in
//! tc (`from_netdev`), on programs whose maps hold `SERVICES` external IP services of 3
//! endpoints each; the measured service is the last one, its endpoints pods on the peer.
//! Each hook is compared with its own floor: `bench_xdp_tx` for XDP, `bench_redirect` for
//! tc, measured the same way (one run per call: every path rewrites the packet).
//!
//! - first packet: a client's SYN conntrack has never seen (frontend lookup, random
//!   backend, both conntrack entries, DNAT and source NAT to the node, sent to the peer);
//!   each call a new flow, the conntrack maps emptied every `FLOWS_PER_TABLE` flows;
//! - established flow: a data packet of a flow whose handshake completed.
//!
//! Every call's output is checked (addresses, ports, TTL, MACs, both checksums) and every
//! sample's counters (a new flow per first packet, one `direct` per packet, in the program
//! measured). This measures the programs' own cost; what XDP saves beyond it (the skb
//! never allocated, the stack never entered) shows only under live traffic.
use std::net::Ipv4Addr;

use anyhow::{Result, bail};
use aya::maps::{HashMap, MapData};
use netdp_common::{
    conntrack::{CtEntry, CtKey},
    counters::{Event, Program, Reason},
    map_names,
    program_names::{BENCH_XDP_TX, FROM_NETDEV, XDP_NETDEV},
};
use netdp_dataplane::{Dataplane, MapSizes};
use netdp_testbed::packet::{self, IPPROTO_TCP, Ipv4View, PacketSpec};

use super::{
    super::{
        report::{NS_PER_PACKET, Row, Section, count},
        runner::{self, Stats},
    },
    Backend, Node as Loaded, PEER_MAC, UNDERLAY_MAC, load, timed_calls,
};

const SERVICES: usize = 10_000;
const ENDPOINTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 1, 2, 5),
    Ipv4Addr::new(10, 1, 2, 6),
    Ipv4Addr::new(10, 1, 2, 7),
];
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
/// The router the clients' packets come from.
const ROUTER_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x01];
/// Where the node source-NATs service traffic to (its gateway address).
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 1);
const PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
/// New flows between two emptyings of the conntrack maps (2 entries each, well under the
/// 262,144 HALF_OPEN holds here, so the LRU never evicts).
const FLOWS_PER_TABLE: u64 = 50_000;
const FIRST_PORT: u16 = 1024;
const TCP_SYN: u8 = 0x02;
const TCP_SYN_ACK: u8 = 0x12;
const TCP_ACK: u8 = 0x10;
const TCP_ACK_PSH: u8 = 0x18;

const XDP_FLOOR: &str = "floor: XDP_TX only";
const XDP_FLOOR_CASE: &str = "bench_xdp_tx, 1 run per call";
const FIRST_PACKET: &str = "node port, first packet (outside -> remote backend), 1 run per call";
const ESTABLISHED: &str = "node port, established flow (outside -> remote backend), 1 run per call";

/// Service `i`'s external IP (198.18.0.0/15, the benchmarking range).
fn external_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i as u32)
}

fn frontend() -> Ipv4Addr {
    external_ip(SERVICES - 1)
}

/// A client's segment to the measured service, as it arrives from the router.
fn to_service(sport: u16, tcp_flags: u8, payload: usize) -> Vec<u8> {
    PacketSpec {
        src_mac: ROUTER_MAC,
        dst_mac: UNDERLAY_MAC,
        src: CLIENT,
        dst: frontend(),
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

/// The backend's SYN-ACK to the node's source NAT address, from the peer.
fn syn_ack(backend: Ipv4Addr, dport: u16) -> Vec<u8> {
    PacketSpec {
        src_mac: PEER_MAC,
        dst_mac: UNDERLAY_MAC,
        src: backend,
        dst: SNAT,
        ttl: 63,
        proto: IPPROTO_TCP,
        sport: TARGET_PORT,
        dport,
        tcp_flags: TCP_SYN_ACK,
        ..Default::default()
    }
    .build()
}

fn program(dp: &mut Dataplane, sizes: &MapSizes) -> Result<()> {
    let services = super::BenchServices {
        n: SERVICES,
        frontend: external_ip,
        external: true,
        real: ENDPOINTS,
        fake: |i, j| [10, 1, 3 + (i % 200) as u8, 1 + j as u8],
        snat: Some(SNAT),
    };
    super::program_services(dp, sizes, &services)
}

/// A client's packet DNATed to one of `allowed`, source-NATed to the node, sent to the peer.
fn check_sent(input: &[u8], out: &[u8], allowed: &[Ipv4Addr]) -> Result<Ipv4Addr, String> {
    if out.len() != input.len() {
        return Err(format!("{} bytes out of {}", out.len(), input.len()));
    }
    if !packet::ipv4_checksum_ok(out, 14) || !packet::l4_checksum_ok(out, 14) {
        return Err("bad checksum".into());
    }
    if out[38..50] != input[38..50] || out[54..] != input[54..] {
        return Err("bytes beyond the ports changed".into());
    }
    let v = Ipv4View::parse(out).ok_or("not IPv4")?;
    let ok = v.src == SNAT
        && allowed.contains(&v.dst)
        && packet::ports(out).1 == TARGET_PORT
        && v.ttl == input[22] - 1
        && (v.dst_mac, v.src_mac) == (PEER_MAC, UNDERLAY_MAC);
    if !ok {
        return Err(format!(
            "{} -> {}:{} ttl {}, not translated and sent to the peer",
            v.src,
            v.dst,
            packet::ports(out).1,
            v.ttl
        ));
    }
    Ok(v.dst)
}

struct Node {
    node: Loaded,
    established: HashMap<MapData, CtKey, CtEntry>,
    half_open: HashMap<MapData, CtKey, CtEntry>,
}

/// The counters of the hook `name` runs as.
fn hook(name: &str) -> Program {
    if name == XDP_NETDEV {
        Program::Xdp
    } else {
        Program::FromNetdev
    }
}

/// Empties both conntrack maps.
fn clear(
    established: &mut HashMap<MapData, CtKey, CtEntry>,
    half_open: &mut HashMap<MapData, CtKey, CtEntry>,
) -> Result<()> {
    for t in [established, half_open] {
        let keys: Vec<CtKey> = t.keys().collect::<Result<_, _>>()?;
        for k in keys {
            t.remove(&k)?;
        }
    }
    Ok(())
}

impl Node {
    fn tally(&self, p: Program) -> Result<(u64, u64)> {
        Ok((
            self.node.counters.event(p, Event::ServiceFlow)?,
            self.node.counted((p, Reason::Direct))?,
        ))
    }

    /// One sample of `calls` first packets through `prog`, each a new flow; the conntrack
    /// maps are emptied (between calls, outside the timed runs) every `FLOWS_PER_TABLE`.
    fn first_packets(&mut self, prog: &str, calls: u64) -> Result<f64> {
        let (flows0, sent0) = self.tally(hook(prog))?;
        let sport = |call: u64| FIRST_PORT + (call % FLOWS_PER_TABLE) as u16;
        let (established, half_open) = (&mut self.established, &mut self.half_open);
        let ns = timed_calls(
            &self.node.dp,
            prog,
            1,
            calls,
            to_service(FIRST_PORT, TCP_SYN, 0),
            |call, frame| {
                if call.is_multiple_of(FLOWS_PER_TABLE) {
                    clear(established, half_open)?;
                }
                *frame = to_service(sport(call), TCP_SYN, 0);
                Ok(())
            },
            |_, input, out| check_sent(input, out, &ENDPOINTS).map(|_| ()),
        )?;
        let (flows, sent) = self.tally(hook(prog))?;
        if flows - flows0 != calls || sent - sent0 != calls {
            bail!(
                "{prog}: {calls} first packets counted {} new flows and {} sent",
                flows - flows0,
                sent - sent0
            );
        }
        Ok(ns)
    }

    /// Opens a flow through `prog` (SYN, SYN-ACK, ACK) from client port `port`; its backend.
    fn open_flow(&mut self, prog: &str, port: u16) -> Result<Ipv4Addr> {
        let mut backend = None;
        timed_calls(
            &self.node.dp,
            prog,
            1,
            1,
            to_service(port, TCP_SYN, 0),
            |_, _| Ok(()),
            |_, input, out| {
                backend = Some(check_sent(input, out, &ENDPOINTS)?);
                Ok(())
            },
        )?;
        let Some(backend) = backend else {
            bail!("the SYN was not checked");
        };
        // The reply, to a client outside: tc sends it; XDP's next-hop lookup has no route
        // here and leaves it to tc, having moved the flow on.
        let (verdict, _) = packet::test_run(
            self.node.dp.classifier(FROM_NETDEV)?,
            &syn_ack(backend, port),
            None,
        );
        if verdict != packet::TC_ACT_REDIRECT {
            bail!("the SYN-ACK was not sent back (verdict {verdict})");
        }
        timed_calls(
            &self.node.dp,
            prog,
            1,
            1,
            to_service(port, TCP_ACK, 0),
            |_, _| Ok(()),
            |_, input, out| check_sent(input, out, &[backend]).map(|_| ()),
        )?;
        Ok(backend)
    }

    fn flow_packets(
        &mut self,
        prog: &str,
        port: u16,
        backend: Ipv4Addr,
        calls: u64,
    ) -> Result<f64> {
        let (flows0, sent0) = self.tally(hook(prog))?;
        let ns = timed_calls(
            &self.node.dp,
            prog,
            1,
            calls,
            to_service(port, TCP_ACK_PSH, 64),
            |_, _| Ok(()),
            |_, input, out| check_sent(input, out, &[backend]).map(|_| ()),
        )?;
        let (flows, sent) = self.tally(hook(prog))?;
        if flows != flows0 || sent - sent0 != calls {
            bail!(
                "{prog}: {calls} packets of one flow counted {} sent and {} new flows",
                sent - sent0,
                flows - flows0
            );
        }
        Ok(ns)
    }
}

fn setup(object: &[u8]) -> Result<Node> {
    let sizes = MapSizes {
        frontends: 2 * SERVICES as u32,
        half_open: 262_144,
        ..Default::default()
    };
    let mut node = load(object, Backend::HostGw, &sizes, true)?;
    program(&mut node.dp, &sizes)?;
    let established = HashMap::try_from(node.dp.take_map(map_names::CONNTRACK)?)?;
    let half_open = HashMap::try_from(node.dp.take_map(map_names::HALF_OPEN)?)?;
    Ok(Node {
        node,
        established,
        half_open,
    })
}

/// The XDP floor and the node port rows of both hooks; tc's compared with `tc_floor`.
pub fn run(object: &[u8], calls: u64, repeats: usize, tc_floor: (&str, &str)) -> Vec<Row> {
    let services = count(SERVICES);
    let hooks = [
        ("netdp XDP", XDP_NETDEV, (XDP_FLOOR, XDP_FLOOR_CASE), 61_000),
        ("netdp tc", FROM_NETDEV, tc_floor, 62_000),
    ];
    let mut node = match setup(object) {
        Ok(n) => n,
        Err(e) => {
            return vec![Row::from_result(
                Section::PerPacket,
                "netdp XDP and tc",
                &format!("node port paths, 1 of {services} services"),
                NS_PER_PACKET,
                Err(runner::same_error(&e)),
            )];
        }
    };
    let floor: Result<Stats> = runner::repeat(XDP_FLOOR_CASE, repeats, |_| {
        timed_calls(
            &node.node.dp,
            BENCH_XDP_TX,
            1,
            calls,
            to_service(FIRST_PORT, TCP_SYN, 0),
            |_, _| Ok(()),
            |_, _, _| Ok(()),
        )
    });
    let mut rows = vec![Row::from_result(
        Section::PerPacket,
        XDP_FLOOR,
        XDP_FLOOR_CASE,
        NS_PER_PACKET,
        floor,
    )];
    for (subject, prog, floor, port) in hooks {
        let row = |case: &str, r: Result<Stats>| {
            Row::from_result(
                Section::PerPacket,
                subject,
                &format!("{case}, 1 of {services} services"),
                NS_PER_PACKET,
                r,
            )
            .compared_to_case(floor.0, floor.1)
        };
        let first = runner::repeat(FIRST_PACKET, repeats, |_| node.first_packets(prog, calls));
        rows.push(row(FIRST_PACKET, first));
        let established = match node.open_flow(prog, port) {
            Ok(backend) => runner::repeat(ESTABLISHED, repeats, |_| {
                node.flow_packets(prog, port, backend, calls)
            }),
            Err(e) => Err(e),
        };
        rows.push(row(ESTABLISHED, established));
    }
    rows
}
