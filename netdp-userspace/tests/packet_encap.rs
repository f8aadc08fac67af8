//! Packet tests (BPF_PROG_TEST_RUN) of the backends: the exact bytes `from_pod` puts on
//! the wire for vxlan, ipip and udp (outer headers, checksums, VNI, ports, inner MACs),
//! what `from_netdev` accepts and strips, and ICMP "fragmentation needed" for packets
//! too big for the tunnel. Routes are planned by the agent's own code.
//! (Over 500 lines: each backend's expected outer bytes are written out field by field,
//! independently of the code under test; the shared setup is in `common`.)
mod common;

use std::net::Ipv4Addr;

use common::{
    Fixture, NODE_IP, OUR_VTEP, PEER_IP, PEER_VTEP, ROUTER, outer_from_peer, outer_to_peer,
    pod_mac, pod_sends, underlay, veth_mac,
};
use netdp::{
    config::Backend,
    dataplane::route::{entry_for, mode_for},
    lease::LeaseAttrs,
};
use netdp_common::{
    counters::{Program, Reason},
    node::{NodeConfig, decap},
    program_names::{FROM_NETDEV, FROM_POD},
    route::mode,
};
use netdp_testbed::packet::{
    self, Ipv4View, Outer, PacketSpec, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

/// A local pod and its host-side veth.
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
const POD_MAC: [u8; 6] = pod_mac(3);
const HOST_VETH_MAC: [u8; 6] = veth_mac(3);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 5);

fn vxlan() -> Backend {
    Backend::Vxlan {
        vni: 1,
        port: 8472,
        direct_routing: false,
    }
}

/// A node running `backend`: one local pod, one peer (192.168.20.13, subnet
/// 10.1.2.0/24) behind the router, routed the way the agent plans it.
fn fixture(backend: Backend) -> Fixture {
    let (decap, port, vni) = match backend {
        Backend::Vxlan { vni, port, .. } => (decap::VXLAN, port, vni),
        Backend::Ipip { .. } => (decap::IPIP, 0, 0),
        Backend::Udp { port } => (decap::UDP, port, 0),
        Backend::HostGw => (decap::NONE, 0, 0),
    };
    let mut f = Fixture::load(&NodeConfig {
        decap,
        port,
        vni,
        vtep_mac: OUR_VTEP,
        ..common::node_config()
    });
    f.add_pod(POD_IP, common::TEST_RUN_IFINDEX, POD_MAC, HOST_VETH_MAC);
    f.add_default_sender();
    f.route_to_peer(&backend);
    f
}

/// A pod's packet to the remote pod, with host veth MACs as the pod sends it.
fn from_pod(proto: u8, sport: u16, payload: usize) -> Vec<u8> {
    PacketSpec {
        dst: REMOTE_POD,
        proto,
        sport,
        dport: 8080,
        payload: (0..payload).map(|i| i as u8).collect(),
        ..pod_sends(POD_IP, POD_MAC, HOST_VETH_MAC)
    }
    .build()
}

/// MurmurHash3's 32-bit finalizer (`fmix32` in Austin Appleby's MurmurHash3), written here
/// from its definition in 64-bit arithmetic reduced modulo 2^32, not taken from netdp.
fn fmix32(h: u32) -> u32 {
    const MOD: u64 = 1 << 32;
    let mut h = u64::from(h);
    h ^= h >> 16;
    h = h * 0x85eb_ca6b % MOD;
    h ^= h >> 13;
    h = h * 0xc2b2_ae35 % MOD;
    h ^= h >> 16;
    h as u32
}

/// The inner-flow hash as netdp defines it (netdp-common's `encap::flow_hash`): the words
/// source address, destination address, ports and protocol folded left to right as
/// `h = (h * k) ^ next` modulo 2^32, with multipliers 0x9e3779b1 (the 32-bit golden-ratio
/// prime), 0x85ebca6b and 0xc2b2ae35 (MurmurHash3's), then [`fmix32`].
fn reference_flow_hash(words: [u32; 4]) -> u32 {
    const K: [u64; 3] = [0x9e37_79b1, 0x85eb_ca6b, 0xc2b2_ae35];
    let folded = words[1..]
        .iter()
        .zip(K)
        .fold(u64::from(words[0]), |h, (w, k)| {
            (h * k % (1 << 32)) ^ u64::from(*w)
        });
    fmix32(folded as u32)
}

/// A hash scaled into the source ports 32768-60999 the way Linux's `udp_flow_src_port`
/// scales one into its range: `min + floor(hash * (max - min) / 2^32)`.
fn reference_source_port(hash: u32) -> u16 {
    let (min, max) = (32768u128, 61000u128);
    (min + u128::from(hash) * (max - min) / (1u128 << 32)) as u16
}

/// A 32-bit word as the programs load it from the frame: bpfel loads are little-endian,
/// so the bytes of a network-order field go in as they lie.
fn word(frame: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]])
}

/// The source port netdp must pick for a frame (Ethernet, IPv4 without options): the flow
/// hash of its addresses, its ports (the word after the IPv4 header, for TCP and UDP;
/// 0 for anything else) and its protocol.
fn expected_sport(frame: &[u8]) -> u16 {
    let proto = frame[23];
    let ports = if proto == packet::IPPROTO_TCP || proto == packet::IPPROTO_UDP {
        word(frame, 34)
    } else {
        0
    };
    reference_source_port(reference_flow_hash([
        word(frame, 26),
        word(frame, 30),
        ports,
        u32::from(proto),
    ]))
}

#[test]
fn the_reference_hash_matches_published_values() {
    // MurmurHash3_x86_32 of no bytes is fmix32(seed): the reference implementation's
    // values for seeds 0, 1 and 0xffffffff.
    assert_eq!(fmix32(0), 0);
    assert_eq!(fmix32(1), 0x514e_28b7);
    assert_eq!(fmix32(0xffff_ffff), 0x81f1_6f39);
    // The scaling spans the range and no more.
    assert_eq!(reference_source_port(0), 32768);
    assert_eq!(reference_source_port(u32::MAX), 60999);
    assert_eq!(reference_source_port(1 << 31), 32768 + (61000 - 32768) / 2);
}

#[test]
fn vxlan_encapsulation_is_byte_exact() {
    let mut f = fixture(vxlan());
    let mut sports = std::collections::HashSet::new();
    for (proto, sport, len) in [
        (packet::IPPROTO_UDP, 40000, 100),
        (packet::IPPROTO_TCP, 40001, 1000),
        (packet::IPPROTO_ICMP, 0, 56),
        (packet::IPPROTO_UDP, 40002, 1422), // exactly the pod MTU of 1450
    ] {
        let input = from_pod(proto, sport, len);
        let (verdict, out) = f.run(FROM_POD, &input);
        assert_eq!(verdict, TC_ACT_REDIRECT, "proto {proto}");
        let sport = expected_sport(&input);
        assert!((32768..61000).contains(&sport));
        sports.insert(sport);
        // The inner frame as the peer's VTEP receives it: routed once (TTL - 1).
        let inner = packet::routed(&input, PEER_VTEP, OUR_VTEP);
        let want = packet::vxlan(
            &outer_to_peer(),
            sport,
            8472,
            1,
            PEER_VTEP,
            OUR_VTEP,
            &inner,
        );
        assert_eq!(out, want, "proto {proto}: exact VXLAN bytes");
        assert!(packet::ipv4_checksum_ok(&out, 14), "outer IPv4 checksum");
        assert!(packet::ipv4_checksum_ok(&out, 64), "inner IPv4 checksum");
        assert!(packet::l4_checksum_ok(&out, 64), "inner L4 checksum");
    }
    assert_eq!(sports.len(), 4, "different flows spread over source ports");
    // One flow, one source port.
    let (_, a) = f.run(FROM_POD, &from_pod(packet::IPPROTO_UDP, 40000, 10));
    let (_, b) = f.run(FROM_POD, &from_pod(packet::IPPROTO_UDP, 40000, 900));
    assert_eq!(a[34..36], b[34..36]);
    assert_eq!(f.count(Program::FromPod, Reason::EncapVxlan), 6);
}

#[test]
fn ipip_encapsulation_is_byte_exact() {
    let mut f = fixture(Backend::Ipip {
        direct_routing: false,
    });
    for proto in [
        packet::IPPROTO_UDP,
        packet::IPPROTO_TCP,
        packet::IPPROTO_ICMP,
    ] {
        let input = from_pod(proto, 40000, 300);
        let (verdict, out) = f.run(FROM_POD, &input);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let inner = packet::routed(&input, [0; 6], [0; 6]);
        assert_eq!(out, packet::ipip(&outer_to_peer(), &inner), "proto {proto}");
        assert_eq!(out[23], 4, "IP protocol 4");
        assert!(packet::ipv4_checksum_ok(&out, 14));
        assert!(packet::ipv4_checksum_ok(&out, 34));
        assert!(packet::l4_checksum_ok(&out, 34));
    }
    assert_eq!(f.count(Program::FromPod, Reason::EncapIpip), 3);
}

#[test]
fn udp_encapsulation_is_byte_exact() {
    let mut f = fixture(Backend::Udp { port: 8285 });
    for proto in [packet::IPPROTO_UDP, packet::IPPROTO_TCP] {
        let input = from_pod(proto, 40000, 500);
        let (verdict, out) = f.run(FROM_POD, &input);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let inner = packet::routed(&input, [0; 6], [0; 6]);
        // Flannel's format: source and destination port both 8285, no header of its own.
        assert_eq!(out, packet::udp_encap(&outer_to_peer(), 8285, 8285, &inner));
        assert!(packet::ipv4_checksum_ok(&out, 14));
        assert!(packet::ipv4_checksum_ok(&out, 42));
        assert!(packet::l4_checksum_ok(&out, 42));
    }
    assert_eq!(f.count(Program::FromPod, Reason::EncapUdp), 2);
}

/// A frame as the peer would send it to us for our pod.
fn to_our_pod(proto: u8) -> Vec<u8> {
    PacketSpec {
        src_mac: PEER_VTEP,
        dst_mac: OUR_VTEP,
        src: REMOTE_POD,
        dst: POD_IP,
        proto,
        ttl: 63,
        ..Default::default()
    }
    .build()
}

/// Decapsulated and delivered: exactly the inner packet, routed into the pod.
fn assert_delivered(out: &[u8], inner: &[u8]) {
    assert_eq!(out, packet::routed(inner, POD_MAC, HOST_VETH_MAC));
    assert!(packet::ipv4_checksum_ok(out, 14));
    assert!(packet::l4_checksum_ok(out, 14));
}

#[test]
fn vxlan_decapsulation_accepts_only_peers_vni_and_our_vtep() {
    let mut f = fixture(vxlan());
    let inner = to_our_pod(packet::IPPROTO_TCP);
    // The peer's VXLAN packet (source port 41234) to `port`, VNI `vni`, inner frame to `vtep`.
    let tunnel = |outer: &Outer, port: u16, vni: u32, vtep: [u8; 6], inner: &[u8]| {
        packet::vxlan(outer, 41234, port, vni, vtep, PEER_VTEP, inner)
    };
    let good = tunnel(&outer_from_peer(), 8472, 1, OUR_VTEP, &inner);
    let (verdict, out) = f.run(FROM_NETDEV, &good);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_delivered(&out, &inner);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapVxlan), 1);

    let stranger = Outer {
        src: Ipv4Addr::new(192, 168, 20, 99),
        ..outer_from_peer()
    };
    let no_pod = PacketSpec {
        src: Ipv4Addr::new(10, 1, 2, 2),
        dst: Ipv4Addr::new(10, 1, 1, 99),
        ..Default::default()
    }
    .build();
    // The peer leases 10.1.2.0/24: an inner source outside it is spoofed.
    let spoofed = |src: Ipv4Addr| {
        PacketSpec {
            src,
            dst: POD_IP,
            ..Default::default()
        }
        .build()
    };
    let rejects = [
        (
            tunnel(&stranger, 8472, 1, OUR_VTEP, &inner),
            Reason::DecapUnknownPeer,
        ),
        (
            tunnel(&outer_from_peer(), 8472, 2, OUR_VTEP, &inner),
            Reason::DecapBadHeader,
        ),
        (
            tunnel(&outer_from_peer(), 8472, 1, PEER_VTEP, &inner),
            Reason::DecapWrongVtep,
        ),
        (
            tunnel(&outer_from_peer(), 8472, 1, OUR_VTEP, &no_pod),
            Reason::DecapNoEndpoint,
        ),
        (
            tunnel(
                &outer_from_peer(),
                8472,
                1,
                OUR_VTEP,
                &spoofed(Ipv4Addr::new(10, 1, 3, 9)),
            ),
            Reason::DecapSpoofedSource,
        ),
    ];
    for (frame, reason) in rejects {
        let (verdict, _) = f.run(FROM_NETDEV, &frame);
        assert_eq!(verdict, TC_ACT_SHOT, "{reason:?}");
        assert_eq!(f.count(Program::FromNetdev, reason), 1, "{reason:?}");
    }
    // The VXLAN header without the I flag is no valid VXLAN packet.
    let mut no_flag = good.clone();
    no_flag[42] = 0;
    assert_eq!(f.run(FROM_NETDEV, &no_flag).0, TC_ACT_SHOT);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapBadHeader), 2);

    // Another UDP port is not ours to decapsulate: the kernel gets it unchanged.
    let other = tunnel(&outer_from_peer(), 4789, 1, OUR_VTEP, &inner);
    assert_eq!(f.run(FROM_NETDEV, &other), (TC_ACT_OK, other));
    assert_eq!(f.count(Program::FromNetdev, Reason::ToHost), 1);
    // A fragmented tunnel packet cannot be decapsulated here.
    let mut frag = good.clone();
    frag[20] = 0x20; // MF
    frag[24] = 0;
    frag[25] = 0;
    let c = packet::checksum(&frag[14..34], 0);
    frag[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(f.run(FROM_NETDEV, &frag), (TC_ACT_OK, frag));
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapFragment), 1);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapVxlan), 1);
}

#[test]
fn ipip_and_udp_decapsulation_accept_only_peers() {
    let inner = to_our_pod(packet::IPPROTO_UDP);
    let stranger = Outer {
        src: Ipv4Addr::new(192, 168, 20, 99),
        ..outer_from_peer()
    };

    let mut f = fixture(Backend::Ipip {
        direct_routing: false,
    });
    let (verdict, out) = f.run(FROM_NETDEV, &packet::ipip(&outer_from_peer(), &inner));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_delivered(&out, &inner);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapIpip), 1);
    let (verdict, _) = f.run(FROM_NETDEV, &packet::ipip(&stranger, &inner));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapUnknownPeer), 1);
    // An ipip node leaves UDP tunnels alone.
    let udp = packet::udp_encap(&outer_from_peer(), 8285, 8285, &inner);
    assert_eq!(f.run(FROM_NETDEV, &udp), (TC_ACT_OK, udp));

    let mut f = fixture(Backend::Udp { port: 8285 });
    let good = packet::udp_encap(&outer_from_peer(), 8285, 8285, &inner);
    let (verdict, out) = f.run(FROM_NETDEV, &good);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_delivered(&out, &inner);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapUdp), 1);
    let (verdict, _) = f.run(
        FROM_NETDEV,
        &packet::udp_encap(&stranger, 8285, 8285, &inner),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapUnknownPeer), 1);
    // A payload that is not IPv4 is no udp-backend packet.
    let mut bad = good.clone();
    bad[42] = 0x60;
    assert_eq!(f.run(FROM_NETDEV, &bad).0, TC_ACT_SHOT);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapBadHeader), 1);
    // An IPIP packet means nothing to a udp node.
    let ipip = packet::ipip(&outer_from_peer(), &inner);
    assert_eq!(f.run(FROM_NETDEV, &ipip), (TC_ACT_OK, ipip));
}

/// The ICMP error the pod must get for `input` with a path MTU of `mtu`.
fn frag_needed(input: &[u8], mtu: u16) -> Vec<u8> {
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&input[14..14 + 20 + 64]);
    let c = packet::checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = 20 + icmp.len();
    let mut ip = vec![0x45, 0xc0, 0, total as u8, 0, 0, 0, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&NODE_IP.octets());
    ip.extend_from_slice(&POD_IP.octets());
    let c = packet::checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&POD_MAC);
    f.extend_from_slice(&HOST_VETH_MAC);
    f.extend_from_slice(&packet::ETH_P_IP.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

#[test]
fn too_big_for_the_tunnel_gets_icmp_fragmentation_needed() {
    for (backend, mtu) in [
        (vxlan(), 1450u16),
        (Backend::Udp { port: 8285 }, 1472),
        (
            Backend::Ipip {
                direct_routing: false,
            },
            1480,
        ),
    ] {
        let mut f = fixture(backend);
        let fits = from_pod(packet::IPPROTO_UDP, 40000, mtu as usize - 28);
        assert_eq!(f.run(FROM_POD, &fits).0, TC_ACT_REDIRECT);
        for proto in [packet::IPPROTO_UDP, packet::IPPROTO_TCP] {
            // One byte more than the path takes, DF set (PacketSpec always sets it).
            let hdr = if proto == packet::IPPROTO_UDP { 28 } else { 40 };
            let big = from_pod(proto, 40000, mtu as usize - hdr + 1);
            let (verdict, out) = f.run(FROM_POD, &big);
            assert_eq!(verdict, TC_ACT_REDIRECT, "back out of the pod's veth");
            assert_eq!(out, frag_needed(&big, mtu), "mtu {mtu} proto {proto}");
            assert!(packet::ipv4_checksum_ok(&out, 14));
            assert!(packet::l4_checksum_ok(&out, 14), "ICMP checksum");
        }
        assert_eq!(f.count(Program::FromPod, Reason::FragNeeded), 2);
        // Without DF netdp would have to fragment, which it does not: dropped, counted.
        let mut no_df = from_pod(packet::IPPROTO_UDP, 40000, mtu as usize);
        no_df[20] = 0;
        no_df[24] = 0;
        no_df[25] = 0;
        let c = packet::checksum(&no_df[14..34], 0);
        no_df[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(f.run(FROM_POD, &no_df).0, TC_ACT_SHOT);
        assert_eq!(f.count(Program::FromPod, Reason::TooBig), 1);
    }
}

/// A GSO super-packet is judged by the segments it will be cut into.
#[test]
fn gso_packets_are_checked_per_segment() {
    let mut f = fixture(vxlan());
    // 3000 bytes of TCP payload from a pod whose stack segments at gso_size (test runs
    // take linear packets only, so no bigger).
    let input = from_pod(packet::IPPROTO_TCP, 40000, 3000);
    // struct __sk_buff: wire_len at 160, gso_segs at 164, gso_size at 176; 192 bytes.
    let ctx = |gso_size: u32| {
        let mut c = vec![0u8; 192];
        c[160..164].copy_from_slice(&(input.len() as u32).to_ne_bytes());
        c[164..168].copy_from_slice(&3u32.to_ne_bytes());
        c[176..180].copy_from_slice(&gso_size.to_ne_bytes());
        c
    };
    // 20 + 20 + 1448 = 1488 > 1450: the pod's MTU is wrong for the tunnel.
    let (verdict, out) = f.run_ctx(FROM_POD, &input, Some(&ctx(1448)));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, frag_needed(&input, 1450));
    assert_eq!(f.count(Program::FromPod, Reason::FragNeeded), 1);
    // 20 + 20 + 1410 = 1450: every segment fits, so no ICMP error.
    let (_, out) = f.run_ctx(FROM_POD, &input, Some(&ctx(1410)));
    assert_ne!(Ipv4View::parse(&out).map(|v| v.proto), Some(1));
    assert_eq!(f.count(Program::FromPod, Reason::FragNeeded), 1);
}

#[test]
fn direct_routing_and_backend_mismatch_are_planned_by_the_agent() {
    let u = underlay();
    let adjacent = LeaseAttrs::new(
        Ipv4Addr::new(192, 168, 10, 12),
        "vxlan",
        Some(serde_json::json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:12"})),
    );
    let across = LeaseAttrs {
        public_ip: PEER_IP,
        ..adjacent.clone()
    };
    let dr = Backend::Vxlan {
        vni: 1,
        port: 8472,
        direct_routing: true,
    };
    assert_eq!(mode_for(&u, &dr, &adjacent), Ok(mode::DIRECT));
    assert_eq!(mode_for(&u, &dr, &across), Ok(mode::VXLAN));
    assert_eq!(mode_for(&u, &vxlan(), &adjacent), Ok(mode::VXLAN));
    let no_mac = LeaseAttrs::new(PEER_IP, "vxlan", None);
    assert!(
        mode_for(&u, &vxlan(), &no_mac)
            .unwrap_err()
            .contains("VtepMAC")
    );
    let ipip_dr = Backend::Ipip {
        direct_routing: true,
    };
    let ipip_peer = |ip| LeaseAttrs::new(ip, "ipip", None);
    assert_eq!(
        mode_for(&u, &ipip_dr, &ipip_peer(Ipv4Addr::new(192, 168, 10, 12))),
        Ok(mode::DIRECT)
    );
    assert_eq!(mode_for(&u, &ipip_dr, &ipip_peer(PEER_IP)), Ok(mode::IPIP));
    let hostgw = |ip| LeaseAttrs::new(ip, "host-gw", None);
    assert!(
        mode_for(&u, &Backend::HostGw, &hostgw(PEER_IP))
            .unwrap_err()
            .contains("host-gw needs L2 adjacency")
    );
    assert!(
        mode_for(&u, &vxlan(), &hostgw(PEER_IP))
            .unwrap_err()
            .contains("\"host-gw\" backend")
    );
    // Route MTUs: the underlay's minus each encapsulation.
    let route = |b: &Backend, a: &LeaseAttrs| {
        entry_for(&u, b, a, mode_for(&u, b, a).unwrap(), ROUTER, None)
    };
    assert_eq!(route(&vxlan(), &across).mtu, 1450);
    assert_eq!(route(&dr, &adjacent).mtu, 1500);
    assert_eq!(route(&ipip_dr, &ipip_peer(PEER_IP)).mtu, 1480);
    assert_eq!(
        route(
            &Backend::Udp { port: 8285 },
            &LeaseAttrs::new(PEER_IP, "udp", None)
        )
        .mtu,
        1472
    );
}
