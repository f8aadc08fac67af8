//! Packet tests (BPF_PROG_TEST_RUN) where services meet the backends and masquerading: a
//! service flow to a backend on another node is translated, then encapsulated; its reply
//! arrives in VXLAN and is translated back after decapsulation; a "fragmentation needed"
//! for a translated packet quotes what the client sent; masqueraded flows and service
//! flows share conntrack without taking each other's packets. Routes are planned, and
//! services programmed, by the agent's own code.
mod common;

use std::net::Ipv4Addr;

use common::{
    Fixture, Frontend, GATEWAY, NODE_IP, OUR_VTEP, PEER_IP, PEER_VTEP, ROUTER_MAC, UNDERLAY_MAC,
    cluster_ip, node_port, outer_from_peer, plan, pod_mac, pod_sends, remote, veth_mac,
};
use netdp::{config::Backend, dataplane::lb::ServicePlan};
use netdp_common::{
    counters::{Event, Program, Reason},
    nat::{PORT_MAX, PORT_MIN},
    node::{NodeConfig, decap, flags},
    program_names::{FROM_NETDEV, FROM_POD},
};
use netdp_testbed::packet::{
    self, IPPROTO_TCP, IPPROTO_UDP, Ipv4View, PacketSpec, TC_ACT_OK, TC_ACT_REDIRECT,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
const CLIENT_MAC: [u8; 6] = pod_mac(3);
const CLIENT_VETH_MAC: [u8; 6] = veth_mac(3);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 5);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// Inner frames start after the outer Ethernet, IPv4, UDP and VXLAN headers.
const INNER: usize = 14 + 20 + 8 + 8;

/// A vxlan node masquerading, with a client pod, and a peer across the router leasing
/// 10.1.2.0/24 (where the backend runs).
fn fixture() -> Fixture {
    let mut f = Fixture::load(&NodeConfig {
        decap: decap::VXLAN,
        flags: flags::MASQUERADE,
        vni: 1,
        port: 8472,
        nat_port_min: PORT_MIN,
        nat_port_max: PORT_MAX,
        vtep_mac: OUR_VTEP,
        ..common::node_config()
    });
    f.lb.set_config(GATEWAY, 0).expect("writing LB_CONFIG");
    f.add_pod(
        CLIENT,
        common::TEST_RUN_IFINDEX,
        CLIENT_MAC,
        CLIENT_VETH_MAC,
    );
    f.add_default_sender();
    f.route_to_peer(&Backend::Vxlan {
        vni: 1,
        port: 8472,
        direct_routing: false,
    });
    f
}

/// A service sending `frontends` to the remote backend's 8080.
fn to_backend(frontends: &[Frontend]) -> ServicePlan {
    plan(frontends, 8080, &[remote(BACKEND)])
}

fn from_client(proto: u8, dst: Ipv4Addr, dport: u16, payload: usize) -> PacketSpec {
    PacketSpec {
        dst,
        proto,
        sport: 40000,
        dport,
        payload: (0..payload).map(|i| i as u8).collect(),
        ..pod_sends(CLIENT, CLIENT_MAC, CLIENT_VETH_MAC)
    }
}

/// A UDP datagram from a host outside the cluster to the node, through the router.
fn to_node(src: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    PacketSpec {
        src_mac: ROUTER_MAC,
        dst_mac: UNDERLAY_MAC,
        src,
        dst: NODE_IP,
        proto: IPPROTO_UDP,
        sport,
        dport,
        ..Default::default()
    }
    .build()
}

/// `inner` (a frame) as the peer's node sends it to us in VXLAN.
fn from_peer(inner: &[u8]) -> Vec<u8> {
    packet::vxlan(
        &outer_from_peer(),
        50123,
        8472,
        1,
        OUR_VTEP,
        PEER_VTEP,
        inner,
    )
}

#[test]
fn a_service_flow_to_a_remote_backend_is_encapsulated_and_its_reply_translated_after_decap() {
    let mut f = fixture();
    f.apply("web", to_backend(&[cluster_ip(VIP, 80, IPPROTO_TCP)]));
    let syn = from_client(IPPROTO_TCP, VIP, 80, 100).build();
    let (verdict, out) = f.run(FROM_POD, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    // VXLAN to the backend's node, around the translated packet.
    let outer = Ipv4View::parse(&out).unwrap();
    assert_eq!(
        (outer.src, outer.dst, outer.proto),
        (NODE_IP, PEER_IP, IPPROTO_UDP)
    );
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 8472);
    let inner = &out[INNER..];
    let v = Ipv4View::parse(inner).unwrap();
    assert_eq!((v.src, v.dst, v.ttl), (CLIENT, BACKEND, 63));
    assert_eq!(packet::ports(inner), (40000, 8080));
    assert!(packet::ipv4_checksum_ok(inner, 14) && packet::l4_checksum_ok(inner, 14));
    assert_eq!(inner[34 + 20..], syn[34 + 20..], "payload untouched");
    assert_eq!(f.count(Program::FromPod, Reason::EncapVxlan), 1);
    assert_eq!(f.event(Program::FromPod, Event::ServiceFlow), 1);
    assert_eq!(f.count(Program::FromPod, Reason::Masquerade), 0);

    // The backend answers; its node encapsulates the reply to us.
    let reply = PacketSpec {
        src_mac: [0x0a, 0, 0, 0, 0, 0x05],
        dst_mac: [0x0e, 0, 0, 0, 0, 0x05],
        src: BACKEND,
        dst: CLIENT,
        proto: IPPROTO_TCP,
        sport: 8080,
        dport: 40000,
        tcp_flags: 0x12,
        ttl: 63,
        payload: b"HTTP/1.1 200 OK".to_vec(),
        ..Default::default()
    }
    .build();
    let (verdict, back) = f.run(FROM_NETDEV, &from_peer(&reply));
    assert_eq!(verdict, TC_ACT_REDIRECT, "delivered to the client");
    let v = Ipv4View::parse(&back).unwrap();
    assert_eq!((v.src, v.dst, v.ttl), (VIP, CLIENT, 62));
    assert_eq!(packet::ports(&back), (80, 40000));
    assert_eq!((v.dst_mac, v.src_mac), (CLIENT_MAC, CLIENT_VETH_MAC));
    assert!(packet::ipv4_checksum_ok(&back, 14) && packet::l4_checksum_ok(&back, 14));
    assert_eq!(back[34 + 20..], reply[34 + 20..]);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapVxlan), 1);
    let flows = f.conntrack.list();
    assert!(
        flows.iter().all(|fl| fl.state_name() == "syn_recv"),
        "answered, waiting for the client's ACK: {flows:?}"
    );
}

#[test]
fn frag_needed_for_a_translated_packet_quotes_what_the_client_sent() {
    let mut f = fixture();
    f.apply("web", to_backend(&[cluster_ip(VIP, 80, IPPROTO_TCP)]));
    // 1500 bytes from the pod, for a tunnel that carries 1450.
    let big = from_client(IPPROTO_TCP, VIP, 80, 1500 - 40).build();
    let (verdict, out) = f.run(FROM_POD, &big);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back to the pod");
    let v = Ipv4View::parse(&out).unwrap();
    assert_eq!(
        (v.src, v.dst, v.proto),
        (NODE_IP, CLIENT, packet::IPPROTO_ICMP)
    );
    assert_eq!((v.dst_mac, v.src_mac), (CLIENT_MAC, CLIENT_VETH_MAC));
    assert_eq!(out[34..36], [3, 4]);
    assert_eq!(u16::from_be_bytes([out[40], out[41]]), 1450);
    assert!(packet::ipv4_checksum_ok(&out, 14) && packet::l4_checksum_ok(&out, 14));
    // The quote is the client's own packet: to the service, from its own port, with its
    // header checksum right, so its socket finds it and lowers its path MTU.
    let q = 14 + 20 + 8;
    assert_eq!(out[q + 12..q + 16], CLIENT.octets());
    assert_eq!(out[q + 16..q + 20], VIP.octets());
    assert_eq!(out[q + 20..q + 24], big[34..38]);
    assert!(packet::ipv4_checksum_ok(&out, q), "quoted IPv4 checksum");
    assert_eq!(
        out[q + 36..q + 38],
        big[50..52],
        "quoted TCP checksum as sent"
    );
    assert_eq!(f.count(Program::FromPod, Reason::FragNeeded), 1);
}

#[test]
fn masqueraded_and_service_flows_share_conntrack_without_taking_each_others_packets() {
    let mut f = fixture();
    let frontends = [
        cluster_ip(VIP, 80, IPPROTO_UDP),
        node_port(NODE_IP, 30080, IPPROTO_UDP),
    ];
    f.apply("web", to_backend(&frontends));
    // A pod's flow to a service address (outside the cluster Network) is load balanced,
    // never masqueraded; its flow to the outside host is masqueraded.
    let to_vip = from_client(IPPROTO_UDP, VIP, 80, 20).build();
    let (_, out) = f.run(FROM_POD, &to_vip);
    assert_eq!(Ipv4View::parse(&out[INNER..]).unwrap().dst, BACKEND);
    let to_outside = from_client(IPPROTO_UDP, OUTSIDE, 53, 20).build();
    let (verdict, out) = f.run(FROM_POD, &to_outside);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(Ipv4View::parse(&out).unwrap().src, NODE_IP);
    let masq_port = packet::ports(&out).0;
    assert!((PORT_MIN..=PORT_MAX).contains(&masq_port));
    assert_eq!(f.count(Program::FromPod, Reason::Masquerade), 1);

    // The outside host, from the very address and port the pod talks to, reaches the node
    // port: source NAT to the gateway address (not the node's, which masquerading uses).
    let (verdict, out) = f.run(FROM_NETDEV, &to_node(OUTSIDE, 53, 30080));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let inner = Ipv4View::parse(&out[INNER..]).unwrap();
    assert_eq!((inner.src, inner.dst), (GATEWAY, BACKEND));
    assert_eq!(f.count(Program::FromNetdev, Reason::EncapVxlan), 1);

    // The outside host's answer to the pod still reaches the pod.
    let (verdict, back) = f.run(FROM_NETDEV, &to_node(OUTSIDE, 53, masq_port));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let v = Ipv4View::parse(&back).unwrap();
    assert_eq!((v.src, v.dst), (OUTSIDE, CLIENT));
    assert_eq!(packet::ports(&back), (53, 40000));
    assert_eq!(f.count(Program::FromNetdev, Reason::Unmasquerade), 1);
    // The masquerade port is nothing the node listens on for anyone else.
    let stranger = to_node(Ipv4Addr::new(203, 0, 113, 3), 53, masq_port);
    assert_eq!(f.run(FROM_NETDEV, &stranger), (TC_ACT_OK, stranger));

    // Three flows, two entries each, of both kinds.
    let flows = f.conntrack.list();
    assert_eq!(flows.len(), 6, "{flows:?}");
    assert_eq!(flows.iter().filter(|fl| fl.is_masquerade()).count(), 2);
    let masq = f.conntrack.masqueraded();
    assert_eq!(masq.len(), 1);
    assert_eq!((*masq[0].pod.ip(), *masq[0].nat.ip()), (CLIENT, NODE_IP));
    assert_eq!(f.event(Program::FromNetdev, Event::ServiceSnat), 1);
}
