//! End to end, two clusters in gateway mode (Submariner's model, the seeds' case): east
//! (10.244.0.0/16: e1 and e2 gateway candidates, e3 not) and west (10.245.0.0/16: w1, its
//! gateway, behind a NAT that maps UDP to ports of its own, and w2), each with its own
//! etcd and underlay, joined by a router that lets nothing cross between the underlays
//! but etcd and the gateway tunnel (UDP 4800). Pods of both reach each other through the
//! active gateways; when east's active gateway dies mid-transfer the other takes over
//! within its lease's lifetime, and the transfer completes.
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use netdp_testbed::{Spec, Testbed, netns, traffic};

const MIB: u64 = 1 << 20;
const TTL: &str = "--gateway-lease-ttl=4s";

fn config(name: &str, id: u8, network: &str, other: &str, other_etcd: &str) -> String {
    format!(
        r#"{{"Network": "{network}", "Backend": {{"Type": "vxlan"}},
            "ClusterName": "{name}", "ClusterID": {id},
            "Clusters": [{{"Name": "{other}", "Mode": "gateway",
                           "Endpoints": ["http://{other_etcd}:2379"]}}]}}"#
    )
}

/// Nothing crosses the router between the two underlays but etcd and the gateway tunnel.
fn only_gateways_cross(tb: &Testbed) -> Result<()> {
    let rt = tb.router_ns.clone().context("a router")?;
    let rules: [&[&str]; 6] = [
        &[
            "-A",
            "FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ],
        &[
            "-A", "FORWARD", "-p", "tcp", "--dport", "2379", "-j", "ACCEPT",
        ],
        &[
            "-A", "FORWARD", "-p", "udp", "--dport", "4800", "-j", "ACCEPT",
        ],
        &[
            "-A", "FORWARD", "-p", "udp", "--sport", "4800", "-j", "ACCEPT",
        ],
        &[
            "-A",
            "FORWARD",
            "-s",
            "192.168.10.0/24",
            "-d",
            "192.168.20.0/24",
            "-j",
            "DROP",
        ],
        &[
            "-A",
            "FORWARD",
            "-s",
            "192.168.20.0/24",
            "-d",
            "192.168.10.0/24",
            "-j",
            "DROP",
        ],
    ];
    for r in rules {
        let mut args = vec!["iptables"];
        args.extend_from_slice(r);
        netns::exec(&rt, &args)?;
    }
    Ok(())
}

/// The route `node` has for `subnet`: (peer address, mode).
fn route_of(tb: &Testbed, node: &str, subnet: &str) -> Result<Option<(String, String)>> {
    let routes = tb.netdp_json(node, &["route", "list"])?;
    Ok(routes.as_array().into_iter().flatten().find_map(|r| {
        (r["subnet"] == subnet).then(|| {
            (
                r["node"].as_str().unwrap_or_default().to_string(),
                r["mode"].as_str().unwrap_or_default().to_string(),
            )
        })
    }))
}

/// Waits until `node` sends `subnet` to a port the NAT in front of w1 maps (20000-29999).
fn wait_nat_port(tb: &Testbed, node: &str, subnet: &str) -> Result<()> {
    tb.wait_for(
        &format!("{node} to learn the NAT's port for {subnet}"),
        Duration::from_secs(30),
        || {
            let routes = tb.netdp_json(node, &["route", "list"])?;
            Ok(routes.as_array().into_iter().flatten().any(|r| {
                r["subnet"] == subnet
                    && r["port"]
                        .as_u64()
                        .is_some_and(|p| (20000..30000).contains(&p))
            }))
        },
    )?;
    Ok(())
}

fn wait_route(tb: &Testbed, node: &str, subnet: &str, to: &str, mode: &str) -> Result<()> {
    tb.wait_for(
        &format!("{node} to route {subnet} to {to} ({mode})"),
        Duration::from_secs(30),
        || Ok(route_of(tb, node, subnet)? == Some((to.to_string(), mode.to_string()))),
    )?;
    Ok(())
}

/// Every node's non-zero counters, for a failure's message.
fn counters(tb: &Testbed) -> String {
    let mut out = Vec::new();
    for n in ["e1", "e2", "e3", "w1", "w2"] {
        let mut c: Vec<String> = tb
            .counters(n)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .map(|((p, r), v)| format!("{p}/{r}={v}"))
            .collect();
        c.sort();
        out.push(format!("{n}: {}", c.join(" ")));
    }
    out.join("\n")
}

#[test]
fn pods_reach_another_cluster_through_the_gateways_and_survive_a_gateway_failing() -> Result<()> {
    let spec = Spec::default()
        .underlays(2)
        .network(&config("east", 1, "10.244.0.0/16", "west", "192.168.20.2"))
        .cluster(&config("west", 2, "10.245.0.0/16", "east", "192.168.10.2"))
        .cluster_node("e1", 0, 0)
        .cluster_node("e2", 0, 0)
        .cluster_node("e3", 0, 0)
        .cluster_nat_node("w1", 1, 1)
        .cluster_node("w2", 1, 1);
    let mut tb = Testbed::new(spec)?;
    only_gateways_cross(&tb)?;
    // e1 stands first, so it is east's active gateway; e2 waits.
    tb.start_agent("e1", &["--gateway", TTL])?;
    tb.start_agent("e2", &["--gateway", TTL])?;
    tb.start_agent("e3", &[])?;
    tb.start_agent("w1", &["--gateway", TTL])?;
    tb.start_agent("w2", &[])?;
    for n in ["e1", "e2", "e3", "w1", "w2"] {
        tb.add_pod(n, "p1")?;
    }
    let ips: std::collections::HashMap<String, String> = ["e1", "e2"]
        .iter()
        .map(|n| (n.to_string(), tb.node(n).ip.to_string()))
        .collect();
    let ip = |n: &str| ips[n].clone();
    let w1_public = tb.node("w1").public_ip.to_string();
    // East's nodes send west's Network to e1, e1 into the tunnel to w1's NAT; and back.
    wait_route(&tb, "e3", "10.245.0.0/16", &ip("e1"), "vxlan")?;
    wait_route(&tb, "e2", "10.245.0.0/16", &ip("e1"), "vxlan")?;
    wait_route(&tb, "e1", "10.245.0.0/16", &w1_public, "gateway")?;
    wait_route(&tb, "w2", "10.244.0.0/16", &w1_public, "vxlan")?;
    wait_route(&tb, "w1", "10.244.0.0/16", &ip("e1"), "gateway")?;
    // What the operator sees on e3: east's active gateway e1, west's w1 at its NAT.
    let out = tb.netdp("e3", &["cluster", "list", "-o", "json"])?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let by_name = |n: &str| {
        list.as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == n)
            .cloned()
            .unwrap_or_default()
    };
    let (east, west) = (by_name("east"), by_name("west"));
    ensure!(
        east["gateway"]["node"] == tb.node("e1").ns.as_str(),
        "{list}"
    );
    ensure!(
        west["mode"] == "gateway" && west["state"] == "connected",
        "{list}"
    );
    ensure!(
        west["gateway"]["endpoint"] == format!("{w1_public}:4800").as_str(),
        "{list}"
    );
    // Through w1's NAT: e1 to the port it maps w1's gateway port to, w2 to the one it maps
    // w1's vxlan port to (learned from w1's keepalives).
    wait_nat_port(&tb, "e1", "10.245.0.0/16")?;
    let w1_subnet = tb.subnet_of("w1")?;
    wait_nat_port(&tb, "w2", &w1_subnet)?;
    // Only the gateways reach across: e3 can't reach west's nodes, nor w2 east's.
    ensure!(!traffic::reachable(&tb.node("e3").ns, tb.node("w2").ip));
    ensure!(!traffic::reachable(&tb.node("w2").ns, tb.node("e3").ip));

    let was = |n: &str| -> Result<(u64, u64)> {
        Ok((
            tb.counter(n, "from_netdev", "encap_gateway")?,
            tb.counter(n, "from_netdev", "encap_vxlan")?,
        ))
    };
    let (e1_was, w1_was) = (was("e1")?, was("w1")?);
    // Pods of non-gateway nodes, both ways, and of the gateways themselves.
    let pods: std::collections::HashMap<String, netdp_testbed::Pod> =
        ["e1", "e2", "e3", "w1", "w2"]
            .iter()
            .map(|n| (n.to_string(), tb.pod(n, "p1").clone()))
            .collect();
    let pod = |n: &str| pods[n].clone();
    for (a, b) in [
        ("e3", "w2"),
        ("w2", "e3"),
        ("e1", "w1"),
        ("w1", "e2"),
        ("e2", "w2"),
    ] {
        traffic::ping(&pod(a).ns, pod(b).ip, 3).with_context(|| {
            format!(
                "ping {a} -> {b}; counters: {}\n{}",
                counters(&tb),
                tb.agent_logs(25)
            )
        })?;
    }
    let mut report = Vec::new();
    for (i, (a, b)) in [("e3", "w2"), ("w2", "e3")].iter().enumerate() {
        let t = traffic::tcp_transfer(&pod(a).ns, &pod(b).ns, pod(b).ip, 7200 + i as u16, 50 * MIB)
            .with_context(|| format!("TCP {a} -> {b}"))?;
        report.push(format!("{a}->{b} {:.0} Mbit/s", t.mbit_per_s()));
    }
    println!(
        "through the gateways: 50 MiB byte-exact: {}",
        report.join(", ")
    );
    // The gateways' programs carried it, each way: what came from their cluster went into
    // the gateway tunnel, what came out of it went on to the pod's node in vxlan.
    for (n, (tunnel_was, relay_was)) in [("e1", e1_was), ("w1", w1_was)] {
        let tunnel = tb.counter(n, "from_netdev", "encap_gateway")? - tunnel_was;
        let relayed = tb.counter(n, "from_netdev", "encap_vxlan")? - relay_was;
        ensure!(
            tunnel > 300,
            "{n}: {tunnel} packets into the gateway tunnel"
        );
        ensure!(
            relayed > 300,
            "{n}: {relayed} packets from the tunnel relayed on"
        );
    }
    ensure!(
        tb.counter("e1", "from_netdev", "nat_keepalive")? > 0,
        "e1 learned w1's NAT port from its keepalives"
    );

    // e1 dies mid-transfer (its agent killed, its link down): e2 takes over within the
    // gateway lease's lifetime, and the transfer completes byte for byte.
    let bg = traffic::Background::start(
        &pod("e3").ns,
        &pod("w2").ns,
        pod("w2").ip,
        7300,
        24 * MIB,
        Duration::from_millis(20),
    );
    bg.wait_received(2 * MIB, Duration::from_secs(30))?;
    tb.kill_agent("e1");
    netns::exec(&tb.node("e1").ns, &["ip", "link", "set", "eth0", "down"])?;
    let killed = Instant::now();
    let at_kill = bg.received();
    // The path's own gap: until a ping gets through the new gateway both ways (TCP's
    // retransmission backoff would add up to its next timer on top).
    let (from, to) = (pod("e3"), pod("w2"));
    let mut path_gap = None;
    while killed.elapsed() < Duration::from_secs(30) {
        if traffic::reachable(&from.ns, to.ip) {
            path_gap = Some(killed.elapsed());
            break;
        }
    }
    let path_gap = path_gap.context("no path through e2 within 30 s")?;
    // The transfer moves on after TCP's next retransmission.
    bg.wait_received(at_kill + 64 * 1024, Duration::from_secs(60))?;
    let resumed = killed.elapsed();
    let t = bg.join().context("the transfer across the failover")?;
    println!(
        "east's active gateway killed: pods reach across through e2 after {:.1} s (gateway \
         lease 4 s); the TCP transfer moved on after {:.1} s (its retransmission backoff on \
         top) and completed, 24 MiB byte-exact at {:.0} Mbit/s",
        path_gap.as_secs_f64(),
        resumed.as_secs_f64(),
        t.mbit_per_s()
    );
    // Within the lease's lifetime plus a few seconds (each node reads the key every
    // second, then reprograms its routes).
    ensure!(
        path_gap < Duration::from_secs(4 + 5),
        "path gap {path_gap:?}"
    );
    wait_route(&tb, "e3", "10.245.0.0/16", &ip("e2"), "vxlan")?;
    wait_route(&tb, "w1", "10.244.0.0/16", &ip("e2"), "gateway")?;
    traffic::ping(&pod("w2").ns, pod("e3").ip, 3).context("w2 -> e3 through e2")?;
    Ok(())
}
