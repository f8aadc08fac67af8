//! Packet tests (BPF_PROG_TEST_RUN) of pod forwarding: local delivery, direct routing to a
//! peer node, unknown destinations and bad frames. The programs run in the kernel on crafted
//! frames; the maps are real.
mod common;

use std::net::Ipv4Addr;

use common::{ADJACENT_PEER_MAC, Fixture, UNDERLAY_MAC, direct_route, pod_mac, veth_mac};
use netdp_common::{
    counters::{Program, Reason},
    program_names::{FROM_NETDEV, FROM_POD},
    route::{Route, mode},
};
use netdp_testbed::packet::{self, Ipv4View, PacketSpec, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};

const POD_MAC: [u8; 6] = pod_mac(2);
const HOST_VETH_MAC: [u8; 6] = veth_mac(2);

/// A node without settings (direct routes only) with pod 10.1.1.3 and three peer
/// subnets: 10.1.2.0/24 with its next hop's MAC known, 10.1.3.0/24 without, and
/// 10.1.4.0/24 unreachable.
fn fixture() -> Fixture {
    let mut f = Fixture::load(&common::cluster_only());
    f.add_pod(Ipv4Addr::new(10, 1, 1, 3), 42, POD_MAC, HOST_VETH_MAC);
    f.add_default_sender();
    let route = direct_route();
    f.set_routes(&[
        ("10.1.2.0/24", route),
        (
            "10.1.3.0/24",
            Route {
                flags: 0,
                dmac: [0; 6],
                nexthop: [192, 168, 10, 13],
                node_ip: [192, 168, 10, 13],
                ..route
            },
        ),
        (
            "10.1.4.0/24",
            Route {
                mode: mode::UNREACHABLE,
                nexthop: [192, 168, 20, 14],
                node_ip: [192, 168, 20, 14],
                ..route
            },
        ),
    ]);
    f
}

#[test]
fn remote_pod_is_routed_to_peer_with_macs_ttl_and_checksum() {
    let mut f = fixture();
    for proto in [
        packet::IPPROTO_UDP,
        packet::IPPROTO_TCP,
        packet::IPPROTO_ICMP,
    ] {
        let spec = PacketSpec {
            dst: Ipv4Addr::new(10, 1, 2, 5),
            ttl: 64,
            proto,
            ..Default::default()
        };
        let input = spec.build();
        let (verdict, out) = f.run(FROM_POD, &input);
        assert_eq!(verdict, TC_ACT_REDIRECT, "proto {proto}");
        let v = Ipv4View::parse(&out).unwrap();
        assert_eq!(v.dst_mac, ADJACENT_PEER_MAC);
        assert_eq!(v.src_mac, UNDERLAY_MAC);
        assert_eq!(v.ttl, 63);
        assert!(
            packet::ipv4_checksum_ok(&out, 14),
            "IP checksum after TTL decrement"
        );
        assert!(
            packet::l4_checksum_ok(&out, 14),
            "L4 checksum untouched and valid"
        );
        // Nothing but MACs, TTL and checksum changed.
        assert_eq!(out[14..22], input[14..22]);
        assert_eq!(out[23..24], input[23..24]);
        assert_eq!(out[26..], input[26..]);
    }
    assert_eq!(f.count(Program::FromPod, Reason::Direct), 3);
}

#[test]
fn local_pod_is_delivered_with_its_macs() {
    let mut f = fixture();
    let input = PacketSpec {
        dst: Ipv4Addr::new(10, 1, 1, 3),
        ttl: 2,
        ..Default::default()
    }
    .build();
    // From the underlay, the same packet comes from a pod of the adjacent peer.
    let from_peer = PacketSpec {
        src: Ipv4Addr::new(10, 1, 2, 7),
        src_mac: ADJACENT_PEER_MAC,
        dst: Ipv4Addr::new(10, 1, 1, 3),
        ttl: 2,
        ..Default::default()
    }
    .build();
    for (prog, input) in [(FROM_POD, &input), (FROM_NETDEV, &from_peer)] {
        let (verdict, out) = f.run(prog, input);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{prog}");
        let v = Ipv4View::parse(&out).unwrap();
        assert_eq!((v.dst_mac, v.src_mac, v.ttl), (POD_MAC, HOST_VETH_MAC, 1));
        assert!(packet::ipv4_checksum_ok(&out, 14));
    }
    assert_eq!(f.count(Program::FromPod, Reason::LocalDelivery), 1);
    assert_eq!(f.count(Program::FromNetdev, Reason::LocalDelivery), 1);
}

#[test]
fn unresolved_next_hop_goes_through_redirect_neigh() {
    let mut f = fixture();
    let input = PacketSpec {
        dst: Ipv4Addr::new(10, 1, 3, 9),
        ..Default::default()
    }
    .build();
    let (verdict, out) = f.run(FROM_POD, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(Ipv4View::parse(&out).unwrap().ttl, 63);
    assert!(packet::ipv4_checksum_ok(&out, 14));
    assert_eq!(f.count(Program::FromPod, Reason::DirectNeigh), 1);
}

#[test]
fn unknown_destination_and_unreachable_peer_pass_unchanged() {
    let mut f = fixture();
    for (dst, reason) in [
        (Ipv4Addr::new(8, 8, 8, 8), Reason::UnknownDestination),
        (Ipv4Addr::new(10, 1, 4, 2), Reason::PeerUnreachable),
    ] {
        let input = PacketSpec {
            dst,
            ..Default::default()
        }
        .build();
        let (verdict, out) = f.run(FROM_POD, &input);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, input, "passed packets are not modified");
        assert_eq!(f.count(Program::FromPod, reason), 1);
    }
    // The node's interface never routes transit traffic to remote subnets.
    let input = PacketSpec {
        src: Ipv4Addr::new(203, 0, 113, 9),
        dst: Ipv4Addr::new(10, 1, 2, 5),
        ..Default::default()
    }
    .build();
    let (verdict, out) = f.run(FROM_NETDEV, &input);
    assert_eq!((verdict, out), (TC_ACT_OK, input));
}

#[test]
fn expiring_ttl_is_left_to_the_kernel() {
    let mut f = fixture();
    let input = PacketSpec {
        dst: Ipv4Addr::new(10, 1, 2, 5),
        ttl: 1,
        ..Default::default()
    }
    .build();
    let (verdict, out) = f.run(FROM_POD, &input);
    assert_eq!((verdict, out), (TC_ACT_OK, input));
    assert_eq!(f.count(Program::FromPod, Reason::TtlExceeded), 1);
}

#[test]
fn non_ipv4_passes_and_truncated_frames_drop() {
    let mut f = fixture();
    // ARP request.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
    arp.extend_from_slice(&packet::ETH_P_ARP.to_be_bytes());
    arp.extend_from_slice(&[0u8; 28]);
    let (verdict, out) = f.run(FROM_POD, &arp);
    assert_eq!((verdict, out), (TC_ACT_OK, arp));
    assert_eq!(f.count(Program::FromPod, Reason::NonIpv4), 1);

    let full = PacketSpec {
        dst: Ipv4Addr::new(10, 1, 2, 5),
        ..Default::default()
    }
    .build();
    let mut dropped = 0;
    // Every truncation from a bare IPv4 header up to one byte short of the IP length.
    // (BPF_PROG_TEST_RUN itself refuses IPv4 frames shorter than an IP header.)
    for len in 34..full.len() {
        let (verdict, _) = f.run(FROM_POD, &full[..len]);
        assert_eq!(verdict, TC_ACT_SHOT, "frame truncated to {len} bytes");
        dropped += 1;
    }
    // Bad version, bad IHL, IP length shorter than the header.
    for (off, val) in [(14, 0x65u8), (14, 0x44), (17, 10)] {
        let mut bad = full.clone();
        bad[off] = val;
        if off == 17 {
            bad[16] = 0;
        }
        let (verdict, _) = f.run(FROM_POD, &bad);
        assert_eq!(verdict, TC_ACT_SHOT, "byte {off} = {val:#x}");
        dropped += 1;
    }
    assert_eq!(f.count(Program::FromPod, Reason::Malformed), dropped);
    // Ethernet padding after the IP packet is fine.
    let mut padded = full.clone();
    padded.extend_from_slice(&[0; 8]);
    assert_eq!(f.run(FROM_POD, &padded).0, TC_ACT_REDIRECT);
}
