//! End to end: services applied with the CLI, programmed by real agents, used by pods and
//! by an outside host. Nodes run with IP forwarding off and nothing listens on service
//! addresses, so every connection that works was translated and carried by netdp's programs.
//! (Over 500 lines: one test binary shares its clusters' setup; each test is one behaviour.)
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, ensure};
use netdp::dataplane::{Pins, conntrack::ConntrackMap, lb::LbMaps};
use netdp_testbed::{
    BPF_ROOT, Spec, Testbed,
    services::{Connect, EchoServer, HeldEcho, connect_error, echo_many, udp_many},
    testbed::OUTSIDE_IP,
};
use serde_json::{Value, json};

const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const BACKEND_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(20);
/// The LoadBalancer service's ingress address (the outside's router routes it to a node).
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);

/// A service document: `ports` as (name, protocol, port, nodePort), endpoints as (pod, node).
fn service(
    name: &str,
    extra: Value,
    ports: &[(&str, &str, u16, Option<u16>)],
    endpoints: &[(Ipv4Addr, &str)],
) -> Value {
    let mut spec = json!({
        "ports": ports.iter().map(|(n, p, port, np)| {
            let mut v = json!({"name": n, "protocol": p, "port": port, "targetPort": BACKEND_PORT});
            if let Some(np) = np {
                v["nodePort"] = json!(np);
            }
            v
        }).collect::<Vec<_>>(),
    });
    let mut metadata = json!({"name": name, "namespace": "default"});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            if k == "annotations" {
                metadata["annotations"] = v;
            } else {
                spec[k] = v;
            }
        }
    }
    json!({
        "apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec,
        "endpoints": endpoints.iter().map(|(ip, node)| json!({"ip": ip.to_string(), "nodeName": node})).collect::<Vec<_>>(),
    })
}

/// A cluster of `nodes` nodes with one backend pod on each (serving TCP and UDP on 8080,
/// introducing itself by its node name) and a client pod on n1.
fn cluster(nodes: usize, outside: bool) -> Result<(Testbed, Vec<EchoServer>)> {
    cluster_with(nodes, outside, &[])
}

fn cluster_with(nodes: usize, outside: bool, agent: &[&str]) -> Result<(Testbed, Vec<EchoServer>)> {
    let mut spec = Spec::flat(nodes).network(HOST_GW);
    if outside {
        spec = spec.outside();
    }
    let mut tb = Testbed::new(spec)?;
    tb.start_all_agents(agent)?;
    let mut servers = Vec::new();
    for n in 1..=nodes {
        let node = format!("n{n}");
        let pod = tb.add_pod(&node, "backend")?;
        servers.push(EchoServer::start(&pod.ns, BACKEND_PORT, &node)?);
    }
    tb.add_pod("n1", "client")?;
    Ok((tb, servers))
}

fn backends(tb: &Testbed, nodes: &[&str]) -> Vec<(Ipv4Addr, String)> {
    nodes
        .iter()
        .map(|n| (tb.pod(n, "backend").ip, tb.node(n).ns.clone()))
        .collect()
}

fn eps(b: &[(Ipv4Addr, String)]) -> Vec<(Ipv4Addr, &str)> {
    b.iter().map(|(ip, n)| (*ip, n.as_str())).collect()
}

/// Sockets of `node` its socket programs sent to a backend.
fn sock_nat_entries(tb: &Testbed, node: &str) -> Result<usize> {
    let pins = Pins::new(std::path::Path::new(BPF_ROOT), &tb.node(node).ns)?;
    Ok(LbMaps::open(&pins)?
        .sock_nat
        .keys()
        .filter(|k| k.is_ok())
        .count())
}

/// UDP conntrack entries on `node` (both directions) that involve `backend`, and the others.
fn udp_flows(tb: &Testbed, node: &str, backend: Ipv4Addr) -> Result<(usize, usize)> {
    let flows = tb.netdp_json(node, &["conntrack", "list"])?;
    let udp: Vec<&Value> = flows
        .as_array()
        .map(|a| a.iter().filter(|f| f["protocol"] == "UDP").collect())
        .unwrap_or_default();
    let at = format!("{backend}:");
    let involves = |f: &&&Value| {
        ["packet", "rewrittenTo"]
            .iter()
            .any(|k| f[k].as_str().is_some_and(|s| s.contains(&at)))
    };
    let to_backend = udp.iter().filter(involves).count();
    Ok((to_backend, udp.len() - to_backend))
}

fn tally(who: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for w in who {
        *m.entry(w.clone()).or_insert(0) += 1;
    }
    m
}

#[test]
fn cluster_ip_balances_translates_and_keeps_flows() -> Result<()> {
    // Closed flows stay listed for the whole test, however slow the machine.
    let (tb, _servers) = cluster_with(3, false, &["--conntrack-timeout-tcp-closing=300s"])?;
    let all = backends(&tb, &["n1", "n2", "n3"]);
    let client = tb.pod("n1", "client").clone();
    let me = tb.pod("n1", "backend").clone();
    let web = Ipv4Addr::new(10, 96, 0, 10);
    let sticky = Ipv4Addr::new(10, 96, 0, 11);
    let selfish = Ipv4Addr::new(10, 96, 0, 12);
    let empty = Ipv4Addr::new(10, 96, 0, 13);
    let docs = json!([
        service(
            "web",
            json!({"clusterIP": web.to_string()}),
            &[("http", "TCP", 80, None), ("dns", "UDP", 53, None)],
            &eps(&all)
        ),
        service(
            "sticky",
            json!({"clusterIP": sticky.to_string(), "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}),
            &[("http", "TCP", 80, None)],
            &eps(&all)
        ),
        service(
            "selfish",
            json!({"clusterIP": selfish.to_string()}),
            &[("http", "TCP", 80, None)],
            &[(me.ip, tb.node("n1").ns.as_str())]
        ),
        service(
            "empty",
            json!({"clusterIP": empty.to_string()}),
            &[("http", "TCP", 80, None), ("dns", "UDP", 53, None)],
            &[]
        ),
    ]);
    let out = tb.apply_services(&docs.to_string())?;
    assert!(out.contains("service default/web configured"), "{out}");
    tb.wait_services_programmed(WAIT)?;

    // 300 new connections from a pod, each byte-exact, spread over all three backends.
    let started = Instant::now();
    let who = echo_many(&client.ns, Connect::new(web, 80), 300)?;
    let counts = tally(&who);
    println!(
        "300 connections to {web}:80 in {:.1?}: {counts:?}",
        started.elapsed()
    );
    ensure!(counts.len() == 3, "not every backend was used: {counts:?}");
    for (node, n) in &counts {
        // Expected 100 each; the band is 5 standard deviations of a fair split.
        ensure!((60..=140).contains(n), "{node} got {n} of 300: {counts:?}");
    }

    // UDP request/response through the same service.
    let answers = udp_many(&client.ns, web, 53, 30)?;
    ensure!(
        answers.iter().all(Option::is_some),
        "UDP answers: {answers:?}"
    );
    let udp = tally(&answers.into_iter().flatten().collect::<Vec<_>>());
    ensure!(udp.len() >= 2, "UDP flows all went to one backend: {udp:?}");

    // Session affinity: one client, one backend, however many connections.
    let who = echo_many(&client.ns, Connect::new(sticky, 80), 30)?;
    ensure!(tally(&who).len() == 1, "affinity broken: {:?}", tally(&who));
    let other = echo_many(&me.ns, Connect::new(sticky, 80), 10)?;
    ensure!(
        tally(&other).len() == 1,
        "affinity broken for a second client"
    );

    // Hairpin: a pod reaching its own service, served by itself.
    let who = echo_many(&me.ns, Connect::new(selfish, 80), 5)?;
    ensure!(
        who.iter().all(|w| *w == "n1"),
        "hairpin answered by {who:?}"
    );

    // No endpoints: refused at once, not a black hole.
    let t = Instant::now();
    let err = connect_error(&client.ns, Connect::new(empty, 80))?;
    ensure!(
        err == Some(std::io::ErrorKind::ConnectionRefused),
        "connecting to a service without endpoints gave {err:?}"
    );
    ensure!(t.elapsed() < Duration::from_secs(2));
    ensure!(tb.counter("n1", "from_pod", "service_reject")? >= 1);

    // The node itself reaches services too (socket programs; two of the backends are on
    // other nodes), replies to its datagrams come from the service address, and only its
    // own sockets were touched: the other nodes' programs, attached to the same cgroup,
    // left them alone.
    let node2 = tb.node("n2").ns.clone();
    let who = echo_many(&node2, Connect::new(web, 80), 30)?;
    ensure!(tally(&who).len() == 3, "from the node: {:?}", tally(&who));
    let answers = udp_many(&node2, web, 53, 10)?;
    ensure!(
        answers.iter().all(Option::is_some),
        "UDP from the node: {answers:?}"
    );
    let err = connect_error(&node2, Connect::new(empty, 80))?;
    ensure!(
        err == Some(std::io::ErrorKind::ConnectionRefused),
        "{err:?}"
    );
    ensure!(sock_nat_entries(&tb, "n2")? >= 40);
    for n in ["n1", "n3"] {
        ensure!(
            sock_nat_entries(&tb, n)? == 0,
            "{n}'s socket programs touched another namespace"
        );
    }

    // Without the programs nothing answers at these addresses: the conntrack table shows
    // the flows it translated.
    let ct = tb.netdp(
        "n1",
        &[
            "conntrack",
            "list",
            &format!("--node-name={}", tb.node("n1").ns),
            "-o",
            "json",
        ],
    )?;
    let flows: Value = serde_json::from_slice(&ct.stdout)?;
    let n = flows.as_array().map(|a| a.len()).unwrap_or(0);
    ensure!(
        n >= 600,
        "expected both directions of the flows in conntrack, got {n}"
    );
    Ok(())
}

#[test]
fn maglev_keeps_flows_on_surviving_backends_when_one_goes() -> Result<()> {
    let (tb, servers) = cluster(3, false)?;
    let all = backends(&tb, &["n1", "n2", "n3"]);
    let client = tb.pod("n1", "client").clone();
    let vip = Ipv4Addr::new(10, 96, 1, 10);
    let svc = |b: &[(Ipv4Addr, String)]| {
        json!([service(
            "mg",
            json!({"clusterIP": vip.to_string(), "annotations": {"netdp.io/lb-algorithm": "maglev"}}),
            &[("http", "TCP", 80, None), ("dns", "UDP", 53, None)],
            &eps(b),
        )])
        .to_string()
    };
    tb.apply_services(&svc(&all))?;
    tb.wait_services_programmed(WAIT)?;

    // 90 flows with known source ports; Maglev decides each by its tuple.
    let conn = Connect {
        sport: Some(41000),
        ..Connect::new(vip, 80)
    };
    let before = echo_many(&client.ns, conn, 90)?;
    let counts = tally(&before);
    println!("maglev over 3 backends: {counts:?}");
    ensure!(counts.len() == 3, "{counts:?}");
    // The same tuples again land where they did.
    ensure!(
        echo_many(&client.ns, conn, 90)? == before,
        "maglev is not consistent"
    );

    // A long transfer through the service address that landed on n2, held open halfway
    // (so it is in flight by construction), goes on with n2 after n2 leaves the service:
    // its conntrack entry keeps it. Source ports from 42000, apart from the tuples above.
    let mut long = None;
    for i in 0..30 {
        let c = Connect {
            bytes: 8 << 20,
            sport: Some(42000 + i),
            ..Connect::new(vip, 80)
        };
        let held = HeldEcho::start(&client.ns, c, 0x1_0e6 + u64::from(i))?;
        if held.who == "n2" {
            long = Some(held);
            break;
        }
        held.finish()?;
    }
    let long = long.ok_or_else(|| anyhow!("none of 30 connections to {vip}:80 landed on n2"))?;

    // UDP flows on every backend: those to n2 have no end of their own.
    let n2 = tb.pod("n2", "backend").ip;
    let answers = udp_many(&client.ns, vip, 53, 30)?;
    let udp = tally(&answers.into_iter().flatten().collect::<Vec<_>>());
    ensure!(
        udp.len() == 3,
        "UDP flows did not reach every backend: {udp:?}"
    );
    let (to_n2, to_others) = udp_flows(&tb, "n1", n2)?;
    ensure!(to_n2 > 0 && to_others > 0, "{to_n2} / {to_others}");

    tb.apply_services(&svc(&[all[0].clone(), all[2].clone()]))?;
    tb.wait_services_programmed(WAIT)?;
    let (to_n2, to_others_after) = udp_flows(&tb, "n1", n2)?;
    ensure!(
        to_n2 == 0,
        "{to_n2} UDP conntrack entries of the removed backend are left"
    );
    ensure!(
        to_others_after == to_others,
        "UDP flows of the remaining backends went: {to_others} -> {to_others_after}"
    );
    let after = echo_many(&client.ns, conn, 90)?;
    let mut moved = 0;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        ensure!(a != "n2", "flow {i} still went to the removed backend");
        if b == "n2" {
            moved += 1;
        } else {
            ensure!(a == b, "flow {i} moved from {b} to {a} though {b} stayed");
        }
    }
    println!("removing n2 moved {moved} of 90 flows (those it had), and no other");
    ensure!(moved == counts["n2"]);
    // The rest of the held transfer, after n2 left the service: byte-exact, from n2.
    let who = long
        .finish()
        .context("the transfer held open across n2's removal")?;
    ensure!(who == "n2", "the held transfer was finished by {who}");
    drop(servers);
    Ok(())
}

/// With XDP (the default, native on the veths): the XDP program balances and translates
/// what comes from outside to remote backends, and sends it back out itself.
#[test]
fn node_ports_and_external_ips_from_outside() -> Result<()> {
    let tb = node_ports_from_outside(&[], "xdp")?;
    for n in ["n1", "n2", "n3"] {
        ensure!(
            tb.counter(n, "xdp", "direct")? >= 1,
            "{n}: XDP sent nothing to a remote backend"
        );
    }
    Ok(())
}

/// The same with `--xdp=off`: tc does all of it, and XDP is not there.
#[test]
fn node_ports_and_external_ips_from_outside_with_xdp_off() -> Result<()> {
    let tb = node_ports_from_outside(&["--xdp=off"], "from_netdev")?;
    for n in ["n1", "n2", "n3"] {
        ensure!(tb.counter(n, "xdp", "direct")? == 0);
        ensure!(tb.counter(n, "from_netdev", "direct")? >= 1);
    }
    Ok(())
}

/// Node ports, external IPs and externalTrafficPolicy Local from an outside host, with the
/// agents started with `agent`; `program` is the one expected to handle traffic from
/// outside (its counters are checked).
fn node_ports_from_outside(agent: &[&str], program: &str) -> Result<Testbed> {
    let (tb, servers) = cluster_with(3, true, agent)?;
    let all = backends(&tb, &["n1", "n2", "n3"]);
    let out_ns = tb.outside_ns.clone().expect("outside host");
    let ext = Ipv4Addr::new(198, 51, 100, 7);
    // A LoadBalancer whose address the load balancer routes to n2, by Maglev.
    let mut lb = service(
        "lb",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.2.12",
               "annotations": {"netdp.io/lb-algorithm": "maglev"}}),
        &[("http", "TCP", 80, Some(30082))],
        &eps(&all),
    );
    lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": LB_IP.to_string()}]}});
    let docs = json!([
        service(
            "np",
            json!({"type": "NodePort", "clusterIP": "10.96.2.10", "externalIPs": [ext.to_string()]}),
            &[
                ("http", "TCP", 80, Some(30080)),
                ("dns", "UDP", 53, Some(30053))
            ],
            &eps(&all)
        ),
        service(
            "local",
            json!({"type": "NodePort", "clusterIP": "10.96.2.11", "externalTrafficPolicy": "Local"}),
            &[("http", "TCP", 80, Some(30081))],
            &eps(&all[1..2])
        ),
        lb,
    ]);
    tb.apply_services(&docs.to_string())?;
    tb.wait_services_programmed(WAIT)?;
    tb.wait_next_hops_resolved(WAIT)?;

    // Every node's address serves the node port, balancing over all backends (remote ones
    // through source NAT to the node, so replies come back through it).
    let mut seen: HashMap<String, usize> = HashMap::new();
    for n in &tb.nodes {
        let who = echo_many(&out_ns, Connect::new(n.ip, 30080), 30)?;
        for w in &who {
            *seen.entry(w.clone()).or_default() += 1;
        }
        println!("outside -> {}:30080: {:?}", n.ip, tally(&who));
        let udp = udp_many(&out_ns, n.ip, 30053, 10)?;
        ensure!(
            udp.iter().all(Option::is_some),
            "UDP node port on {}: {udp:?}",
            n.name
        );
    }
    ensure!(
        seen.len() == 3,
        "node ports did not reach every backend: {seen:?}"
    );

    // An external IP routed to a node behaves like the node port, on the service port.
    tb.router_route(&format!("{ext}/32"), tb.node("n3").ip)?;
    let who = echo_many(&out_ns, Connect::new(ext, 80), 30)?;
    ensure!(tally(&who).len() == 3, "external IP: {:?}", tally(&who));

    // So does a LoadBalancer address, here balanced by Maglev: each connection (a new
    // client port, a new 5-tuple) lands by its hash, over every backend.
    tb.router_route(&format!("{LB_IP}/32"), tb.node("n2").ip)?;
    let sent_before = tb.counter("n2", program, "direct")?;
    let who = echo_many(&out_ns, Connect::new(LB_IP, 80), 30)?;
    ensure!(tally(&who).len() == 3, "LoadBalancer IP: {:?}", tally(&who));
    ensure!(
        tb.counter("n2", program, "direct")? > sent_before,
        "{program} sent none of the LoadBalancer's traffic to a remote backend"
    );

    // externalTrafficPolicy Local: the backend sees the outside host itself.
    let n2 = tb.node("n2").ip;
    let who = echo_many(&out_ns, Connect::new(n2, 30081), 10)?;
    ensure!(who.iter().all(|w| w == "n2"));
    let peers = servers[1].peers();
    ensure!(
        peers
            .iter()
            .rev()
            .take(10)
            .all(|p| p.ip() == std::net::IpAddr::V4(OUTSIDE_IP)),
        "the backend did not see the client's address: {peers:?}"
    );
    // A node without a local endpoint drops (and counts) instead of forwarding.
    let n1 = tb.node("n1").ip;
    let err = connect_error(
        &out_ns,
        Connect {
            timeout: Duration::from_secs(1),
            ..Connect::new(n1, 30081)
        },
    )?;
    ensure!(err == Some(std::io::ErrorKind::TimedOut), "{err:?}");
    ensure!(tb.counter("n1", program, "service_no_local_backend")? >= 1);
    ensure!(
        tb.counter("n1", program, "service_reply")? >= 1,
        "replies went out through {program}"
    );
    Ok(tb)
}

#[test]
fn bad_services_are_refused_or_skipped_and_the_rest_keep_working() -> Result<()> {
    // Short conntrack lifetimes, to see expired entries reclaimed.
    let (mut tb, _servers) = cluster_with(
        1,
        false,
        &[
            "--conntrack-timeout-udp=5s",
            "--conntrack-timeout-tcp-closing=5s",
            "--conntrack-gc-interval=1s",
        ],
    )?;
    let client = tb.pod("n1", "client").clone();
    let node = tb.node("n1").ns.clone();
    let be = backends(&tb, &["n1"]);
    let vip = |i: u8| Ipv4Addr::new(10, 96, 3, i);
    let svc = |name: &str, i: u8| {
        json!([service(
            name,
            json!({"clusterIP": vip(i).to_string()}),
            &[("http", "TCP", 80, None)],
            &eps(&be)
        )])
        .to_string()
    };

    // The CLI refuses what is wrong, naming the field.
    let bad = r#"{"metadata":{"name":"np"},"spec":{"type":"NodePort","clusterIP":"10.96.3.9","ports":[{"port":80,"nodePort":70000}]}}"#;
    let err = tb
        .apply_services(bad)
        .expect_err("accepted node port 70000");
    ensure!(
        format!("{err:#}").contains("spec.ports[0].nodePort: 70000 is not a port"),
        "{err:#}"
    );
    let err = tb
        .apply_services("metadata: {name: x}\nspec: {ports: [{port: 99999}]}")
        .unwrap_err();
    ensure!(
        format!("{err:#}").contains("spec.ports[0].port: 99999 is not a port"),
        "{err:#}"
    );
    tb.apply_services(&svc("good", 1))?;
    let err = tb.apply_services(&svc("copycat", 1)).unwrap_err();
    ensure!(
        format!("{err:#}").contains("10.96.3.1:80/TCP is already used by default/good"),
        "{err:#}"
    );
    tb.wait_services_programmed(WAIT)?;

    // Garbage written to etcd behind the CLI's back is skipped with one line.
    tb.etcd()
        .put("/netdp/services/default/broken", "{not json")?;
    tb.apply_services(&svc("second", 2))?;
    tb.wait_services_programmed(WAIT)?;
    let log = std::fs::read_to_string(tb.node("n1").agent_log())?;
    let lines = log.lines().filter(|l| l.contains("default/broken")).count();
    ensure!(
        lines == 1,
        "expected one line about the broken service:\n{log}"
    );
    for i in [1, 2] {
        ensure!(echo_many(&client.ns, Connect::new(vip(i), 80), 3)?.len() == 3);
    }

    // etcd goes away and comes back: the watch resumes and later changes arrive.
    tb.etcd_mut().restart()?;
    tb.apply_services(&svc("third", 3))?;
    tb.wait_services_programmed(WAIT)?;
    ensure!(echo_many(&client.ns, Connect::new(vip(3), 80), 3)?.len() == 3);

    // The flows just made are tracked, as the map dump shows field by field.
    let pins = Pins::new(std::path::Path::new(BPF_ROOT), &node)?;
    let ct = ConntrackMap::open(&pins)?;
    ensure!(!ct.is_empty());
    let maps = format!("{BPF_ROOT}/{node}/maps");
    let dump = netdp_testbed::netns::sh(std::process::Command::new("bpftool").args([
        "map",
        "dump",
        "pinned",
        &format!("{maps}/CONNTRACK"),
    ]))?;
    ensure!(
        dump.contains("\"nat_daddr\"") && dump.contains("\"expires\""),
        "{dump}"
    );

    // What is programmed is readable: the CLI and bpftool's dump of the BTF-typed maps.
    let lb = tb.netdp("n1", &["lb", "list", &format!("--node-name={node}")])?;
    let text = String::from_utf8_lossy(&lb.stdout);
    ensure!(
        text.contains("10.96.3.2:80/TCP") && text.contains(&format!("{}*", be[0].0)),
        "{text}"
    );
    let dump = netdp_testbed::netns::sh(std::process::Command::new("bpftool").args([
        "map",
        "dump",
        "pinned",
        &format!("{maps}/FRONTENDS"),
    ]))?;
    for field in [
        "\"service_id\"",
        "\"addr\": [10,96,3,2",
        "\"port\": 80,",
        "\"target_port\": 8080,",
        "\"local_count\": 1",
    ] {
        ensure!(
            dump.replace(' ', "").contains(&field.replace(' ', "")),
            "FRONTENDS dump lacks {field}: {dump}"
        );
    }
    // Flows are over: their entries expire and the agent reclaims them.
    tb.wait_for(
        "the expired conntrack entries to be reclaimed",
        Duration::from_secs(30),
        || Ok(ct.is_empty()),
    )?;

    // Deleting a service removes its frontends.
    tb.delete_service("default", "good")?;
    tb.wait_for("good's frontend to go with the service", WAIT, || {
        let lb = tb.netdp("n1", &["lb", "list", &format!("--node-name={node}")])?;
        Ok(!String::from_utf8_lossy(&lb.stdout).contains("10.96.3.1:"))
    })?;
    tb.kill_agent("n1");
    Ok(())
}

/// The XDP program's id on a node's underlay (`ip link` shows `prog/xdp id N`), if any.
fn xdp_prog_id(tb: &Testbed, node: &str) -> Result<Option<u32>> {
    let ns = tb.node(node).ns.clone();
    let out = netdp_testbed::netns::ip(&["-n", &ns, "-d", "link", "show", "eth0"])?;
    Ok(out
        .split("prog/xdp id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok()))
}

/// XDP stays attached while the agent is away (its link is pinned), a new agent swaps its
/// program in without a gap, and `--xdp=off` detaches it, tc carrying on alone.
#[test]
fn xdp_is_adopted_across_restarts_and_detached_when_turned_off() -> Result<()> {
    let (mut tb, _servers) = cluster(2, true)?;
    let out_ns = tb.outside_ns.clone().expect("outside host");
    let docs = json!([service(
        "np",
        json!({"type": "NodePort", "clusterIP": "10.96.2.20"}),
        &[("http", "TCP", 80, Some(30090))],
        &eps(&backends(&tb, &["n2"]))
    )]);
    tb.apply_services(&docs.to_string())?;
    tb.wait_services_programmed(WAIT)?;
    tb.wait_next_hops_resolved(WAIT)?;
    let n1 = tb.node("n1").ip;
    let through_xdp = |tb: &Testbed| -> Result<u64> {
        let before = tb.counter("n1", "xdp", "direct")?;
        let who = echo_many(&out_ns, Connect::new(n1, 30090), 5)?;
        ensure!(who.iter().all(|w| w == "n2"), "{who:?}");
        Ok(tb.counter("n1", "xdp", "direct")? - before)
    };
    let first = xdp_prog_id(&tb, "n1")?.context("no XDP program on n1's eth0")?;
    ensure!(through_xdp(&tb)? >= 5, "XDP carried none of it");
    // The underlay is a veth: the agent says what its other end needs.
    let log = std::fs::read_to_string(tb.node("n1").agent_log())?;
    ensure!(
        log.contains("XDP on eth0, a veth"),
        "no word about the veth underlay in n1's log"
    );

    tb.stop_agent("n1")?;
    ensure!(
        xdp_prog_id(&tb, "n1")? == Some(first),
        "XDP left with the agent"
    );
    ensure!(through_xdp(&tb)? >= 5, "XDP stopped with the agent");

    tb.start_agent("n1", &[])?;
    let second = xdp_prog_id(&tb, "n1")?.context("no XDP program after the restart")?;
    ensure!(
        second != first,
        "the new agent's program did not replace the old one"
    );
    ensure!(
        through_xdp(&tb)? >= 5,
        "XDP carried none of it after the restart"
    );

    tb.stop_agent("n1")?;
    tb.start_agent("n1", &["--xdp=off"])?;
    ensure!(
        xdp_prog_id(&tb, "n1")?.is_none(),
        "--xdp=off left XDP attached"
    );
    let tc_before = tb.counter("n1", "from_netdev", "service_reply")?;
    ensure!(through_xdp(&tb)? == 0, "XDP counted traffic while off");
    ensure!(tb.counter("n1", "from_netdev", "service_reply")? > tc_before);
    Ok(())
}
