//! Adversarial frames (issue 12, fuzzing): every program runs (BPF_PROG_TEST_RUN) over a
//! corpus generated from valid frames of every kind, on nodes of every backend (host-gw,
//! vxlan, ipip, udp), with and without masquerading, with and without a service (a
//! ClusterIP and a NodePort, a local and a remote backend). Each seed is mutated: cut at
//! every length, bad IHL and total length, options, fragments, other IP versions and
//! EtherTypes, bad checksums, TCP flag combinations, zero-length UDP, spoofed sources,
//! tunnels nested, to unknown VNIs and ports, from unknown peers, and ICMP errors quoting
//! truncated packets or packets of no tracked flow.
//!
//! Every run is checked against the rules in [`Book::judge`] (each rule is named there, and
//! a failure names it, the frame in hex and the program). The verdict distribution per
//! program and mutation kind is printed (`--nocapture`).
mod common;

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::Ipv4Addr,
    time::Instant,
};

use common::{
    ADJACENT_PEER, ADJACENT_PEER_MAC, Fixture, GATEWAY, NODE_IP, OUR_VTEP, PEER_IP, PEER_SUBNET,
    PEER_VTEP, ROUTER, ROUTER_MAC, TEST_RUN_IFINDEX, UNDERLAY_MAC, cluster_ip, direct_route, local,
    node_config, node_port, outer_from_peer, plan, pod_mac, pod_sends, remote, veth_mac,
};
use netdp::{config::Backend, dataplane::lb::ServicePlan};
use netdp_common::{
    counters::{Event, Program, Reason, Verdict},
    nat::{PORT_MAX, PORT_MIN},
    node::{NodeConfig, decap, flags},
    program_names::{FROM_HOST, FROM_NETDEV, FROM_POD},
};
use netdp_testbed::packet::{
    self, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Outer, PacketSpec, TC_ACT_OK, TC_ACT_REDIRECT,
    TC_ACT_SHOT,
};

/// Two pods on this node, both attached where test runs arrive (either may send through
/// `from_pod`); B is also the service's local backend.
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 4);
/// A pod of the peer, and the service's remote backend (both in [`PEER_SUBNET`]).
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 5);
const REMOTE_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 6);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The MACs of frames the node sends into the pod network (`from_host`).
const HOST_SRC_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0xf1];
const HOST_DST_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0xf2];
const FOREIGN_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x99];
const VXLAN_PORT: u16 = 8472;
const UDP_PORT: u16 = 8285;

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;

fn pod_of(ip: Ipv4Addr) -> Option<u8> {
    match ip {
        POD_A => Some(3),
        POD_B => Some(4),
        _ => None,
    }
}

fn in_cluster(ip: Ipv4Addr) -> bool {
    ip.octets()[..2] == [10, 1]
}

fn in_peer_subnet(ip: Ipv4Addr) -> bool {
    ip.octets()[..3] == [10, 1, 2]
}

// ---------------------------------------------------------------------------------------
// Nodes.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tunnel {
    None,
    Vxlan,
    Ipip,
    Udp,
}

impl Tunnel {
    const ENCAPS: [Tunnel; 3] = [Tunnel::Vxlan, Tunnel::Ipip, Tunnel::Udp];

    fn name(self) -> &'static str {
        match self {
            Tunnel::None => "host-gw",
            Tunnel::Vxlan => "vxlan",
            Tunnel::Ipip => "ipip",
            Tunnel::Udp => "udp",
        }
    }

    /// Where the inner IPv4 header of this tunnel's packets starts.
    fn inner_ip(self) -> usize {
        match self {
            Tunnel::None => 14,
            Tunnel::Vxlan => 14 + 20 + 8 + 8 + 14,
            Tunnel::Ipip => 14 + 20,
            Tunnel::Udp => 14 + 20 + 8,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Env {
    tunnel: Tunnel,
    masq: bool,
    services: bool,
}

impl Env {
    fn name(&self) -> String {
        format!(
            "{}{}{}",
            self.tunnel.name(),
            if self.masq { "+masq" } else { "" },
            if self.services { "+services" } else { "" }
        )
    }
}

/// A node of `env`'s backend with pods A and B, the route to the peer leasing
/// [`PEER_SUBNET`] (across the router for the tunnels, the adjacent peer for host-gw) and
/// the peer in PEERS, as the agent plans them.
fn fixture(env: &Env) -> Fixture {
    let (decap, port, backend) = match env.tunnel {
        Tunnel::None => (decap::NONE, 0, Backend::HostGw),
        Tunnel::Vxlan => (
            decap::VXLAN,
            VXLAN_PORT,
            Backend::Vxlan {
                vni: 1,
                port: VXLAN_PORT,
                direct_routing: false,
            },
        ),
        Tunnel::Ipip => (
            decap::IPIP,
            0,
            Backend::Ipip {
                direct_routing: false,
            },
        ),
        Tunnel::Udp => (decap::UDP, UDP_PORT, Backend::Udp { port: UDP_PORT }),
    };
    let mut f = Fixture::load(&NodeConfig {
        decap,
        port,
        vni: 1,
        vtep_mac: OUR_VTEP,
        flags: if env.masq { flags::MASQUERADE } else { 0 },
        nat_port_min: PORT_MIN,
        nat_port_max: PORT_MAX,
        ..node_config()
    });
    f.add_pod(POD_A, TEST_RUN_IFINDEX, pod_mac(3), veth_mac(3));
    f.add_pod(POD_B, TEST_RUN_IFINDEX, pod_mac(4), veth_mac(4));
    if env.tunnel == Tunnel::None {
        f.set_routes(&[(PEER_SUBNET, direct_route())]);
        let subnet = PEER_SUBNET.parse().expect("a CIDR");
        f.peers
            .sync(&[(ADJACENT_PEER, subnet)].into_iter().collect())
            .expect("syncing PEERS");
    } else {
        f.route_to_peer(&backend);
    }
    f
}

/// Programs the service: a ClusterIP (TCP and UDP) and a NodePort (TCP and UDP) to a local
/// and a remote backend, as the agent does.
fn apply_services(f: &mut Fixture) {
    f.lb.set_config(GATEWAY, 0).expect("writing LB_CONFIG");
    // Maglev: which backend a flow gets depends on its tuple only, so every run of the
    // corpus takes the same paths.
    let web = ServicePlan {
        maglev: true,
        ..plan(
            &[
                cluster_ip(VIP, 80, IPPROTO_TCP),
                cluster_ip(VIP, 80, IPPROTO_UDP),
                node_port(NODE_IP, NODE_PORT, IPPROTO_TCP),
                node_port(NODE_IP, NODE_PORT, IPPROTO_UDP),
            ],
            8080,
            &[local(POD_B), remote(REMOTE_BACKEND)],
        )
    };
    f.apply("web", web);
}

// ---------------------------------------------------------------------------------------
// Frames: building, fixing, reading (all bounds-checked: the frames are adversarial).

fn u16_at(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

fn addr_at(f: &[u8], at: usize) -> Option<Ipv4Addr> {
    let b = f.get(at..at + 4)?;
    Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn ethertype(f: &[u8]) -> Option<u16> {
    u16_at(f, 12)
}

fn ihl_at(f: &[u8], at: usize) -> usize {
    f.get(at).map_or(0, |b| ((b & 0x0f) as usize) * 4)
}

/// Whether a well-formed IPv4 header starts at `at`: version 4, IHL at least 5, the header
/// within its total length and the total length within the frame.
fn ip_valid(f: &[u8], at: usize) -> bool {
    let Some(&vihl) = f.get(at) else {
        return false;
    };
    let ihl = ihl_at(f, at);
    let Some(tot) = u16_at(f, at + 2).map(usize::from) else {
        return false;
    };
    f.len() >= at + 20 && vihl >> 4 == 4 && ihl >= 20 && tot >= ihl && at + tot <= f.len()
}

fn ip_csum_ok(f: &[u8], at: usize) -> bool {
    let ihl = ihl_at(f, at);
    f.len() >= at + ihl && ihl >= 20 && packet::checksum(&f[at..at + ihl], 0) == 0
}

fn fix_ip(f: &mut [u8], at: usize) {
    let ihl = ihl_at(f, at).max(20);
    if f.len() < at + ihl {
        return;
    }
    put16(f, at + 10, 0);
    let c = packet::checksum(&f[at..at + ihl], 0);
    put16(f, at + 10, c);
}

fn pseudo(f: &[u8], at: usize, proto: u8, len: usize) -> u32 {
    let w = |i: usize| u16::from_be_bytes([f[at + i], f[at + i + 1]]) as u32;
    w(12) + w(14) + w(16) + w(18) + proto as u32 + len as u32
}

/// Where the transport header's checksum is, from the transport header.
fn l4_csum_off(proto: u8) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(16),
        IPPROTO_UDP => Some(6),
        IPPROTO_ICMP => Some(2),
        _ => None,
    }
}

fn l4_min(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => 20,
        _ => 8,
    }
}

/// The transport bytes of the unfragmented IPv4 packet at `at` (within its total length),
/// if it has a complete transport header.
fn l4_span(f: &[u8], at: usize) -> Option<(u8, usize, usize)> {
    if !ip_valid(f, at) || u16_at(f, at + 6)? & 0x3fff != 0 {
        return None;
    }
    let proto = f[at + 9];
    let start = at + ihl_at(f, at);
    let end = at + u16_at(f, at + 2)? as usize;
    l4_csum_off(proto)?;
    (end >= start + l4_min(proto)).then_some((proto, start, end))
}

/// Whether the transport checksum of the packet at `at` is right (`None`: no complete,
/// unfragmented transport header to check).
fn l4_ok(f: &[u8], at: usize) -> Option<bool> {
    let (proto, start, end) = l4_span(f, at)?;
    let l4 = &f[start..end];
    Some(match proto {
        IPPROTO_ICMP => packet::checksum(l4, 0) == 0,
        IPPROTO_UDP if l4[6] == 0 && l4[7] == 0 => true,
        _ => packet::checksum(l4, pseudo(f, at, proto, l4.len())) == 0,
    })
}

fn fix_l4(f: &mut [u8], at: usize) {
    let Some((proto, start, end)) = l4_span(f, at) else {
        return;
    };
    let off = start + l4_csum_off(proto).expect("TCP, UDP or ICMP");
    put16(f, off, 0);
    let c = match proto {
        IPPROTO_ICMP => packet::checksum(&f[start..end], 0),
        _ => {
            let c = packet::checksum(&f[start..end], pseudo(f, at, proto, end - start));
            if proto == IPPROTO_UDP && c == 0 {
                0xffff
            } else {
                c
            }
        }
    };
    put16(f, off, c);
}

/// Both checksums fixed after a change (the IP header's, then the transport's).
fn fixed(mut f: Vec<u8>) -> Vec<u8> {
    fix_ip(&mut f, 14);
    fix_l4(&mut f, 14);
    f
}

fn hex(f: &[u8]) -> String {
    f.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A tunnel packet's outer parts.
#[derive(Clone, Copy, Debug)]
struct Tun {
    kind: Tunnel,
    outer: Outer,
    dport: u16,
    vni: u32,
    vtep: [u8; 6],
}

impl Tun {
    /// The peer's tunnel packets to this node, as its backend `kind` sends them.
    fn from_peer(kind: Tunnel) -> Self {
        Tun {
            kind,
            outer: outer_from_peer(),
            dport: if kind == Tunnel::Vxlan {
                VXLAN_PORT
            } else {
                UDP_PORT
            },
            vni: 1,
            vtep: OUR_VTEP,
        }
    }

    fn wrap(&self, inner: &[u8]) -> Vec<u8> {
        match self.kind {
            Tunnel::Vxlan => packet::vxlan(
                &self.outer,
                41234,
                self.dport,
                self.vni,
                self.vtep,
                PEER_VTEP,
                inner,
            ),
            Tunnel::Ipip => packet::ipip(&self.outer, inner),
            Tunnel::Udp => packet::udp_encap(&self.outer, UDP_PORT, self.dport, inner),
            Tunnel::None => inner.to_vec(),
        }
    }
}

fn udp_or_tcp(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> PacketSpec {
    PacketSpec {
        src,
        dst,
        proto,
        sport,
        dport,
        tcp_flags: SYN,
        payload: b"adversarial".to_vec(),
        ..Default::default()
    }
}

fn macs(mut f: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

/// An ICMP echo reply with identifier `id`.
fn echo_reply(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    let mut f = udp_or_tcp(IPPROTO_ICMP, src, dst, 0, 0).build();
    f[34] = 0;
    put16(&mut f, 38, id);
    fixed(f)
}

/// The answer to the packet at `ip` of `out` (ports or echo identifier swapped, a SYN
/// answered with SYN-ACK), as an Ethernet frame with MACs `dst`, `src`.
fn answer(out: &[u8], ip: usize, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Option<Vec<u8>> {
    let (proto, start, _) = l4_span(out, ip)?;
    let (src, dst) = (addr_at(out, ip + 12)?, addr_at(out, ip + 16)?);
    let f = if proto == IPPROTO_ICMP {
        echo_reply(dst, src, u16_at(out, start + 4)?)
    } else {
        PacketSpec {
            tcp_flags: SYN_ACK,
            ..udp_or_tcp(
                proto,
                dst,
                src,
                u16_at(out, start + 2)?,
                u16_at(out, start)?,
            )
        }
        .build()
    };
    Some(macs(f, dst_mac, src_mac))
}

/// An ICMP error (`kind`/`code`) from `src` about the packet at `ip` of `out`, to that
/// packet's source.
fn error_about(out: &[u8], ip: usize, src: Ipv4Addr, code: u8) -> Option<Vec<u8>> {
    let quoted = out.get(ip - 14..)?.to_vec();
    let to = addr_at(out, ip + 12)?;
    let e = packet::icmp_error(src, to, 3, code, 1400, &quoted);
    Some(macs(e, UNDERLAY_MAC, ROUTER_MAC))
}

// ---------------------------------------------------------------------------------------
// The corpus.

/// What a mutation's frame must (at least) get, beyond the rules every frame is held to.
#[derive(Clone, Copy, Debug, Default)]
struct Expect {
    /// Never TC_ACT_REDIRECT.
    not_redirect: bool,
    /// TC_ACT_OK, byte for byte unchanged.
    unchanged: bool,
    /// Whatever the verdict, addresses, ports and payload stay what they were: the rule
    /// that says why there is nothing to translate.
    untranslated: Option<&'static str>,
}

const ANY: Expect = Expect {
    not_redirect: false,
    unchanged: false,
    untranslated: None,
};
const NOT_REDIRECT: Expect = Expect {
    not_redirect: true,
    ..ANY
};
const UNCHANGED: Expect = Expect {
    unchanged: true,
    ..ANY
};
/// The transport header is not inside the IP total length: bytes past the datagram
/// are no ports.
const BEYOND_TOT_LEN: Expect = Expect {
    untranslated: Some("transport header beyond the IP total length: not translated"),
    ..ANY
};
/// The header claims the transport header's first bytes as options (no valid option
/// bytes): the "ports" the programs would see are not the packet's.
const GARBAGE_OPTIONS: Expect = Expect {
    untranslated: Some("IHL beyond the real header (garbage options): not translated"),
    ..ANY
};
/// An ICMP error whose quote names no tracked flow (cut short, options, a later
/// fragment, another flow).
const NO_FLOW: Expect = Expect {
    untranslated: Some("ICMP error about no tracked flow: not translated"),
    ..ANY
};

struct Case {
    prog: &'static str,
    seed: String,
    kind: String,
    frame: Vec<u8>,
    expect: Expect,
}

/// A valid frame to derive mutations from; for a tunnel packet, its tunnel and inner frame.
#[derive(Clone)]
struct Seed {
    prog: &'static str,
    name: String,
    frame: Vec<u8>,
    tun: Option<(Tun, Vec<u8>)>,
}

impl Seed {
    fn plain(prog: &'static str, name: &str, frame: Vec<u8>) -> Self {
        Seed {
            prog,
            name: name.to_string(),
            frame,
            tun: None,
        }
    }

    fn tunnelled(name: &str, tun: Tun, inner: Vec<u8>) -> Self {
        Seed {
            prog: FROM_NETDEV,
            name: name.to_string(),
            frame: tun.wrap(&inner),
            tun: Some((tun, inner)),
        }
    }
}

/// Sources a spoofed frame claims: another local pod, a node (this one, the peer), a
/// cluster address nobody leases, the peer's subnet, outside hosts, and addresses no host
/// has.
const SPOOFED: [Ipv4Addr; 9] = [
    POD_B,
    NODE_IP,
    PEER_IP,
    Ipv4Addr::new(10, 1, 3, 9),
    Ipv4Addr::new(10, 1, 2, 99),
    Ipv4Addr::new(198, 51, 100, 7),
    Ipv4Addr::new(0, 0, 0, 0),
    Ipv4Addr::new(255, 255, 255, 255),
    Ipv4Addr::new(127, 0, 0, 1),
];

/// Mutations of the IPv4 frame `f` (Ethernet at 0, IPv4 at 14), but for truncation.
fn ip_mutations(f: &[u8]) -> Vec<(&'static str, Vec<u8>, Expect)> {
    let mut out = Vec::new();
    let ihl = ihl_at(f, 14);
    let tot = u16_at(f, 16).unwrap_or(0) as usize;
    let proto = f[23];
    let l4 = 14 + ihl;
    let with = |m: &dyn Fn(&mut Vec<u8>)| {
        let mut g = f.to_vec();
        m(&mut g);
        g
    };
    for v in 0..5u8 {
        out.push((
            "ihl<5",
            with(&|g| {
                g[14] = 0x40 | v;
                fix_ip(g, 14);
            }),
            ANY,
        ));
    }
    for v in [6u8, 7, 15] {
        // The header claims the transport bytes (or more) as options.
        let g = with(&|g| {
            g[14] = 0x40 | v;
            put16(g, 24, 0);
            let end = (14 + v as usize * 4).min(g.len());
            let c = packet::checksum(&g[14..end], 0);
            put16(g, 24, c);
        });
        out.push(("ihl>actual", g, GARBAGE_OPTIONS));
    }
    // Options that are valid: NOPs and end of list, router alert, 40 bytes of NOPs.
    for opts in [
        vec![1, 1, 1, 0],
        vec![0x94, 4, 0, 0],
        vec![1; 40],
        vec![7, 7, 4, 0, 0, 0, 0, 0],
    ] {
        let mut g = f[..l4].to_vec();
        g.extend_from_slice(&opts);
        g.extend_from_slice(&f[l4..]);
        g[14] = 0x40 | ((ihl + opts.len()) / 4) as u8;
        put16(&mut g, 16, (tot + opts.len()) as u16);
        out.push(("options", fixed(g), ANY));
    }
    for t in [tot + 1, tot + 100, 0xffff, 0] {
        out.push(("tot_len>frame", with(&|g| put16(g, 16, t as u16)), ANY));
        let last = out.len() - 1;
        fix_ip(&mut out[last].1, 14);
    }
    for (t, e) in [(tot - 1, ANY), (ihl, BEYOND_TOT_LEN), (ihl - 1, ANY)] {
        let g = with(&|g| {
            put16(g, 16, t as u16);
            fix_ip(g, 14);
        });
        out.push(("tot_len<frame", g, e));
    }
    if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        // The transport header only half inside the total length.
        let g = with(&|g| {
            put16(g, 16, (ihl + 4) as u16);
            fix_ip(g, 14);
        });
        out.push(("tot_len<frame", g, BEYOND_TOT_LEN));
    }
    out.push(("padded", with(&|g| g.extend_from_slice(&[0; 18])), ANY));
    out.push(("padded", with(&|g| g.extend_from_slice(&[0xff; 64])), ANY));
    for frag in [0x2000u16, 0x2001, 0x00b9, 0x6000, 0x4001, 0x3fff] {
        out.push(("fragment", with(&|g| put16(g, 20, frag)), ANY));
        let last = out.len() - 1;
        fix_ip(&mut out[last].1, 14);
    }
    for v in [0u8, 6, 15] {
        let g = with(&|g| {
            g[14] = (v << 4) | (g[14] & 0x0f);
            fix_ip(g, 14);
        });
        out.push(("version!=4", g, ANY));
    }
    for et in [0x86ddu16, 0x0806, 0x8100, 0x0000, 0x0801] {
        out.push(("ethertype", with(&|g| put16(g, 12, et)), ANY));
    }
    out.push(("ip checksum", with(&|g| g[24] ^= 0x5a), ANY));
    out.push(("ip checksum", with(&|g| put16(g, 24, 0)), ANY));
    if let Some(off) = l4_csum_off(proto)
        && f.len() >= l4 + off + 2
    {
        out.push(("l4 checksum", with(&|g| g[l4 + off] ^= 0xa5), ANY));
    }
    for ttl in [0u8, 1, 2, 255] {
        out.push(("ttl", with(&|g| g[22] = ttl), ANY));
        let last = out.len() - 1;
        fix_ip(&mut out[last].1, 14);
    }
    if proto == IPPROTO_TCP && f.len() >= l4 + 20 {
        for fl in [
            0u8, 0x01, 0x03, 0x04, 0x06, 0x07, 0x10, 0x11, 0x12, 0x14, 0xff,
        ] {
            out.push(("tcp flags", fixed(with(&|g| g[l4 + 13] = fl)), ANY));
        }
        // Data offset below 5, and beyond the segment.
        for doff in [0x00u8, 0x40, 0xf0] {
            out.push(("tcp doff", fixed(with(&|g| g[l4 + 12] = doff)), ANY));
        }
    }
    if proto == IPPROTO_UDP && f.len() >= l4 + 8 {
        let mut g = f[..l4 + 8].to_vec();
        put16(&mut g, 16, (ihl + 8) as u16);
        put16(&mut g, l4 + 4, 8);
        out.push(("udp zero-length", fixed(g), ANY));
        for len in [0u16, 7, 0xffff] {
            out.push((
                "udp bad length",
                fixed(with(&|g| put16(g, l4 + 4, len))),
                ANY,
            ));
        }
    }
    for src in SPOOFED {
        let g = with(&|g| g[26..30].copy_from_slice(&src.octets()));
        out.push(("spoofed source", fixed(g), ANY));
    }
    out.push((
        "foreign mac",
        with(&|g| g[6..12].copy_from_slice(&FOREIGN_MAC)),
        ANY,
    ));
    for dst in [
        Ipv4Addr::new(255, 255, 255, 255),
        Ipv4Addr::new(224, 0, 0, 1),
        GATEWAY,
        NODE_IP,
    ] {
        let g = with(&|g| g[30..34].copy_from_slice(&dst.octets()));
        out.push(("destination", fixed(g), ANY));
    }
    // An ICMP error: its quote cut short, with options, or about another flow.
    if proto == IPPROTO_ICMP && matches!(f.get(l4), Some(3 | 11 | 12)) {
        for q in [0usize, 4, 20, 24, 27] {
            let mut g = f[..(l4 + 8 + q).min(f.len())].to_vec();
            let t = (g.len() - 14) as u16;
            put16(&mut g, 16, t);
            out.push(("icmp quote truncated", fixed(g), NO_FLOW));
        }
        let q = l4 + 8;
        if f.len() >= q + 28 {
            out.push(("icmp quote ihl", fixed(with(&|g| g[q] = 0x46)), NO_FLOW));
            out.push(("icmp quote ihl", fixed(with(&|g| g[q] = 0x44)), NO_FLOW));
            out.push(("icmp quote version", fixed(with(&|g| g[q] = 0x65)), NO_FLOW));
            // A fragment after the first: no ports in it.
            out.push((
                "icmp quote fragment",
                fixed(with(&|g| put16(g, q + 6, 0x0010))),
                NO_FLOW,
            ));
            for (what, at, v) in [
                ("icmp unrelated flow", q + 20, 9u16),
                ("icmp unrelated flow", q + 22, 9),
            ] {
                let g = with(&|g| put16(g, at, v));
                out.push((what, fixed(g), NO_FLOW));
            }
            let g = with(&|g| {
                g[q + 12..q + 16].copy_from_slice(&Ipv4Addr::new(10, 1, 3, 9).octets());
            });
            out.push(("icmp unrelated flow", fixed(g), NO_FLOW));
            let g = with(&|g| g[q + 9] = 47);
            out.push(("icmp unrelated flow", fixed(g), NO_FLOW));
        }
        for kind in [5u8, 0, 42] {
            out.push(("icmp type", fixed(with(&|g| g[l4] = kind)), ANY));
        }
    }
    out
}

/// Every case derived from `seed`: the seed itself, every truncation, the IPv4 mutations
/// of the frame, and for a tunnel packet the tunnel mutations and those of its inner frame.
fn derive(seed: &Seed, out: &mut Vec<Case>) {
    let mut push = |kind: &str, frame: Vec<u8>, expect: Expect| {
        out.push(Case {
            prog: seed.prog,
            seed: seed.name.clone(),
            kind: kind.to_string(),
            frame,
            expect,
        })
    };
    for n in 0..seed.frame.len() {
        push("truncated", seed.frame[..n].to_vec(), NOT_REDIRECT);
    }
    for (kind, frame, expect) in ip_mutations(&seed.frame) {
        push(kind, frame, expect);
    }
    let Some((tun, inner)) = &seed.tun else {
        return;
    };
    let tun = *tun;
    let vary = |t: Tun| t.wrap(inner);
    if tun.kind == Tunnel::Vxlan {
        for vni in [0u32, 2, 0xff_ffff] {
            push("tunnel unknown vni", vary(Tun { vni, ..tun }), NOT_REDIRECT);
        }
        for vtep in [PEER_VTEP, [0xff; 6], [0; 6]] {
            push("tunnel wrong vtep", vary(Tun { vtep, ..tun }), NOT_REDIRECT);
        }
        let mut g = tun.wrap(inner);
        g[42] = 0;
        push("tunnel vxlan flags", g, NOT_REDIRECT);
        let mut g = tun.wrap(inner);
        put16(&mut g, 62, 0x86dd);
        push("tunnel inner ethertype", g, NOT_REDIRECT);
    }
    if tun.kind != Tunnel::Ipip {
        for dport in [4789u16, 8473, 0] {
            push("tunnel wrong port", vary(Tun { dport, ..tun }), UNCHANGED);
        }
        let other = if tun.kind == Tunnel::Vxlan {
            UDP_PORT
        } else {
            VXLAN_PORT
        };
        push(
            "tunnel wrong port",
            vary(Tun {
                dport: other,
                ..tun
            }),
            NOT_REDIRECT,
        );
    }
    for src in [Ipv4Addr::new(192, 168, 20, 99), REMOTE_POD, NODE_IP, ROUTER] {
        let outer = Outer { src, ..tun.outer };
        push(
            "tunnel unknown peer",
            vary(Tun { outer, ..tun }),
            NOT_REDIRECT,
        );
    }
    for dst in [ADJACENT_PEER, Ipv4Addr::new(192, 168, 10, 99)] {
        let outer = Outer { dst, ..tun.outer };
        push("tunnel not to us", vary(Tun { outer, ..tun }), UNCHANGED);
    }
    // Tunnels in tunnels: the inner frame is itself a tunnel packet from the peer to us.
    for k in Tunnel::ENCAPS {
        let nested = Tun::from_peer(k).wrap(inner);
        push("nested tunnel", tun.wrap(&nested), NOT_REDIRECT);
    }
    for n in 14..inner.len() {
        push("inner truncated", tun.wrap(&inner[..n]), NOT_REDIRECT);
    }
    for (kind, frame, expect) in ip_mutations(inner) {
        // Only VXLAN carries the inner Ethernet header.
        if tun.kind != Tunnel::Vxlan && matches!(kind, "ethertype" | "foreign mac") {
            continue;
        }
        // An inner frame that is no valid IPv4 packet must not come out of the tunnel.
        let bad = ethertype(&frame) != Some(packet::ETH_P_IP) || !ip_valid(&frame, 14);
        let expect = Expect {
            not_redirect: expect.not_redirect || bad,
            unchanged: false,
            ..expect
        };
        out.push(Case {
            prog: seed.prog,
            seed: seed.name.clone(),
            kind: format!("inner {kind}"),
            frame: tun.wrap(&frame),
            expect,
        });
    }
}

// ---------------------------------------------------------------------------------------
// Running and judging.

fn program(prog: &str) -> Program {
    match prog {
        FROM_POD => Program::FromPod,
        FROM_NETDEV => Program::FromNetdev,
        FROM_HOST => Program::FromHost,
        _ => panic!("no program {prog}"),
    }
}

fn verdict_name(v: u32) -> String {
    match v {
        TC_ACT_OK => "OK".into(),
        TC_ACT_SHOT => "SHOT".into(),
        TC_ACT_REDIRECT => "REDIRECT".into(),
        v => format!("verdict {v}"),
    }
}

const DELIVERED: [Reason; 5] = [
    Reason::LocalDelivery,
    Reason::DecapVxlan,
    Reason::DecapIpip,
    Reason::DecapUdp,
    Reason::Unmasquerade,
];

fn decap_tunnel(r: Reason) -> Option<Tunnel> {
    match r {
        Reason::DecapVxlan => Some(Tunnel::Vxlan),
        Reason::DecapIpip => Some(Tunnel::Ipip),
        Reason::DecapUdp => Some(Tunnel::Udp),
        _ => None,
    }
}

fn encap_tunnel(r: Reason) -> Option<Tunnel> {
    match r {
        Reason::EncapVxlan => Some(Tunnel::Vxlan),
        Reason::EncapIpip => Some(Tunnel::Ipip),
        Reason::EncapUdp => Some(Tunnel::Udp),
        _ => None,
    }
}

/// What one run did.
struct Ran {
    verdict: u32,
    out: Vec<u8>,
    reason: Option<Reason>,
}

/// Whether the IPv4 packet at `a` of `x` and at `b` of `y` are the same from the addresses
/// on: same total length, same addresses, same transport header and payload (what a
/// forwarding hop leaves alone; a translation does not).
fn same_packet(x: &[u8], a: usize, y: &[u8], b: usize) -> bool {
    let (Some(tx), Some(ty)) = (u16_at(x, a + 2), u16_at(y, b + 2)) else {
        return false;
    };
    let (tx, ty) = (tx as usize, ty as usize);
    tx == ty && x.len() >= a + tx && y.len() >= b + ty && x[a + 12..a + tx] == y[b + 12..b + ty]
}

#[derive(Default)]
struct Book {
    /// (program, mutation kind) -> verdict/reason -> runs.
    dist: BTreeMap<(&'static str, String), BTreeMap<String, u64>>,
    /// rule -> (program, seed, kind) -> runs that broke it.
    broken_by: BTreeMap<String, BTreeMap<String, u64>>,
    /// rule -> (violations, examples).
    violations: BTreeMap<String, (u64, Vec<String>)>,
    /// Per program: its reason counters, then its event counters, as last read.
    counters: HashMap<&'static str, Vec<u64>>,
    /// env -> seed -> reason of the valid seed.
    seeds: BTreeMap<String, BTreeMap<String, String>>,
    runs: u64,
    /// Runs per program on the current node (for the audit).
    counted: HashMap<&'static str, u64>,
    /// Lengths of frames the kernel refused to run, and why.
    refused: BTreeMap<usize, String>,
    /// Time in BPF_PROG_TEST_RUN, and reading counters.
    in_test_run: std::time::Duration,
    in_counters: std::time::Duration,
}

impl Book {
    fn read(f: &Fixture, p: Program) -> Vec<u64> {
        Reason::ALL
            .iter()
            .map(|r| f.count(p, *r))
            .chain(Event::ALL.iter().map(|e| f.event(p, *e)))
            .collect()
    }

    /// Every counter together counted each run on this node once.
    fn audit(&mut self, f: &Fixture, node: &str) {
        for prog in [FROM_POD, FROM_NETDEV, FROM_HOST] {
            let all: u64 = Self::read(f, program(prog))[..Reason::ALL.len()]
                .iter()
                .sum();
            let runs = self.counted.get(prog).copied().unwrap_or(0);
            if all != runs {
                let e = self.violations.entry("counted once".into()).or_default();
                e.0 += 1;
                e.1.push(format!("{node} {prog}: {runs} runs, {all} counted"));
            }
        }
        self.counted.clear();
    }

    fn violation(&mut self, rule: &str, env: &Env, case: &Case, ran: &Ran, detail: &str) {
        let by = self.broken_by.entry(rule.to_string()).or_default();
        // One example per seed (up to 6 per rule) and mutation kind: the first frame of
        // each that broke it.
        let first_of_seed = !by
            .keys()
            .any(|k| k.starts_with(&format!("{} [{}]", case.prog, case.seed)));
        *by.entry(format!("{} [{}] {}", case.prog, case.seed, case.kind))
            .or_default() += 1;
        let e = self.violations.entry(rule.to_string()).or_default();
        e.0 += 1;
        if first_of_seed && e.1.len() < 6 {
            e.1.push(format!(
                "{} {} [{}] {}: {detail}\n      frame {}\n      -> {} {:?} {}",
                env.name(),
                case.prog,
                case.seed,
                case.kind,
                hex(&case.frame),
                verdict_name(ran.verdict),
                ran.reason.map(Reason::name),
                hex(&ran.out),
            ));
        }
    }

    /// Runs `case` on `f` and holds the result to every rule. Returns what it did (`None`
    /// if the kernel refused to run the frame).
    fn run(&mut self, f: &mut Fixture, env: &Env, case: &Case) -> Option<Ran> {
        let p = program(case.prog);
        let before = self
            .counters
            .remove(case.prog)
            .unwrap_or_else(|| Self::read(f, p));
        self.runs += 1;
        let key = (case.prog, case.kind.clone());
        let t0 = Instant::now();
        let res = f.try_run(case.prog, &case.frame);
        self.in_test_run += t0.elapsed();
        let (verdict, out) = match res {
            Ok(r) => r,
            Err(e) => {
                self.counters.insert(case.prog, before);
                let ran = Ran {
                    verdict: u32::MAX,
                    out: Vec::new(),
                    reason: None,
                };
                // BPF_PROG_TEST_RUN refuses some frames outright (summed up at the
                // end).
                // It checks the fixed header of the frame's EtherType (IPv4, IPv6) is
                // there; refusing anything else is a failure to run the frame.
                let len = case.frame.len();
                let short = match ethertype(&case.frame) {
                    None => true,
                    Some(0x0800) => len < 14 + 20,
                    Some(0x86dd) => len < 14 + 40,
                    Some(_) => false,
                };
                if !short {
                    self.violation("the kernel runs every frame", env, case, &ran, &e);
                }
                self.refused.entry(len).or_insert(e);
                *self
                    .dist
                    .entry(key)
                    .or_default()
                    .entry("refused".into())
                    .or_default() += 1;
                return None;
            }
        };
        // Only the counters of the verdict's class are read after each run (the audit at
        // the end of a node checks that all counters together counted every run once).
        let t0 = Instant::now();
        let n = Reason::ALL.len();
        let class = match verdict {
            TC_ACT_REDIRECT => Some(Verdict::Forwarded),
            TC_ACT_OK => Some(Verdict::Passed),
            TC_ACT_SHOT => Some(Verdict::Dropped),
            _ => None,
        };
        let mut after = before.clone();
        for (i, r) in Reason::ALL.iter().enumerate() {
            if class.is_none_or(|c| r.verdict() == c) {
                after[i] = f.count(p, *r);
            }
        }
        for (i, e) in Event::ALL.iter().enumerate() {
            if matches!(e, Event::ServiceFlow | Event::MasqueradeFlow) {
                after[n + i] = f.event(p, *e);
            }
        }
        *self.counted.entry(case.prog).or_default() += 1;
        self.in_counters += t0.elapsed();
        let bumped: Vec<(Reason, u64)> = Reason::ALL
            .iter()
            .zip(after[..n].iter().zip(&before[..n]))
            .filter(|(_, (a, b))| a != b)
            .map(|(r, (a, b))| (*r, a - b))
            .collect();
        let new_flow = after[n..] != before[n..]
            && (Event::ALL.iter().enumerate()).any(|(i, e)| {
                matches!(e, Event::ServiceFlow | Event::MasqueradeFlow)
                    && after[n + i] != before[n + i]
            });
        self.counters.insert(case.prog, after);
        let reason = match bumped.as_slice() {
            [(r, 1)] => Some(*r),
            _ => None,
        };
        let ran = Ran {
            verdict,
            out,
            reason,
        };
        let label = format!(
            "{}/{}",
            verdict_name(verdict),
            reason.map_or("?", Reason::name)
        );
        *self.dist.entry(key).or_default().entry(label).or_default() += 1;
        for (rule, detail) in judge(env, case, &ran, &bumped, new_flow) {
            self.violation(rule, env, case, &ran, &detail);
        }
        Some(ran)
    }
}

/// Whether `case` is a tunnel packet of the node's backend that the program took out of
/// its tunnel (it forwarded it, or handed it on, shorter by the tunnel's headers).
fn decapsulated(env: &Env, case: &Case, ran: &Ran) -> bool {
    let f = &case.frame;
    let stripped = f.len().checked_sub(env.tunnel.inner_ip() - 14);
    if case.prog != FROM_NETDEV
        || ran.verdict == TC_ACT_SHOT
        || !ip_valid(f, 14)
        || stripped != Some(ran.out.len())
    {
        return false;
    }
    let port = u16_at(f, 36);
    addr_at(f, 30) == Some(NODE_IP)
        && match env.tunnel {
            Tunnel::Vxlan => f[23] == IPPROTO_UDP && port == Some(VXLAN_PORT),
            Tunnel::Udp => f[23] == IPPROTO_UDP && port == Some(UDP_PORT),
            Tunnel::Ipip => f[23] == 4,
            Tunnel::None => false,
        }
}

/// The rules every run is held to: the names of those it broke, with details.
fn judge(
    env: &Env,
    case: &Case,
    ran: &Ran,
    bumped: &[(Reason, u64)],
    new_flow: bool,
) -> Vec<(&'static str, String)> {
    let mut rules = Vec::new();
    let input = &case.frame;
    let out = &ran.out;
    let v = ran.verdict;
    {
        let mut fail = |rule: &'static str, detail: String| rules.push((rule, detail));

        // Every packet is counted once, under a reason of its verdict.
        let Some(reason) = ran.reason else {
            fail("counted once", format!("counters moved: {bumped:?}"));
            return rules;
        };
        let class = match v {
            TC_ACT_REDIRECT => Verdict::Forwarded,
            TC_ACT_OK => Verdict::Passed,
            TC_ACT_SHOT => Verdict::Dropped,
            _ => {
                fail("a tc verdict", String::new());
                return rules;
            }
        };
        if reason.verdict() != class {
            fail("the reason matches the verdict", String::new());
        }

        // Not IPv4: the kernel's, unchanged. No valid IPv4 header: dropped as malformed.
        let eth_ipv4 = ethertype(input) == Some(packet::ETH_P_IP);
        if input.len() >= 14 && !eth_ipv4 {
            if (v, reason) != (TC_ACT_OK, Reason::NonIpv4) || out != input {
                fail("not IPv4: to the kernel unchanged", String::new());
            }
            return rules;
        }
        if !ip_valid(input, 14) {
            if (v, reason) != (TC_ACT_SHOT, Reason::Malformed) {
                fail("no valid IPv4 header: dropped as malformed", String::new());
            }
            return rules;
        }

        // What the packet was before the program (the inner packet, if it was
        // decapsulated) and after (the inner one, if encapsulated).
        let in_ip = if decap_tunnel(reason).is_some() || decapsulated(env, case, ran) {
            env.tunnel.inner_ip()
        } else {
            14
        };
        let out_ip = encap_tunnel(reason).map_or(14, Tunnel::inner_ip);
        let untouched = same_packet(input, in_ip, out, out_ip);
        let in_tcp_flags = l4_span(input, in_ip)
            .filter(|(proto, _, _)| *proto == IPPROTO_TCP)
            .map(|(_, start, _)| input[start + 13]);

        if case.expect.not_redirect && v == TC_ACT_REDIRECT {
            fail(
                "malformed, foreign or nested: never redirected",
                String::new(),
            );
        }
        if case.expect.unchanged && (v != TC_ACT_OK || out != input) {
            fail("not ours: to the kernel unchanged", String::new());
        }
        if let Some(rule) = case.expect.untranslated
            && v != TC_ACT_SHOT
            && !matches!(reason, Reason::FragNeeded | Reason::ServiceReject)
            && !untouched
        {
            fail(rule, String::new());
        }
        // Only a SYN (no ACK, RST or FIN) starts a TCP flow.
        if new_flow
            && let Some(fl) = in_tcp_flags
            && fl & 0x17 != SYN
        {
            fail("only a SYN starts a TCP flow", format!("flags {fl:#04x}"));
        }

        match v {
            // Handed to the kernel: unchanged, unless it was translated or decapsulated on
            // the way (and then a valid IPv4 packet).
            TC_ACT_OK if out != input => {
                let may_change = matches!(
                    reason,
                    Reason::TtlExceeded | Reason::UnknownDestination | Reason::ServiceToHost
                );
                // (A header checksum that was wrong stays wrong; see below.)
                let csum_kept = ip_csum_ok(out, 14) || !ip_csum_ok(input, in_ip);
                if !may_change || !ip_valid(out, 14) || !csum_kept {
                    fail("to the kernel: unchanged unless translated", String::new());
                }
            }
            TC_ACT_REDIRECT => rules.extend(judge_redirect(
                env,
                case,
                ran,
                reason,
                (in_ip, out_ip),
                untouched,
            )),
            _ => {}
        }
    }
    rules
}

/// The rules for a redirected frame.
fn judge_redirect(
    env: &Env,
    case: &Case,
    ran: &Ran,
    reason: Reason,
    (in_ip, out_ip): (usize, usize),
    untouched: bool,
) -> Vec<(&'static str, String)> {
    let input = &case.frame;
    let out = &ran.out;
    let mut rules: Vec<(&str, String)> = Vec::new();
    let mut fail = |rule: &'static str, detail: String| rules.push((rule, detail));

    // Whatever is redirected is a valid IPv4 packet, with a correct header checksum where
    // the sender's was correct: the programs update checksums incrementally, so a wrong one
    // stays wrong and the receiving stack drops the packet, as it would have without them
    // (Cilium does not verify it either). An outer header the programs build is always
    // right. And a TTL left.
    let in_ok = ip_csum_ok(input, in_ip);
    if !ip_valid(out, 14) || (!ip_csum_ok(out, 14) && (out_ip != 14 || in_ok)) {
        fail(
            "redirected: valid IPv4, correct header checksum",
            String::new(),
        );
    }
    if out_ip != 14 {
        if !ip_valid(out, out_ip) || (in_ok && !ip_csum_ok(out, out_ip)) {
            fail(
                "redirected: valid IPv4, correct header checksum",
                "inner".into(),
            );
        }
        if addr_at(out, 26) != Some(NODE_IP) || addr_at(out, 30) != Some(PEER_IP) {
            fail("encapsulated: from this node to the peer", String::new());
        }
    }
    if out.get(out_ip + 8).is_some_and(|t| *t == 0) {
        fail("redirected: a TTL left", String::new());
    }
    let in_src = addr_at(input, in_ip + 12).unwrap_or(Ipv4Addr::UNSPECIFIED);
    let out_src = addr_at(out, out_ip + 12).unwrap_or(Ipv4Addr::UNSPECIFIED);
    let out_dst = addr_at(out, out_ip + 16).unwrap_or(Ipv4Addr::UNSPECIFIED);
    let smac: &[u8] = input.get(6..12).unwrap_or(&[]);

    if matches!(reason, Reason::FragNeeded | Reason::ServiceReject) {
        // An answer back to the sender: an ICMP destination unreachable to its source,
        // to its MAC, checksums right.
        let ok = ip_valid(out, 14)
            && out[23] == IPPROTO_ICMP
            && out.get(14 + ihl_at(out, 14)) == Some(&3)
            && l4_ok(out, 14) == Some(true)
            && out_dst == in_src
            && out[..6] == input[6..12]
            && out[6..12] == input[..6];
        if !ok {
            fail(
                "an answer: ICMP unreachable to the sender, checksums right",
                String::new(),
            );
        }
    } else {
        // A correct transport checksum stays correct.
        if l4_ok(input, in_ip) == Some(true) && l4_ok(out, out_ip) == Some(false) {
            fail(
                "redirected: a correct L4 checksum stays correct",
                String::new(),
            );
        }
        match case.prog {
            FROM_POD => {
                // Only a pod's own packets, with its own MAC, go anywhere; they leave
                // from it, or as translated (the service, the node).
                let own = pod_of(in_src).is_some_and(|n| *smac == pod_mac(n));
                let allowed = [in_src, VIP, GATEWAY, NODE_IP];
                if !own || !allowed.contains(&out_src) {
                    fail(
                        "from a pod: only its own address and MAC",
                        format!("{in_src} -> {out_src}"),
                    );
                }
            }
            FROM_NETDEV if in_ip == 14 => {
                // A plain frame from the underlay: with a cluster source only from a
                // directly routed peer's pod, from that peer's MAC (host-gw); the
                // node forwards nothing untranslated that is not for a pod here.
                // On a tunnelling node a peer's pod may still send plain to the node's own
                // address (its pods' traffic to a node, unmasqueraded), from the next hop
                // towards that peer (the router here).
                let to_node = addr_at(input, in_ip + 16) == Some(NODE_IP);
                if in_cluster(in_src)
                    && !(env.tunnel == Tunnel::None
                        && in_peer_subnet(in_src)
                        && *smac == ADJACENT_PEER_MAC)
                    && !(env.tunnel != Tunnel::None
                        && to_node
                        && in_peer_subnet(in_src)
                        && *smac == ROUTER_MAC)
                {
                    fail(
                        "from the underlay: a cluster source only from a direct peer's pod",
                        format!("{in_src} from {}", hex(smac)),
                    );
                }
                if !DELIVERED.contains(&reason) && untouched {
                    fail("from the underlay: no transit traffic", String::new());
                }
                if DELIVERED.contains(&reason) && !in_cluster(in_src) && untouched {
                    fail(
                        "from the underlay: an outside source reaches pods only translated",
                        in_src.to_string(),
                    );
                }
            }
            FROM_NETDEV => {
                // Out of a tunnel: from the peer, for its own pods.
                let outer_src = addr_at(input, 26).unwrap_or(Ipv4Addr::UNSPECIFIED);
                if outer_src != PEER_IP
                    || !in_peer_subnet(in_src)
                    || decap_tunnel(reason).is_some_and(|t| t != env.tunnel)
                {
                    fail(
                        "decapsulated: only the peer's tunnel, for its pods",
                        format!("{outer_src} {in_src}"),
                    );
                }
            }
            _ => {}
        }
    }
    if DELIVERED.contains(&reason) {
        // Into a pod here: addressed to it, with its MACs, from a legitimate source.
        let pod = pod_of(out_dst);
        let macs_ok = pod.is_some_and(|n| out[..6] == pod_mac(n) && out[6..12] == veth_mac(n));
        if !macs_ok {
            fail(
                "delivered: to a pod here, with its MACs",
                out_dst.to_string(),
            );
        }
        // (A plain frame with a cluster source is judged by its source above.)
        if case.prog == FROM_NETDEV
            && !(in_ip == 14 && in_cluster(in_src))
            && !(in_peer_subnet(out_src)
                || [VIP, GATEWAY].contains(&out_src)
                || !in_cluster(out_src))
        {
            fail("delivered: from a legitimate source", out_src.to_string());
        }
        // An ICMP error translated for a pod is about a packet that pod sent.
        let ihl = ihl_at(out, 14);
        if !untouched
            && out.get(23) == Some(&IPPROTO_ICMP)
            && matches!(out.get(14 + ihl), Some(3 | 11 | 12))
            && addr_at(out, 14 + ihl + 8 + 12).is_some_and(|q| q != out_dst)
        {
            fail(
                "delivered ICMP error: about the pod's own packet",
                String::new(),
            );
        }
    }
    rules
}

// ---------------------------------------------------------------------------------------
// The test.

/// The seeds a node sends or receives first: pods' packets of every kind, the node's own,
/// node port clients, a direct peer's pod, and every backend's tunnel packets.
fn first_seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let pod = |dst: Ipv4Addr, proto: u8, sport: u16, dport: u16| {
        PacketSpec {
            dst,
            proto,
            sport,
            dport,
            tcp_flags: SYN,
            payload: b"adversarial".to_vec(),
            ..pod_sends(POD_A, pod_mac(3), veth_mac(3))
        }
        .build()
    };
    for (proto, name) in [
        (IPPROTO_TCP, "tcp"),
        (IPPROTO_UDP, "udp"),
        (IPPROTO_ICMP, "icmp"),
    ] {
        seeds.push(Seed::plain(
            FROM_POD,
            &format!("pod->local pod {name}"),
            pod(POD_B, proto, 40100, 8080),
        ));
        seeds.push(Seed::plain(
            FROM_POD,
            &format!("pod->remote pod {name}"),
            pod(REMOTE_POD, proto, 40200, 8080),
        ));
        seeds.push(Seed::plain(
            FROM_POD,
            &format!("pod->outside {name}"),
            pod(OUTSIDE, proto, 40300, 443),
        ));
    }
    for (proto, name) in [(IPPROTO_TCP, "tcp"), (IPPROTO_UDP, "udp")] {
        for sport in 40000..40006 {
            seeds.push(Seed::plain(
                FROM_POD,
                &format!("pod->service {name}"),
                pod(VIP, proto, sport, 80),
            ));
        }
        for sport in 50000..50004 {
            let f = macs(
                udp_or_tcp(proto, OUTSIDE, NODE_IP, sport, NODE_PORT).build(),
                UNDERLAY_MAC,
                ROUTER_MAC,
            );
            seeds.push(Seed::plain(FROM_NETDEV, &format!("nodeport {name}"), f));
        }
        let host = |dst, sport, dport| {
            macs(
                udp_or_tcp(proto, GATEWAY, dst, sport, dport).build(),
                HOST_DST_MAC,
                HOST_SRC_MAC,
            )
        };
        seeds.push(Seed::plain(
            FROM_HOST,
            &format!("host->pod {name}"),
            host(POD_B, 45000, 8080),
        ));
        seeds.push(Seed::plain(
            FROM_HOST,
            &format!("host->remote pod {name}"),
            host(REMOTE_POD, 45001, 8080),
        ));
        seeds.push(Seed::plain(
            FROM_HOST,
            &format!("host->service {name}"),
            host(VIP, 45002, 80),
        ));
        let peer_pod = macs(
            udp_or_tcp(proto, REMOTE_POD, POD_A, 41000, 8080).build(),
            UNDERLAY_MAC,
            ADJACENT_PEER_MAC,
        );
        seeds.push(Seed::plain(
            FROM_NETDEV,
            &format!("underlay direct peer pod->pod {name}"),
            peer_pod,
        ));
        for k in Tunnel::ENCAPS {
            let inner = PacketSpec {
                ttl: 63,
                ..udp_or_tcp(proto, REMOTE_POD, POD_A, 41001, 8080)
            }
            .build();
            seeds.push(Seed::tunnelled(
                &format!("{} tunnel peer pod->pod {name}", k.name()),
                Tun::from_peer(k),
                inner,
            ));
        }
    }
    seeds
}

/// The seeds that answer what the first ones started: backends' replies (plain, and
/// through the tunnel), masquerade replies, ICMP errors about the flows.
fn answer_seeds(env: &Env, sent: &[(Seed, Ran)]) -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut errors = 0;
    for (seed, ran) in sent {
        let Some(reason) = ran.reason else { continue };
        if ran.verdict != TC_ACT_REDIRECT
            || !(seed.name.contains("service")
                || seed.name.contains("nodeport")
                || seed.name.contains("outside"))
        {
            continue;
        }
        let ip = encap_tunnel(reason).map_or(14, Tunnel::inner_ip);
        let Some(dst) = addr_at(&ran.out, ip + 16) else {
            continue;
        };
        let proto = ran.out[ip + 9];
        let tag = format!(
            "{} {}",
            if seed.name.contains("nodeport") {
                "nodeport"
            } else if seed.prog == FROM_HOST {
                "host service"
            } else {
                "service"
            },
            if proto == IPPROTO_TCP { "tcp" } else { "udp" }
        );
        if reason == Reason::Masquerade || reason == Reason::Egress {
            let name = format!(
                "masquerade reply {}",
                seed.name.rsplit(' ').next().unwrap_or("")
            );
            if let Some(f) = answer(&ran.out, 14, UNDERLAY_MAC, ROUTER_MAC) {
                seeds.push(Seed::plain(FROM_NETDEV, &name, f));
            }
            if proto != IPPROTO_ICMP
                && let Some(e) = error_about(&ran.out, 14, ROUTER, 4)
            {
                seeds.push(Seed::plain(
                    FROM_NETDEV,
                    "icmp error about masqueraded flow",
                    e,
                ));
            }
        } else if dst == REMOTE_BACKEND {
            let ip_frame = ran.out[ip - 14..].to_vec();
            if let Some(f) = answer(&ip_frame, 14, UNDERLAY_MAC, ADJACENT_PEER_MAC) {
                seeds.push(Seed::plain(
                    FROM_NETDEV,
                    &format!("{tag} reply from remote backend, plain"),
                    f.clone(),
                ));
                if env.tunnel != Tunnel::None {
                    seeds.push(Seed::tunnelled(
                        &format!("{tag} reply from remote backend, tunnel"),
                        Tun::from_peer(env.tunnel),
                        f,
                    ));
                }
            }
            if errors < 2 {
                errors += 1;
                if let Some(e) = error_about(&ip_frame, 14, ROUTER, 4) {
                    seeds.push(Seed::plain(FROM_NETDEV, "icmp error about service flow", e));
                }
                if let Some(e) = error_about(&ip_frame, 14, REMOTE_BACKEND, 3) {
                    let e = macs(e, UNDERLAY_MAC, ADJACENT_PEER_MAC);
                    if env.tunnel != Tunnel::None {
                        seeds.push(Seed::tunnelled(
                            "icmp error from remote backend, tunnel",
                            Tun::from_peer(env.tunnel),
                            e.clone(),
                        ));
                    }
                    seeds.push(Seed::plain(
                        FROM_NETDEV,
                        "icmp error from remote backend, plain",
                        e,
                    ));
                }
            }
        } else if dst == POD_B
            && let Some(f) = answer(&ran.out, 14, veth_mac(4), pod_mac(4))
        {
            seeds.push(Seed::plain(
                FROM_POD,
                &format!("{tag} reply from local backend"),
                f,
            ));
        }
    }
    if !env.masq {
        // Nothing was masqueraded: a "reply" to a port masquerading would have used.
        let f = macs(
            PacketSpec {
                tcp_flags: SYN_ACK,
                ..udp_or_tcp(IPPROTO_TCP, OUTSIDE, NODE_IP, 443, PORT_MIN)
            }
            .build(),
            UNDERLAY_MAC,
            ROUTER_MAC,
        );
        seeds.push(Seed::plain(
            FROM_NETDEV,
            "reply to an unused masquerade port",
            f,
        ));
    }
    seeds
}

/// The reason the valid seed `name` must get on `env`: the paths the corpus is about are
/// taken.
fn seed_expectation(env: &Env, name: &str) -> Option<Reason> {
    let encap = match env.tunnel {
        Tunnel::None => Reason::Direct,
        Tunnel::Vxlan => Reason::EncapVxlan,
        Tunnel::Ipip => Reason::EncapIpip,
        Tunnel::Udp => Reason::EncapUdp,
    };
    if name.starts_with("pod->local pod") || name.starts_with("host->pod") {
        return Some(Reason::LocalDelivery);
    }
    if name.starts_with("pod->remote pod") || name.starts_with("host->remote pod") {
        return Some(encap);
    }
    if name.starts_with("pod->outside") {
        return Some(if env.masq {
            Reason::Masquerade
        } else {
            Reason::Egress
        });
    }
    if name.starts_with("underlay direct peer") {
        return Some(if env.tunnel == Tunnel::None {
            Reason::LocalDelivery
        } else {
            Reason::UnderlayForeignSource
        });
    }
    for k in Tunnel::ENCAPS {
        if name.starts_with(&format!("{} tunnel", k.name())) {
            return Some(if k == env.tunnel {
                decap_tunnel_reason(k)
            } else {
                Reason::ToHost
            });
        }
    }
    if name.starts_with("masquerade reply") {
        // Without masquerading the pod's packet left with its own address, and the
        // outside's answer to it is no business of the underlay's.
        return Some(if env.masq {
            Reason::Unmasquerade
        } else {
            Reason::UnderlayForeignSource
        });
    }
    if name == "reply to an unused masquerade port" {
        return Some(Reason::ToHost);
    }
    if name.contains("reply from remote backend, tunnel") && name.starts_with("service") {
        return Some(decap_tunnel_reason(env.tunnel));
    }
    if name.starts_with("service") && name.contains("reply from local backend") {
        return Some(Reason::LocalDelivery);
    }
    if name == "icmp error about masqueraded flow" && env.masq {
        return Some(Reason::Unmasquerade);
    }
    None
}

fn decap_tunnel_reason(k: Tunnel) -> Reason {
    match k {
        Tunnel::Vxlan => Reason::DecapVxlan,
        Tunnel::Ipip => Reason::DecapIpip,
        Tunnel::Udp => Reason::DecapUdp,
        Tunnel::None => Reason::LocalDelivery,
    }
}

#[test]
fn adversarial_frames_get_defined_verdicts_and_never_reach_a_pod_they_should_not() {
    let start = Instant::now();
    let mut book = Book::default();
    let mut backends_used = (0, 0);
    for tunnel in [Tunnel::None, Tunnel::Vxlan, Tunnel::Ipip, Tunnel::Udp] {
        for masq in [false, true] {
            // Loading (verifying) takes longest: one node runs the corpus without the
            // service, then again with it.
            let mut f = fixture(&Env {
                tunnel,
                masq,
                services: false,
            });
            for services in [false, true] {
                let env = Env {
                    tunnel,
                    masq,
                    services,
                };
                if services {
                    apply_services(&mut f);
                }
                book.counters.clear();
                let mut cases = Vec::new();
                // Seeds of one name (flows on other ports) are mutated once.
                let mut derived = std::collections::BTreeSet::new();
                let mut run_seeds = |book: &mut Book, f: &mut Fixture, seeds: Vec<Seed>| {
                    let mut ran = Vec::new();
                    for seed in seeds {
                        let case = Case {
                            prog: seed.prog,
                            seed: seed.name.clone(),
                            kind: "valid".into(),
                            frame: seed.frame.clone(),
                            expect: ANY,
                        };
                        let r = book.run(f, &env, &case).expect("a valid frame runs");
                        let got = r.reason.map_or("?", Reason::name).to_string();
                        if let Some(want) = seed_expectation(&env, &seed.name)
                            && r.reason != Some(want)
                        {
                            book.violation(
                                "a valid seed takes its path",
                                &env,
                                &case,
                                &r,
                                &format!("want {}", want.name()),
                            );
                        }
                        book.seeds
                            .entry(env.name())
                            .or_default()
                            .insert(seed.name.clone(), got);
                        if derived.insert(seed.name.clone()) {
                            derive(&seed, &mut cases);
                        }
                        ran.push((seed, r));
                    }
                    ran
                };
                let sent = run_seeds(&mut book, &mut f, first_seeds());
                for (seed, r) in &sent {
                    if seed.name.starts_with("pod->service") && r.verdict == TC_ACT_REDIRECT {
                        let ip = r.reason.and_then(encap_tunnel).map_or(14, Tunnel::inner_ip);
                        match addr_at(&r.out, ip + 16) {
                            Some(POD_B) => backends_used.0 += 1,
                            Some(REMOTE_BACKEND) => backends_used.1 += 1,
                            _ => {}
                        }
                    }
                }
                let answers = answer_seeds(&env, &sent);
                run_seeds(&mut book, &mut f, answers);
                for case in &cases {
                    book.run(&mut f, &env, case);
                }
            }
            book.audit(
                &f,
                &format!("{}{}", tunnel.name(), if masq { "+masq" } else { "" }),
            );
        }
    }
    let elapsed = start.elapsed();

    // The verdict distribution.
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<12} {:<28} {:>6}  verdict/reason=runs",
        "program", "mutation", "runs"
    );
    for ((prog, kind), verdicts) in &book.dist {
        let total: u64 = verdicts.values().sum();
        let cells: Vec<String> = verdicts.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(
            table,
            "{prog:<12} {kind:<28} {total:>6}  {}",
            cells.join(" ")
        );
    }
    println!("{table}");
    for (env, seeds) in &book.seeds {
        let cells: Vec<String> = seeds.iter().map(|(s, r)| format!("{s}: {r}")).collect();
        println!("valid seeds on {env}: {}", cells.join(", "));
    }
    println!(
        "{} runs in {elapsed:.1?} ({:.1?} in test runs, {:.1?} reading counters)",
        book.runs, book.in_test_run, book.in_counters
    );
    println!(
        "the kernel refused frames of {:?} bytes ({:?})",
        book.refused.keys().collect::<Vec<_>>(),
        book.refused.values().next()
    );

    assert!(
        backends_used.0 > 0 && backends_used.1 > 0,
        "the service seeds reach both backends: {backends_used:?}"
    );
    let mut report = String::new();
    for (rule, (n, examples)) in &book.violations {
        let _ = writeln!(report, "RULE BROKEN ({n} runs): {rule}");
        for (what, n) in book.broken_by.get(rule).into_iter().flatten() {
            let _ = writeln!(report, "  {n:>5} {what}");
        }
        for e in examples {
            let _ = writeln!(report, "    {e}");
        }
    }
    assert!(report.is_empty(), "rules broken:\n{report}");
}
