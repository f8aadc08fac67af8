//! End to end, services and backends together: a vxlan cluster (DirectRouting off) on two
//! underlay subnets joined by a router, a client pod on n1, the service's backends on n2
//! (same subnet) and n3 (across the router). Every service packet between nodes was
//! translated by the programs and carried in VXLAN: nodes forward nothing themselves
//! (ip_forward=0), nothing listens on the service addresses, and no route outside the
//! programs leads to the pods.
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Result, ensure};
use netdp_testbed::{
    Spec, Testbed, netns,
    services::{Connect, EchoServer, echo_many, udp_many},
};
use serde_json::json;

const VXLAN: &str =
    r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": false}}"#;
const BACKEND_PORT: u16 = 8080;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 3, 10);
const NODE_PORT: u16 = 30090;

type Counters = HashMap<(String, String), u64>;

fn delta(before: &Counters, after: &Counters, prog: &str, reason: &str) -> u64 {
    let k = (prog.to_string(), reason.to_string());
    after.get(&k).copied().unwrap_or(0) - before.get(&k).copied().unwrap_or(0)
}

fn tally(who: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for w in who {
        *m.entry(w.clone()).or_insert(0) += 1;
    }
    m
}

#[test]
fn cluster_ip_to_remote_backends_is_translated_then_encapsulated() -> Result<()> {
    let spec = Spec::default()
        .underlays(2)
        .node("n1", 0)
        .node("n2", 0)
        .node("n3", 1)
        .outside()
        .network(VXLAN);
    let mut tb = Testbed::new(spec)?;
    tb.start_all_agents(&[])?;
    let client = tb.add_pod("n1", "client")?;
    let mut servers = Vec::new();
    let mut endpoints = Vec::new();
    for n in ["n2", "n3"] {
        let pod = tb.add_pod(n, "backend")?;
        servers.push(EchoServer::start(&pod.ns, BACKEND_PORT, n)?);
        endpoints.push(json!({"ip": pod.ip.to_string(), "nodeName": tb.node(n).ns}));
    }
    let doc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "remote", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": VIP.to_string(), "ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": BACKEND_PORT, "nodePort": NODE_PORT},
            {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": BACKEND_PORT, "nodePort": NODE_PORT},
        ]},
        "endpoints": endpoints,
    });
    tb.apply_services(&doc.to_string())?;
    tb.wait_services_programmed(Duration::from_secs(20))?;
    let nodes = ["n1", "n2", "n3"];
    for n in nodes {
        ensure!(netns::read_sysctl(&tb.node(n).ns, "net.ipv4.ip_forward")? == "0");
    }
    let before: HashMap<&str, Counters> = nodes
        .iter()
        .map(|n| Ok((*n, tb.counters(n)?)))
        .collect::<Result<_>>()?;
    let flows_before = tb.event("n1", "from_pod", "service_flow")?;

    // TCP from the pod: 60 connections of 64 KiB each (GSO-sized segments through the
    // translation and the tunnel), byte-exact, over both remote backends.
    let who = echo_many(
        &client.ns,
        Connect {
            bytes: 64 << 10,
            ..Connect::new(VIP, 80)
        },
        60,
    )?;
    let counts = tally(&who);
    println!("60 connections to {VIP}:80 through vxlan: {counts:?}");
    ensure!(
        counts.keys().eq(["n2", "n3"].iter()),
        "both remote backends serve: {counts:?}"
    );
    // UDP through the same service: every request answered, from the service address.
    let answers = udp_many(&client.ns, VIP, 53, 20)?;
    ensure!(answers.iter().all(Option::is_some), "UDP: {answers:?}");

    let after: HashMap<&str, Counters> = nodes
        .iter()
        .map(|n| Ok((*n, tb.counters(n)?)))
        .collect::<Result<_>>()?;
    let d = |n: &str, prog: &str, reason: &str| delta(&before[n], &after[n], prog, reason);
    // n1 load balanced every flow (one event per new flow), then encapsulated it: the
    // backends are all remote, and with DirectRouting off even n2 on the same subnet is
    // reached through the tunnel.
    let flows = tb.event("n1", "from_pod", "service_flow")? - flows_before;
    println!(
        "n1: {flows} service flows, {} packets encapsulated, {} decapsulated; n2/n3 \
         decapsulated {}/{}",
        d("n1", "from_pod", "encap_vxlan"),
        d("n1", "from_netdev", "decap_vxlan"),
        d("n2", "from_netdev", "decap_vxlan"),
        d("n3", "from_netdev", "decap_vxlan"),
    );
    ensure!(
        flows >= 80,
        "{flows} service flows translated on n1 (60 TCP + 20 UDP)"
    );
    ensure!(
        d("n1", "from_pod", "encap_vxlan") > 180,
        "n1 encapsulated {}",
        d("n1", "from_pod", "encap_vxlan")
    );
    for reason in ["direct", "direct_neigh", "local_delivery"] {
        ensure!(
            d("n1", "from_pod", reason) == 0,
            "n1 from_pod used {reason}"
        );
    }
    // The replies came back in VXLAN and were translated back after decapsulation.
    ensure!(d("n1", "from_netdev", "decap_vxlan") > 200);
    // Each backend's node decapsulated the requests and encapsulated the replies.
    for n in ["n2", "n3"] {
        ensure!(d(n, "from_netdev", "decap_vxlan") > 50, "{n} decapsulated");
        ensure!(d(n, "from_pod", "encap_vxlan") > 50, "{n} encapsulated");
        ensure!(
            tb.event(n, "from_pod", "service_flow")? == 0,
            "{n} translated nothing: the client's node did"
        );
    }
    for (n, c) in &after {
        for reason in ["decap_no_endpoint", "decap_unknown_peer", "adjust_failed"] {
            ensure!(
                c.get(&("from_netdev".to_string(), reason.to_string()))
                    .is_none(),
                "{n} counted {reason}: {c:?}"
            );
        }
    }

    // From outside, the node port on n1: source NAT to n1's gateway address, translated
    // request encapsulated on the underlay itself (in XDP once the next hop's MAC is
    // known, in tc before), replies decapsulated by tc, translated back and sent out to
    // the client.
    let out_ns = tb.outside_ns.clone().expect("outside host");
    let n1 = tb.node("n1").ip;
    tb.wait_next_hops_resolved(Duration::from_secs(20))?;
    let both = |kind: &str| -> Result<u64> {
        let mut n = 0;
        for prog in ["xdp", "from_netdev"] {
            n += if kind == "service_snat" {
                tb.event("n1", prog, kind)?
            } else {
                tb.counter("n1", prog, kind)?
            };
        }
        Ok(n)
    };
    let snat_before = both("service_snat")?;
    let encap_before = both("encap_vxlan")?;
    let xdp_before = tb.counter("n1", "xdp", "encap_vxlan")?;
    let who = echo_many(&out_ns, Connect::new(n1, NODE_PORT), 20)?;
    let served = tally(&who);
    println!("outside -> {n1}:{NODE_PORT}: {served:?}");
    ensure!(served.len() == 2, "{served:?}");
    ensure!(both("service_snat")? - snat_before >= 20);
    ensure!(both("encap_vxlan")? > encap_before);
    ensure!(
        tb.counter("n1", "xdp", "encap_vxlan")? > xdp_before,
        "XDP encapsulated none of it"
    );
    ensure!(tb.counter("n1", "from_netdev", "service_reply")? > 0);
    // The backends saw n1's gateway address (its first pod address), not the client.
    let (subnet, _) = tb.node("n1").subnet()?;
    let gateway = std::net::IpAddr::V4(Ipv4Addr::from(u32::from(subnet) + 1));
    for (server, n) in servers.iter().zip(["n2", "n3"]) {
        let peers = server.peers();
        let last = &peers[peers.len() - served[n]..];
        ensure!(
            last.iter().all(|p| p.ip() == gateway),
            "{n} saw node port clients as {last:?}, not {gateway}"
        );
    }
    Ok(())
}
