//! Packet tests (BPF_PROG_TEST_RUN) of the service path: DNAT of new flows with correct IP
//! and L4 checksums, reply reverse translation, source NAT for node ports and hairpin,
//! rejection without endpoints, ICMP error translation, and packets that are no service's
//! business left alone. The programs run in the kernel; the maps are real and programmed by
//! the agent's own code.
//! (Over 500 lines: each test builds its expected bytes itself, independently of the code
//! under test, which takes room; the shared setup is in `common`.)
mod common;

use std::{collections::BTreeSet, net::Ipv4Addr};

use common::{
    ADJACENT_PEER_MAC, Fixture, GATEWAY, NODE_IP, UNDERLAY_MAC, cluster_ip, direct_route, local,
    node_port, plan, pod_mac, pod_sends, remote, veth_mac,
};
use netdp::dataplane::{lb::ServicePlan, maglev};
use netdp_common::{
    counters::{Event, Program, Reason},
    lb::{Backend as LbBackend, flow_hash},
    program_names::{FROM_NETDEV, FROM_POD},
};
use netdp_testbed::packet::{
    self, IPPROTO_TCP, IPPROTO_UDP, Ipv4View, PacketSpec, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 2);
const LOCAL_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
const REMOTE_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 5);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

const CLIENT_MAC: [u8; 6] = pod_mac(2);
const CLIENT_VETH_MAC: [u8; 6] = veth_mac(2);
const BACKEND_MAC: [u8; 6] = pod_mac(3);
const BACKEND_VETH_MAC: [u8; 6] = veth_mac(3);
/// The next hop to remote backends: the peer on the underlay leasing 10.1.2.0/24.
const PEER_MAC: [u8; 6] = ADJACENT_PEER_MAC;

/// A node without settings, with a client pod, a backend pod, the route to the peer that
/// runs the remote backend, and service source NAT to the gateway address.
fn fixture() -> Fixture {
    let mut f = Fixture::load(&common::cluster_only());
    f.lb.set_config(GATEWAY, 0).expect("writing LB_CONFIG");
    f.add_pod(
        CLIENT,
        common::TEST_RUN_IFINDEX,
        CLIENT_MAC,
        CLIENT_VETH_MAC,
    );
    f.add_pod(
        LOCAL_BACKEND,
        common::TEST_RUN_IFINDEX,
        BACKEND_MAC,
        BACKEND_VETH_MAC,
    );
    f.set_routes(&[("10.1.2.0/24", direct_route())]);
    f
}

/// A service on VIP:80 (`proto`) to port 8080 of `backends`.
fn vip_80(proto: u8, backends: &[LbBackend]) -> ServicePlan {
    plan(&[cluster_ip(VIP, 80, proto)], 8080, backends)
}

fn from_client(proto: u8, dst: Ipv4Addr, dport: u16, sport: u16) -> PacketSpec {
    PacketSpec {
        dst,
        proto,
        sport,
        dport,
        payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ..pod_sends(CLIENT, CLIENT_MAC, CLIENT_VETH_MAC)
    }
}

/// A TCP packet arriving from the underlay (an outside client, or a remote backend's reply).
fn from_underlay(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> PacketSpec {
    PacketSpec {
        src_mac: PEER_MAC,
        dst_mac: UNDERLAY_MAC,
        src,
        dst,
        proto: IPPROTO_TCP,
        sport,
        dport,
        ..Default::default()
    }
}

/// Asserts that `out` is `input` with only addresses, ports, TTL, MACs and checksums
/// changed, and returns the view of `out`.
fn assert_only_tuple_changed(input: &[u8], out: &[u8]) -> Ipv4View {
    assert_eq!(out.len(), input.len());
    assert!(packet::ipv4_checksum_ok(out, 14), "IP checksum");
    assert!(packet::l4_checksum_ok(out, 14), "L4 checksum");
    let v = Ipv4View::parse(out).unwrap();
    let proto = v.proto;
    // IP header bytes other than TTL, checksum and addresses.
    assert_eq!(out[14..22], input[14..22]);
    assert_eq!(out[23], input[23]);
    // Transport header after the ports and checksum, and the payload.
    let (csum_at, l4) = if proto == IPPROTO_TCP {
        (16, 34)
    } else {
        (6, 34)
    };
    assert_eq!(out[l4 + 4..l4 + csum_at], input[l4 + 4..l4 + csum_at]);
    assert_eq!(out[l4 + csum_at + 2..], input[l4 + csum_at + 2..]);
    v
}

#[test]
fn cluster_ip_dnat_rewrites_tcp_and_udp_with_valid_checksums() {
    let mut f = fixture();
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let name = format!("web-{proto}");
        f.apply(&name, vip_80(proto, &[local(LOCAL_BACKEND)]));
        let input = from_client(proto, VIP, 80, 40000).build();
        let (verdict, out) = f.run(FROM_POD, &input);
        assert_eq!(verdict, TC_ACT_REDIRECT, "proto {proto}");
        let v = assert_only_tuple_changed(&input, &out);
        assert_eq!((v.src, v.dst, v.ttl), (CLIENT, LOCAL_BACKEND, 63));
        assert_eq!(packet::ports(&out), (40000, 8080));
        assert_eq!((v.dst_mac, v.src_mac), (BACKEND_MAC, BACKEND_VETH_MAC));
    }
    assert_eq!(f.count(Program::FromPod, Reason::LocalDelivery), 2);
    // Both directions of both flows are tracked.
    assert_eq!(f.conntrack.list().len(), 4);

    // A backend on another node: translated, then routed to its node.
    f.apply(
        "remote",
        plan(
            &[cluster_ip(VIP, 81, IPPROTO_TCP)],
            9090,
            &[remote(REMOTE_BACKEND)],
        ),
    );
    let input = from_client(IPPROTO_TCP, VIP, 81, 40001).build();
    let (verdict, out) = f.run(FROM_POD, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let v = assert_only_tuple_changed(&input, &out);
    assert_eq!(
        (v.dst, v.dst_mac, v.src_mac),
        (REMOTE_BACKEND, PEER_MAC, UNDERLAY_MAC)
    );
    assert_eq!(packet::ports(&out), (40001, 9090));
    assert_eq!(f.count(Program::FromPod, Reason::Direct), 1);
}

#[test]
fn replies_are_translated_back_and_flows_keep_their_backend() {
    let mut f = fixture();
    let both = [local(LOCAL_BACKEND), remote(REMOTE_BACKEND)];
    f.apply("web", vip_80(IPPROTO_TCP, &both));
    let syn = from_client(IPPROTO_TCP, VIP, 80, 41000).build();
    let (_, out) = f.run(FROM_POD, &syn);
    let backend_ip = Ipv4View::parse(&out).unwrap().dst;
    // A retransmitted SYN goes to the same backend (random selection would scatter them
    // otherwise).
    for _ in 0..5 {
        let (_, out) = f.run(FROM_POD, &syn);
        assert_eq!(Ipv4View::parse(&out).unwrap().dst, backend_ip);
    }

    // The backend's SYN-ACK comes back as the service.
    let reply = PacketSpec {
        src_mac: BACKEND_MAC,
        dst_mac: BACKEND_VETH_MAC,
        src: backend_ip,
        dst: CLIENT,
        sport: 8080,
        dport: 41000,
        tcp_flags: 0x12,
        proto: IPPROTO_TCP,
        payload: b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
        ..Default::default()
    }
    .build();
    let (prog, reply) = if backend_ip == LOCAL_BACKEND {
        (FROM_POD, reply)
    } else {
        // From the peer running it, over the underlay.
        (FROM_NETDEV, packet::routed(&reply, UNDERLAY_MAC, PEER_MAC))
    };
    let (verdict, out) = f.run(prog, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let v = assert_only_tuple_changed(&reply, &out);
    assert_eq!((v.src, v.dst), (VIP, CLIENT));
    assert_eq!(packet::ports(&out), (80, 41000));
    assert_eq!((v.dst_mac, v.src_mac), (CLIENT_MAC, CLIENT_VETH_MAC));
    let flows = f.conntrack.list();
    assert!(
        flows.iter().all(|fl| fl.state_name() == "syn_recv"),
        "the reply answered the flow: {flows:?}"
    );
    // And so does every later packet of the flow, the first of which completes it.
    for _ in 0..20 {
        let ack = PacketSpec {
            tcp_flags: 0x10,
            ..from_client(IPPROTO_TCP, VIP, 80, 41000)
        }
        .build();
        let (_, out) = f.run(FROM_POD, &ack);
        assert_eq!(Ipv4View::parse(&out).unwrap().dst, backend_ip);
    }
    let flows = f.conntrack.list();
    assert!(
        flows.iter().all(|fl| fl.state_name() == "established"),
        "the client's ACK established the flow: {flows:?}"
    );

    // Many flows spread over both backends.
    let mut seen = std::collections::HashSet::new();
    for sport in 42000..42064 {
        let (_, out) = f.run(FROM_POD, &from_client(IPPROTO_TCP, VIP, 80, sport).build());
        seen.insert(Ipv4View::parse(&out).unwrap().dst);
    }
    assert_eq!(seen.len(), 2, "random selection used one backend only");
}

#[test]
fn packets_for_no_service_are_untouched() {
    let mut f = fixture();
    f.apply("web", vip_80(IPPROTO_TCP, &[local(LOCAL_BACKEND)]));
    for (proto, dst, dport) in [
        (IPPROTO_TCP, VIP, 81),                          // another port of the VIP
        (IPPROTO_UDP, VIP, 80),                          // another protocol
        (IPPROTO_TCP, Ipv4Addr::new(10, 96, 0, 11), 80), // another address
    ] {
        let input = from_client(proto, dst, dport, 40000).build();
        let (verdict, out) = f.run(FROM_POD, &input);
        assert_eq!(
            (verdict, &out),
            (TC_ACT_OK, &input),
            "{dst}:{dport}/{proto}"
        );
    }
    // ICMP echo to the VIP is not load balanced either, nor is a later fragment whose
    // first fragment never came (`packet_fragments.rs` has those that did).
    let ping = from_client(packet::IPPROTO_ICMP, VIP, 0, 0).build();
    assert_eq!(f.run(FROM_POD, &ping), (TC_ACT_OK, ping));
    let mut frag = from_client(IPPROTO_TCP, VIP, 80, 40000).build();
    frag[20..22].copy_from_slice(&[0x00, 0xb9]); // offset 1480
    frag[24..26].copy_from_slice(&[0, 0]);
    let c = packet::checksum(&frag[14..34], 0);
    frag[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(f.run(FROM_POD, &frag), (TC_ACT_OK, frag));
    assert_eq!(f.count(Program::FromPod, Reason::UnknownDestination), 5);
    assert!(f.conntrack.list().is_empty());
}

#[test]
fn service_without_endpoints_rejects_with_port_unreachable() {
    let mut f = fixture();
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        f.apply(&format!("empty-{proto}"), vip_80(proto, &[]));
        let input = from_client(proto, VIP, 80, 40000).build();
        let (verdict, out) = f.run(FROM_POD, &input);
        assert_eq!(verdict, TC_ACT_REDIRECT, "sent back, proto {proto}");
        let v = Ipv4View::parse(&out).unwrap();
        assert_eq!((v.dst_mac, v.src_mac), (CLIENT_MAC, CLIENT_VETH_MAC));
        assert_eq!((v.src, v.dst, v.proto), (VIP, CLIENT, packet::IPPROTO_ICMP));
        assert_eq!(out.len(), 14 + 20 + 8 + 28);
        assert_eq!(v.total_len, 20 + 8 + 28);
        assert!(packet::ipv4_checksum_ok(&out, 14));
        assert!(packet::l4_checksum_ok(&out, 14), "ICMP checksum");
        assert_eq!(
            out[34..36],
            [3, 3],
            "destination unreachable, port unreachable"
        );
        assert_eq!(
            out[42..70],
            input[14..42],
            "quotes the IP header and 8 bytes"
        );
    }
    assert_eq!(f.count(Program::FromPod, Reason::ServiceReject), 2);
    assert!(f.conntrack.list().is_empty());
}

#[test]
fn node_port_to_a_remote_backend_is_source_natted_and_replies_go_back_out() {
    let mut f = fixture();
    f.apply(
        "np",
        plan(
            &[node_port(NODE_IP, 30080, IPPROTO_TCP)],
            8080,
            &[remote(REMOTE_BACKEND)],
        ),
    );
    let input = from_underlay(OUTSIDE, NODE_IP, 50000, 30080).build();
    let (verdict, out) = f.run(FROM_NETDEV, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let v = assert_only_tuple_changed(&input, &out);
    assert_eq!((v.src, v.dst), (GATEWAY, REMOTE_BACKEND));
    assert_eq!(packet::ports(&out), (50000, 8080));
    assert_eq!(f.count(Program::FromNetdev, Reason::Direct), 1);

    let reply = PacketSpec {
        tcp_flags: 0x12,
        ..from_underlay(REMOTE_BACKEND, GATEWAY, 8080, 50000)
    }
    .build();
    let (verdict, out) = f.run(FROM_NETDEV, &reply);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "out to the client via the kernel's neighbours"
    );
    let v = assert_only_tuple_changed(&reply, &out);
    assert_eq!((v.src, v.dst), (NODE_IP, OUTSIDE));
    assert_eq!(packet::ports(&out), (30080, 50000));
    assert_eq!(f.count(Program::FromNetdev, Reason::ServiceReply), 1);

    // Another client on the same port to the same backend gets another source port.
    let input2 = from_underlay(Ipv4Addr::new(203, 0, 113, 3), NODE_IP, 50000, 30080).build();
    let (verdict, out) = f.run(FROM_NETDEV, &input2);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let v = assert_only_tuple_changed(&input2, &out);
    let (sport, _) = packet::ports(&out);
    assert_eq!(v.src, GATEWAY);
    assert!(
        sport >= 61000,
        "collision resolved with a port from the SNAT range: {sport}"
    );
}

#[test]
fn external_traffic_policy_local_keeps_the_client_or_drops() {
    let mut f = fixture();
    f.apply(
        "local",
        plan(
            &[
                node_port(NODE_IP, 30081, IPPROTO_TCP).local_only(),
                cluster_ip(VIP, 80, IPPROTO_TCP),
            ],
            8080,
            &[local(LOCAL_BACKEND), remote(REMOTE_BACKEND)],
        ),
    );
    for sport in 50000..50016 {
        let input = from_underlay(OUTSIDE, NODE_IP, sport, 30081).build();
        let (verdict, out) = f.run(FROM_NETDEV, &input);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let v = assert_only_tuple_changed(&input, &out);
        assert_eq!(
            (v.src, v.dst),
            (OUTSIDE, LOCAL_BACKEND),
            "client kept, local only"
        );
    }
    // Without a local endpoint the node drops, and says so.
    f.apply(
        "local",
        plan(
            &[node_port(NODE_IP, 30081, IPPROTO_TCP).local_only()],
            8080,
            &[remote(REMOTE_BACKEND)],
        ),
    );
    let input = from_underlay(OUTSIDE, NODE_IP, 51000, 30081).build();
    assert_eq!(f.run(FROM_NETDEV, &input).0, TC_ACT_SHOT);
    assert_eq!(
        f.count(Program::FromNetdev, Reason::ServiceNoLocalBackend),
        1
    );
}

#[test]
fn internal_traffic_policy_local_keeps_pods_on_local_backends_or_drops() {
    let mut f = fixture();
    // internalTrafficPolicy Local: the cluster IP frontend is local-only; the node port
    // (externalTrafficPolicy Cluster) is not, and pods reaching it get every backend.
    f.apply(
        "itp",
        plan(
            &[
                cluster_ip(VIP, 80, IPPROTO_TCP).local_only(),
                node_port(NODE_IP, 30082, IPPROTO_TCP),
            ],
            8080,
            &[local(LOCAL_BACKEND), remote(REMOTE_BACKEND)],
        ),
    );
    for sport in 40000..40016 {
        let input = from_client(IPPROTO_TCP, VIP, 80, sport).build();
        let (verdict, out) = f.run(FROM_POD, &input);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let v = assert_only_tuple_changed(&input, &out);
        assert_eq!(v.dst, LOCAL_BACKEND, "local only");
    }
    let mut seen = BTreeSet::new();
    for sport in 41000..41064 {
        let input = from_client(IPPROTO_TCP, NODE_IP, 30082, sport).build();
        let (_, out) = f.run(FROM_POD, &input);
        seen.insert(Ipv4View::parse(&out).expect("IPv4").dst);
    }
    assert_eq!(seen, BTreeSet::from([LOCAL_BACKEND, REMOTE_BACKEND]));
    // No local endpoint: pods' cluster IP traffic is dropped, and counted.
    f.apply(
        "itp",
        plan(
            &[cluster_ip(VIP, 80, IPPROTO_TCP).local_only()],
            8080,
            &[remote(REMOTE_BACKEND)],
        ),
    );
    let input = from_client(IPPROTO_TCP, VIP, 80, 42000).build();
    assert_eq!(f.run(FROM_POD, &input).0, TC_ACT_SHOT);
    assert_eq!(f.count(Program::FromPod, Reason::ServiceNoLocalBackend), 1);
}

#[test]
fn hairpin_is_source_natted_to_the_node() {
    let mut f = fixture();
    f.apply("self", vip_80(IPPROTO_TCP, &[local(CLIENT)]));
    let input = from_client(IPPROTO_TCP, VIP, 80, 40000).build();
    let (verdict, out) = f.run(FROM_POD, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let v = assert_only_tuple_changed(&input, &out);
    assert_eq!((v.src, v.dst), (GATEWAY, CLIENT));
    // The pod answers the node; it gets the answer as coming from the service.
    let reply = PacketSpec {
        dst: GATEWAY,
        proto: IPPROTO_TCP,
        sport: 8080,
        dport: packet::ports(&out).0,
        tcp_flags: 0x12,
        ..pod_sends(CLIENT, CLIENT_MAC, CLIENT_VETH_MAC)
    }
    .build();
    let (verdict, out) = f.run(FROM_POD, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let v = assert_only_tuple_changed(&reply, &out);
    assert_eq!((v.src, v.dst), (VIP, CLIENT));
    assert_eq!(packet::ports(&out), (80, 40000));
}

#[test]
fn maglev_picks_the_backend_its_table_says() {
    let mut f = fixture();
    let backends: Vec<Ipv4Addr> = (1..=5).map(|i| Ipv4Addr::new(10, 1, 2, 10 + i)).collect();
    let remotes: Vec<_> = backends.iter().map(|b| remote(*b)).collect();
    f.apply(
        "mg",
        ServicePlan {
            maglev: true,
            ..vip_80(IPPROTO_TCP, &remotes)
        },
    );
    let table = maglev::table(&backends, 16381);
    for sport in 30000..30100u16 {
        let input = from_client(IPPROTO_TCP, VIP, 80, sport).build();
        let (_, out) = f.run(FROM_POD, &input);
        let h = flow_hash(CLIENT.octets(), VIP.octets(), sport, 80, IPPROTO_TCP);
        let want = backends[table[(h % 16381) as usize] as usize];
        assert_eq!(Ipv4View::parse(&out).unwrap().dst, want, "sport {sport}");
    }
}

#[test]
fn icmp_errors_about_translated_flows_are_translated_back() {
    let mut f = fixture();
    f.apply("web", vip_80(IPPROTO_UDP, &[remote(REMOTE_BACKEND)]));
    let request = from_client(IPPROTO_UDP, VIP, 80, 40000).build();
    let (_, sent) = f.run(FROM_POD, &request);
    // A router on the way says the translated datagram was too big.
    let router = Ipv4Addr::new(192, 168, 10, 1);
    let err = packet::icmp_error(router, CLIENT, 3, 4, 1400, &sent);
    let (verdict, out) = f.run(FROM_NETDEV, &err);
    assert_eq!(verdict, TC_ACT_REDIRECT, "delivered to the client");
    assert!(packet::ipv4_checksum_ok(&out, 14));
    assert!(packet::l4_checksum_ok(&out, 14), "ICMP checksum");
    assert!(
        packet::ipv4_checksum_ok(&out, 42),
        "quoted IP header checksum"
    );
    let v = Ipv4View::parse(&out).unwrap();
    assert_eq!((v.src, v.dst), (router, CLIENT));
    // The quote is what the client sent, to the service, as the router saw it (one hop
    // later), transport checksum included.
    let mut seen = request[14..42].to_vec();
    seen[8] -= 1;
    seen[10..12].copy_from_slice(&[0, 0]);
    let c = packet::checksum(&seen[..20], 0);
    seen[10..12].copy_from_slice(&c.to_be_bytes());
    assert_eq!(out[42..70], seen[..]);

    // The backend itself refusing: the error comes from the service too.
    let refused = packet::icmp_error(REMOTE_BACKEND, CLIENT, 3, 3, 0, &sent);
    let (verdict, out) = f.run(FROM_NETDEV, &refused);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert!(packet::ipv4_checksum_ok(&out, 14) && packet::l4_checksum_ok(&out, 14));
    let v = Ipv4View::parse(&out).unwrap();
    assert_eq!((v.src, v.dst), (VIP, CLIENT));
    assert_eq!(out[42..70], seen[..]);

    // An error about some other flow is left alone.
    let other = from_client(IPPROTO_UDP, REMOTE_BACKEND, 9999, 40000).build();
    let err = packet::icmp_error(router, CLIENT, 3, 4, 1400, &other);
    let (_, out) = f.run(FROM_NETDEV, &err);
    assert_eq!(out[42..70], other[14..42]);
}

#[test]
fn affinity_holds_until_its_timeout_and_never_outlives_the_backend() {
    let mut f = fixture();
    let backends: Vec<Ipv4Addr> = (1..=5).map(|i| Ipv4Addr::new(10, 1, 2, 10 + i)).collect();
    let sticky_vip = VIP;
    let plain_vip = Ipv4Addr::new(10, 96, 0, 11);
    let with = |vip: Ipv4Addr, bs: &[Ipv4Addr], affinity: Option<u32>| {
        let remotes: Vec<_> = bs.iter().map(|b| remote(*b)).collect();
        ServicePlan {
            affinity_timeout: affinity,
            maglev: true,
            ..plan(&[cluster_ip(vip, 80, IPPROTO_TCP)], 8080, &remotes)
        }
    };
    f.apply("sticky", with(sticky_vip, &backends, Some(1)));
    f.apply("plain", with(plain_vip, &backends, None));
    // The backend a new flow (a SYN: every source port below is used once) from `client`
    // is sent to.
    let go = |f: &mut Fixture, client: Ipv4Addr, vip: Ipv4Addr, sport: u16| {
        let input = PacketSpec {
            src: client,
            ..from_client(IPPROTO_TCP, vip, 80, sport)
        }
        .build();
        let (verdict, out) = f.run(FROM_POD, &input);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{client}:{sport} -> {vip}");
        let to = Ipv4View::parse(&out)
            .expect("the program passed on an IPv4 frame")
            .dst;
        assert!(
            backends.contains(&to),
            "{client}:{sport} -> {vip} went to {to}"
        );
        to
    };
    let clients: Vec<Ipv4Addr> = (0..20).map(|i| Ipv4Addr::new(10, 1, 1, 100 + i)).collect();
    for c in &clients {
        f.add_pod(*c, common::TEST_RUN_IFINDEX, CLIENT_MAC, CLIENT_VETH_MAC);
    }

    // Without affinity one client's flows spread over the backends by their source ports
    // (so the single backend below is affinity's doing, not a hash blind to ports).
    let spread: BTreeSet<Ipv4Addr> = (30000..30040)
        .map(|p| go(&mut f, CLIENT, plain_vip, p))
        .collect();
    assert!(
        spread.len() > 1,
        "40 flows without affinity all went to {spread:?}"
    );

    // With affinity every flow of a client lands on one backend, and different clients
    // spread over the backends.
    let mut stuck = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let base = 31000 + 40 * i as u16;
        let to: BTreeSet<Ipv4Addr> = (base..base + 40)
            .map(|p| go(&mut f, *c, sticky_vip, p))
            .collect();
        assert_eq!(to.len(), 1, "{c}'s flows went to {to:?}");
        stuck.extend(to);
    }
    let used: BTreeSet<&Ipv4Addr> = stuck.iter().collect();
    assert!(used.len() > 1, "20 clients all stuck to {used:?}");

    // After the timeout each client is balanced again: a new flow goes wherever its hash
    // says, not where the client was stuck. (Waiting out the timeout is the point: the
    // programs' clock is whole seconds, so 1 s of affinity may last until just under 2 s.)
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let later: Vec<Ipv4Addr> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| go(&mut f, *c, sticky_vip, 33000 + i as u16))
        .collect();
    // Each stays on its old backend with probability 1/5 when balanced: all 20 staying
    // means the affinity outlived its timeout.
    assert!(
        later.iter().zip(&stuck).any(|(l, s)| l != s),
        "every client still went to the backend it was stuck to: affinity outlived its timeout"
    );
    // And the new choice sticks in turn.
    for (i, c) in clients.iter().enumerate() {
        let again = go(&mut f, *c, sticky_vip, 34000 + i as u16);
        assert_eq!(again, later[i], "{c} did not stick to its new backend");
    }

    // Removing the backend a client is stuck to ends the affinity at once: its next flow
    // goes to a remaining backend, and sticks there.
    let (client, gone) = (clients[0], later[0]);
    let rest: Vec<_> = backends.iter().copied().filter(|b| *b != gone).collect();
    f.apply("sticky", with(sticky_vip, &rest, Some(1)));
    let again = go(&mut f, client, sticky_vip, 35000);
    assert_ne!(again, gone);
    assert!(rest.contains(&again));
    assert_eq!(go(&mut f, client, sticky_vip, 35001), again);
}

/// No frontend is looked up for an address in the cluster Network (the agents program no
/// service address there) but the node's own pod-subnet address, where node ports answer:
/// a frontend written at a pod's address anyway (the dataplane library does not check
/// addresses; the agent does) is not used, and pod traffic to that pod passes untouched.
#[test]
fn pod_addresses_are_never_frontends_but_the_nodes_own_is() {
    let mut f = fixture();
    f.apply(
        "at-a-pod",
        plan(
            &[cluster_ip(REMOTE_BACKEND, 80, IPPROTO_TCP)],
            8080,
            &[local(LOCAL_BACKEND)],
        ),
    );
    f.apply(
        "node-port",
        plan(
            &[node_port(GATEWAY, 30080, IPPROTO_TCP)],
            8080,
            &[local(LOCAL_BACKEND)],
        ),
    );
    let to_pod = from_client(IPPROTO_TCP, REMOTE_BACKEND, 80, 40100).build();
    let (_, out) = f.run(FROM_POD, &to_pod);
    let v = Ipv4View::parse(&out).unwrap();
    assert_eq!((v.dst, packet::ports(&out)), (REMOTE_BACKEND, (40100, 80)));
    assert_eq!(
        f.count(Program::FromPod, Reason::Direct),
        1,
        "forwarded as it was"
    );
    assert_eq!(f.event(Program::FromPod, Event::ServiceFlow), 0);

    let to_node_port = from_client(IPPROTO_TCP, GATEWAY, 30080, 40101).build();
    let (verdict, out) = f.run(FROM_POD, &to_node_port);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let v = assert_only_tuple_changed(&to_node_port, &out);
    assert_eq!(v.dst, LOCAL_BACKEND);
    assert_eq!(packet::ports(&out), (40101, 8080));
    assert_eq!(f.event(Program::FromPod, Event::ServiceFlow), 1);
}
