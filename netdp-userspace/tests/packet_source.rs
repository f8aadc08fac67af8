//! Source verification, run on crafted frames: a pod sends only with its own address and
//! MAC; the underlay delivers plain packets to pods only from a directly routed peer's pods
//! (from that peer's MAC) or from `--routed-networks`; and only a SYN starts a TCP flow
//! through a service or masquerading. Each frame is built by `netdp_testbed::packet`; the
//! verdicts and counters say what the programs did with it.
mod common;

use std::{collections::BTreeSet, net::Ipv4Addr};

use common::{
    ADJACENT_PEER_MAC, Fixture, NODE_IP, PEER_IP, TEST_RUN_IFINDEX, UNDERLAY_MAC, cluster_ip,
    direct_route, local, node_config, plan, pod_mac, pod_sends, veth_mac,
};
use netdp::dataplane::MapSizes;
use netdp_common::{
    counters::{Program, Reason},
    node::{NodeConfig, flags},
    route::{Route, mode},
};
use netdp_testbed::packet::{
    self, IPPROTO_TCP, IPPROTO_UDP, PacketSpec, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

const FROM_POD: &str = "from_pod";
const FROM_NETDEV: &str = "from_netdev";

/// Pod A sends in these tests (attached where test runs arrive); pod B is on another veth.
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 4);
const POD_B_VETH: u32 = 43;
/// A service backend on this node, also attached where test runs arrive.
const POD_C: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 5);
/// A pod of the adjacent peer (routed directly, 10.1.2.0/24) and of the peer across the
/// router (vxlan, 10.1.3.0/24).
const DIRECT_PEER_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 7);
const VXLAN_PEER_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 3, 7);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn fixture(node: NodeConfig) -> Fixture {
    fixture_sized(node, &MapSizes::default())
}

fn fixture_sized(node: NodeConfig, sizes: &MapSizes) -> Fixture {
    let mut f = Fixture::load_sized(&node, sizes);
    f.add_pod(POD_A, TEST_RUN_IFINDEX, pod_mac(3), veth_mac(3));
    f.add_pod(POD_C, TEST_RUN_IFINDEX, pod_mac(5), veth_mac(5));
    f.add_pod(POD_B, POD_B_VETH, pod_mac(4), veth_mac(4));
    let vxlan = Route {
        mode: mode::VXLAN,
        node_ip: PEER_IP.octets(),
        ..direct_route()
    };
    f.set_routes(&[("10.1.2.0/24", direct_route()), ("10.1.3.0/24", vxlan)]);
    f
}

/// What pod A sends to `dst`, claiming source `src` and MAC `mac`.
fn sent_as(src: Ipv4Addr, mac: [u8; 6], dst: Ipv4Addr) -> Vec<u8> {
    PacketSpec {
        dst,
        ..pod_sends(src, mac, veth_mac(3))
    }
    .build()
}

/// A plain frame from the underlay to pod A, from `src` at MAC `mac`.
fn arriving(src: Ipv4Addr, mac: [u8; 6]) -> Vec<u8> {
    PacketSpec {
        src_mac: mac,
        dst_mac: UNDERLAY_MAC,
        src,
        dst: POD_A,
        ..Default::default()
    }
    .build()
}

#[test]
fn a_pod_sends_only_with_its_own_address_and_mac() {
    let mut f = fixture(node_config());
    let remote = DIRECT_PEER_POD;
    let own = sent_as(POD_A, pod_mac(3), remote);
    assert_eq!(f.run(FROM_POD, &own).0, TC_ACT_REDIRECT);
    assert_eq!(f.count(Program::FromPod, Reason::Direct), 1);

    let spoofs = [
        ("another pod's address", sent_as(POD_B, pod_mac(4), remote)),
        ("the node's address", sent_as(NODE_IP, pod_mac(3), remote)),
        ("an outside address", sent_as(OUTSIDE, pod_mac(3), remote)),
        (
            "a remote pod's address",
            sent_as(VXLAN_PEER_POD, pod_mac(3), remote),
        ),
        (
            "its address, another MAC",
            sent_as(POD_A, pod_mac(4), remote),
        ),
        ("to a pod here", sent_as(POD_B, pod_mac(4), POD_A)),
        (
            "to the outside",
            sent_as(DIRECT_PEER_POD, pod_mac(3), OUTSIDE),
        ),
    ];
    for (what, frame) in &spoofs {
        assert_eq!(f.run(FROM_POD, frame).0, TC_ACT_SHOT, "{what}");
    }
    assert_eq!(
        f.count(Program::FromPod, Reason::SpoofedSource),
        spoofs.len() as u64
    );
    // Nothing of them went anywhere.
    assert_eq!(f.count(Program::FromPod, Reason::Direct), 1);
    assert_eq!(f.count(Program::FromPod, Reason::LocalDelivery), 0);
}

#[test]
fn the_underlay_reaches_pods_only_from_directly_routed_peers_pods_and_routed_networks() {
    let mut f = fixture(node_config());
    let other_mac = [0x52, 0x54, 0, 0, 0, 0x99];
    let (verdict, out) = f.run(FROM_NETDEV, &arriving(DIRECT_PEER_POD, ADJACENT_PEER_MAC));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[..6], &pod_mac(3), "delivered to pod A");
    assert_eq!(f.count(Program::FromNetdev, Reason::LocalDelivery), 1);

    let rejected = [
        (
            "a peer's pod from another MAC",
            arriving(DIRECT_PEER_POD, other_mac),
        ),
        (
            "a tunnelled peer's pod, not tunnelled",
            arriving(VXLAN_PEER_POD, ADJACENT_PEER_MAC),
        ),
        ("this node's own pod", arriving(POD_B, ADJACENT_PEER_MAC)),
        (
            "a cluster address nobody leases",
            arriving(Ipv4Addr::new(10, 1, 9, 9), ADJACENT_PEER_MAC),
        ),
        ("the peer node itself", arriving(PEER_IP, ADJACENT_PEER_MAC)),
        ("an outside host", arriving(OUTSIDE, ADJACENT_PEER_MAC)),
    ];
    for (what, frame) in &rejected {
        assert_eq!(f.run(FROM_NETDEV, frame).0, TC_ACT_SHOT, "{what}");
    }
    assert_eq!(
        f.count(Program::FromNetdev, Reason::UnderlayForeignSource),
        rejected.len() as u64
    );

    // A routed network lets its hosts in, and only its hosts.
    let net = "203.0.113.0/24".parse().expect("a CIDR");
    f.routed_networks
        .set(&BTreeSet::from([net]))
        .expect("writing ROUTED_NETWORKS");
    let outside = arriving(OUTSIDE, ADJACENT_PEER_MAC);
    assert_eq!(f.run(FROM_NETDEV, &outside).0, TC_ACT_REDIRECT);
    let elsewhere = arriving(Ipv4Addr::new(198, 51, 100, 1), ADJACENT_PEER_MAC);
    assert_eq!(f.run(FROM_NETDEV, &elsewhere).0, TC_ACT_SHOT);
    assert_eq!(f.count(Program::FromNetdev, Reason::LocalDelivery), 2);
    f.routed_networks
        .set(&BTreeSet::new())
        .expect("clearing ROUTED_NETWORKS");
    assert_eq!(f.run(FROM_NETDEV, &outside).0, TC_ACT_SHOT);
}

/// A TCP segment from pod A to `dst:dport` with `tcp_flags`.
fn tcp(dst: Ipv4Addr, dport: u16, sport: u16, tcp_flags: u8) -> Vec<u8> {
    PacketSpec {
        dst,
        proto: IPPROTO_TCP,
        sport,
        dport,
        tcp_flags,
        ..pod_sends(POD_A, pod_mac(3), veth_mac(3))
    }
    .build()
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;
const RST: u8 = 0x04;
const FIN_ACK: u8 = 0x11;

/// The backend's answer to a flow from pod A's `sport` through VIP:80.
fn syn_ack(sport: u16) -> Vec<u8> {
    PacketSpec {
        dst: POD_A,
        proto: IPPROTO_TCP,
        sport: 8080,
        dport: sport,
        tcp_flags: SYN_ACK,
        ..pod_sends(POD_C, pod_mac(5), veth_mac(5))
    }
    .build()
}

fn web(f: &mut Fixture) {
    f.apply(
        "web",
        plan(&[cluster_ip(VIP, 80, IPPROTO_TCP)], 8080, &[local(POD_C)]),
    );
}

#[test]
fn only_a_syn_starts_a_tcp_flow_through_a_service() {
    let mut f = fixture(node_config());
    web(&mut f);
    for (i, stray) in [ACK, SYN_ACK, RST, FIN_ACK].into_iter().enumerate() {
        let frame = tcp(VIP, 80, 40000 + i as u16, stray);
        assert_eq!(f.run(FROM_POD, &frame).0, TC_ACT_SHOT, "flags {stray:#x}");
    }
    assert_eq!(f.count(Program::FromPod, Reason::ServiceNotSyn), 4);
    assert!(f.conntrack.list().is_empty(), "no flow was started");
    // A SYN does; it waits in HALF_OPEN until the backend answers.
    let (verdict, out) = f.run(FROM_POD, &tcp(VIP, 80, 41000, SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(packet::ports(&out), (41000, 8080));
    assert_eq!(f.conntrack.half_open(), 2);
    let (verdict, out) = f.run(FROM_POD, &syn_ack(41000));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        packet::ports(&out),
        (80, 41000),
        "the answer comes from the VIP"
    );
    assert_eq!(
        f.conntrack.half_open(),
        2,
        "an answer alone does not establish a flow: backends answer spoofed SYNs too"
    );
    assert!(
        f.conntrack
            .list()
            .iter()
            .all(|fl| fl.state_name() == "syn_recv")
    );
    // The client's ACK completes the handshake and moves the flow; later segments follow.
    for _ in 0..2 {
        let (verdict, out) = f.run(FROM_POD, &tcp(VIP, 80, 41000, ACK));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(packet::ports(&out), (41000, 8080));
    }
    assert_eq!(f.conntrack.half_open(), 0, "the ACK moved the flow");
    let flows = f.conntrack.list();
    assert_eq!(flows.len(), 2);
    assert!(flows.iter().all(|fl| fl.state_name() == "established"));
    // UDP has no handshake: any datagram starts a flow.
    f.apply(
        "dns",
        plan(&[cluster_ip(VIP, 53, IPPROTO_UDP)], 5353, &[local(POD_C)]),
    );
    let frame = PacketSpec {
        dst: VIP,
        proto: IPPROTO_UDP,
        dport: 53,
        ..pod_sends(POD_A, pod_mac(3), veth_mac(3))
    }
    .build();
    assert_eq!(f.run(FROM_POD, &frame).0, TC_ACT_REDIRECT);
}

/// A SYN flood through a service overflows HALF_OPEN, whose LRU evicts the oldest
/// half-open flows; the established flow in CONNTRACK keeps its entries and its backend.
/// With one table of the same size, the flood would have evicted it.
#[test]
fn a_syn_flood_evicts_half_open_flows_only() {
    let sizes = MapSizes {
        conntrack: 1024,
        half_open: 1024,
        ..MapSizes::default()
    };
    let mut f = fixture_sized(node_config(), &sizes);
    web(&mut f);
    assert_eq!(
        f.run(FROM_POD, &tcp(VIP, 80, 41000, SYN)).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(f.run(FROM_POD, &syn_ack(41000)).0, TC_ACT_REDIRECT);
    assert_eq!(
        f.run(FROM_POD, &tcp(VIP, 80, 41000, ACK)).0,
        TC_ACT_REDIRECT
    );
    // 3,000 SYNs, each answered by the backend as a real one answers spoofed SYNs, none
    // completed: 6,000 entries for a table of 1,024.
    for sport in 0..3000u16 {
        let (verdict, _) = f.run(FROM_POD, &tcp(VIP, 80, 20000 + sport, SYN));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(f.run(FROM_POD, &syn_ack(20000 + sport)).0, TC_ACT_REDIRECT);
    }
    assert!(f.conntrack.half_open() <= 1024);
    let established: Vec<_> = f
        .conntrack
        .list()
        .into_iter()
        .filter(|fl| fl.state_name() == "established")
        .collect();
    assert_eq!(
        established.len(),
        2,
        "the established flow kept both entries"
    );
    let (verdict, out) = f.run(FROM_POD, &tcp(VIP, 80, 41000, ACK));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(packet::ports(&out), (41000, 8080));
    assert_eq!(f.count(Program::FromPod, Reason::ServiceNotSyn), 0);
}

#[test]
fn only_a_syn_starts_a_masqueraded_tcp_flow() {
    let mut f = fixture(NodeConfig {
        flags: flags::MASQUERADE,
        nat_port_min: 61000,
        nat_port_max: 65535,
        ..node_config()
    });
    assert_eq!(
        f.run(FROM_POD, &tcp(OUTSIDE, 443, 40000, ACK)).0,
        TC_ACT_SHOT
    );
    assert_eq!(f.count(Program::FromPod, Reason::NatNotSyn), 1);
    assert!(f.conntrack.list().is_empty(), "no port was taken");
    let (verdict, out) = f.run(FROM_POD, &tcp(OUTSIDE, 443, 40000, SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let nat_port = packet::ports(&out).0;
    assert_eq!(f.count(Program::FromPod, Reason::Masquerade), 1);
    // The outside answers the node; the pod gets it, and the flow is established.
    let answer = PacketSpec {
        src_mac: ADJACENT_PEER_MAC,
        dst_mac: UNDERLAY_MAC,
        src: OUTSIDE,
        dst: NODE_IP,
        proto: IPPROTO_TCP,
        sport: 443,
        dport: nat_port,
        tcp_flags: SYN_ACK,
        ..Default::default()
    }
    .build();
    let (verdict, out) = f.run(FROM_NETDEV, &answer);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(packet::ports(&out), (443, 40000));
    assert_eq!(f.count(Program::FromNetdev, Reason::Unmasquerade), 1);
    assert_eq!(f.conntrack.half_open(), 2, "answered, not yet complete");
    assert_eq!(
        f.run(FROM_POD, &tcp(OUTSIDE, 443, 40000, ACK)).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(f.count(Program::FromPod, Reason::Masquerade), 2);
    assert_eq!(
        f.conntrack.half_open(),
        0,
        "the pod's ACK completed the flow"
    );
}

/// `--source-verification=false` (a load-time flag) takes the checks out: what they drop
/// gets through.
#[test]
fn without_source_verification_spoofed_packets_get_through() {
    let mut f = fixture(NodeConfig {
        flags: flags::TRUST_SOURCES,
        ..node_config()
    });
    let spoofed = sent_as(POD_B, pod_mac(4), DIRECT_PEER_POD);
    assert_eq!(f.run(FROM_POD, &spoofed).0, TC_ACT_REDIRECT);
    let outside = arriving(OUTSIDE, ADJACENT_PEER_MAC);
    assert_eq!(f.run(FROM_NETDEV, &outside).0, TC_ACT_REDIRECT);
    assert_eq!(f.count(Program::FromPod, Reason::SpoofedSource), 0);
    assert_eq!(
        f.count(Program::FromNetdev, Reason::UnderlayForeignSource),
        0
    );
}
