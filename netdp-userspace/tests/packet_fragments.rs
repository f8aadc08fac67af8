//! IP fragments of translated flows, on crafted frames: a datagram too big for one frame
//! (a 3000-byte UDP request, DNS over EDNS say) is fragmented by its sender, and every
//! fragment must get its flow's translation, not only the first, which alone carries the
//! ports. The fragments are cut here from a datagram `netdp_testbed::packet` builds; the
//! translated ones are put back together and the reassembled datagram's UDP checksum is
//! checked against its new addresses.
mod common;

use std::net::Ipv4Addr;

use common::{
    ADJACENT_PEER_MAC, Fixture, NODE_IP, TEST_RUN_IFINDEX, UNDERLAY_MAC, cluster_ip, local,
    node_config, plan, pod_mac, pod_sends, veth_mac,
};
use netdp_common::{
    counters::{Program, Reason},
    node::{NodeConfig, flags},
};
use netdp_testbed::packet::{
    self, IPPROTO_UDP, Ipv4View, PacketSpec, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 5);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
/// Bytes of IP payload per fragment (a multiple of 8, as fragment offsets need).
const FRAGMENT: usize = 1480;

fn fixture(node: NodeConfig) -> Fixture {
    let mut f = Fixture::load(&node);
    f.add_pod(CLIENT, TEST_RUN_IFINDEX, pod_mac(3), veth_mac(3));
    f.add_pod(BACKEND, TEST_RUN_IFINDEX, pod_mac(5), veth_mac(5));
    f
}

/// A 3000-byte UDP datagram in one (oversized) frame, with a valid checksum.
fn datagram(spec: PacketSpec) -> Vec<u8> {
    PacketSpec {
        proto: IPPROTO_UDP,
        payload: (0..3000).map(|i| (i * 7) as u8).collect(),
        ..spec
    }
    .build()
}

/// `frame`'s IP datagram as its sender fragments it: IP identification `id`, FRAGMENT
/// bytes of payload per fragment.
fn fragments(frame: &[u8], id: u16) -> Vec<Vec<u8>> {
    let (eth, ip, payload) = (&frame[..14], &frame[14..34], &frame[34..]);
    let chunks: Vec<&[u8]> = payload.chunks(FRAGMENT).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut hdr = ip.to_vec();
            hdr[2..4].copy_from_slice(&((20 + chunk.len()) as u16).to_be_bytes());
            hdr[4..6].copy_from_slice(&id.to_be_bytes());
            let more = if i + 1 < chunks.len() { 0x2000 } else { 0 };
            let off = (i * FRAGMENT / 8) as u16 | more;
            hdr[6..8].copy_from_slice(&off.to_be_bytes());
            hdr[10..12].copy_from_slice(&[0, 0]);
            let sum = packet::checksum(&hdr, 0);
            hdr[10..12].copy_from_slice(&sum.to_be_bytes());
            [eth, &hdr, chunk].concat()
        })
        .collect()
}

/// The datagram the fragments make, in one frame (the first fragment's Ethernet and IP
/// header, total length and fragment field set for the whole).
fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut out = frags[0][..34].to_vec();
    for f in frags {
        out.extend_from_slice(&f[34..]);
    }
    let len = (out.len() - 14) as u16;
    out[16..18].copy_from_slice(&len.to_be_bytes());
    out[20..22].copy_from_slice(&[0, 0]);
    out
}

/// Runs every fragment through `prog`; each must be redirected with a valid IP checksum.
fn run_all(f: &mut Fixture, prog: &str, frags: &[Vec<u8>]) -> Vec<Vec<u8>> {
    frags
        .iter()
        .enumerate()
        .map(|(i, frag)| {
            let (verdict, out) = f.run(prog, frag);
            assert_eq!(verdict, TC_ACT_REDIRECT, "fragment {i}");
            assert!(
                packet::ipv4_checksum_ok(&out, 14),
                "fragment {i}: IP checksum"
            );
            if i > 0 {
                assert_eq!(
                    out[34..],
                    frag[34..],
                    "fragment {i}: only the header changes"
                );
            }
            out
        })
        .collect()
}

#[test]
fn every_fragment_of_a_service_flow_is_translated_both_ways() {
    let mut f = fixture(node_config());
    f.apply(
        "dns",
        plan(&[cluster_ip(VIP, 53, IPPROTO_UDP)], 5353, &[local(BACKEND)]),
    );
    let request = datagram(PacketSpec {
        dst: VIP,
        sport: 33000,
        dport: 53,
        ..pod_sends(CLIENT, pod_mac(3), veth_mac(3))
    });
    let frags = fragments(&request, 0x1234);
    assert_eq!(frags.len(), 3);
    let out: Vec<Vec<u8>> = frags
        .iter()
        .enumerate()
        .map(|(i, frag)| {
            let (verdict, out) = f.run("from_pod", frag);
            assert_eq!(verdict, TC_ACT_REDIRECT, "fragment {i}");
            assert!(
                packet::ipv4_checksum_ok(&out, 14),
                "fragment {i}: IP checksum"
            );
            let v = Ipv4View::parse(&out).expect("IPv4");
            assert_eq!((v.src, v.dst), (CLIENT, BACKEND), "fragment {i}");
            out
        })
        .collect();
    // The ports are the first fragment's; the later ones' data is untouched.
    assert_eq!(packet::ports(&out[0]), (33000, 5353));
    for (a, b) in out.iter().zip(&frags).skip(1) {
        assert_eq!(a[34..], b[34..]);
    }
    let whole = reassemble(&out);
    assert!(
        packet::l4_checksum_ok(&whole, 14),
        "the reassembled datagram's UDP checksum holds for its new addresses"
    );
    assert_eq!(f.count(Program::FromPod, Reason::LocalDelivery), 3);

    // The fragmented answer comes back from the VIP, every fragment of it.
    let answer = datagram(PacketSpec {
        dst: CLIENT,
        sport: 5353,
        dport: 33000,
        ..pod_sends(BACKEND, pod_mac(5), veth_mac(5))
    });
    let back: Vec<Vec<u8>> = fragments(&answer, 0x4321)
        .iter()
        .map(|frag| {
            let (verdict, out) = f.run("from_pod", frag);
            assert_eq!(verdict, TC_ACT_REDIRECT);
            let v = Ipv4View::parse(&out).expect("IPv4");
            assert_eq!((v.src, v.dst), (VIP, CLIENT));
            out
        })
        .collect();
    assert_eq!(packet::ports(&back[0]), (53, 33000));
    assert!(packet::l4_checksum_ok(&reassemble(&back), 14));
}

#[test]
fn every_fragment_of_a_masqueraded_flow_is_translated_both_ways() {
    let mut f = fixture(NodeConfig {
        flags: flags::MASQUERADE,
        nat_port_min: 61000,
        nat_port_max: 65535,
        ..node_config()
    });
    let request = datagram(PacketSpec {
        dst: OUTSIDE,
        sport: 33000,
        dport: 53,
        ..pod_sends(CLIENT, pod_mac(3), veth_mac(3))
    });
    let out = run_all(&mut f, "from_pod", &fragments(&request, 0x1111));
    for o in &out {
        let v = Ipv4View::parse(o).expect("IPv4");
        assert_eq!((v.src, v.dst), (NODE_IP, OUTSIDE));
    }
    let nat_port = packet::ports(&out[0]).0;
    assert!(packet::l4_checksum_ok(&reassemble(&out), 14));
    assert_eq!(f.count(Program::FromPod, Reason::Masquerade), 3);

    let answer = datagram(PacketSpec {
        src_mac: ADJACENT_PEER_MAC,
        dst_mac: UNDERLAY_MAC,
        src: OUTSIDE,
        dst: NODE_IP,
        sport: 53,
        dport: nat_port,
        ..Default::default()
    });
    let back = run_all(&mut f, "from_netdev", &fragments(&answer, 0x2222));
    for b in &back {
        let v = Ipv4View::parse(b).expect("IPv4");
        assert_eq!((v.src, v.dst), (OUTSIDE, CLIENT));
    }
    assert_eq!(packet::ports(&back[0]), (53, 33000));
    assert!(packet::l4_checksum_ok(&reassemble(&back), 14));
    assert_eq!(f.count(Program::FromNetdev, Reason::Unmasquerade), 3);
}

/// A fragment whose first fragment was never seen has no flow to follow: with
/// masquerading it cannot leave (it would leak the pod's address), and from the underlay
/// it goes to the kernel unchanged.
#[test]
fn fragments_without_their_first_are_not_translated() {
    let mut f = fixture(NodeConfig {
        flags: flags::MASQUERADE,
        nat_port_min: 61000,
        nat_port_max: 65535,
        ..node_config()
    });
    let request = datagram(PacketSpec {
        dst: OUTSIDE,
        sport: 33001,
        dport: 53,
        ..pod_sends(CLIENT, pod_mac(3), veth_mac(3))
    });
    let frags = fragments(&request, 0x3333);
    assert_eq!(f.run("from_pod", &frags[1]).0, TC_ACT_SHOT);
    assert_eq!(f.count(Program::FromPod, Reason::NatUnsupported), 1);
    let stray = datagram(PacketSpec {
        src_mac: ADJACENT_PEER_MAC,
        dst_mac: UNDERLAY_MAC,
        src: OUTSIDE,
        dst: NODE_IP,
        sport: 53,
        dport: 61234,
        ..Default::default()
    });
    let later = fragments(&stray, 0x4444).remove(1);
    let (verdict, out) = f.run("from_netdev", &later);
    assert_eq!((verdict, out), (TC_ACT_OK, later));
}
