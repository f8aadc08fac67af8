//! Packet tests (BPF_PROG_TEST_RUN) of traffic leaving the cluster: masquerading to the
//! node's address with collision-free ports, replies translated back into the pod, and
//! plain egress without `--ip-masq`.
mod common;

use std::net::Ipv4Addr;

use common::{Fixture, NODE_IP, ROUTER_MAC, UNDERLAY_MAC, pod_mac, pod_sends, veth_mac};
use netdp_common::{
    conntrack::CtKey,
    counters::{Program, Reason},
    nat::{PORT_MAX, PORT_MIN},
    node::{NodeConfig, flags},
    program_names::{FROM_NETDEV, FROM_POD},
};
use netdp_testbed::packet::{self, Ipv4View, PacketSpec, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};

const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 4);

/// A node, masquerading to ports `ports` or not, with pods A and B.
fn fixture(masquerade: bool, ports: (u16, u16)) -> Fixture {
    let mut f = Fixture::load(&NodeConfig {
        flags: if masquerade { flags::MASQUERADE } else { 0 },
        nat_port_min: ports.0,
        nat_port_max: ports.1,
        ..common::node_config()
    });
    for (ip, last) in [(POD_A, 3u8), (POD_B, 4)] {
        f.add_pod(ip, common::TEST_RUN_IFINDEX, pod_mac(last), veth_mac(last));
    }
    f
}

fn masq() -> Fixture {
    fixture(true, (PORT_MIN, PORT_MAX))
}

fn out_of(pod: Ipv4Addr, proto: u8, sport: u16, dst: Ipv4Addr, dport: u16) -> PacketSpec {
    PacketSpec {
        dst,
        proto,
        sport,
        dport,
        payload: b"to the outside".to_vec(),
        ..pod_sends(pod, pod_mac(pod.octets()[3]), veth_mac(pod.octets()[3]))
    }
}

fn ports(frame: &[u8]) -> (u16, u16) {
    (
        u16::from_be_bytes([frame[34], frame[35]]),
        u16::from_be_bytes([frame[36], frame[37]]),
    )
}

/// What the pod sent, as the outside sees it: node address, new source port, routed.
fn translated(sent: &[u8], out: &[u8]) -> u16 {
    let v = Ipv4View::parse(out).unwrap();
    assert_eq!(v.src, NODE_IP, "source is the node");
    assert_eq!(v.dst, Ipv4View::parse(sent).unwrap().dst);
    assert_eq!(v.ttl, 63);
    assert!(packet::ipv4_checksum_ok(out, 14), "IPv4 checksum");
    assert!(packet::l4_checksum_ok(out, 14), "L4 checksum");
    let port = if v.proto == packet::IPPROTO_ICMP {
        u16::from_be_bytes([out[38], out[39]])
    } else {
        ports(out).0
    };
    assert!(
        (PORT_MIN..=PORT_MAX).contains(&port),
        "port {port} in range"
    );
    // Everything after the ports but the checksum is untouched.
    match v.proto {
        packet::IPPROTO_ICMP => assert_eq!(out[40..], sent[40..]),
        packet::IPPROTO_TCP => {
            assert_eq!(out[38..50], sent[38..50]);
            assert_eq!(out[52..], sent[52..]);
        }
        _ => assert_eq!(out[42..], sent[42..]),
    }
    port
}

#[test]
fn pod_flows_leave_with_the_node_address_and_distinct_ports() {
    let mut f = masq();
    for proto in [packet::IPPROTO_UDP, packet::IPPROTO_TCP] {
        let a = out_of(POD_A, proto, 5555, OUTSIDE, 9999).build();
        let (verdict, out_a) = f.run(FROM_POD, &a);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port_a = translated(&a, &out_a);
        // The same flow keeps its port.
        let (_, again) = f.run(FROM_POD, &a);
        assert_eq!(translated(&a, &again), port_a);
        // Another pod with the same source port to the same destination gets another.
        let b = out_of(POD_B, proto, 5555, OUTSIDE, 9999).build();
        let (_, out_b) = f.run(FROM_POD, &b);
        let port_b = translated(&b, &out_b);
        assert_ne!(port_a, port_b, "proto {proto}: two pods share a port");

        // Replies come back to the right pod, with its address and port.
        for (pod, port, mac) in [(POD_A, port_a, 3u8), (POD_B, port_b, 4)] {
            let reply = PacketSpec {
                src_mac: ROUTER_MAC,
                dst_mac: UNDERLAY_MAC,
                src: OUTSIDE,
                dst: NODE_IP,
                proto,
                sport: 9999,
                dport: port,
                ..Default::default()
            }
            .build();
            let (verdict, back) = f.run(FROM_NETDEV, &reply);
            assert_eq!(verdict, TC_ACT_REDIRECT, "reply to {pod}");
            let v = Ipv4View::parse(&back).unwrap();
            assert_eq!((v.src, v.dst, v.ttl), (OUTSIDE, pod, 63));
            assert_eq!(ports(&back), (9999, 5555));
            assert_eq!(v.dst_mac, [0x0a, 0, 0, 0, 0, mac]);
            assert!(packet::ipv4_checksum_ok(&back, 14));
            assert!(packet::l4_checksum_ok(&back, 14));
        }
    }
    assert_eq!(f.count(Program::FromPod, Reason::Masquerade), 6);
    assert_eq!(f.count(Program::FromNetdev, Reason::Unmasquerade), 4);
    let flows = f.conntrack.masqueraded();
    assert_eq!(flows.len(), 4, "{flows:?}");
    assert!(flows.iter().all(|t| *t.nat.ip() == NODE_IP));
    assert_eq!(f.conntrack.unmasqueraded().len(), 4);
}

#[test]
fn icmp_echo_is_masqueraded_by_identifier() {
    let mut f = masq();
    let ping = out_of(POD_A, packet::IPPROTO_ICMP, 0, OUTSIDE, 0).build();
    let (verdict, out) = f.run(FROM_POD, &ping);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let id = translated(&ping, &out);
    // The echo reply, as the outside host would answer (type 0, same id and payload).
    let mut reply = out.clone();
    reply[0..6].copy_from_slice(&UNDERLAY_MAC);
    reply[6..12].copy_from_slice(&ROUTER_MAC);
    reply[26..30].copy_from_slice(&OUTSIDE.octets());
    reply[30..34].copy_from_slice(&NODE_IP.octets());
    reply[24] = 0;
    reply[25] = 0;
    let c = packet::checksum(&reply[14..34], 0);
    reply[24..26].copy_from_slice(&c.to_be_bytes());
    reply[34] = 0; // echo reply
    reply[36] = 0;
    reply[37] = 0;
    let c = packet::checksum(&reply[34..], 0);
    reply[36..38].copy_from_slice(&c.to_be_bytes());
    let (verdict, back) = f.run(FROM_NETDEV, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let v = Ipv4View::parse(&back).unwrap();
    assert_eq!((v.src, v.dst), (OUTSIDE, POD_A));
    assert_eq!(back[38..40], ping[38..40], "the pod's own identifier");
    assert!(packet::l4_checksum_ok(&back, 14), "ICMP checksum");
    assert_ne!(id, 0);
}

#[test]
fn without_ip_masq_pod_traffic_leaves_unchanged_but_routed() {
    let mut f = fixture(false, (PORT_MIN, PORT_MAX));
    let sent = out_of(POD_A, packet::IPPROTO_UDP, 5555, OUTSIDE, 9999).build();
    let (verdict, out) = f.run(FROM_POD, &sent);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    // Only TTL and checksum changed; MACs are the kernel neighbour table's business.
    assert_eq!(out[14..], packet::routed(&sent, [0; 6], [0; 6])[14..]);
    assert_eq!(f.count(Program::FromPod, Reason::Egress), 1);
    assert!(f.conntrack.masqueraded().is_empty());
}

#[test]
fn cluster_addresses_and_the_node_itself_are_not_masqueraded() {
    let mut f = masq();
    for (dst, reason) in [
        (Ipv4Addr::new(10, 1, 77, 2), Reason::UnknownDestination),
        (NODE_IP, Reason::ToHost),
    ] {
        let p = out_of(POD_A, packet::IPPROTO_UDP, 5555, dst, 53).build();
        assert_eq!(f.run(FROM_POD, &p), (TC_ACT_OK, p));
        assert_eq!(f.count(Program::FromPod, reason), 1);
    }
    // Packets to the node that are no replies to masqueraded flows are the node's own.
    for dport in [22, PORT_MIN + 7, 40000] {
        let p = PacketSpec {
            src: OUTSIDE,
            dst: NODE_IP,
            sport: 9999,
            dport,
            ..Default::default()
        }
        .build();
        assert_eq!(f.run(FROM_NETDEV, &p), (TC_ACT_OK, p));
    }
    assert_eq!(f.count(Program::FromNetdev, Reason::ToHost), 3);
    assert!(f.conntrack.masqueraded().is_empty());
}

#[test]
fn untranslatable_packets_are_dropped_not_leaked() {
    let mut f = masq();
    // An ICMP error from a pod, a stray fragment, another protocol: nothing to translate them by.
    let mut unreachable = out_of(POD_A, packet::IPPROTO_ICMP, 0, OUTSIDE, 0).build();
    unreachable[34] = 3;
    let mut fragment = out_of(POD_A, packet::IPPROTO_UDP, 5555, OUTSIDE, 9999).build();
    fragment[21] = 0xb9; // a later fragment (offset 1480) whose first never came
    fragment[24..26].copy_from_slice(&[0, 0]);
    let c = packet::checksum(&fragment[14..34], 0);
    fragment[24..26].copy_from_slice(&c.to_be_bytes());
    let mut gre = out_of(POD_A, packet::IPPROTO_UDP, 5555, OUTSIDE, 9999).build();
    gre[23] = 47;
    for p in [unreachable, fragment, gre] {
        assert_eq!(f.run(FROM_POD, &p).0, TC_ACT_SHOT);
    }
    assert_eq!(f.count(Program::FromPod, Reason::NatUnsupported), 3);
    assert_eq!(f.count(Program::FromPod, Reason::Masquerade), 0);
}

#[test]
fn ports_are_unique_per_destination_and_reclaimed_from_forgotten_flows() {
    // A range of one port.
    let mut f = fixture(true, (PORT_MIN, PORT_MIN));
    let a = out_of(POD_A, packet::IPPROTO_UDP, 1000, OUTSIDE, 53).build();
    let (verdict, out) = f.run(FROM_POD, &a);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(ports(&out).0, PORT_MIN);
    // The only port is taken for OUTSIDE:53 by a live flow: no port for another flow.
    let b = out_of(POD_B, packet::IPPROTO_UDP, 1000, OUTSIDE, 53).build();
    assert_eq!(f.run(FROM_POD, &b).0, TC_ACT_SHOT);
    assert_eq!(f.count(Program::FromPod, Reason::NatNoPort), 1);
    // Another destination (port) is another collision domain: the same port is fine.
    let c = out_of(POD_B, packet::IPPROTO_UDP, 1000, OUTSIDE, 54).build();
    let (verdict, out) = f.run(FROM_POD, &c);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(ports(&out).0, PORT_MIN);

    // Once the first flow's conntrack entry is gone (evicted by LRU pressure), its port
    // can be taken over.
    let key = CtKey {
        saddr: POD_A.octets(),
        daddr: OUTSIDE.octets(),
        sport: 1000,
        dport: 53,
        proto: packet::IPPROTO_UDP,
        pad: [0; 3],
    };
    f.conntrack.remove(&key).expect("flow A is tracked");
    let (verdict, out) = f.run(FROM_POD, &b);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(ports(&out).0, PORT_MIN);
    let reply = PacketSpec {
        src: OUTSIDE,
        dst: NODE_IP,
        sport: 53,
        dport: PORT_MIN,
        ..Default::default()
    }
    .build();
    let (verdict, back) = f.run(FROM_NETDEV, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        Ipv4View::parse(&back).unwrap().dst,
        POD_B,
        "the port is B's now"
    );
}

/// An ICMP error from outside about a masqueraded packet (here: a router on the way
/// needs smaller packets) reaches the pod, quoting what the pod itself sent, so its TCP
/// path MTU discovery works through masquerading too.
#[test]
fn icmp_errors_about_masqueraded_flows_reach_the_pod() {
    let mut f = masq();
    let sent = out_of(POD_A, packet::IPPROTO_TCP, 5555, OUTSIDE, 9999).build();
    let (_, out) = f.run(FROM_POD, &sent);
    let port = translated(&sent, &out);
    let router = Ipv4Addr::new(192, 168, 10, 1);
    // Type 3 code 4, next-hop MTU 1400, quoting the translated packet's header and
    // first 8 bytes.
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
    icmp.extend_from_slice(&out[14..14 + 28]);
    let c = packet::checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut err = Vec::new();
    err.extend_from_slice(&UNDERLAY_MAC);
    err.extend_from_slice(&ROUTER_MAC);
    err.extend_from_slice(&packet::ETH_P_IP.to_be_bytes());
    let total = 20 + icmp.len();
    let mut ip = vec![0x45, 0, 0, total as u8, 0, 0, 0, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&router.octets());
    ip.extend_from_slice(&NODE_IP.octets());
    let c = packet::checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    err.extend_from_slice(&ip);
    err.extend_from_slice(&icmp);

    let (verdict, back) = f.run(FROM_NETDEV, &err);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let v = Ipv4View::parse(&back).unwrap();
    assert_eq!((v.src, v.dst), (router, POD_A));
    assert!(packet::ipv4_checksum_ok(&back, 14), "outer IPv4 checksum");
    assert!(packet::l4_checksum_ok(&back, 14), "ICMP checksum");
    // The quote is the pod's own packet again: its address and port, valid header.
    let quote = 14 + 20 + 8;
    assert_eq!(back[quote + 12..quote + 16], POD_A.octets());
    assert_eq!(back[quote + 16..quote + 20], OUTSIDE.octets());
    assert_eq!(back[quote + 20..quote + 24], sent[34..38], "pod's ports");
    assert!(
        packet::ipv4_checksum_ok(&back, quote),
        "quoted IPv4 checksum"
    );
    assert_eq!(back[40..42], [0x05, 0x78], "the MTU is passed on");
    assert_ne!(port, 5555);
    assert_eq!(f.count(Program::FromNetdev, Reason::Unmasquerade), 1);

    // An error quoting a packet the node sent for itself is the node's business.
    let mut own = err.clone();
    own[quote + 20..quote + 22].copy_from_slice(&40000u16.to_be_bytes());
    let c = {
        own[36] = 0;
        own[37] = 0;
        packet::checksum(&own[34..], 0)
    };
    own[36..38].copy_from_slice(&c.to_be_bytes());
    assert_eq!(f.run(FROM_NETDEV, &own), (TC_ACT_OK, own));
}
