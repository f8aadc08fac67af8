//! End to end: pods reaching a host outside the cluster. With `--ip-masq` the outside
//! host sees the node's address (and replies find their way back to the right pod);
//! without it, the pod's own. Pod-to-pod traffic is never masqueraded. Nodes forward
//! nothing themselves (ip_forward=0): the programs translate and send.
use anyhow::Result;
use netdp_common::nat::{PORT_MAX, PORT_MIN};
use netdp_testbed::{
    Spec, Testbed, netns,
    testbed::OUTSIDE_IP,
    traffic::{self, Whoami},
};

const WHOAMI: u16 = 8080;

#[test]
fn masquerading_shows_the_outside_the_node_address_and_only_when_asked() -> Result<()> {
    let spec = Spec::flat(2)
        .outside()
        .network(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#);
    let mut tb = Testbed::new(spec)?;
    tb.start_agent("n1", &["--ip-masq"])?;
    // n2 leaves pods' addresses as they are: the outside is a routed network, whose
    // replies n2 accepts straight to its pods.
    tb.start_agent("n2", &["--routed-networks=203.0.113.0/24"])?;
    let a = tb.add_pod("n1", "a")?;
    let b = tb.add_pod("n1", "b")?;
    let c = tb.add_pod("n2", "c")?;
    let outside = tb.outside_ns.clone().expect("outside host");
    let _server = Whoami::start(&outside, WHOAMI)?;
    let n1 = tb.node("n1").ip;
    let sf = std::fs::read_to_string(tb.node("n1").subnet_file())?;
    assert!(sf.contains("FLANNEL_IPMASQ=true"), "{sf}");

    // n1 masquerades: TCP, UDP and ping reach the outside as the node.
    let seen = traffic::whoami_tcp(&a.ns, OUTSIDE_IP, WHOAMI)?;
    assert_eq!(*seen.ip(), n1, "outside host saw {seen}");
    assert!((PORT_MIN..=PORT_MAX).contains(&seen.port()));
    traffic::ping(&a.ns, OUTSIDE_IP, 3)?;
    // ICMP errors about masqueraded packets find the pod too: with TTL 2 the router
    // (the second hop) answers "time exceeded" to the node's address.
    let out = netns::run(
        &a.ns,
        &[
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "2",
            "-t",
            "2",
            &OUTSIDE_IP.to_string(),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("From 192.168.10.1 icmp_seq=1 Time to live exceeded"),
        "{text}"
    );
    // Two pods using the same source port towards the same server get different ports,
    // and each gets its own answer back.
    let from_a = traffic::whoami_udp(&a.ns, OUTSIDE_IP, WHOAMI, 5353)?;
    let from_b = traffic::whoami_udp(&b.ns, OUTSIDE_IP, WHOAMI, 5353)?;
    assert_eq!((*from_a.ip(), *from_b.ip()), (n1, n1));
    assert_ne!(
        from_a.port(),
        from_b.port(),
        "two pods share a masquerade port"
    );
    // A byte-exact bulk transfer through the translation (GSO, checksum offload).
    let t = traffic::tcp_transfer(&a.ns, &outside, OUTSIDE_IP, 9000, 20 << 20)?;
    println!(
        "masqueraded TCP to the outside: {:.0} Mbit/s",
        t.mbit_per_s()
    );

    assert!(tb.counter("n1", "from_pod", "masquerade")? > 100);
    assert!(tb.counter("n1", "from_netdev", "unmasquerade")? > 100);
    let flows = tb.netdp(
        "n1",
        &["nat", "list", &format!("--node-name={}", tb.node("n1").ns)],
    )?;
    let flows = String::from_utf8_lossy(&flows.stdout);
    assert!(
        flows.contains(&format!("{}:5353", a.ip)) && flows.contains(&format!("{}:5353", b.ip)),
        "{flows}"
    );

    // Pod to pod across nodes is never masqueraded, even from the masquerading node.
    let _in_c = Whoami::start(&c.ns, WHOAMI)?;
    assert_eq!(*traffic::whoami_tcp(&a.ns, c.ip, WHOAMI)?.ip(), a.ip);
    assert_eq!(*traffic::whoami_udp(&a.ns, c.ip, WHOAMI, 0)?.ip(), a.ip);

    // n2 does not masquerade: the outside host sees the pod (replies come back through
    // a route to n2's pod subnet on the router, as a routed network would have).
    let (subnet, len) = tb.node("n2").subnet()?;
    tb.router_route(&format!("{subnet}/{len}"), tb.node("n2").ip)?;
    assert_eq!(*traffic::whoami_tcp(&c.ns, OUTSIDE_IP, WHOAMI)?.ip(), c.ip);
    assert_eq!(
        *traffic::whoami_udp(&c.ns, OUTSIDE_IP, WHOAMI, 0)?.ip(),
        c.ip
    );
    assert!(tb.counter("n2", "from_pod", "egress")? > 0);
    assert_eq!(tb.counter("n2", "from_pod", "masquerade")?, 0);

    for n in ["n1", "n2"] {
        assert_eq!(
            netns::read_sysctl(&tb.node(n).ns, "net.ipv4.ip_forward")?,
            "0"
        );
    }
    Ok(())
}
