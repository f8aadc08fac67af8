//! Packet tests (BPF_PROG_TEST_RUN) of the XDP program on the underlay: node port DNAT and
//! SNAT to a remote backend sent back out by XDP_TX with the next hop's MACs and correct
//! checksums, the reply's reverse NAT to the client's next hop (the kernel's FIB, in a
//! namespace of the test's own), local backends and tunnel packets left to tc untouched
//! (and tc then following the flow XDP opened), the prefilter's drops per reason, and
//! truncated frames at every length. Expected frames are built from scratch by
//! `PacketSpec`, independently of the programs.
mod common;

use std::net::Ipv4Addr;

use common::{
    ADJACENT_PEER_MAC, Fixture, GATEWAY, NODE_IP, ROUTER, ROUTER_MAC, UNDERLAY_MAC, direct_route,
    local, node_port, outer_from_peer, plan, pod_mac, remote, veth_mac,
};
use netdp_common::{
    counters::{Event, Program, Reason},
    node::{NodeConfig, decap, flags},
    program_names::FROM_NETDEV,
};
use netdp_testbed::{
    netns,
    packet::{
        self, IPPROTO_TCP, IPPROTO_UDP, Ipv4View, PacketSpec, TC_ACT_REDIRECT, XDP_DROP, XDP_PASS,
        XDP_TX,
    },
};

const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const LOCAL_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
const REMOTE_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 5);
/// The MAC of the test namespace's interface towards the router (the FIB's source MAC).
const NS_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x21];

/// This node: its address, the cluster, source verification on.
fn node() -> NodeConfig {
    NodeConfig {
        node_ip: NODE_IP.octets(),
        cluster: [10, 1, 0, 0],
        cluster_mask: [255, 255, 0, 0],
        ..Default::default()
    }
}

/// A node with a local backend pod and the route to the peer running the remote one, out
/// of `underlay` (the test namespace's interface, where the frames arrive): the next hop
/// is out of the interface the packet came in on, so XDP answers XDP_TX.
fn fixture(node: &NodeConfig, underlay: u32) -> Fixture {
    let mut f = Fixture::load(node);
    f.lb.set_config(GATEWAY, 0).expect("writing LB_CONFIG");
    f.add_pod(LOCAL_BACKEND, 42, pod_mac(3), veth_mac(3));
    let route = netdp_common::route::Route {
        ifindex: underlay,
        ..direct_route()
    };
    f.set_routes(&[("10.1.2.0/24", route)]);
    f
}

/// A TCP segment from the underlay, from the router's MAC to ours.
fn from_router(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> PacketSpec {
    PacketSpec {
        src_mac: ROUTER_MAC,
        dst_mac: UNDERLAY_MAC,
        src,
        dst,
        proto: IPPROTO_TCP,
        sport,
        dport,
        tcp_flags: flags,
        payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ..Default::default()
    }
}

/// A network namespace this thread enters for the test, removed when dropped: its veth
/// `up0` is the node's underlay, where test frames arrive, towards the router at
/// [`ROUTER`] (neighbour entry [`ROUTER_MAC`]) that the route to the outside clients goes
/// through, so bpf_fib_lookup finds their next hop here and not in the machine's own
/// tables.
struct TestNs {
    name: String,
    /// up0's index.
    underlay: u32,
}

impl TestNs {
    fn enter(tag: &str) -> Self {
        let name = format!("ndpx-{}-{tag}", std::process::id());
        netns::delete(&name);
        netns::create(&name).expect("creating the test namespace");
        let mut ns = TestNs { name, underlay: 0 };
        let n = ns.name.as_str();
        let mac = NS_MAC.map(|b| format!("{b:02x}")).join(":");
        for args in [
            vec!["link", "set", "lo", "up"],
            vec![
                "link", "add", "up0", "address", &mac, "type", "veth", "peer", "up1",
            ],
            vec!["link", "set", "up0", "up"],
            vec!["link", "set", "up1", "up"],
            vec!["addr", "add", "192.168.10.11/24", "dev", "up0"],
            vec!["route", "add", "203.0.113.0/24", "via", "192.168.10.1"],
            vec![
                "neigh",
                "replace",
                "192.168.10.1",
                "lladdr",
                "52:54:00:00:00:01",
                "dev",
                "up0",
                "nud",
                "permanent",
            ],
        ] {
            let mut full = vec!["-n", n];
            full.extend(args);
            netns::ip(&full).unwrap_or_else(|e| panic!("ip {full:?}: {e:#}"));
        }
        // bpf_fib_lookup answers only for an interface that forwards (the agent turns it
        // on with XDP).
        netns::sysctl(n, "net.ipv4.conf.up0.forwarding", "1").expect("forwarding on");
        let fd = std::fs::File::open(netns::path(n)).expect("opening the namespace");
        // SAFETY: plain syscall on an fd we own; moves only this test's thread.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "entering {n}: {}", std::io::Error::last_os_error());
        assert_eq!(ROUTER, Ipv4Addr::new(192, 168, 10, 1));
        // SAFETY: a NUL-terminated name.
        ns.underlay = unsafe { libc::if_nametoindex(c"up0".as_ptr()) };
        assert_ne!(ns.underlay, 0, "up0 in the test namespace");
        ns
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        netns::delete(&self.name);
    }
}

/// The frame `spec` describes after one routing hop from this node: new MACs, TTL one less.
fn hopped(spec: &PacketSpec, src_mac: [u8; 6], dst_mac: [u8; 6]) -> PacketSpec {
    PacketSpec {
        src_mac,
        dst_mac,
        ttl: spec.ttl - 1,
        ..spec.clone()
    }
}

#[test]
fn node_port_to_a_remote_backend_is_balanced_in_xdp_and_the_reply_goes_back_out() {
    let ns = TestNs::enter("remote");
    let mut f = fixture(&node(), ns.underlay);
    f.apply(
        "np",
        plan(
            &[node_port(NODE_IP, 30080, IPPROTO_TCP)],
            8080,
            &[remote(REMOTE_BACKEND)],
        ),
    );
    let syn = from_router(OUTSIDE, NODE_IP, 50000, 30080, 0x02);
    let (verdict, out) = f.run_xdp(ns.underlay, &syn.build());
    assert_eq!(verdict, XDP_TX, "out of the interface it came in on");
    // Source NAT to the node (replies must come back here), DNAT to the backend, sent to
    // the peer's MAC: byte for byte the frame built from scratch.
    let expected = PacketSpec {
        src: GATEWAY,
        dst: REMOTE_BACKEND,
        dport: 8080,
        ..hopped(&syn, UNDERLAY_MAC, ADJACENT_PEER_MAC)
    };
    assert_eq!(out, expected.build());
    assert_eq!(f.count(Program::Xdp, Reason::Direct), 1);
    assert_eq!(f.event(Program::Xdp, Event::ServiceFlow), 1);
    assert_eq!(f.event(Program::Xdp, Event::ServiceSnat), 1);

    // The backend's SYN-ACK, from the peer: reverse translated, to the client's next hop
    // as the FIB has it (the router, out of the same interface).
    let syn_ack = PacketSpec {
        src_mac: ADJACENT_PEER_MAC,
        ..from_router(REMOTE_BACKEND, GATEWAY, 8080, 50000, 0x12)
    };
    let (verdict, out) = f.run_xdp(ns.underlay, &syn_ack.build());
    assert_eq!(verdict, XDP_TX);
    let expected = PacketSpec {
        src: NODE_IP,
        dst: OUTSIDE,
        sport: 30080,
        ..hopped(&syn_ack, NS_MAC, ROUTER_MAC)
    };
    assert_eq!(out, expected.build());
    assert_eq!(f.count(Program::Xdp, Reason::ServiceReply), 1);

    // The client's ACK completes the handshake, in XDP too.
    let ack = PacketSpec {
        seq: 1001,
        ..from_router(OUTSIDE, NODE_IP, 50000, 30080, 0x10)
    };
    let (verdict, out) = f.run_xdp(ns.underlay, &ack.build());
    assert_eq!(verdict, XDP_TX);
    let v = Ipv4View::parse(&out).expect("IPv4");
    assert_eq!((v.src, v.dst), (GATEWAY, REMOTE_BACKEND));
    assert!(packet::ipv4_checksum_ok(&out, 14) && packet::l4_checksum_ok(&out, 14));
    assert_eq!(f.count(Program::Xdp, Reason::Direct), 2);
    // tc saw none of it.
    assert_eq!(f.count(Program::FromNetdev, Reason::Direct), 0);
    assert_eq!(f.event(Program::FromNetdev, Event::ServiceFlow), 0);
}

#[test]
fn udp_node_port_keeps_a_zero_checksum_zero() {
    let ns = TestNs::enter("udp");
    let mut f = fixture(&node(), ns.underlay);
    f.apply(
        "dns",
        plan(
            &[node_port(NODE_IP, 30053, IPPROTO_UDP)],
            53,
            &[remote(REMOTE_BACKEND)],
        ),
    );
    let query = PacketSpec {
        proto: IPPROTO_UDP,
        ..from_router(OUTSIDE, NODE_IP, 5353, 30053, 0)
    };
    let (verdict, out) = f.run_xdp(ns.underlay, &query.build());
    assert_eq!(verdict, XDP_TX);
    let expected = PacketSpec {
        src: GATEWAY,
        dst: REMOTE_BACKEND,
        dport: 53,
        ..hopped(&query, UNDERLAY_MAC, ADJACENT_PEER_MAC)
    };
    assert_eq!(out, expected.build());
    // The same datagram without a checksum (0: none) keeps none.
    let mut bare = query.build();
    bare[34 + 6..34 + 8].copy_from_slice(&[0, 0]);
    bare[34..36].copy_from_slice(&5354u16.to_be_bytes());
    let (verdict, out) = f.run_xdp(ns.underlay, &bare);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out[34 + 6..34 + 8], [0, 0], "no checksum stays no checksum");
    assert!(packet::ipv4_checksum_ok(&out, 14));
}

#[test]
fn a_local_backend_is_left_to_tc_which_follows_the_flow_xdp_opened() {
    let ns = TestNs::enter("local");
    let mut f = fixture(&node(), ns.underlay);
    f.apply(
        "np",
        plan(
            &[node_port(NODE_IP, 30080, IPPROTO_TCP)],
            8080,
            &[local(LOCAL_BACKEND)],
        ),
    );
    let syn = from_router(OUTSIDE, NODE_IP, 50001, 30080, 0x02).build();
    let (verdict, out) = f.run_xdp(ns.underlay, &syn);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, syn, "passed untouched");
    assert_eq!(f.count(Program::Xdp, Reason::ToTc), 1);
    assert_eq!(f.event(Program::Xdp, Event::ServiceFlow), 1);
    // tc delivers it to the backend XDP chose, without choosing again.
    let (verdict, out) = f.run(FROM_NETDEV, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let v = Ipv4View::parse(&out).expect("IPv4");
    assert_eq!((v.src, v.dst), (OUTSIDE, LOCAL_BACKEND), "the client kept");
    assert_eq!(f.count(Program::FromNetdev, Reason::LocalDelivery), 1);
    assert_eq!(f.event(Program::FromNetdev, Event::ServiceFlow), 0);
}

#[test]
fn packets_xdp_does_not_finish_pass_untouched() {
    let ns = TestNs::enter("pass");
    let mut f = fixture(&node(), ns.underlay);
    // To the node itself, no service: the kernel's (through tc).
    let ssh = from_router(OUTSIDE, NODE_IP, 50002, 22, 0x02).build();
    assert_eq!(f.run_xdp(ns.underlay, &ssh), (XDP_PASS, ssh.clone()));
    // With IP options: tc's business.
    let mut opts = from_router(OUTSIDE, NODE_IP, 50003, 30080, 0x02).build();
    opts[14] = 0x46;
    opts.splice(34..34, [1, 1, 1, 0]);
    let tot = u16::from_be_bytes([opts[16], opts[17]]) + 4;
    opts[16..18].copy_from_slice(&tot.to_be_bytes());
    assert_eq!(f.run_xdp(ns.underlay, &opts).0, XDP_PASS);
    // ARP.
    let mut arp = ssh.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(f.run_xdp(ns.underlay, &arp), (XDP_PASS, arp.clone()));
    assert_eq!(f.count(Program::Xdp, Reason::NonIpv4), 1);
    assert_eq!(f.count(Program::Xdp, Reason::ToTc), 2);
}

#[test]
fn the_prefilter_drops_denied_sources_foreign_pods_and_tunnels_from_strangers() {
    let ns = TestNs::enter("filter");
    let vxlan_node = NodeConfig {
        decap: decap::VXLAN,
        port: 8472,
        vni: 1,
        vtep_mac: common::OUR_VTEP,
        flags: flags::DENY_SOURCES,
        ..node()
    };
    let mut f = fixture(&vxlan_node, ns.underlay);
    f.denied_sources
        .set(&["198.51.100.0/24".parse().expect("a CIDR")].into())
        .expect("writing DENIED_SOURCES");
    let denied = from_router(Ipv4Addr::new(198, 51, 100, 7), NODE_IP, 1, 22, 0x02).build();
    assert_eq!(f.run_xdp(ns.underlay, &denied).0, XDP_DROP);
    assert_eq!(f.count(Program::Xdp, Reason::DeniedSource), 1);
    // Next door in the address space is not denied.
    let allowed = from_router(Ipv4Addr::new(198, 51, 101, 7), NODE_IP, 1, 22, 0x02).build();
    assert_eq!(f.run_xdp(ns.underlay, &allowed).0, XDP_PASS);

    // A pod address of the cluster from a MAC that is no peer's: spoofed.
    let spoofed = from_router(Ipv4Addr::new(10, 1, 9, 9), LOCAL_BACKEND, 1, 80, 0x02).build();
    assert_eq!(f.run_xdp(ns.underlay, &spoofed).0, XDP_DROP);
    assert_eq!(f.count(Program::Xdp, Reason::UnderlayForeignSource), 1);
    // An outside host straight to a pod here: only from a routed network.
    let direct = from_router(OUTSIDE, LOCAL_BACKEND, 1, 80, 0x02).build();
    assert_eq!(f.run_xdp(ns.underlay, &direct).0, XDP_DROP);
    assert_eq!(f.count(Program::Xdp, Reason::UnderlayForeignSource), 2);
    f.routed_networks
        .set(&["203.0.113.0/24".parse().expect("a CIDR")].into())
        .expect("writing ROUTED_NETWORKS");
    assert_eq!(f.run_xdp(ns.underlay, &direct), (XDP_PASS, direct.clone()));

    // VXLAN from an address that is no peer: dropped; from the peer: tc decapsulates.
    let inner = PacketSpec::default().build();
    let tunnel = packet::vxlan(
        &outer_from_peer(),
        40000,
        8472,
        1,
        common::OUR_VTEP,
        common::PEER_VTEP,
        &inner,
    );
    assert_eq!(f.run_xdp(ns.underlay, &tunnel).0, XDP_DROP);
    assert_eq!(f.count(Program::Xdp, Reason::DecapUnknownPeer), 1);
    f.peers
        .sync(
            &[(common::PEER_IP, "10.1.2.0/24".parse().expect("a CIDR"))]
                .into_iter()
                .collect(),
        )
        .expect("syncing PEERS");
    assert_eq!(f.run_xdp(ns.underlay, &tunnel), (XDP_PASS, tunnel.clone()));
}

#[test]
fn truncated_frames_at_every_length_are_never_forwarded() {
    let ns = TestNs::enter("short");
    let mut f = fixture(&node(), ns.underlay);
    f.apply(
        "np",
        plan(
            &[node_port(NODE_IP, 30080, IPPROTO_TCP)],
            8080,
            &[remote(REMOTE_BACKEND)],
        ),
    );
    let full = from_router(OUTSIDE, NODE_IP, 50010, 30080, 0x02).build();
    for len in 14..full.len() {
        let frame = &full[..len];
        let (verdict, out) = f.run_xdp(ns.underlay, frame);
        assert!(
            verdict == XDP_PASS || verdict == XDP_DROP,
            "{len} bytes: verdict {verdict}"
        );
        if verdict == XDP_PASS {
            assert_eq!(out, frame, "{len} bytes passed changed");
        }
    }
    assert_eq!(f.count(Program::Xdp, Reason::Direct), 0);
    assert!(
        f.conntrack.list().is_empty(),
        "no flow from a truncated frame"
    );
}

#[test]
fn a_backend_behind_a_tunnel_gets_the_packet_encapsulated_in_xdp() {
    let ns = TestNs::enter("tunnel");
    let backends = [
        (
            netdp::config::Backend::Vxlan {
                vni: 1,
                port: 8472,
                direct_routing: false,
            },
            decap::VXLAN,
            Reason::EncapVxlan,
        ),
        (
            netdp::config::Backend::Ipip {
                direct_routing: false,
            },
            decap::IPIP,
            Reason::EncapIpip,
        ),
        (
            netdp::config::Backend::Udp { port: 8285 },
            decap::UDP,
            Reason::EncapUdp,
        ),
    ];
    for (backend, decap, reason) in backends {
        let (port, vni) = match backend {
            netdp::config::Backend::Vxlan { vni, port, .. } => (port, vni),
            netdp::config::Backend::Udp { port } => (port, 0),
            _ => (0, 0),
        };
        let mut f = fixture(
            &NodeConfig {
                decap,
                port,
                vni,
                vtep_mac: common::OUR_VTEP,
                ..node()
            },
            ns.underlay,
        );
        // The peer leasing 10.1.2.0/24 is behind the router, reached through the tunnel.
        f.route_to_peer(&backend);
        f.apply(
            "np",
            plan(
                &[node_port(NODE_IP, 30080, IPPROTO_TCP)],
                8080,
                &[remote(REMOTE_BACKEND)],
            ),
        );
        let syn = from_router(OUTSIDE, NODE_IP, 50020, 30080, 0x02);
        let (verdict, out) = f.run_xdp(ns.underlay, &syn.build());
        assert_eq!(
            verdict,
            packet::XDP_REDIRECT,
            "{backend:?}: to the route's interface"
        );
        // The translated packet, one hop on, inside the tunnel's headers.
        let inner = PacketSpec {
            src: GATEWAY,
            dst: REMOTE_BACKEND,
            dport: 8080,
            ..hopped(&syn, UNDERLAY_MAC, ADJACENT_PEER_MAC)
        }
        .build();
        let outer = common::outer_to_peer();
        let expected = match backend {
            netdp::config::Backend::Vxlan { .. } => {
                // The source port is the inner flow's hash: taken from the output, checked
                // against the range Linux's vxlan draws from.
                let sport = u16::from_be_bytes([out[34], out[35]]);
                assert!(sport >= 32768, "VXLAN source port {sport}");
                packet::vxlan(
                    &outer,
                    sport,
                    8472,
                    1,
                    common::PEER_VTEP,
                    common::OUR_VTEP,
                    &inner,
                )
            }
            netdp::config::Backend::Ipip { .. } => packet::ipip(&outer, &inner),
            _ => packet::udp_encap(&outer, 8285, 8285, &inner),
        };
        assert_eq!(out, expected, "{backend:?}");
        assert_eq!(f.count(Program::Xdp, reason), 1, "{backend:?}");
    }
}
