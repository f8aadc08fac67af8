//! The testbed's kernel-routed nodes, the reference dataplane the benchmarks compare netdp
//! with (and where kube-proxy's rulesets are loaded): pods reach each other across nodes
//! through the kernel's forwarding and host-gw style routes, with no agent running.
use anyhow::Result;
use netdp_testbed::{Spec, Testbed, kernel_pod_subnet, netns, traffic};

#[test]
fn kernel_routed_nodes_carry_pod_traffic_over_host_gw_routes() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(2))?;
    tb.route_by_kernel()?;
    let a = tb.add_kernel_pod("n1", "a")?;
    let b = tb.add_kernel_pod("n2", "b")?;
    let c = tb.add_kernel_pod("n2", "c")?;
    assert_eq!(
        (a.ip.octets()[2], b.ip.octets()[2]),
        (1, 2),
        "one /24 per node"
    );
    assert_ne!(b.ip, c.ip);
    for n in &tb.nodes {
        assert_eq!(netns::read_sysctl(&n.ns, "net.ipv4.ip_forward")?, "1");
        assert!(!n.agent_running());
    }

    traffic::ping(&a.ns, b.ip, 2)?;
    traffic::ping(&b.ns, c.ip, 2)?;
    let t = traffic::tcp_transfer(&a.ns, &c.ns, c.ip, 5301, 4 << 20)?;
    assert_eq!(t.bytes, 4 << 20);

    // Without n1's route to n2's pod subnet, n2's pods are out of reach: the traffic
    // above went over that route.
    let (net, len) = kernel_pod_subnet(1);
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
