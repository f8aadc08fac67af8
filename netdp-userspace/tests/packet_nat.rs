//! Packet tests (BPF_PROG_TEST_RUN) of NAT traversal. A peer behind a NAT sends
//! keepalives (the 8-byte `netdpKA\x01` as the whole tunnel payload) from the port its NAT
//! maps: taken in and learned (NAT_PEERS: its address, the port, when) for every
//! encapsulating backend, from peers only; anything else of that length is no keepalive.
//! A route through a NAT goes to the learned port from this node's own tunnel port
//! (vxlan: not the flow hash). Expected frames are built here, independently.
mod common;

use std::net::Ipv4Addr;

use aya::maps::HashMap as BpfHashMap;
use common::{
    Fixture, OUR_VTEP, PEER_IP, PEER_VTEP, TEST_RUN_IFINDEX, outer_from_peer, outer_to_peer,
    pod_mac, veth_mac,
};
use netdp::config::Backend;
use netdp_common::{
    counters::{Program, Reason},
    keepalive::{MAGIC, NO_PORT, NatPeer},
    map_names,
    peer::PeerKey,
    program_names::{FROM_NETDEV, FROM_POD},
    route::flags,
};
use netdp_testbed::packet::{
    self, IPPROTO_IPIP, IPPROTO_UDP, PacketSpec, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

/// The port the peer's NAT maps its tunnel port to.
const NAT_PORT: u16 = 20417;

/// The peer's keepalive from `from` (its NAT's address) as `backend` carries it.
fn keepalive(backend: &Backend, outer: &packet::Outer, payload: &[u8]) -> Vec<u8> {
    match backend {
        Backend::Ipip { .. } => packet::ip_payload(outer, IPPROTO_IPIP, payload),
        Backend::Vxlan { port, .. } | Backend::Udp { port } => {
            packet::udp_datagram(outer, NAT_PORT, *port, payload)
        }
        _ => unreachable!(),
    }
}

fn learned(f: &mut Fixture) -> Vec<(Ipv4Addr, NatPeer)> {
    let map: BpfHashMap<_, PeerKey, NatPeer> =
        BpfHashMap::try_from(f.take_map(map_names::NAT_PEERS)).expect("NAT_PEERS is a hash");
    map.iter()
        .map(|e| e.expect("reading NAT_PEERS"))
        .map(|(k, v)| (Ipv4Addr::from(k.addr), v))
        .collect()
}

#[test]
fn a_peers_keepalive_is_taken_in_and_its_nat_port_learned() {
    for backend in common::tunnels() {
        let mut f = Fixture::load(&common::tunnel_node(&backend));
        f.route_to_peer(&backend);
        let (verdict, _) = f.run(
            FROM_NETDEV,
            &keepalive(&backend, &outer_from_peer(), &MAGIC),
        );
        assert_eq!(verdict, TC_ACT_SHOT, "{backend:?}: consumed");
        assert_eq!(
            f.count(Program::FromNetdev, Reason::NatKeepalive),
            1,
            "{backend:?}"
        );
        let port = if matches!(backend, Backend::Ipip { .. }) {
            NO_PORT
        } else {
            NAT_PORT
        };
        let l = learned(&mut f);
        assert_eq!(l.len(), 1, "{backend:?}: {l:?}");
        assert_eq!(l[0].0, PEER_IP);
        assert_eq!(l[0].1.port, port, "{backend:?}");
        assert_eq!(l[0].1.addr, PEER_IP.octets());
        assert!(l[0].1.seen_ns > 0);
    }
}

#[test]
fn only_a_peer_keepalive_of_the_exact_form_counts() {
    for backend in common::tunnels() {
        let mut f = Fixture::load(&common::tunnel_node(&backend));
        f.route_to_peer(&backend);
        // From a stranger: an unknown peer, learned nothing.
        let stranger = packet::Outer {
            src: Ipv4Addr::new(192, 168, 20, 99),
            ..outer_from_peer()
        };
        let (verdict, _) = f.run(FROM_NETDEV, &keepalive(&backend, &stranger, &MAGIC));
        assert_eq!(verdict, TC_ACT_SHOT);
        assert_eq!(f.count(Program::FromNetdev, Reason::DecapUnknownPeer), 1);
        // Another 8 bytes, and the magic with a byte more: no keepalive, a bad tunnel
        // packet as before.
        let mut longer = MAGIC.to_vec();
        longer.push(0);
        for payload in [&b"netdpKA\x02"[..], &longer] {
            let (verdict, _) = f.run(
                FROM_NETDEV,
                &keepalive(&backend, &outer_from_peer(), payload),
            );
            assert_eq!(verdict, TC_ACT_SHOT, "{backend:?} {payload:?}");
        }
        assert_eq!(
            f.count(Program::FromNetdev, Reason::NatKeepalive),
            0,
            "{backend:?}"
        );
        assert!(learned(&mut f).is_empty(), "{backend:?}");
    }
}

/// A pod's packet to the peer's subnet, and what leaves for it.
fn pod_packet() -> PacketSpec {
    PacketSpec {
        src_mac: pod_mac(3),
        dst_mac: veth_mac(3),
        src: Ipv4Addr::new(10, 1, 1, 3),
        dst: Ipv4Addr::new(10, 1, 2, 7),
        proto: IPPROTO_UDP,
        sport: 5353,
        dport: 9000,
        ..Default::default()
    }
}

#[test]
fn a_route_through_a_nat_goes_to_its_port_from_this_nodes_own() {
    for backend in [common::tunnels()[0].clone(), common::tunnels()[2].clone()] {
        let mut f = Fixture::load(&common::tunnel_node(&backend));
        f.add_pod(pod_packet().src, TEST_RUN_IFINDEX, pod_mac(3), veth_mac(3));
        f.route_to_peer(&backend);
        // As the agent writes it once the keepalives are learned.
        let subnet = common::PEER_SUBNET;
        let mut route = f
            .routes
            .list()
            .into_iter()
            .find(|(n, _)| n.to_string() == subnet)
            .expect("the peer's route")
            .1;
        route.port = NAT_PORT;
        route.flags |= flags::FIXED_SPORT;
        f.set_routes(&[(subnet, route)]);
        let spec = pod_packet();
        let (verdict, out) = f.run(FROM_POD, &spec.build());
        assert_eq!(verdict, TC_ACT_REDIRECT, "{backend:?}");
        let hopped = PacketSpec {
            ttl: spec.ttl - 1,
            ..spec.clone()
        };
        let expected = match backend {
            Backend::Vxlan { .. } => packet::vxlan(
                &outer_to_peer(),
                8472,
                NAT_PORT,
                1,
                PEER_VTEP,
                OUR_VTEP,
                &hopped.build(),
            ),
            _ => packet::udp_encap(&outer_to_peer(), 8285, NAT_PORT, &hopped.build()),
        };
        assert_eq!(out, expected, "{backend:?}");
    }
}
