//! Packet tests (BPF_PROG_TEST_RUN) of a cluster's active gateway (gateway mode): this
//! node (cluster 10.1.0.0/16, vxlan) with a peer on its segment leasing 10.1.2.0/24, and
//! the other cluster's gateway (Network 10.2.0.0/16) across the router at PEER_IP,
//! reached by the gateway tunnel (UDP 4800 both ends). A peer's packet for the other
//! cluster goes into the tunnel; the other gateway's for the peer's pod goes on to it in
//! vxlan. From the attacker's side: nothing else is relayed, the other gateway can't send
//! as this cluster's pods, and a node that is no gateway relays nothing. Expected frames
//! are built here from the wire formats, independently.
mod common;

use std::net::Ipv4Addr;

use common::{
    ADJACENT_PEER, ADJACENT_PEER_MAC, Fixture, OUR_VTEP, PEER_IP, ROUTER, ROUTER_MAC, UNDERLAY_MAC,
    node_config, outer_to_peer, underlay,
};
use netdp::{
    config::Backend,
    dataplane::route::{entry_for, mode_for},
    lease::LeaseAttrs,
};
use netdp_common::{
    counters::{Program, Reason},
    node::{NodeConfig, decap, flags},
    peer::flags as peer_flags,
    program_names::FROM_NETDEV,
    route::mode,
};
use netdp_testbed::packet::{self, IPPROTO_TCP, Outer, PacketSpec, TC_ACT_REDIRECT, TC_ACT_SHOT};

const GATEWAY_PORT: u16 = 4800;
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 5);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 2, 1, 5);
const PEER_VTEP: [u8; 6] = [0x0e, 0x54, 0, 0, 0, 0x12];

fn vxlan() -> Backend {
    Backend::Vxlan {
        vni: 1,
        port: 8472,
        direct_routing: false,
    }
}

fn gateway_node(gateway: bool) -> NodeConfig {
    let mut n = NodeConfig {
        decap: decap::VXLAN,
        port: 8472,
        vni: 1,
        vtep_mac: OUR_VTEP,
        ..node_config()
    };
    n.flags |= flags::MESH;
    if gateway {
        n.flags |= flags::GATEWAY;
        n.gateway_port = GATEWAY_PORT;
    }
    n
}

/// The maps as the agent's `gateway_routes` writes them on the active gateway.
fn gateway(active: bool) -> Fixture {
    let mut f = Fixture::load(&gateway_node(active));
    let attrs = LeaseAttrs::new(
        ADJACENT_PEER,
        "vxlan",
        Some(serde_json::json!({"VNI": 1, "VtepMAC": "0e:54:00:00:00:12"})),
    );
    let m = mode_for(&underlay(), &vxlan(), &attrs).expect("reachable");
    let to_peer = entry_for(
        &underlay(),
        &vxlan(),
        &attrs,
        m,
        ADJACENT_PEER,
        Some(ADJACENT_PEER_MAC),
    );
    let udp = Backend::Udp { port: GATEWAY_PORT };
    let gw_attrs = LeaseAttrs::new(PEER_IP, "udp", None);
    let mut to_gateway = entry_for(
        &underlay(),
        &udp,
        &gw_attrs,
        mode::UDP,
        ROUTER,
        Some(ROUTER_MAC),
    );
    to_gateway.mode = mode::GATEWAY;
    f.set_routes(&[("10.1.2.0/24", to_peer), ("10.2.0.0/16", to_gateway)]);
    f.peers
        .sync_flagged(
            &[
                (ADJACENT_PEER, ("10.1.2.0/24".parse().unwrap(), 0)),
                (
                    PEER_IP,
                    ("10.2.0.0/16".parse().unwrap(), peer_flags::GATEWAY),
                ),
            ]
            .into_iter()
            .collect(),
        )
        .expect("PEERS");
    common::other_cluster(&mut f, "10.2.0.0/16", 2);
    f
}

fn inner(src: Ipv4Addr, dst: Ipv4Addr) -> PacketSpec {
    PacketSpec {
        src_mac: PEER_VTEP,
        dst_mac: OUR_VTEP,
        src,
        dst,
        proto: IPPROTO_TCP,
        sport: 40000,
        dport: 8080,
        tcp_flags: 0x10,
        ..Default::default()
    }
}

fn from_peer(spec: &PacketSpec) -> Vec<u8> {
    let outer = Outer {
        src_mac: ADJACENT_PEER_MAC,
        dst_mac: UNDERLAY_MAC,
        src: ADJACENT_PEER,
        dst: common::NODE_IP,
    };
    packet::vxlan(&outer, 41000, 8472, 1, OUR_VTEP, PEER_VTEP, &spec.build())
}

fn from_other_gateway(spec: &PacketSpec) -> Vec<u8> {
    packet::udp_encap(
        &common::outer_from_peer(),
        GATEWAY_PORT,
        GATEWAY_PORT,
        &spec.build(),
    )
}

#[test]
fn the_active_gateway_relays_between_its_cluster_and_the_other_gateway() {
    let mut f = gateway(true);
    // A peer's pod to the other cluster: into the gateway tunnel, 4800 -> 4800.
    let out_spec = inner(LOCAL_POD, REMOTE_POD);
    let (verdict, out) = f.run(FROM_NETDEV, &from_peer(&out_spec));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let hopped = PacketSpec {
        ttl: out_spec.ttl - 1,
        ..out_spec.clone()
    };
    let expected = packet::udp_encap(
        &outer_to_peer(),
        GATEWAY_PORT,
        GATEWAY_PORT,
        &hopped.build(),
    );
    assert_eq!(out, expected);
    assert_eq!(f.count(Program::FromNetdev, Reason::EncapGateway), 1);
    // The other cluster's pod to the peer's: out of the gateway tunnel, into vxlan to the
    // peer (its flow-hash source port read back, checked to be in Linux's range).
    let in_spec = inner(REMOTE_POD, LOCAL_POD);
    let (verdict, out) = f.run(FROM_NETDEV, &from_other_gateway(&in_spec));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        f.count(Program::FromNetdev, Reason::DecapGateway),
        0,
        "counted on delivery only"
    );
    let sport = u16::from_be_bytes([out[34], out[35]]);
    assert!(sport >= 32768, "VXLAN source port {sport}");
    let hopped = PacketSpec {
        ttl: in_spec.ttl - 1,
        src_mac: OUR_VTEP,
        dst_mac: PEER_VTEP,
        ..in_spec
    };
    let to_peer = Outer {
        src_mac: UNDERLAY_MAC,
        dst_mac: ADJACENT_PEER_MAC,
        src: common::NODE_IP,
        dst: ADJACENT_PEER,
    };
    let expected = packet::vxlan(
        &to_peer,
        sport,
        8472,
        1,
        PEER_VTEP,
        OUR_VTEP,
        &hopped.build(),
    );
    assert_eq!(out, expected);
    assert_eq!(f.count(Program::FromNetdev, Reason::EncapVxlan), 1);
}

#[test]
fn a_gateway_relays_nothing_else_and_no_node_but_a_gateway_relays() {
    let mut f = gateway(true);
    // A peer's pod to another subnet of this cluster: no relay between this cluster's
    // nodes.
    let (verdict, _) = f.run(
        FROM_NETDEV,
        &from_peer(&inner(LOCAL_POD, Ipv4Addr::new(10, 1, 3, 9))),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapNoEndpoint), 1);
    // The other gateway sending as one of this cluster's pods, or to an address outside
    // every cluster: refused.
    let (verdict, _) = f.run(
        FROM_NETDEV,
        &from_other_gateway(&inner(Ipv4Addr::new(10, 1, 5, 5), LOCAL_POD)),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapSpoofedSource), 1);
    let (verdict, _) = f.run(
        FROM_NETDEV,
        &from_other_gateway(&inner(REMOTE_POD, Ipv4Addr::new(8, 8, 8, 8))),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.count(Program::FromNetdev, Reason::DecapNoEndpoint), 2);
    // A node that is no gateway: its peer's packet for the other cluster is not relayed,
    // and the gateway port is no tunnel there.
    let mut plain = gateway(false);
    let (verdict, _) = plain.run(FROM_NETDEV, &from_peer(&inner(LOCAL_POD, REMOTE_POD)));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(plain.count(Program::FromNetdev, Reason::DecapNoEndpoint), 1);
    plain.run(
        FROM_NETDEV,
        &from_other_gateway(&inner(REMOTE_POD, LOCAL_POD)),
    );
    assert_eq!(plain.count(Program::FromNetdev, Reason::EncapVxlan), 0);
    assert_eq!(plain.count(Program::FromNetdev, Reason::DecapGateway), 0);
}
