//! End to end, per backend: underlay subnet A with two nodes (n1, n2), subnet B with one
//! (n3) and one behind a NAT gateway (n4), joined by a router. Nodes run with IP
//! forwarding off, so pod traffic between them was carried by netdp's programs, and the
//! programs' counters must show it was encapsulated and decapsulated.
use std::collections::HashMap;

use anyhow::{Context, Result, ensure};
use netdp_testbed::{Spec, Testbed, netns, traffic};

const MIB: u64 = 1 << 20;
/// Bytes sent over TCP between the pods of every pair of nodes.
const TRANSFER: u64 = 50 * MIB;
/// UDP datagrams echoed between the pods of every pair (all must come back).
const DATAGRAMS: u32 = 50;

fn config(backend: &str) -> String {
    format!(r#"{{"Network": "10.244.0.0/16", "Backend": {backend}}}"#)
}

/// Two underlay subnets, a NAT'd node, one pod per node.
fn cluster(backend: &str) -> Result<Testbed> {
    let spec = Spec::default()
        .underlays(2)
        .node("n1", 0)
        .node("n2", 0)
        .node("n3", 1)
        .nat_node("n4", 1)
        .network(&config(backend));
    let mut tb = Testbed::new(spec)?;
    tb.start_all_agents(&[])?;
    for n in ["n1", "n2", "n3", "n4"] {
        tb.add_pod(n, "p1")?;
    }
    Ok(tb)
}

type Counters = HashMap<(String, String), u64>;

fn delta(before: &Counters, after: &Counters, prog: &str, reason: &str) -> u64 {
    let k = (prog.to_string(), reason.to_string());
    after.get(&k).copied().unwrap_or(0) - before.get(&k).copied().unwrap_or(0)
}

fn all_counters(tb: &Testbed, nodes: &[&str]) -> Result<HashMap<String, Counters>> {
    nodes
        .iter()
        .map(|n| Ok((n.to_string(), tb.counters(n)?)))
        .collect()
}

/// Ping both ways, a byte-exact TCP transfer from the first to the second node's pod and
/// UDP echo; returns the TCP throughput in Mbit/s.
fn exercise(tb: &Testbed, a: &str, b: &str, port: u16) -> Result<f64> {
    let (pa, pb) = (tb.pod(a, "p1"), tb.pod(b, "p1"));
    traffic::ping(&pa.ns, pb.ip, 3).with_context(|| format!("{a} -> {b}"))?;
    traffic::ping(&pb.ns, pa.ip, 3).with_context(|| format!("{b} -> {a}"))?;
    let t = traffic::tcp_transfer(&pa.ns, &pb.ns, pb.ip, port, TRANSFER)
        .with_context(|| format!("TCP {a} -> {b}"))?;
    let echoed = traffic::udp_echo(&pa.ns, &pb.ns, pb.ip, port + 1, DATAGRAMS)?;
    ensure!(
        echoed == DATAGRAMS,
        "UDP {a} -> {b}: {echoed} of {DATAGRAMS} echoed"
    );
    Ok(t.mbit_per_s())
}

fn pod_mtu(tb: &Testbed, node: &str) -> Result<u32> {
    // (Not /sys: that shows the namespace it was mounted in.)
    let out = netns::exec(
        &tb.pod(node, "p1").ns,
        &["ip", "-o", "link", "show", "eth0"],
    )?;
    out.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no MTU in {out}"))
}

/// Every pair of the nodes without NAT: traffic flows and was encapsulated by the
/// sender's from_pod and decapsulated by the receiver's from_netdev.
fn encapsulating_backend(backend: &str, name: &str, overhead: u32) -> Result<Testbed> {
    let mut tb = cluster(backend)?;
    for n in ["n1", "n2", "n3"] {
        assert_eq!(pod_mtu(&tb, n)?, 1500 - overhead, "pod MTU on {n}");
        assert_eq!(
            netns::read_sysctl(&tb.node(n).ns, "net.ipv4.ip_forward")?,
            "0"
        );
    }
    let nodes = ["n1", "n2", "n3"];
    let before = all_counters(&tb, &nodes)?;
    let mut report = Vec::new();
    for (i, (a, b)) in [("n1", "n2"), ("n2", "n3"), ("n3", "n1")]
        .iter()
        .enumerate()
    {
        let mbit = exercise(&tb, a, b, 6000 + 10 * i as u16)?;
        report.push(format!("{a}->{b} {mbit:.0} Mbit/s"));
    }
    println!(
        "{name}: {} MiB byte-exact per pair: {}",
        TRANSFER / MIB,
        report.join(", ")
    );
    let after = all_counters(&tb, &nodes)?;
    for n in nodes {
        let (b, a) = (&before[n], &after[n]);
        let encap = delta(b, a, "from_pod", &format!("encap_{name}"));
        let decap = delta(b, a, "from_netdev", &format!("decap_{name}"));
        // Each node sent 50 MiB to one peer and received 50 MiB from another: even
        // with 64 KiB GSO packets that is hundreds of packets each way.
        assert!(encap > 300, "{n}: {encap} packets encapsulated: {a:?}");
        assert!(decap > 300, "{n}: {decap} packets decapsulated: {a:?}");
        for reason in ["direct", "direct_neigh", "local_delivery"] {
            assert_eq!(delta(b, a, "from_pod", reason), 0, "{n} used {reason}");
        }
        for (prog, reason) in [
            ("from_netdev", "decap_unknown_peer"),
            ("from_netdev", "decap_bad_header"),
            ("from_netdev", "decap_wrong_vtep"),
            ("from_netdev", "malformed"),
            ("from_pod", "adjust_failed"),
            ("from_pod", "redirect_failed"),
        ] {
            assert_eq!(delta(b, a, prog, reason), 0, "{n}: {prog} {reason}");
        }
    }
    path_mtu_discovery(&mut tb, 1500 - overhead)?;
    Ok(tb)
}

/// Pods whose MTU ignores the tunnel (1500, as a misconfigured pod would have) across
/// the router: a DF packet too big for the tunnel gets ICMP "fragmentation needed" with
/// the path MTU, and TCP between two such pods completes by path MTU discovery.
fn path_mtu_discovery(tb: &mut Testbed, path_mtu: u32) -> Result<()> {
    let a = tb.add_pod_with_conf("n1", "big", None, serde_json::json!({"mtu": 1500}))?;
    let b = tb.add_pod_with_conf("n3", "big", None, serde_json::json!({"mtu": 1500}))?;
    let before = tb.counter("n1", "from_pod", "frag_needed")?;
    let dst = b.ip.to_string();
    let out = netns::run(
        &a.ns,
        &[
            "ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1472", &dst,
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains(&format!("Frag needed and DF set (mtu = {path_mtu})")),
        "no ICMP fragmentation needed for a 1500-byte DF ping: {text}"
    );
    assert!(tb.counter("n1", "from_pod", "frag_needed")? > before);
    let route = netns::exec(&a.ns, &["ip", "route", "get", &dst])?;
    ensure!(
        route.contains(&format!("mtu {path_mtu}")),
        "the pod did not learn the path MTU: {route}"
    );
    // TCP from a pod that has not learned it yet: its first full segments are too big.
    let c = tb.add_pod_with_conf("n3", "big2", None, serde_json::json!({"mtu": 1500}))?;
    traffic::tcp_transfer(&c.ns, &a.ns, a.ip, 6200, 8 * MIB).context("TCP by PMTU discovery")?;
    assert!(tb.counter("n3", "from_pod", "frag_needed")? > 0);
    Ok(())
}

/// Through the NAT in front of n4 (one that maps UDP to ports of its own), both ways and
/// whoever sends first: n4's keepalives reach its peers, which learn the NAT's port for
/// it (vxlan, udp) and send there from their own tunnel port; then n1's and n3's pods
/// reach n4's before n4's have sent them anything, and TCP flows both ways.
fn through_nat(tb: &Testbed, name: &str) -> Result<()> {
    let n4_subnet = tb.subnet_of("n4")?;
    for peer in ["n1", "n2", "n3"] {
        tb.wait_for(
            &format!("{peer} to hear n4's keepalives"),
            std::time::Duration::from_secs(20),
            || Ok(tb.counter(peer, "from_netdev", "nat_keepalive")? > 0),
        )?;
        if name == "ipip" {
            continue;
        }
        // The route to n4 goes to the port the NAT maps n4's to, from this node's port.
        tb.wait_for(
            &format!("{peer} to send to n4's NAT port"),
            std::time::Duration::from_secs(10),
            || {
                let routes = tb.netdp_json(peer, &["route", "list"])?;
                Ok(routes.as_array().into_iter().flatten().any(|r| {
                    r["subnet"] == n4_subnet.as_str()
                        && r["port"]
                            .as_u64()
                            .is_some_and(|p| (20000..30000).contains(&p))
                        && (name != "vxlan" || r["fixedSourcePort"] == true)
                }))
            },
        )?;
    }
    let inside = tb.pod("n4", "p1");
    let decap_n4 = tb.counter("n4", "from_netdev", &format!("decap_{name}"))?;
    for from in ["n1", "n3"] {
        let outside = tb.pod(from, "p1");
        traffic::ping(&outside.ns, inside.ip, 3)
            .with_context(|| format!("{from} -> n4, {from} first"))?;
    }
    ensure!(
        tb.counter("n4", "from_netdev", &format!("decap_{name}"))? > decap_n4,
        "n4 decapsulated nothing"
    );
    let outside = tb.pod("n1", "p1");
    traffic::ping(&inside.ns, outside.ip, 3).context("n4 -> n1")?;
    traffic::tcp_transfer(&outside.ns, &inside.ns, inside.ip, 6100, 4 * MIB)
        .context("TCP n1 -> n4")?;
    traffic::tcp_transfer(&inside.ns, &outside.ns, outside.ip, 6101, 4 * MIB)
        .context("TCP n4 -> n1")?;
    Ok(())
}

#[test]
fn vxlan_carries_pod_traffic_between_every_pair_of_nodes() -> Result<()> {
    let tb = encapsulating_backend(r#"{"Type": "vxlan"}"#, "vxlan", 50)?;
    // Linux's vxlan (a flow hash for source port) could not get back through the NAT.
    through_nat(&tb, "vxlan")
}

#[test]
fn ipip_carries_pod_traffic_between_every_pair_of_nodes() -> Result<()> {
    let tb = encapsulating_backend(r#"{"Type": "ipip"}"#, "ipip", 20)?;
    // The gateway tracks protocol 4 by addresses alone: n4's keepalives keep its mapping.
    through_nat(&tb, "ipip")
}

#[test]
fn udp_carries_pod_traffic_between_every_pair_of_nodes() -> Result<()> {
    let tb = encapsulating_backend(r#"{"Type": "udp"}"#, "udp", 28)?;
    // The NAT maps n4's 8285 to a port of its own: its peers send there.
    through_nat(&tb, "udp")
}

#[test]
fn host_gw_routes_on_one_segment_and_reports_peers_it_cannot_reach() -> Result<()> {
    let tb = cluster(r#"{"Type": "host-gw"}"#)?;
    assert_eq!(pod_mtu(&tb, "n1")?, 1500);
    let before = tb.counters("n1")?;
    let delivered = tb.counter("n2", "from_netdev", "local_delivery")?;
    let mbit = exercise(&tb, "n1", "n2", 6000)?;
    println!(
        "host-gw: {} MiB byte-exact n1->n2 {mbit:.0} Mbit/s",
        TRANSFER / MIB
    );
    let after = tb.counters("n1")?;
    let direct = delta(&before, &after, "from_pod", "direct")
        + delta(&before, &after, "from_pod", "direct_neigh");
    assert!(
        direct > 300,
        "n1 -> n2 was not routed by from_pod: {after:?}"
    );
    assert!(tb.counter("n2", "from_netdev", "local_delivery")? > delivered + 300);

    // n3 is across the router and n4 behind NAT: host-gw cannot reach them, and says so
    // (once per peer in the log, per packet in a counter) instead of dropping silently.
    for peer in ["n3", "n4"] {
        let pod = tb.pod(peer, "p1");
        let before = tb.counter("n1", "from_pod", "peer_unreachable")?;
        assert!(!traffic::reachable(&tb.pod("n1", "p1").ns, pod.ip));
        assert!(tb.counter("n1", "from_pod", "peer_unreachable")? > before);
        let log = std::fs::read_to_string(tb.node("n1").agent_log())?;
        let (subnet, len) = tb.node(peer).subnet()?;
        let line = format!(
            "peer {} ({subnet}/{len}) is unreachable with the host-gw backend: it is not on \
             this node's underlay subnet 192.168.10.0: host-gw needs L2 adjacency",
            tb.node(peer).public_ip
        );
        assert_eq!(log.matches(&line).count(), 1, "{line}\n{log}");
    }
    // Nor n4 it: its peers are across its NAT, off its segment.
    let (inside, outside) = (tb.pod("n4", "p1"), tb.pod("n1", "p1"));
    assert!(
        !traffic::reachable(&inside.ns, outside.ip),
        "n4 -> n1 with host-gw"
    );
    Ok(())
}

/// DirectRouting (Flannel's name; Calico's CrossSubnet): peers on the node's own underlay
/// subnet are routed directly, only those across the router are encapsulated.
fn cross_subnet(backend: &str, name: &str) -> Result<()> {
    let spec = Spec::default()
        .underlays(2)
        .node("n1", 0)
        .node("n2", 0)
        .node("n3", 1)
        .network(&config(backend));
    let mut tb = Testbed::new(spec)?;
    tb.start_all_agents(&[])?;
    for n in ["n1", "n2", "n3"] {
        tb.add_pod(n, "p1")?;
    }
    // Same subnet: not encapsulated, in either direction.
    let before = all_counters(&tb, &["n1", "n2"])?;
    exercise(&tb, "n1", "n2", 6300)?;
    let after = all_counters(&tb, &["n1", "n2"])?;
    for n in ["n1", "n2"] {
        let (b, a) = (&before[n], &after[n]);
        let direct = delta(b, a, "from_pod", "direct") + delta(b, a, "from_pod", "direct_neigh");
        assert!(direct > 0, "{n}: {a:?}");
        assert_eq!(delta(b, a, "from_pod", &format!("encap_{name}")), 0, "{n}");
        assert_eq!(
            delta(b, a, "from_netdev", &format!("decap_{name}")),
            0,
            "{n}"
        );
    }
    assert!(delta(&before["n2"], &after["n2"], "from_netdev", "local_delivery") > 300);
    // Across the router: encapsulated both ways.
    let before = all_counters(&tb, &["n1", "n3"])?;
    exercise(&tb, "n1", "n3", 6310)?;
    let after = all_counters(&tb, &["n1", "n3"])?;
    for n in ["n1", "n3"] {
        let (b, a) = (&before[n], &after[n]);
        assert!(delta(b, a, "from_pod", &format!("encap_{name}")) > 0, "{n}");
        assert!(
            delta(b, a, "from_netdev", &format!("decap_{name}")) > 0,
            "{n}"
        );
        assert_eq!(delta(b, a, "from_pod", "direct"), 0, "{n}");
        assert_eq!(delta(b, a, "from_pod", "direct_neigh"), 0, "{n}");
    }
    let routes = tb.netdp(
        "n1",
        &[
            "route",
            "list",
            &format!("--node-name={}", tb.node("n1").ns),
        ],
    )?;
    let routes = String::from_utf8_lossy(&routes.stdout);
    let mode_of = |peer: &str| -> Result<String> {
        let ip = tb.node(peer).ip.to_string();
        routes
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(ip.as_str()))
            .and_then(|l| l.split_whitespace().nth(4))
            .map(String::from)
            .with_context(|| format!("no route via {ip}: {routes}"))
    };
    assert_eq!(mode_of("n2")?, "direct");
    assert_eq!(mode_of("n3")?, name);
    Ok(())
}

#[test]
fn vxlan_direct_routing_encapsulates_only_across_subnets() -> Result<()> {
    cross_subnet(r#"{"Type": "vxlan", "DirectRouting": true}"#, "vxlan")
}

#[test]
fn ipip_direct_routing_encapsulates_only_across_subnets() -> Result<()> {
    cross_subnet(r#"{"Type": "ipip", "DirectRouting": true}"#, "ipip")
}
