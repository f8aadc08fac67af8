//! The testbed's kernel-routed clusters, the reference dataplane the benchmarks compare
//! netdp with (and where kube-proxy's rulesets are loaded): every node set up as flanneld
//! sets one up, no agent running, and pods reaching each other across nodes through the
//! kernel's forwarding: host-gw routes, or Flannel's VXLAN device.
use anyhow::{Result, ensure};
use netdp_testbed::{
    Spec, Testbed,
    flannel::{FlannelBackend, FlannelNode, VXLAN_DEV, network_config},
    netns, traffic,
};

fn cluster(backend: FlannelBackend) -> Result<(Testbed, Vec<FlannelNode>)> {
    let spec = Spec::flat(2).network(&network_config(backend.type_name()));
    let tb = Testbed::new(spec)?;
    let nodes = FlannelNode::start_all(&tb, backend)?;
    for n in &tb.nodes {
        assert_eq!(netns::read_sysctl(&n.ns, "net.ipv4.ip_forward")?, "1");
        assert!(!n.agent_running());
    }
    Ok((tb, nodes))
}

/// Whether `ip` lies in the leased subnet of `f`.
fn in_lease(f: &FlannelNode, ip: std::net::Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - f.subnet.1);
    u32::from(ip) & mask == u32::from(f.subnet.0)
}

#[test]
fn kernel_routed_nodes_carry_pod_traffic_over_host_gw_routes() -> Result<()> {
    let (mut tb, mut nodes) = cluster(FlannelBackend::HostGw)?;
    assert_ne!(nodes[0].subnet, nodes[1].subnet, "one lease per node");
    let a = nodes[0].add_pod(&mut tb, "a")?;
    let b = nodes[1].add_pod(&mut tb, "b")?;
    let c = nodes[1].add_pod(&mut tb, "c")?;
    assert!(in_lease(&nodes[0], a.ip) && in_lease(&nodes[1], b.ip) && in_lease(&nodes[1], c.ip));
    assert_ne!(b.ip, c.ip);

    traffic::ping(&a.ns, b.ip, 2)?;
    traffic::ping(&b.ns, c.ip, 2)?;
    let t = traffic::tcp_transfer(&a.ns, &c.ns, c.ip, 5301, 4 << 20)?;
    assert_eq!(t.bytes, 4 << 20);

    // Without n1's route to n2's pod subnet, n2's pods are out of reach: the traffic
    // above went over that route.
    let (net, len) = nodes[1].subnet;
    netns::ip(&[
        "-n",
        &tb.node("n1").ns,
        "route",
        "del",
        &format!("{net}/{len}"),
    ])?;
    assert!(
        !traffic::reachable(&a.ns, b.ip),
        "{} answers without a route",
        b.ip
    );
    Ok(())
}

#[test]
fn kernel_routed_nodes_carry_pod_traffic_over_flannels_vxlan_device() -> Result<()> {
    let (mut tb, mut nodes) = cluster(FlannelBackend::Vxlan)?;
    let a = nodes[0].add_pod(&mut tb, "a")?;
    let b = nodes[1].add_pod(&mut tb, "b")?;
    let (n1, n2) = (tb.node("n1").ns.clone(), tb.node("n2").ns.clone());
    let (s1, s2) = (
        netns::link_stats(&n1, VXLAN_DEV)?,
        netns::link_stats(&n2, VXLAN_DEV)?,
    );

    traffic::ping(&a.ns, b.ip, 2)?;
    let t = traffic::tcp_transfer(&a.ns, &b.ns, b.ip, 5302, 4 << 20)?;
    assert_eq!(t.bytes, 4 << 20);

    // The stream left n1 through flannel.1 and arrived on n2's.
    let (e1, e2) = (
        netns::link_stats(&n1, VXLAN_DEV)?,
        netns::link_stats(&n2, VXLAN_DEV)?,
    );
    ensure!(
        e1.tx.bytes - s1.tx.bytes >= 4 << 20 && e2.rx.bytes - s2.rx.bytes >= 4 << 20,
        "flannel.1 carried less than the stream: n1 {s1:?} -> {e1:?}, n2 {s2:?} -> {e2:?}"
    );
    // Flannel's pods get the underlay MTU minus VXLAN's 50 bytes.
    let link = netns::ip(&["-n", &a.ns, "-o", "link", "show", "eth0"])?;
    ensure!(link.contains("mtu 1450"), "pod link: {link}");

    // Without the FDB entry for n2's VTEP, n1 has nowhere to send the tunnel packets.
    let mac = nodes[1]
        .vtep_mac
        .clone()
        .expect("a vxlan node has a VTEP MAC");
    netns::exec(
        &n1,
        &["bridge", "fdb", "del", &mac, "dev", VXLAN_DEV, "self"],
    )?;
    assert!(
        !traffic::reachable(&a.ns, b.ip),
        "{} answers without n2's FDB entry",
        b.ip
    );
    Ok(())
}
