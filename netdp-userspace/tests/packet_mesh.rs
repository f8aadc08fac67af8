//! Packet tests (BPF_PROG_TEST_RUN) of a node in a cluster mesh: cluster 10.1.0.0/16,
//! whose network config names another cluster with Network 10.2.0.0/16 (in
//! CLUSTER_NETWORKS, as the agent's `mesh` writes it). The peer across the router leases
//! 10.2.1.0/24 there. Its pods are reached and answered exactly like a local peer's, and
//! are judged as pods, never as outside hosts: the DSR option a pod of the other cluster
//! puts on its packet is not believed (it would be if its Network were not known, which
//! the test shows too), and a plain packet claiming one of its addresses from anyone but
//! its node is dropped. Expected frames are built here, independently of the programs.
mod common;

use std::{collections::BTreeSet, net::Ipv4Addr};

use common::{
    Fixture, OUR_VTEP, PEER_IP, PEER_VTEP, ROUTER, ROUTER_MAC, TEST_RUN_IFINDEX, UNDERLAY_MAC,
    node_config, outer_from_peer, outer_to_peer, pod_mac, underlay, veth_mac,
};
use netdp::{
    config::Backend,
    dataplane::{
        networks::NetworkSet,
        route::{entry_for, mode_for},
    },
    lease::LeaseAttrs,
};
use netdp_common::{
    counters::{Event, Program, Reason},
    node::{NodeConfig, decap, flags},
    program_names::{FROM_NETDEV, FROM_POD},
};
use netdp_testbed::packet::{
    self, IPPROTO_TCP, IPPROTO_UDP, PacketSpec, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

/// A pod of this node.
const POD: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
/// A pod of the other cluster, on the peer.
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 2, 1, 5);
const REMOTE_SUBNET: &str = "10.2.1.0/24";
const REMOTE_NETWORK: &str = "10.2.0.0/16";

fn vxlan() -> Backend {
    Backend::Vxlan {
        vni: 1,
        port: 8472,
        direct_routing: false,
    }
}

/// A vxlan node of a mesh (with masquerading on: the other cluster is not "outside").
fn mesh_node() -> NodeConfig {
    let mut n = NodeConfig {
        decap: decap::VXLAN,
        port: 8472,
        vni: 1,
        vtep_mac: OUR_VTEP,
        ..node_config()
    };
    n.flags |= flags::MESH | flags::MASQUERADE;
    n
}

struct Mesh {
    f: Fixture,
    networks: NetworkSet,
}

/// The node, its pod, the other cluster's Network and the peer's lease there, routed and
/// accepted the way the agent plans a local peer.
fn mesh() -> Mesh {
    let mut f = Fixture::load(&mesh_node());
    f.add_pod(POD, TEST_RUN_IFINDEX, pod_mac(3), veth_mac(3));
    let attrs = LeaseAttrs::new(
        PEER_IP,
        "vxlan",
        Some(serde_json::json!({"VNI": 1, "VtepMAC": "0e:54:00:00:00:13"})),
    );
    let m = mode_for(&underlay(), &vxlan(), &attrs).expect("peer reachable");
    let route = entry_for(&underlay(), &vxlan(), &attrs, m, ROUTER, Some(ROUTER_MAC));
    f.set_routes(&[(REMOTE_SUBNET, route)]);
    f.peers
        .sync(
            &[(PEER_IP, REMOTE_SUBNET.parse().unwrap())]
                .into_iter()
                .collect(),
        )
        .expect("syncing PEERS");
    let networks = common::other_cluster(&mut f, REMOTE_NETWORK, 2);
    Mesh { f, networks }
}

/// `inner` in the peer's VXLAN tunnel to this node.
fn from_peer(inner: &[u8]) -> Vec<u8> {
    packet::vxlan(
        &outer_from_peer(),
        41234,
        8472,
        1,
        OUR_VTEP,
        PEER_VTEP,
        inner,
    )
}

fn remote_pod_to_pod(dport: u16) -> PacketSpec {
    PacketSpec {
        src_mac: PEER_VTEP,
        dst_mac: OUR_VTEP,
        src: REMOTE_POD,
        dst: POD,
        proto: IPPROTO_TCP,
        sport: 40000,
        dport,
        tcp_flags: 0x02,
        ..Default::default()
    }
}

#[test]
fn another_clusters_pods_are_reached_and_answered_like_a_peers() {
    let Mesh {
        mut f,
        networks: _n,
    } = mesh();
    // Theirs to ours: decapsulated, delivered untranslated.
    let inner = remote_pod_to_pod(8080).build();
    let (verdict, out) = f.run(FROM_NETDEV, &from_peer(&inner));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, packet::routed(&inner, pod_mac(3), veth_mac(3)));
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapVxlan), 1);
    // Ours to theirs: into the tunnel to the peer, not masqueraded.
    let reply = PacketSpec {
        src_mac: pod_mac(3),
        dst_mac: veth_mac(3),
        src: POD,
        dst: REMOTE_POD,
        proto: IPPROTO_TCP,
        sport: 8080,
        dport: 40000,
        tcp_flags: 0x12,
        ..Default::default()
    };
    let (verdict, out) = f.run(FROM_POD, &reply.build());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let hopped = PacketSpec {
        ttl: reply.ttl - 1,
        src_mac: OUR_VTEP,
        dst_mac: PEER_VTEP,
        ..reply.clone()
    };
    let sport = u16::from_be_bytes([out[34], out[35]]);
    assert!(sport >= 32768, "VXLAN source port {sport}");
    let expected = packet::vxlan(
        &outer_to_peer(),
        sport,
        8472,
        1,
        PEER_VTEP,
        OUR_VTEP,
        &hopped.build(),
    );
    assert_eq!(out, expected);
    assert_eq!(f.count(Program::FromPod, Reason::EncapVxlan), 1);
    assert!(f.conntrack.masqueraded().is_empty(), "nothing masqueraded");
    // An address of the other cluster nobody leases is not sent out of the underlay
    // masqueraded, as an outside address would be: the kernel decides.
    let stray = PacketSpec {
        dst: Ipv4Addr::new(10, 2, 200, 1),
        proto: IPPROTO_UDP,
        tcp_flags: 0,
        ..reply
    };
    let (verdict, _) = f.run(FROM_POD, &stray.build());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(f.count(Program::FromPod, Reason::UnknownDestination), 1);
    assert!(f.conntrack.masqueraded().is_empty(), "nothing masqueraded");
}

#[test]
fn the_dsr_option_of_another_clusters_pod_is_not_believed() {
    let Mesh {
        mut f,
        mut networks,
    } = mesh();
    // A pod of the other cluster sends to port 9999 of our pod with an option naming
    // 8080: delivered as sent, option and all, no flow opened.
    let inner = common::with_option(&remote_pod_to_pod(9999).build(), POD, 8080);
    let (verdict, out) = f.run(FROM_NETDEV, &from_peer(&inner));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, packet::routed(&inner, pod_mac(3), veth_mac(3)));
    assert_eq!(f.event(Program::FromNetdev, Event::DsrFlow), 0);
    assert!(f.conntrack.list().is_empty(), "no flow opened");
    // What CLUSTER_NETWORKS prevents: the same packet, its Network unknown, is taken for
    // a client's and redirected to port 8080.
    networks.set(&BTreeSet::new()).expect("clearing");
    let (verdict, out) = f.run(FROM_NETDEV, &from_peer(&inner));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_ne!(out, packet::routed(&inner, pod_mac(3), veth_mac(3)));
    assert_eq!(f.event(Program::FromNetdev, Event::DsrFlow), 1);
}

#[test]
fn a_plain_packet_claiming_another_clusters_pod_is_dropped_unless_from_its_node() {
    let Mesh {
        mut f,
        networks: _n,
    } = mesh();
    // From the router's MAC (an outside host, or a stranger on the underlay), not in a
    // tunnel: the lease says that pod is behind the peer's VXLAN tunnel.
    for src in [REMOTE_POD, Ipv4Addr::new(10, 2, 9, 9)] {
        let spoofed = PacketSpec {
            src_mac: ROUTER_MAC,
            dst_mac: UNDERLAY_MAC,
            src,
            ..remote_pod_to_pod(22)
        };
        let (verdict, _) = f.run(FROM_NETDEV, &spoofed.build());
        assert_eq!(verdict, TC_ACT_SHOT, "{src}");
    }
    assert_eq!(
        f.count(Program::FromNetdev, Reason::UnderlayForeignSource),
        2
    );
    // A tunnel from a stranger is no better.
    let stranger = packet::Outer {
        src: Ipv4Addr::new(192, 168, 20, 99),
        ..outer_from_peer()
    };
    let inner = remote_pod_to_pod(22).build();
    let tunnel = packet::vxlan(&stranger, 41234, 8472, 1, OUR_VTEP, PEER_VTEP, &inner);
    let (verdict, _) = f.run(FROM_NETDEV, &tunnel);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapUnknownPeer), 1);
}
