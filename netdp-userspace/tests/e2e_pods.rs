//! End to end: a namespaced cluster of real agents, CNI-wired pods and a real etcd. Nodes
//! run with IP forwarding off, so traffic that crosses a node was forwarded by netdp's
//! programs; their counters must show it too.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::Result;
use aya::programs::{SchedClassifier, TcAttachType};
use netdp_testbed::{Spec, Testbed, netns, process, traffic, wait::wait_until};

const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;

fn cluster(nodes: usize, pods: usize) -> Result<Testbed> {
    let mut tb = Testbed::new(Spec::flat(nodes).network(HOST_GW))?;
    tb.start_all_agents(&[])?;
    for n in 1..=nodes {
        for p in 1..=pods {
            tb.add_pod(&format!("n{n}"), &format!("p{p}"))?;
        }
    }
    Ok(tb)
}

#[test]
fn pod_traffic_on_one_node_and_across_nodes_is_forwarded_by_ebpf() -> Result<()> {
    let tb = cluster(3, 2)?;
    for n in &tb.nodes {
        assert_eq!(
            netns::read_sysctl(&n.ns, "net.ipv4.ip_forward")?,
            "0",
            "{} forwards by itself",
            n.name
        );
    }
    let (a1, a2, b1, c2) = (
        tb.pod("n1", "p1"),
        tb.pod("n1", "p2"),
        tb.pod("n2", "p1"),
        tb.pod("n3", "p2"),
    );
    // Pods got addresses from their node's subnet, distinct per node.
    let subnet = |ip: Ipv4Addr| ip.octets()[2];
    assert_eq!(subnet(a1.ip), subnet(a2.ip));
    assert_ne!(subnet(a1.ip), subnet(b1.ip));
    assert_ne!(subnet(b1.ip), subnet(c2.ip));

    let before = tb.counters("n1")?;
    traffic::ping(&a1.ns, a2.ip, 3)?;
    traffic::ping(&a1.ns, b1.ip, 3)?;
    traffic::ping(&b1.ns, c2.ip, 3)?;
    traffic::ping(&c2.ns, a2.ip, 3)?;

    let same = traffic::tcp_transfer(&a1.ns, &a2.ns, a2.ip, 5001, 10 << 20)?;
    let cross = traffic::tcp_transfer(&a2.ns, &b1.ns, b1.ip, 5002, 10 << 20)?;
    let back = traffic::tcp_transfer(&c2.ns, &a1.ns, a1.ip, 5003, 10 << 20)?;
    println!(
        "10 MiB byte-exact: same node {:.0} Mbit/s, n1->n2 {:.0} Mbit/s, n3->n1 {:.0} Mbit/s",
        same.mbit_per_s(),
        cross.mbit_per_s(),
        back.mbit_per_s()
    );

    let after = tb.counters("n1")?;
    let delta = |prog: &str, reason: &str| {
        let k = (prog.to_string(), reason.to_string());
        after.get(&k).copied().unwrap_or(0) - before.get(&k).copied().unwrap_or(0)
    };
    // 10 MiB in each direction is thousands of segments even with GSO.
    assert!(
        delta("from_pod", "local_delivery") > 100,
        "same-node traffic bypassed from_pod"
    );
    let to_peers = delta("from_pod", "direct") + delta("from_pod", "direct_neigh");
    assert!(
        to_peers > 100,
        "cross-node traffic bypassed from_pod: {after:?}"
    );
    assert!(
        delta("from_netdev", "local_delivery") > 100,
        "traffic from peers bypassed from_netdev"
    );
    assert_eq!(
        delta("from_pod", "malformed") + delta("from_netdev", "malformed"),
        0
    );
    assert!(tb.counter("n2", "from_netdev", "local_delivery")? > 100);
    Ok(())
}

#[test]
fn cni_del_makes_the_address_unreachable_and_free() -> Result<()> {
    let mut tb = cluster(2, 2)?;
    let victim = tb.pod("n2", "p1").clone();
    let client = tb.pod("n1", "p1").clone();
    traffic::ping(&client.ns, victim.ip, 2)?;

    tb.del_pod(&victim)?;
    assert!(
        !traffic::reachable(&client.ns, victim.ip),
        "{} still answers after DEL",
        victim.ip
    );
    // DEL again (the runtime retries) is fine.
    tb.del_pod(&victim)?;
    let eps = tb.netdp(
        "n2",
        &[
            "endpoint",
            "list",
            &format!("--node-name={}", tb.node("n2").ns),
            "-o",
            "json",
        ],
    )?;
    assert!(!String::from_utf8_lossy(&eps.stdout).contains(&victim.ip.to_string()));

    // The address is free: a new pod can have it and is reachable at it.
    let reborn = tb.add_pod_with("n2", "p3", Some(victim.ip))?;
    assert_eq!(reborn.ip, victim.ip);
    traffic::ping(&client.ns, reborn.ip, 2)?;
    Ok(())
}

#[test]
fn agent_restart_keeps_traffic_flowing_and_adopts_the_dataplane() -> Result<()> {
    const TOTAL: u64 = 48 << 20;
    const MIB: u64 = 1 << 20;
    let mut tb = cluster(2, 1)?;
    let (a, b) = (tb.pod("n1", "p1").clone(), tb.pod("n2", "p1").clone());
    let node = tb.node("n1").ns.clone();
    let progs_before = tcx_ingress_programs(&node, "eth0")?;
    assert_eq!(progs_before.len(), 1, "one program on the underlay");

    // One TCP connection, paced (64 KiB every 25 ms, about 20 s in all) across a stop and a
    // restart of n1's agent.
    let flow =
        traffic::Background::start(&a.ns, &b.ns, b.ip, 5010, TOTAL, Duration::from_millis(25));
    flow.wait_received(MIB, Duration::from_secs(20))?;

    // SIGTERM: the agent exits on its own, with status 0, within the grace period (the
    // testbed kills it only after that, and stop_agent fails if it had to).
    let stopped = tb.stop_agent("n1")?;
    println!("agent on n1 {stopped}");
    assert!(!stopped.killed, "the agent had to be killed: {stopped}");
    assert_eq!(stopped.status.code(), Some(0), "{stopped}");
    assert!(stopped.took < process::GRACE, "{stopped}");
    let log = std::fs::read_to_string(tb.node("n1").agent_log())?;
    assert!(
        log.contains("stopping; the dataplane stays in place"),
        "the agent did not say it left the dataplane: {log}"
    );

    // With no agent at all the pinned programs keep forwarding (n1 does not forward by
    // itself): the connection moves on, new flows work both ways, and the program on the
    // underlay is still the one the agent attached.
    let at_stop = flow.received();
    flow.wait_received(at_stop + 2 * MIB, Duration::from_secs(20))?;
    traffic::ping(&a.ns, b.ip, 2)?;
    traffic::tcp_transfer(&b.ns, &a.ns, a.ip, 5012, 2 * MIB)?;
    assert_eq!(tcx_ingress_programs(&node, "eth0")?, progs_before);
    assert!(!tb.node("n1").agent_running());

    tb.start_agent("n1", &[])?;
    // The connection was still going when the new agent took over, and goes on after it.
    let at_restart = flow.received();
    assert!(
        at_restart < TOTAL,
        "the transfer ended before the new agent was ready; nothing crossed the restart"
    );
    flow.wait_received(
        at_restart.saturating_add(MIB).min(TOTAL),
        Duration::from_secs(20),
    )?;
    let t = flow.join()?;
    println!(
        "48 MiB over one connection across the stop and the restart in {:?}",
        t.elapsed
    );

    let progs_after = tcx_ingress_programs(&node, "eth0")?;
    assert_eq!(
        progs_after.len(),
        1,
        "the restarted agent duplicated its program: {progs_after:?}"
    );
    assert_ne!(
        progs_before, progs_after,
        "the new agent's program replaced the old one"
    );
    let log = std::fs::read_to_string(tb.node("n1").agent_log())?;
    assert!(
        log.contains("underlay eth0 adopted"),
        "restart did not adopt: {log}"
    );
    assert!(
        log.contains("1 pod links adopted"),
        "pod link not adopted: {log}"
    );
    traffic::ping(&a.ns, b.ip, 2)?;
    traffic::tcp_transfer(&b.ns, &a.ns, a.ip, 5011, 4 << 20)?;
    Ok(())
}

/// Program ids attached (TCX) to tc ingress of an interface in a namespace.
fn tcx_ingress_programs(ns: &str, dev: &str) -> Result<Vec<u32>> {
    let dev = dev.to_string();
    netns::join(netns::in_netns(ns, move || {
        let (_, progs) = SchedClassifier::query_tcx(&dev, TcAttachType::Ingress)?;
        Ok(progs.iter().map(|p| p.id()).collect())
    })?)
}

#[test]
fn bad_input_gives_a_one_line_error_and_a_nonzero_exit() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(1))?;
    tb.etcd()
        .put("/bad/config", r#"{"Network": "10.244.0.0/33"}"#)?;
    tb.etcd().put("/bad2/config", "not json")?;
    let base = tb.agent_args("n1");
    let with = |over: &[(&str, &str)]| -> Vec<String> {
        base.iter()
            .map(|a| {
                over.iter()
                    .find(|(k, _)| a.starts_with(&format!("{k}=")))
                    .map(|(k, v)| format!("{k}={v}"))
                    .unwrap_or_else(|| a.clone())
            })
            .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            base.clone(),
            "no network config at /coreos.com/network/config",
        ),
        (
            with(&[("--etcd-prefix", "/bad")]),
            "invalid network config at /bad/config: Network",
        ),
        (
            with(&[("--etcd-prefix", "/bad2")]),
            "invalid network config at /bad2/config: config: not valid JSON",
        ),
        (
            with(&[("--etcd-endpoints", "http://127.0.0.1:1")]),
            "cannot reach etcd at http://127.0.0.1:1",
        ),
        (
            with(&[("--iface", "nope0")]),
            "interface \"nope0\" not found",
        ),
        (
            with(&[("--etcd-endpoints", "127.0.0.1:2379")]),
            "must start with http:// or https://",
        ),
    ];
    for (args, want) in cases {
        let child = tb.spawn_agent("n1", &args)?;
        let out = child.wait_with_output()?;
        let log = std::fs::read_to_string(tb.node("n1").agent_log())?;
        let last = log.lines().last().unwrap_or("").to_string();
        assert!(!out.status.success(), "agent accepted {args:?}");
        assert!(
            last.starts_with("error: ") && last.contains(want),
            "for {want:?} got: {last}"
        );
        assert!(
            !log.contains("panicked") && !log.contains("backtrace"),
            "{log}"
        );
    }
    // Wrong flags are clap's business, still one clear line and a non-zero exit.
    let out = tb.netdp("n1", &["agent", "--no-such-flag"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--no-such-flag'"));
    tb.kill_agent("n1");
    Ok(())
}

/// `ip netns exec` (how many people try namespaces) gives the agent a private /sys: it must
/// refuse before leasing anything, and say why and what to run instead.
#[test]
fn agent_under_ip_netns_exec_names_its_private_bpffs_and_leases_nothing() -> Result<()> {
    let tb = Testbed::new(Spec::flat(1).network(HOST_GW))?;
    let log = tb.node("n1").agent_log();
    let out = std::fs::File::create(&log)?;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &tb.node("n1").ns])
        .arg(&tb.bins.netdp)
        .args(tb.agent_args("n1"))
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    // It must refuse at once; an agent that runs instead is stopped and fails the test.
    let mut status = None;
    let exited = wait_until(
        "the agent under ip netns exec to exit",
        Duration::from_secs(20),
        || {
            status = child.try_wait()?;
            Ok(status.is_some())
        },
    );
    if exited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let said = std::fs::read_to_string(&log)?;
    assert!(
        status.is_some_and(|s| !s.success()),
        "the agent ran with a private bpffs ({status:?}): {said}"
    );
    assert!(
        said.contains("mount namespace of its own") && said.contains("nsenter --net="),
        "{said}"
    );
    let leases = tb.etcd().get_prefix(&format!("{}/subnets/", tb.prefix))?;
    assert!(leases.is_empty(), "leased before refusing: {leases:?}");
    Ok(())
}
