//! The TCP window check of conntrack, run on crafted frames: once a flow through a service
//! is established, a RST or FIN moves it to closing only with a sequence number in its
//! window, from 8 MiB behind the sender's next sequence number (data in flight, answered by
//! a RST carrying the acknowledgement) to 65,535 ahead of it (segments overtaking each
//! other). Outside it, a blind RST or FIN from someone who knows only the tuple is dropped
//! (`out_of_window`) and the connection goes on. The window's edges are the documented
//! contract (README, "Conntrack under floods"), so they are written out here, not taken
//! from the code.
mod common;

use std::net::Ipv4Addr;

use common::{
    Fixture, TEST_RUN_IFINDEX, cluster_ip, local, node_config, plan, pod_mac, pod_sends, veth_mac,
};
use netdp_common::counters::{Program, Reason};
use netdp_testbed::packet::{self, IPPROTO_TCP, PacketSpec, TC_ACT_REDIRECT, TC_ACT_SHOT};

const FROM_POD: &str = "from_pod";

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 5);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;
const RST: u8 = 0x04;
const FIN_ACK: u8 = 0x11;

/// The client's and the backend's initial sequence numbers.
const CLIENT_ISN: u32 = 1000;
const BACKEND_ISN: u32 = 5000;
/// Bytes each side sends once the flow is established.
const CLIENT_DATA: u32 = 100;
const BACKEND_DATA: u32 = 50;
/// The next sequence numbers after that: what a legitimate RST or FIN carries.
const CLIENT_NEXT: u32 = CLIENT_ISN + 1 + CLIENT_DATA;
const BACKEND_NEXT: u32 = BACKEND_ISN + 1 + BACKEND_DATA;
/// The window around them.
const IN_FLIGHT: u32 = 8 << 20;
const SLACK: u32 = 65_535;

fn fixture() -> Fixture {
    let mut f = Fixture::load(&node_config());
    f.add_pod(CLIENT, TEST_RUN_IFINDEX, pod_mac(3), veth_mac(3));
    f.add_pod(BACKEND, TEST_RUN_IFINDEX, pod_mac(5), veth_mac(5));
    f.apply(
        "web",
        plan(&[cluster_ip(VIP, 80, IPPROTO_TCP)], 8080, &[local(BACKEND)]),
    );
    f
}

/// A segment of the client's flow from `sport` to the service.
fn client(sport: u16, tcp_flags: u8, seq: u32, ack: u32, len: u32) -> Vec<u8> {
    PacketSpec {
        dst: VIP,
        proto: IPPROTO_TCP,
        sport,
        dport: 80,
        tcp_flags,
        seq,
        ack,
        payload: vec![0x43; len as usize],
        ..pod_sends(CLIENT, pod_mac(3), veth_mac(3))
    }
    .build()
}

/// A segment of the backend's side of that flow.
fn backend(sport: u16, tcp_flags: u8, seq: u32, ack: u32, len: u32) -> Vec<u8> {
    PacketSpec {
        dst: CLIENT,
        proto: IPPROTO_TCP,
        sport: 8080,
        dport: sport,
        tcp_flags,
        seq,
        ack,
        payload: vec![0x53; len as usize],
        ..pod_sends(BACKEND, pod_mac(5), veth_mac(5))
    }
    .build()
}

/// A RST or FIN (`flags`, sequence number `seq`) of the client's side or the backend's,
/// acknowledging everything the other side sent.
fn closing(from_client: bool, sport: u16, flags: u8, seq: u32) -> Vec<u8> {
    if from_client {
        client(sport, flags, seq, BACKEND_NEXT, 0)
    } else {
        backend(sport, flags, seq, CLIENT_NEXT, 0)
    }
}

fn forwarded(f: &mut Fixture, frame: &[u8], what: &str) -> Vec<u8> {
    let (verdict, out) = f.run(FROM_POD, frame);
    assert_eq!(verdict, TC_ACT_REDIRECT, "{what}");
    out
}

/// Opens a flow from `sport` and exchanges data both ways.
fn established(f: &mut Fixture, sport: u16) {
    forwarded(f, &client(sport, SYN, CLIENT_ISN, 0, 0), "SYN");
    forwarded(
        f,
        &backend(sport, SYN_ACK, BACKEND_ISN, CLIENT_ISN + 1, 0),
        "SYN-ACK",
    );
    let ack = (CLIENT_ISN + 1, BACKEND_ISN + 1);
    forwarded(f, &client(sport, ACK, ack.0, ack.1, 0), "ACK");
    forwarded(f, &client(sport, ACK, ack.0, ack.1, CLIENT_DATA), "request");
    forwarded(
        f,
        &backend(sport, ACK, ack.1, CLIENT_NEXT, BACKEND_DATA),
        "response",
    );
    assert_eq!(states(f, sport), ["established", "established"]);
}

/// The states of the flow from `sport`'s two entries.
fn states(f: &Fixture, sport: u16) -> Vec<&'static str> {
    f.conntrack
        .list()
        .iter()
        .filter(|fl| fl.key.sport == sport || fl.key.dport == sport)
        .map(|fl| fl.state_name())
        .collect()
}

#[test]
fn a_blind_reset_or_close_is_dropped_and_the_connection_goes_on() {
    let mut f = fixture();
    let blind = [
        (
            true,
            RST,
            CLIENT_NEXT.wrapping_add(SLACK + 1),
            "client RST just ahead of the window",
        ),
        (
            true,
            RST,
            CLIENT_NEXT.wrapping_sub(IN_FLIGHT + 1),
            "client RST just behind it",
        ),
        (
            true,
            RST,
            CLIENT_NEXT.wrapping_add(1 << 31),
            "client RST half the space away",
        ),
        (
            true,
            FIN_ACK,
            CLIENT_NEXT.wrapping_add(1 << 24),
            "client FIN 16 MiB ahead",
        ),
        (
            false,
            RST,
            BACKEND_NEXT.wrapping_add(SLACK + 1),
            "backend RST ahead",
        ),
        (
            false,
            FIN_ACK,
            BACKEND_NEXT.wrapping_sub(IN_FLIGHT + 1),
            "backend FIN behind",
        ),
    ];
    for (i, (from_client, flags, seq, what)) in blind.into_iter().enumerate() {
        let sport = 41000 + i as u16;
        established(&mut f, sport);
        let frame = closing(from_client, sport, flags, seq);
        let (verdict, _) = f.run(FROM_POD, &frame);
        assert_eq!(verdict, TC_ACT_SHOT, "{what} (seq {seq}) was let through");
        assert_eq!(f.count(Program::FromPod, Reason::OutOfWindow), i as u64 + 1);
        assert_eq!(
            states(&f, sport),
            ["established", "established"],
            "{what} changed the flow"
        );
        // The connection goes on, to the same backend, as the service.
        let out = forwarded(
            &mut f,
            &client(sport, ACK, CLIENT_NEXT, BACKEND_NEXT, 10),
            what,
        );
        assert_eq!(packet::ports(&out), (sport, 8080));
        let out = forwarded(
            &mut f,
            &backend(sport, ACK, BACKEND_NEXT, CLIENT_NEXT + 10, 0),
            what,
        );
        assert_eq!(packet::ports(&out), (80, sport));
    }
}

#[test]
fn a_reset_or_close_in_the_window_closes_the_flow() {
    let mut f = fixture();
    let in_window = [
        (
            true,
            RST,
            CLIENT_NEXT,
            "client RST at its next sequence number",
        ),
        (
            true,
            RST,
            CLIENT_NEXT.wrapping_add(SLACK),
            "client RST at the window's front edge",
        ),
        (
            true,
            RST,
            CLIENT_NEXT.wrapping_sub(IN_FLIGHT),
            "client RST at its back edge",
        ),
        (true, FIN_ACK, CLIENT_NEXT, "client FIN"),
        // A RST answering the client's segment carries that segment's acknowledgement:
        // behind the backend's next sequence number by what is in flight.
        (
            false,
            RST,
            BACKEND_NEXT - BACKEND_DATA,
            "backend RST with the client's ACK",
        ),
        (false, FIN_ACK, BACKEND_NEXT, "backend FIN"),
    ];
    for (i, (from_client, flags, seq, what)) in in_window.into_iter().enumerate() {
        let sport = 42000 + i as u16;
        established(&mut f, sport);
        let frame = closing(from_client, sport, flags, seq);
        let out = forwarded(&mut f, &frame, what);
        let ports = if from_client {
            (sport, 8080)
        } else {
            (80, sport)
        };
        assert_eq!(packet::ports(&out), ports, "{what} was not translated");
        assert_eq!(states(&f, sport), ["closing", "closing"], "{what}");
    }
    assert_eq!(f.count(Program::FromPod, Reason::OutOfWindow), 0);
}
