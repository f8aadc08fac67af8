//! End to end, from the attacker's side: a pod that sends with addresses that are not its
//! own, and an outside host on the underlay that sends straight to pod addresses or forges
//! tunnel packets with a peer's address, reach nobody; the drops are counted where the
//! programs made them. Controls with genuine sources show the same crafted traffic does
//! arrive when it is allowed to.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use netdp_testbed::{
    Spec, Testbed, netns,
    packet::{self, PacketSpec},
    testbed::OUTSIDE_IP,
};

const PORT: u16 = 7070;
const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const VXLAN: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;

/// A UDP receiver in a namespace that records the tags (first payload line) it gets.
struct Sink {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Result<BTreeSet<String>>>,
}

impl Sink {
    fn start(ns: &str) -> Result<Sink> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = netns::in_netns(ns, move || -> Result<BTreeSet<String>> {
            let sock = UdpSocket::bind(("0.0.0.0", PORT))?;
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            let _ = ready_tx.send(());
            let mut seen = BTreeSet::new();
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    seen.insert(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
            Ok(seen)
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the receiver did not start")?;
        Ok(Sink { stop, thread })
    }

    /// Waits for stragglers, then says what arrived.
    fn finish(self) -> Result<BTreeSet<String>> {
        thread::sleep(Duration::from_millis(500));
        self.stop.store(true, Ordering::Relaxed);
        netns::join(self.thread)
    }
}

/// Sends `count` datagrams tagged `tag` from `ns`, from source `src` (an address the
/// namespace holds), to `dst`.
fn send_from(ns: &str, src: Ipv4Addr, dst: Ipv4Addr, tag: &str, count: u32) -> Result<()> {
    let tag = tag.to_string();
    netns::join(netns::in_netns(ns, move || -> Result<()> {
        let sock = UdpSocket::bind((src, 0)).with_context(|| format!("binding {src}"))?;
        for _ in 0..count {
            // A refused send (no route, a local drop) is as good as a lost one here.
            let _ = sock.send_to(tag.as_bytes(), (dst, PORT));
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })?)
}

/// Gives namespace `ns` address `addr` on `dev` too, as an attacker with NET_ADMIN in its
/// pod (or on its host) can.
fn hold(ns: &str, addr: Ipv4Addr, dev: &str) -> Result<()> {
    netns::exec(
        ns,
        &["ip", "addr", "add", &format!("{addr}/32"), "dev", dev],
    )?;
    Ok(())
}

fn spoofing_pods_reach_nobody(network: &str) -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(2).outside().network(network))?;
    tb.start_all_agents(&[])?;
    let attacker = tb.add_pod("n1", "attacker")?;
    let neighbour = tb.add_pod("n1", "neighbour")?;
    let target = tb.add_pod("n2", "target")?;
    let same_node = tb.add_pod("n1", "victim")?;
    let n1 = tb.node("n1").ip;

    let far = Sink::start(&target.ns)?;
    let near = Sink::start(&same_node.ns)?;
    // The control: the attacker's own address arrives, across nodes and on its node.
    send_from(&attacker.ns, attacker.ip, target.ip, "own", 10)?;
    send_from(&attacker.ns, attacker.ip, same_node.ip, "own", 10)?;
    let spoofs = [
        ("another-pod", neighbour.ip),
        ("the-node", n1),
        ("outside", OUTSIDE_IP),
        ("unleased", Ipv4Addr::new(10, 244, 250, 9)),
    ];
    for (tag, addr) in spoofs {
        hold(&attacker.ns, addr, "eth0")?;
        send_from(&attacker.ns, addr, target.ip, tag, 20)?;
        send_from(&attacker.ns, addr, same_node.ip, tag, 20)?;
    }
    // Its own address from another MAC.
    netns::exec(
        &attacker.ns,
        &["ip", "link", "set", "eth0", "address", "0a:66:66:66:66:66"],
    )?;
    netns::exec(&attacker.ns, &["ip", "neigh", "flush", "dev", "eth0"])?;
    send_from(&attacker.ns, attacker.ip, target.ip, "other-mac", 20)?;
    let (far, near) = (far.finish()?, near.finish()?);
    let own = BTreeSet::from(["own".to_string()]);
    assert_eq!(
        far, own,
        "across nodes only the attacker's own address arrived"
    );
    assert_eq!(
        near, own,
        "on its node only the attacker's own address arrived"
    );
    let spoofed = tb.counter("n1", "from_pod", "spoofed_source")?;
    assert!(
        spoofed >= 4 * 2 * 20,
        "from_pod counted {spoofed} spoofed packets, sent at least 160"
    );
    Ok(())
}

#[test]
fn pods_spoofing_addresses_reach_nobody_host_gw() -> Result<()> {
    spoofing_pods_reach_nobody(HOST_GW)
}

#[test]
fn pods_spoofing_addresses_reach_nobody_vxlan() -> Result<()> {
    spoofing_pods_reach_nobody(VXLAN)
}

/// An outside host on the underlay, with a route to the pod subnets (as a routed network
/// has), sends straight to a pod: dropped unless the node names its network in
/// `--routed-networks`.
#[test]
fn an_outside_host_reaches_pods_only_from_a_routed_network() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(2).outside().network(HOST_GW))?;
    tb.start_agent("n1", &[])?;
    tb.start_agent("n2", &[])?;
    let target = tb.add_pod("n2", "target")?;
    let (subnet, len) = tb.node("n2").subnet()?;
    tb.router_route(&format!("{subnet}/{len}"), tb.node("n2").ip)?;
    let outside = tb.outside_ns.clone().expect("outside host");

    let sink = Sink::start(&target.ns)?;
    send_from(&outside, OUTSIDE_IP, target.ip, "straight", 20)?;
    assert!(sink.finish()?.is_empty(), "the outside host reached a pod");
    // XDP's prefilter drops them before the kernel builds an skb (tc would too).
    let dropped = tb.counter("n2", "xdp", "underlay_foreign_source")?;
    assert!(dropped >= 20, "the XDP prefilter counted {dropped} of 20");

    tb.stop_agent("n2")?;
    tb.start_agent("n2", &["--routed-networks=203.0.113.0/24"])?;
    let sink = Sink::start(&target.ns)?;
    send_from(&outside, OUTSIDE_IP, target.ip, "routed", 5)?;
    assert_eq!(
        sink.finish()?,
        BTreeSet::from(["routed".to_string()]),
        "a routed network's host reaches the pod"
    );
    Ok(())
}

/// An outside host forges VXLAN packets with a peer node's address as the outer source:
/// the inner packet arrives only if its source is a pod of that peer.
#[test]
fn forged_tunnel_packets_carry_only_the_peers_own_pods() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(2).outside().network(VXLAN))?;
    tb.start_all_agents(&[])?;
    let n1_pod = tb.add_pod("n1", "p")?;
    let target = tb.add_pod("n2", "target")?;
    let (n1, n2) = (tb.node("n1").ip, tb.node("n2").ip);
    let outside = tb.outside_ns.clone().expect("outside host");
    hold(&outside, n1, "lo")?;
    let link = netns::ip(&["-n", &tb.node("n2").ns, "-br", "link", "show", "eth0"])?;
    let mac = link.split_whitespace().nth(2).context("eth0's MAC")?;
    let n2_vtep = netdp::dataplane::node::vtep_mac(parse_mac(mac)?);

    let sink = Sink::start(&target.ns)?;
    let forged = |inner_src: Ipv4Addr, tag: &str| {
        let inner = PacketSpec {
            src_mac: [0x0e, 0, 0, 0, 0, 1],
            dst_mac: n2_vtep,
            src: inner_src,
            dst: target.ip,
            ttl: 64,
            proto: packet::IPPROTO_UDP,
            sport: 5555,
            dport: PORT,
            tcp_flags: 0,
            payload: tag.as_bytes().to_vec(),
            ..Default::default()
        }
        .build();
        // VXLAN header: the I flag, VNI 1.
        let mut payload = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        payload.extend_from_slice(&inner);
        payload
    };
    let frames = [
        forged(OUTSIDE_IP, "foreign"),
        forged(Ipv4Addr::new(10, 244, 250, 9), "unleased"),
        forged(n1_pod.ip, "peer-pod"),
    ];
    netns::join(netns::in_netns(&outside, move || -> Result<()> {
        let sock = UdpSocket::bind((n1, 0))?;
        for frame in &frames {
            for _ in 0..10 {
                sock.send_to(frame, (n2, 8472))?;
                thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    })?)?;
    assert_eq!(
        sink.finish()?,
        BTreeSet::from(["peer-pod".to_string()]),
        "only the inner packet from the peer's own subnet arrived"
    );
    let dropped = tb.counter("n2", "from_netdev", "decap_spoofed_source")?;
    assert!(dropped >= 20, "from_netdev counted {dropped} of 20");
    Ok(())
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<_> = s.split(':').collect();
    anyhow::ensure!(parts.len() == 6, "{s:?} is no MAC");
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)?;
    }
    Ok(mac)
}
