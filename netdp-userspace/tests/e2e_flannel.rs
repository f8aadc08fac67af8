//! Interoperability with Flannel on the same etcd: a node set up exactly as flanneld
//! sets one up (kernel VXLAN device flannel.1, VNI 1, port 8472, no learning, per-peer
//! onlink route, neighbour and FDB entries; or host-gw routes) and netdp nodes exchange
//! pod traffic in both directions, each side using the other's lease. The same with
//! leases in Node objects (flanneld's and netdp's `--kube-subnet-mgr`, against the
//! testbed's replay API server): each side reads the other's Flannel annotations.
use std::net::Ipv4Addr;

use anyhow::{Context, Result, ensure};
use netdp_testbed::{
    Spec, Testbed,
    flannel::{ANNOTATION_PREFIX, FlannelBackend, FlannelNode, Store, VXLAN_DEV},
    kube_api::{self, ReplayApiServer},
    netns, traffic,
};

const MIB: u64 = 1 << 20;

fn mixed_cluster(backend: &str, flannel: FlannelBackend) -> Result<(Testbed, FlannelNode)> {
    let spec = Spec::flat(2).node("f1", 0).network(&format!(
        r#"{{"Network": "10.244.0.0/16", "Backend": {backend}}}"#
    ));
    let mut tb = Testbed::new(spec)?;
    tb.start_agent("n1", &[])?;
    tb.start_agent("n2", &[])?;
    let mut f = FlannelNode::start(&tb, "f1", flannel)?;
    ensure!(
        f.sync_peers(&tb)? == 2,
        "the Flannel node sees both netdp leases"
    );
    f.add_pod(&mut tb, "p1")?;
    tb.add_pod("n1", "p1")?;
    tb.add_pod("n2", "p1")?;
    // The netdp agents pick up the Flannel lease from their watch.
    let (subnet, _) = f.subnet;
    let ns = tb.node("n1").ns.clone();
    tb.wait_for(
        &format!("n1's route to the Flannel node's {subnet}"),
        std::time::Duration::from_secs(10),
        || {
            let out = tb.netdp("n1", &["route", "list", &format!("--node-name={ns}")])?;
            Ok(String::from_utf8_lossy(&out.stdout).contains(&subnet.to_string()))
        },
    )?;
    Ok((tb, f))
}

fn both_ways(tb: &Testbed, netdp: &str, port: u16) -> Result<()> {
    let (f, n) = (tb.pod("f1", "p1"), tb.pod(netdp, "p1"));
    traffic::ping(&f.ns, n.ip, 3).with_context(|| format!("Flannel pod -> {netdp}"))?;
    traffic::ping(&n.ns, f.ip, 3).with_context(|| format!("{netdp} -> Flannel pod"))?;
    traffic::tcp_transfer(&f.ns, &n.ns, n.ip, port, 20 * MIB)
        .with_context(|| format!("TCP Flannel pod -> {netdp}"))?;
    traffic::tcp_transfer(&n.ns, &f.ns, f.ip, port + 1, 20 * MIB)
        .with_context(|| format!("TCP {netdp} -> Flannel pod"))?;
    let echoed = traffic::udp_echo(&n.ns, &f.ns, f.ip, port + 2, 30)?;
    ensure!(echoed == 30, "UDP {netdp} -> Flannel pod: {echoed} of 30");
    let echoed = traffic::udp_echo(&f.ns, &n.ns, n.ip, port + 3, 30)?;
    ensure!(echoed == 30, "UDP Flannel pod -> {netdp}: {echoed} of 30");
    Ok(())
}

#[test]
fn flannel_vxlan_node_and_netdp_nodes_reach_each_others_pods() -> Result<()> {
    let (tb, f) = mixed_cluster(r#"{"Type": "vxlan"}"#, FlannelBackend::Vxlan)?;
    let lease = tb
        .etcd()
        .get(&format!(
            "{}/subnets/{}-{}",
            tb.prefix, f.subnet.0, f.subnet.1
        ))?
        .context("the Flannel lease")?;
    assert!(
        lease.contains(r#""BackendData":{"VNI":1,"VtepMAC":"#),
        "{lease}"
    );
    vxlan_both_ways(&tb, 7000)
}

/// Traffic both ways between the Flannel pod and each netdp node's: netdp's programs did
/// netdp's half (n1's counters), the kernel's VXLAN device Flannel's.
fn vxlan_both_ways(tb: &Testbed, port: u16) -> Result<()> {
    let f1 = tb.node("f1").ns.clone();
    let s0 = netns::link_stats(&f1, VXLAN_DEV)?;
    let before = tb.counters("n1")?;
    both_ways(tb, "n1", port)?;
    both_ways(tb, "n2", port + 10)?;
    let after = tb.counters("n1")?;
    let d = |prog: &str, reason: &str| {
        let k = (prog.to_string(), reason.to_string());
        after.get(&k).copied().unwrap_or(0) - before.get(&k).copied().unwrap_or(0)
    };
    ensure!(d("from_pod", "encap_vxlan") > 100, "{after:?}");
    ensure!(d("from_netdev", "decap_vxlan") > 100, "{after:?}");
    ensure!(d("from_netdev", "decap_wrong_vtep") == 0, "{after:?}");
    let s1 = netns::link_stats(&f1, VXLAN_DEV)?;
    ensure!(
        s1.rx.packets - s0.rx.packets > 100 && s1.tx.packets - s0.tx.packets > 100,
        "flannel.1 before {s0:?}, after {s1:?}"
    );
    Ok(())
}

#[test]
fn flannel_host_gw_node_and_netdp_nodes_reach_each_others_pods() -> Result<()> {
    let (tb, _f) = mixed_cluster(r#"{"Type": "host-gw"}"#, FlannelBackend::HostGw)?;
    let before =
        tb.counter("n1", "from_pod", "direct")? + tb.counter("n1", "from_pod", "direct_neigh")?;
    both_ways(&tb, "n1", 7100)?;
    let after =
        tb.counter("n1", "from_pod", "direct")? + tb.counter("n1", "from_pod", "direct_neigh")?;
    assert!(after - before > 100);
    Ok(())
}

#[test]
fn flannel_and_netdp_nodes_read_each_others_node_annotations() -> Result<()> {
    const VXLAN: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
    let spec = Spec::flat(2).node("f1", 0).network(VXLAN);
    let mut tb = Testbed::new(spec)?;
    let api = ReplayApiServer::start(&tb.ctl_ns, Ipv4Addr::new(192, 168, 10, 2))?;
    let kubeconfig = format!("--kubeconfig={}", api.write_kubeconfig(&tb.dir)?.display());
    let net_conf = tb.dir.join("net-conf.json");
    std::fs::write(&net_conf, VXLAN)?;
    let net_conf = format!("--net-config-path={}", net_conf.display());
    for (i, name) in ["n1", "n2", "f1"].iter().enumerate() {
        let n = tb.node(name);
        api.apply(kube_api::node(
            &n.ns,
            n.ip,
            &format!("10.244.{}.0/24", 21 + i),
        ))?;
    }
    let mut f = FlannelNode::start_in(&tb, "f1", FlannelBackend::Vxlan, Store::Nodes(&api))?;
    for n in ["n1", "n2"] {
        tb.start_agent(n, &["--kube-subnet-mgr", &net_conf, &kubeconfig])?;
    }
    ensure!(
        f.sync_peers_in(&tb, Store::Nodes(&api))? == 2,
        "the Flannel node reads both netdp nodes' annotations"
    );
    // netdp's annotations are the ones flanneld writes: backend data as JSON text.
    let n1 = api.get("Node", &tb.node("n1").ns)?.context("Node n1")?;
    let data = n1["metadata"]["annotations"][format!("{ANNOTATION_PREFIX}/backend-data")]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        data.starts_with(r#"{"VNI":1,"VtepMAC":""#),
        "n1 backend-data {data}"
    );
    f.add_pod(&mut tb, "p1")?;
    tb.add_pod("n1", "p1")?;
    tb.add_pod("n2", "p1")?;
    let ns = tb.node("n1").ns.clone();
    tb.wait_for(
        "n1's route to the Flannel node's podCIDR",
        std::time::Duration::from_secs(10),
        || {
            let out = tb.netdp("n1", &["route", "list", &format!("--node-name={ns}")])?;
            Ok(String::from_utf8_lossy(&out.stdout).contains("10.244.23.0"))
        },
    )?;
    vxlan_both_ways(&tb, 7200)?;
    // No lease went to etcd: the subnets came from the Nodes.
    let leases = tb.etcd().get_prefix(&format!("{}/subnets/", tb.prefix))?;
    ensure!(leases.is_empty(), "leases in etcd: {leases:?}");
    Ok(())
}
