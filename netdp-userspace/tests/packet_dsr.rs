//! Packet tests (BPF_PROG_TEST_RUN) of direct server return. On the node port's node (in
//! XDP, and in tc with XDP off): the client's packet leaves untranslated, the chosen
//! backend in an IP option, inside the tunnel to the backend's node, byte for byte. On
//! the backend's node: the option taken out, the packet translated to the pod, and the
//! pod's reply leaving with the node port's address, straight to the client. From the
//! attacker's side: the option is believed only inside a tunnel from a peer, and only for
//! a pod of that node. Expected frames are built here from RFC 791's layout, independently
//! of the programs.
mod common;

use std::net::Ipv4Addr;

use common::{
    ADJACENT_PEER_MAC, Fixture, Frontend, GATEWAY, NODE_IP, OUR_VTEP, PEER_IP, PEER_VTEP,
    ROUTER_MAC, TEST_RUN_IFINDEX, UNDERLAY_MAC, node_config, node_port, outer_from_peer,
    outer_to_peer, plan, pod_mac, remote, tunnel_node, tunnels, veth_mac, with_option,
};
use netdp::config::Backend;
use netdp_common::{
    counters::{Event, Program, Reason},
    program_names::{FROM_NETDEV, FROM_POD},
};
use netdp_testbed::packet::{
    self, IPPROTO_TCP, IPPROTO_UDP, Ipv4View, PacketSpec, TC_ACT_REDIRECT, TC_ACT_SHOT,
    XDP_REDIRECT,
};

const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const REMOTE_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 5);
/// A pod of the node under test (when it plays the backend's node).
const LOCAL_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);

/// A node port's node whose one service, frontend `fe`, has its backend behind the
/// tunnel to the peer.
fn frontend_node(backend: &Backend, fe: Frontend) -> Fixture {
    let mut f = Fixture::load(&tunnel_node(backend));
    f.lb.set_config(GATEWAY, 0).expect("writing LB_CONFIG");
    f.route_to_peer(backend);
    f.apply("np", plan(&[fe], 8080, &[remote(REMOTE_BACKEND)]));
    f
}

/// The node port, with direct server return.
fn dsr_port(proto: u8) -> Frontend {
    node_port(NODE_IP, 30080, proto).dsr()
}

fn from_client(proto: u8, sport: u16, tcp_flags: u8) -> PacketSpec {
    PacketSpec {
        src_mac: ROUTER_MAC,
        dst_mac: UNDERLAY_MAC,
        src: OUTSIDE,
        dst: NODE_IP,
        proto,
        sport,
        dport: 30080,
        tcp_flags,
        payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ..Default::default()
    }
}

/// `inner` in `backend`'s tunnel from this node to the peer (a VXLAN source port is the
/// flow's hash: taken from `out`, checked to be in Linux's range).
fn tunnelled(backend: &Backend, inner: &[u8], out: &[u8]) -> Vec<u8> {
    let outer = outer_to_peer();
    match backend {
        Backend::Vxlan { .. } => {
            let sport = u16::from_be_bytes([out[34], out[35]]);
            assert!(sport >= 32768, "VXLAN source port {sport}");
            packet::vxlan(&outer, sport, 8472, 1, PEER_VTEP, OUR_VTEP, inner)
        }
        Backend::Ipip { .. } => packet::ipip(&outer, inner),
        _ => packet::udp_encap(&outer, 8285, 8285, inner),
    }
}

/// What the frontend sends for the client's `spec`: the packet one hop on, not translated,
/// the backend in the option.
fn dispatched(spec: &PacketSpec) -> Vec<u8> {
    let hopped = PacketSpec {
        src_mac: UNDERLAY_MAC,
        dst_mac: ADJACENT_PEER_MAC,
        ttl: spec.ttl - 1,
        ..spec.clone()
    };
    with_option(&hopped.build(), REMOTE_BACKEND, 8080)
}

#[test]
fn xdp_sends_a_dsr_flow_untranslated_with_its_backend_in_an_option() {
    for backend in tunnels() {
        let mut f = frontend_node(&backend, dsr_port(IPPROTO_TCP));
        let syn = from_client(IPPROTO_TCP, 50000, 0x02);
        let (verdict, out) = f.run_xdp(TEST_RUN_IFINDEX, &syn.build());
        assert_eq!(
            verdict, XDP_REDIRECT,
            "{backend:?}: to the route's interface"
        );
        assert_eq!(
            out,
            tunnelled(&backend, &dispatched(&syn), &out),
            "{backend:?}"
        );
        assert_eq!(f.event(Program::Xdp, Event::ServiceDsr), 1, "{backend:?}");
        assert_eq!(f.event(Program::Xdp, Event::ServiceSnat), 0, "{backend:?}");

        // The replies never come back here: the client's ACK completes the flow without a
        // SYN-ACK seen, and goes the same way.
        let ack = PacketSpec {
            seq: 1001,
            ..from_client(IPPROTO_TCP, 50000, 0x10)
        };
        let (verdict, out) = f.run_xdp(TEST_RUN_IFINDEX, &ack.build());
        assert_eq!(verdict, XDP_REDIRECT, "{backend:?}");
        assert_eq!(
            out,
            tunnelled(&backend, &dispatched(&ack), &out),
            "{backend:?}"
        );
        assert_eq!(f.count(Program::Xdp, Reason::ServiceNotSyn), 0);
        let flows = f.conntrack.list();
        assert!(
            flows.iter().any(|e| e.state_name() == "established"),
            "{backend:?}: the ACK moved the flow on: {flows:?}"
        );
        assert_eq!(f.event(Program::Xdp, Event::ServiceFlow), 1, "{backend:?}");
    }
}

#[test]
fn tc_sends_a_dsr_flow_the_same_way_with_xdp_off() {
    for backend in tunnels() {
        let mut f = frontend_node(&backend, dsr_port(IPPROTO_UDP));
        let query = from_client(IPPROTO_UDP, 5353, 0);
        let (verdict, out) = f.run(FROM_NETDEV, &query.build());
        assert_eq!(verdict, TC_ACT_REDIRECT, "{backend:?}");
        assert_eq!(
            out,
            tunnelled(&backend, &dispatched(&query), &out),
            "{backend:?}"
        );
        assert_eq!(f.event(Program::FromNetdev, Event::ServiceDsr), 1);
        // The next datagram of the flow carries the option too.
        let (_, again) = f.run(FROM_NETDEV, &query.build());
        assert_eq!(again, tunnelled(&backend, &dispatched(&query), &again));
        assert_eq!(f.event(Program::FromNetdev, Event::ServiceFlow), 1);
    }
}

#[test]
fn a_node_port_without_dsr_or_a_host_gw_backend_is_source_nated_as_before() {
    let backend = tunnels()[0].clone();
    let mut f = frontend_node(&backend, node_port(NODE_IP, 30080, IPPROTO_TCP));
    let (_, out) = f.run_xdp(
        TEST_RUN_IFINDEX,
        &from_client(IPPROTO_TCP, 50001, 2).build(),
    );
    // The inner frame behind the outer Ethernet, IP, UDP and VXLAN headers.
    let inner = Ipv4View::parse_at(&out, 50).expect("inner IPv4");
    assert_eq!((inner.src, inner.dst), (GATEWAY, REMOTE_BACKEND));
    assert_eq!(f.event(Program::Xdp, Event::ServiceSnat), 1);

    // DSR asked for, but the backend's node is routed to directly (host-gw): no tunnel
    // to carry the option, so source NAT.
    let mut f = Fixture::load(&node_config());
    f.lb.set_config(GATEWAY, 0).expect("writing LB_CONFIG");
    f.set_routes(&[(common::PEER_SUBNET, common::direct_route())]);
    f.apply(
        "np",
        plan(
            &[node_port(NODE_IP, 30080, IPPROTO_TCP).dsr()],
            8080,
            &[remote(REMOTE_BACKEND)],
        ),
    );
    let (_, out) = f.run(FROM_NETDEV, &from_client(IPPROTO_TCP, 50002, 2).build());
    let v = Ipv4View::parse(&out).expect("IPv4");
    assert_eq!((v.src, v.dst), (GATEWAY, REMOTE_BACKEND));
    assert_eq!(f.event(Program::FromNetdev, Event::ServiceDsr), 0);
}

/// The backend's node: a pod of its own, its peer (the node port's node) across the
/// router.
fn backend_node(backend: &Backend) -> Fixture {
    let mut f = Fixture::load(&tunnel_node(backend));
    f.add_pod(LOCAL_BACKEND, TEST_RUN_IFINDEX, pod_mac(3), veth_mac(3));
    f.route_to_peer(backend);
    f
}

/// The client's packet as the node port's node (the peer) sends it here: to the peer's
/// node port, the backend `to:8080` in the option, in `backend`'s tunnel.
fn from_frontend(backend: &Backend, spec: &PacketSpec, to: Ipv4Addr) -> Vec<u8> {
    let inner = with_option(&spec.build(), to, 8080);
    let outer = outer_from_peer();
    match backend {
        Backend::Vxlan { .. } => packet::vxlan(&outer, 41234, 8472, 1, OUR_VTEP, PEER_VTEP, &inner),
        Backend::Ipip { .. } => packet::ipip(&outer, &inner),
        _ => packet::udp_encap(&outer, 8285, 8285, &inner),
    }
}

fn client_to_peer(sport: u16, tcp_flags: u8) -> PacketSpec {
    PacketSpec {
        src_mac: PEER_VTEP,
        dst_mac: OUR_VTEP,
        src: OUTSIDE,
        dst: PEER_IP,
        proto: IPPROTO_TCP,
        sport,
        dport: 30080,
        tcp_flags,
        ttl: 63,
        ..Default::default()
    }
}

#[test]
fn the_backends_node_translates_to_its_pod_and_answers_the_client_from_the_node_port() {
    for backend in tunnels() {
        let mut f = backend_node(&backend);
        let syn = client_to_peer(50000, 0x02);
        let (verdict, out) = f.run(FROM_NETDEV, &from_frontend(&backend, &syn, LOCAL_BACKEND));
        assert_eq!(verdict, TC_ACT_REDIRECT, "{backend:?}");
        // The option gone, the client's address kept, the destination the pod's.
        let delivered = PacketSpec {
            dst: LOCAL_BACKEND,
            dport: 8080,
            ..syn.clone()
        };
        assert_eq!(
            out,
            packet::routed(&delivered.build(), pod_mac(3), veth_mac(3)),
            "{backend:?}"
        );
        assert_eq!(f.event(Program::FromNetdev, Event::DsrFlow), 1);

        // The pod's SYN-ACK: from the node port's address, to the client, out of the
        // interface the flow came in on, never back to the peer.
        let syn_ack = PacketSpec {
            src_mac: pod_mac(3),
            dst_mac: veth_mac(3),
            src: LOCAL_BACKEND,
            dst: OUTSIDE,
            proto: IPPROTO_TCP,
            sport: 8080,
            dport: 50000,
            tcp_flags: 0x12,
            ..Default::default()
        };
        let (verdict, out) = f.run(FROM_POD, &syn_ack.build());
        assert_eq!(verdict, TC_ACT_REDIRECT, "{backend:?}");
        let expected = PacketSpec {
            src: PEER_IP,
            sport: 30080,
            ttl: syn_ack.ttl - 1,
            ..syn_ack.clone()
        };
        assert_eq!(out, expected.build(), "{backend:?}");
        assert_eq!(f.count(Program::FromPod, Reason::ServiceReply), 1);

        // The client's ACK completes the flow here.
        let ack = PacketSpec {
            seq: 1001,
            ..client_to_peer(50000, 0x10)
        };
        let (verdict, out) = f.run(FROM_NETDEV, &from_frontend(&backend, &ack, LOCAL_BACKEND));
        assert_eq!(verdict, TC_ACT_REDIRECT, "{backend:?}");
        let v = Ipv4View::parse(&out).expect("IPv4");
        assert_eq!((v.src, v.dst), (OUTSIDE, LOCAL_BACKEND));
        assert!(packet::ipv4_checksum_ok(&out, 14) && packet::l4_checksum_ok(&out, 14));
        assert_eq!(f.count(Program::FromNetdev, Reason::ServiceNotSyn), 0);
    }
}

#[test]
fn the_option_is_believed_only_in_a_peers_tunnel_and_only_for_a_pod_here() {
    let backend = tunnels()[0].clone();
    let mut f = backend_node(&backend);
    // A peer naming an address that is no pod here.
    let syn = client_to_peer(50010, 0x02);
    let stray = from_frontend(&backend, &syn, Ipv4Addr::new(10, 1, 1, 99));
    assert_eq!(f.run(FROM_NETDEV, &stray).0, TC_ACT_SHOT);
    assert_eq!(
        f.count(Program::FromNetdev, Reason::ServiceDsrNoEndpoint),
        1
    );

    // An outside host sending the option itself, straight to the pod: a packet from
    // outside to a pod like any other (no routed network: dropped), its option ignored.
    let forged = with_option(
        &PacketSpec {
            src_mac: ROUTER_MAC,
            dst_mac: UNDERLAY_MAC,
            dst: LOCAL_BACKEND,
            dport: 8080,
            ..client_to_peer(50011, 0x02)
        }
        .build(),
        LOCAL_BACKEND,
        8080,
    );
    assert_eq!(f.run(FROM_NETDEV, &forged).0, TC_ACT_SHOT);
    assert_eq!(
        f.count(Program::FromNetdev, Reason::UnderlayForeignSource),
        1
    );

    // A stranger's tunnel packet with the option: dropped before anything is read.
    let outer = packet::Outer {
        src: Ipv4Addr::new(192, 168, 20, 99),
        ..outer_from_peer()
    };
    let inner = with_option(&syn.build(), LOCAL_BACKEND, 8080);
    let stranger = packet::vxlan(&outer, 41234, 8472, 1, OUR_VTEP, PEER_VTEP, &inner);
    assert_eq!(f.run(FROM_NETDEV, &stranger).0, TC_ACT_SHOT);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapUnknownPeer), 1);

    // A peer's tunnel packet from an outside source without the option: as before, a
    // source outside the peer's subnet.
    let plain = packet::vxlan(
        &outer_from_peer(),
        41234,
        8472,
        1,
        OUR_VTEP,
        PEER_VTEP,
        &PacketSpec {
            dst: LOCAL_BACKEND,
            dport: 8080,
            ..syn.clone()
        }
        .build(),
    );
    assert_eq!(f.run(FROM_NETDEV, &plain).0, TC_ACT_SHOT);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapSpoofedSource), 1);
    assert_eq!(f.event(Program::FromNetdev, Event::DsrFlow), 0);
    assert!(f.conntrack.list().is_empty(), "no flow opened");
}

#[test]
fn truncated_or_malformed_dsr_packets_never_open_a_flow() {
    let backend = tunnels()[0].clone();
    let mut f = backend_node(&backend);
    let full = from_frontend(&backend, &client_to_peer(50020, 0x02), LOCAL_BACKEND);
    // Cut anywhere: dropped or left to the kernel, never delivered.
    for len in 14..full.len() {
        // The kernel refuses to run a frame too short for an skb at all.
        if let Ok((verdict, _)) = f.try_run(FROM_NETDEV, &full[..len]) {
            assert_ne!(
                verdict,
                TC_ACT_REDIRECT,
                "{len} of {} bytes delivered",
                full.len()
            );
        }
    }
    // The option with another length byte, or another type: not the option, so a packet
    // from outside the peer's subnet.
    // The inner IP header: behind the outer Ethernet, IP, UDP, VXLAN and inner Ethernet.
    let inner_ip = 14 + 20 + 8 + 8 + 14;
    for (at, value) in [(inner_ip + 21, 12u8), (inner_ip + 20, 0x94)] {
        let mut bad = full.clone();
        bad[at] = value;
        assert_eq!(
            f.run(FROM_NETDEV, &bad).0,
            TC_ACT_SHOT,
            "byte {at} = {value:#x}"
        );
    }
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapSpoofedSource), 2);
    assert_eq!(f.event(Program::FromNetdev, Event::DsrFlow), 0);
    assert!(f.conntrack.list().is_empty(), "no flow opened");
}

#[test]
fn a_pods_packet_carrying_the_option_is_not_redirected_by_it() {
    let backend = tunnels()[0].clone();
    let mut f = backend_node(&backend);
    // A pod of the peer (a source the peer's tunnel may carry) sends to port 9999 of our
    // pod with an option naming port 8080: delivered as sent, to 9999, option and all.
    let spec = PacketSpec {
        src: REMOTE_BACKEND,
        dst: LOCAL_BACKEND,
        dport: 9999,
        ..client_to_peer(50030, 0x02)
    };
    let inner = with_option(&spec.build(), LOCAL_BACKEND, 8080);
    let tunnel = packet::vxlan(
        &outer_from_peer(),
        41234,
        8472,
        1,
        OUR_VTEP,
        PEER_VTEP,
        &inner,
    );
    let (verdict, out) = f.run(FROM_NETDEV, &tunnel);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, packet::routed(&inner, pod_mac(3), veth_mac(3)));
    assert_eq!(f.event(Program::FromNetdev, Event::DsrFlow), 0);
    assert!(f.conntrack.list().is_empty(), "no flow opened");
}
