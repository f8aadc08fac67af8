//! End to end, direct server return: a vxlan cluster on two underlay subnets joined by a
//! router (n1 and n2 on one, n3 on the other), an outside host behind the router, backends
//! on n2 and n3. The outside host reaches a node port on n1 and a LoadBalancer IP routed to
//! n1 (by Maglev), both `netdp.io/forwarding-mode: dsr`: n1 sends each packet on
//! untranslated inside VXLAN with the backend in an IP option, the backend's node
//! translates it and answers the client itself from n1's address. Shown from both ends:
//! the backends see the client's own address, and n1 sees none of the replies (no
//! tunnelled reply came back, nothing was reverse-translated there). The same with XDP
//! (n1's XDP program carries the requests) and with `--xdp=off` (tc does).
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use anyhow::{Result, ensure};
use netdp_testbed::{
    Spec, Testbed,
    services::{Connect, EchoServer, echo_many, udp_many},
    testbed::OUTSIDE_IP,
};
use serde_json::json;

const VXLAN: &str =
    r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": false}}"#;
const BACKEND_PORT: u16 = 8080;
const NODE_PORT: u16 = 30095;
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
const WAIT: Duration = Duration::from_secs(20);

type Counters = HashMap<(String, String), u64>;

fn tally(who: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for w in who {
        *m.entry(w.clone()).or_insert(0) += 1;
    }
    m
}

#[test]
fn node_port_and_load_balancer_ip_with_direct_server_return() -> Result<()> {
    dsr_from_outside(&[], "xdp")
}

#[test]
fn node_port_and_load_balancer_ip_with_direct_server_return_and_xdp_off() -> Result<()> {
    dsr_from_outside(&["--xdp=off"], "from_netdev")
}

/// The scenario with agents started with `agent`; `program` is the one on n1 that is to
/// carry the requests.
fn dsr_from_outside(agent: &[&str], program: &str) -> Result<()> {
    let spec = Spec::default()
        .underlays(2)
        .node("n1", 0)
        .node("n2", 0)
        .node("n3", 1)
        .outside()
        .network(VXLAN);
    let mut tb = Testbed::new(spec)?;
    tb.start_all_agents(agent)?;
    let mut servers = Vec::new();
    let mut endpoints = Vec::new();
    for n in ["n2", "n3"] {
        let pod = tb.add_pod(n, "backend")?;
        servers.push(EchoServer::start(&pod.ns, BACKEND_PORT, n)?);
        endpoints.push(json!({"ip": pod.ip.to_string(), "nodeName": tb.node(n).ns}));
    }
    let dsr = json!({"netdp.io/forwarding-mode": "dsr"});
    let docs = json!([
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "np", "namespace": "default", "annotations": dsr},
            "spec": {"type": "NodePort", "clusterIP": "10.96.4.10", "ports": [
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": BACKEND_PORT, "nodePort": NODE_PORT},
                {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": BACKEND_PORT, "nodePort": NODE_PORT},
            ]},
            "endpoints": endpoints,
        },
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "lb", "namespace": "default", "annotations": {
                "service.cilium.io/forwarding-mode": "dsr", "netdp.io/lb-algorithm": "maglev"}},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.4.11", "ports": [
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": BACKEND_PORT, "nodePort": 30096},
            ]},
            "status": {"loadBalancer": {"ingress": [{"ip": LB_IP.to_string()}]}},
            "endpoints": endpoints,
        },
    ]);
    tb.apply_services(&docs.to_string())?;
    tb.wait_services_programmed(WAIT)?;
    tb.wait_next_hops_resolved(WAIT)?;
    tb.router_route(&format!("{LB_IP}/32"), tb.node("n1").ip)?;
    let out_ns = tb.outside_ns.clone().expect("outside host");
    let n1 = tb.node("n1").ip;
    let nodes = ["n1", "n2", "n3"];
    let snapshot = |tb: &Testbed| -> Result<HashMap<&str, Counters>> {
        nodes.iter().map(|n| Ok((*n, tb.counters(n)?))).collect()
    };
    let events = |tb: &Testbed, node: &str, event: &str| -> Result<u64> {
        let mut sum = 0;
        for prog in ["xdp", "from_netdev", "from_pod"] {
            sum += tb.event(node, prog, event)?;
        }
        Ok(sum)
    };
    let before = snapshot(&tb)?;
    let dsr_before = events(&tb, "n1", "service_dsr")?;
    let snat_before = events(&tb, "n1", "service_snat")?;

    // TCP: 30 connections of 256 KiB each (full-sized segments, which with the option
    // must fit the tunnel: the client learns the path MTU), byte-exact, over both backends.
    let who = echo_many(
        &out_ns,
        Connect {
            bytes: 256 << 10,
            timeout: Duration::from_secs(10),
            ..Connect::new(n1, NODE_PORT)
        },
        30,
    )?;
    let served = tally(&who);
    println!("outside -> {n1}:{NODE_PORT} (dsr): {served:?}");
    ensure!(served.len() == 2, "both remote backends serve: {served:?}");
    // UDP: every datagram answered from the node port's address.
    let answers = udp_many(&out_ns, n1, NODE_PORT, 20)?;
    ensure!(answers.iter().all(Option::is_some), "UDP: {answers:?}");
    // The LoadBalancer IP, by Maglev: new client ports land on both backends.
    let who = echo_many(&out_ns, Connect::new(LB_IP, 80), 30)?;
    let lb_served = tally(&who);
    println!("outside -> {LB_IP}:80 (dsr, maglev): {lb_served:?}");
    ensure!(lb_served.len() == 2, "LoadBalancer IP: {lb_served:?}");

    let after = snapshot(&tb)?;
    let d = |n: &str, prog: &str, reason: &str| {
        let k = (prog.to_string(), reason.to_string());
        after[n].get(&k).copied().unwrap_or(0) - before[n].get(&k).copied().unwrap_or(0)
    };
    let dsr_flows = events(&tb, "n1", "service_dsr")? - dsr_before;
    let dispatched = d("n1", program, "encap_vxlan");
    println!(
        "n1: {dsr_flows} DSR flows, {dispatched} packets sent on by {program}, {} replies \
         decapsulated, {} reverse-translated; n2/n3: {}/{} DSR flows opened, {}/{} replies \
         straight to the client",
        d("n1", "from_netdev", "decap_vxlan"),
        d("n1", "from_netdev", "service_reply") + d("n1", "xdp", "service_reply"),
        events(&tb, "n2", "dsr_flow")?,
        events(&tb, "n3", "dsr_flow")?,
        d("n2", "from_pod", "service_reply"),
        d("n3", "from_pod", "service_reply"),
    );
    ensure!(dsr_flows >= 80, "{dsr_flows} DSR flows (30 + 20 + 30)");
    ensure!(
        events(&tb, "n1", "service_snat")? == snat_before,
        "n1 source-NATed"
    );
    ensure!(dispatched > 200, "{program} on n1 sent on {dispatched}");
    if program == "from_netdev" {
        ensure!(d("n1", "xdp", "encap_vxlan") == 0, "XDP ran with --xdp=off");
    }
    // Nothing came back through n1.
    ensure!(
        d("n1", "from_netdev", "decap_vxlan") == 0,
        "replies came back to n1"
    );
    for prog in ["xdp", "from_netdev"] {
        ensure!(
            d("n1", prog, "service_reply") == 0,
            "n1 {prog} translated replies"
        );
    }
    // Each backend's node opened the flows and answered the client itself.
    for n in ["n2", "n3"] {
        ensure!(events(&tb, n, "dsr_flow")? >= 10, "{n} opened no DSR flows");
        ensure!(
            d(n, "from_pod", "service_reply") > 50,
            "{n} replied to the client"
        );
        ensure!(
            d(n, "from_pod", "encap_vxlan") == 0,
            "{n} tunnelled replies"
        );
    }
    for (n, c) in &after {
        for reason in [
            "service_dsr_no_endpoint",
            "service_dsr_tuple_taken",
            "decap_spoofed_source",
            "adjust_failed",
            "service_not_syn",
        ] {
            for prog in ["xdp", "from_netdev", "from_pod"] {
                ensure!(
                    !c.contains_key(&(prog.to_string(), reason.to_string())),
                    "{n} {prog} counted {reason}"
                );
            }
        }
    }
    // The backends saw the client's own address.
    for (server, n) in servers.iter().zip(["n2", "n3"]) {
        let peers = server.peers();
        ensure!(
            peers.iter().all(|p| p.ip() == IpAddr::V4(OUTSIDE_IP)),
            "{n} saw {peers:?}, not the client {OUTSIDE_IP}"
        );
    }
    Ok(())
}
