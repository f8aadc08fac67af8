//! `cargo xtask demo`: a three-node cluster in network namespaces, with a real etcd, real
//! agents and pods wired by the CNI plugin, and pod traffic carried by eBPF.
use std::time::Duration;

use anyhow::{Context, Result};
use netdp_testbed::{
    Spec, Testbed, netns,
    services::{Connect, EchoServer, echo_many},
    traffic,
};
use serde_json::json;

use crate::{build, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Keep the cluster up after the tour until Ctrl-C, to explore it by hand.
    #[arg(long)]
    pause: bool,
}

const CONFIG: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m{n}. {text}\x1b[0m");
}

fn show(title: &str, body: &str) {
    println!("   {title}");
    for line in body.lines() {
        println!("     {line}");
    }
}

pub fn run(args: Args) -> Result<()> {
    if !setup::is_root() {
        anyhow::bail!("the demo creates network namespaces and loads BPF programs: run it as root");
    }
    step(1, "Installing what is missing and building netdp (release)");
    setup::ensure_runtime()?;
    let bins = build::binaries()?;

    step(
        2,
        "Creating the cluster: 3 nodes on underlay 192.168.10.0/24, each a network namespace",
    );
    let mut tb = Testbed::new(Spec::flat(3).network(CONFIG).binaries(bins))?;
    println!(
        "   run id {} (everything is removed at the end, or on Ctrl-C)",
        tb.id
    );
    println!(
        "   etcd (Debian's etcd-server) runs in namespace {} at {}",
        tb.ctl_ns,
        tb.etcd_endpoint()
    );
    println!("   network config: {}/config = {CONFIG}", tb.prefix);
    for n in &tb.nodes {
        println!(
            "   node {} = namespace {}, eth0 {}, IP forwarding {}",
            n.name,
            n.ns,
            n.ip,
            if netns::read_sysctl(&n.ns, "net.ipv4.ip_forward")? == "0" {
                "off (only eBPF can forward)"
            } else {
                "on"
            }
        );
    }

    step(
        3,
        "Starting `netdp agent` on every node: each leases a subnet in etcd",
    );
    tb.start_all_agents(&[])?;
    let leases = tb.etcd().get_prefix(&format!("{}/subnets/", tb.prefix))?;
    show(
        "what the agents wrote to etcd (Flannel's layout and format):",
        &leases
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect::<Vec<_>>()
            .join("\n"),
    );

    step(
        4,
        "Creating 2 pods per node with the CNI plugin (CNI ADD, as a container runtime calls it)",
    );
    for n in ["n1", "n2", "n3"] {
        for p in ["p1", "p2"] {
            let pod = tb.add_pod(n, p)?;
            println!("   pod {n}/{p}: {} (namespace {})", pod.ip, pod.ns);
        }
    }

    step(5, "Pod-to-pod traffic");
    let (a1, a2, b1, c2) = (
        tb.pod("n1", "p1").clone(),
        tb.pod("n1", "p2").clone(),
        tb.pod("n2", "p1").clone(),
        tb.pod("n3", "p2").clone(),
    );
    for (from, to, what) in [
        (&a1, &a2, "same node"),
        (&a1, &b1, "n1 -> n2"),
        (&c2, &a1, "n3 -> n1"),
    ] {
        traffic::ping(&from.ns, to.ip, 3).with_context(|| format!("ping {what}"))?;
        println!("   ping {} -> {} ({what}): 3/3 answered", from.ip, to.ip);
    }
    for (from, to, what, port) in [(&a1, &a2, "same node", 5001), (&a2, &b1, "n1 -> n2", 5002)] {
        let t = traffic::tcp_transfer(&from.ns, &to.ns, to.ip, port, 50 << 20)?;
        println!(
            "   TCP 50 MiB {} -> {} ({what}): byte-exact, {:.0} Mbit/s",
            from.ip,
            to.ip,
            t.mbit_per_s()
        );
    }

    step(
        6,
        "What the agent on n1 wrote to its maps (pinned under /sys/fs/bpf/netdp/<node>/maps)",
    );
    let node = tb.node("n1").ns.clone();
    let netdp = |args: &[&str]| -> Result<String> {
        let out = tb.netdp("n1", args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let name = format!("--node-name={node}");
    show(
        "netdp route list (remote subnets -> peer nodes):",
        &netdp(&["route", "list", &name])?,
    );
    show(
        "netdp endpoint list (pods on n1, filled by the CNI plugin):",
        &netdp(&["endpoint", "list", &name])?,
    );
    let dump = setup::output(
        setup::cmd("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(tb.node("n1").map_pin(netdp_common::map_names::ROUTES)),
    )
    .unwrap_or_else(|e| format!("(bpftool: {e})"));
    show(
        "bpftool map dump of ROUTES (named fields from the programs' BTF):",
        dump.lines()
            .take(24)
            .collect::<Vec<_>>()
            .join("\n")
            .as_str(),
    );

    step(
        7,
        "A Kubernetes service: ClusterIP 10.96.0.10:80 over the p1 pods of all nodes",
    );
    let mut servers = Vec::new();
    let mut endpoints = Vec::new();
    for n in ["n1", "n2", "n3"] {
        let pod = tb.pod(n, "p1").clone();
        servers.push(EchoServer::start(&pod.ns, 8080, n)?);
        endpoints.push(json!({"ip": pod.ip.to_string(), "nodeName": tb.node(n).ns}));
    }
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        "endpoints": endpoints,
    });
    println!(
        "   netdp service apply -f web.json: {}",
        tb.apply_services(&service.to_string())?.trim()
    );
    tb.wait_services_programmed(Duration::from_secs(20))?;
    let who = echo_many(&a2.ns, Connect::new("10.96.0.10".parse()?, 80), 90)?;
    let mut tally = std::collections::BTreeMap::new();
    for w in &who {
        *tally.entry(w.as_str()).or_insert(0) += 1;
    }
    println!(
        "   90 connections from pod {} to 10.96.0.10:80, each byte-exact, served by: {tally:?}",
        a2.ip
    );
    show(
        "netdp service list (etcd, and whether n1 has programmed it):",
        &netdp(&[
            "service",
            "list",
            &name,
            &format!("--etcd-endpoints={}", tb.etcd_endpoint()),
        ])?,
    );
    show(
        "netdp lb list (the frontend as n1 balances it; * = local backend):",
        &netdp(&["lb", "list", &name])?,
    );
    drop(servers);

    step(
        8,
        "Program counters on n1: the eBPF path forwarded the traffic",
    );
    show("netdp counters:", &netdp(&["counters", &name])?);

    if args.pause {
        println!("\nThe cluster stays up; try for example:");
        println!("   ip netns exec {} ping {}", a1.ns, c2.ip);
        println!("   target/release/netdp counters --node-name={node}");
        println!("Press Ctrl-C to tear it down.");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    step(
        9,
        "Tearing down: agents stopped, namespaces deleted, pins removed",
    );
    drop(tb);
    println!("   done.");
    Ok(())
}
