//! Leases end to end: real agents in a namespaced cluster, a real etcd, and the ROUTES maps
//! that follow the leases as they appear, change, expire and come back.
use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use anyhow::{Result, ensure};
use netdp::dataplane::{Pins, peer::PeerMap};
use netdp_testbed::{BPF_ROOT, Spec, Testbed, netns, traffic};

const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const SHORT_TTL: &[&str] = &[
    "--subnet-lease-ttl=4s",
    "--subnet-lease-renew-margin=2s",
    "--subnet-lease-retry=1s",
];

fn lease_key(tb: &Testbed, subnet: &str) -> String {
    format!("{}/subnets/{}", tb.prefix, subnet.replace('/', "-"))
}

fn has_route(tb: &Testbed, node: &str, subnet: &str) -> Result<bool> {
    Ok(tb.routes(node)?.iter().any(|(s, _)| s == subnet))
}

#[test]
fn restarts_keep_the_subnet_and_expired_leases_leave_every_map() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(3).network(HOST_GW))?;
    tb.start_all_agents(SHORT_TTL)?;
    let (s1, s2, s3) = (
        tb.subnet_of("n1")?,
        tb.subnet_of("n2")?,
        tb.subnet_of("n3")?,
    );
    assert_eq!(
        tb.routes("n1")?
            .iter()
            .map(|r| r.0.clone())
            .collect::<Vec<_>>(),
        {
            let mut v = vec![s2.clone(), s3.clone()];
            v.sort();
            v
        }
    );

    // A restarted agent gets its subnet back.
    tb.stop_agent("n2")?;
    tb.start_agent("n2", SHORT_TTL)?;
    assert_eq!(tb.subnet_of("n2")?, s2);

    // A stopped agent's lease expires and every other node drops its route within TTL + a
    // few seconds (TTL 4 s here).
    tb.stop_agent("n3")?;
    let gone = tb.wait_for(
        "n3's route to leave n1 and n2",
        Duration::from_secs(12),
        || Ok(!has_route(&tb, "n1", &s3)? && !has_route(&tb, "n2", &s3)?),
    )?;
    println!("n3's lease expired and its route left both maps {gone:?} after the agent stopped");
    assert!(tb.etcd().get(&lease_key(&tb, &s3))?.is_none());

    // Running agents renewed through all of that: well over three TTLs by now. (Time
    // passing is the point: leases of 4 s must outlive several TTLs by renewal alone.)
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        tb.etcd().get(&lease_key(&tb, &s1))?.is_some(),
        "n1's lease was not renewed"
    );
    assert!(
        tb.etcd().get(&lease_key(&tb, &s2))?.is_some(),
        "n2's lease was not renewed"
    );
    assert!(has_route(&tb, "n1", &s2)? && has_route(&tb, "n2", &s1)?);

    // The expired subnet can be leased again (n3 comes back and takes it from its subnet file).
    tb.start_agent("n3", SHORT_TTL)?;
    assert_eq!(tb.subnet_of("n3")?, s3);
    tb.wait_for("n3's route to come back", Duration::from_secs(5), || {
        has_route(&tb, "n1", &s3)
    })?;
    Ok(())
}

#[test]
fn a_node_with_another_public_ip_and_the_same_subnet_file_does_not_steal() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(2).network(HOST_GW))?;
    tb.start_agent("n1", &[])?;
    let s1 = tb.subnet_of("n1")?;
    // n2 starts with a copy of n1's subnet file.
    std::fs::copy(tb.node("n1").subnet_file(), tb.node("n2").subnet_file())?;
    tb.start_agent("n2", &[])?;
    let s2 = tb.subnet_of("n2")?;
    assert_ne!(s1, s2, "n2 took n1's live subnet");
    Ok(())
}

#[test]
fn peer_leases_in_flannels_format_become_routes_and_bad_values_are_skipped() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(1).network(HOST_GW))?;
    tb.start_agent("n1", &[])?;
    let etcd = tb.etcd();
    // A Flannel node's lease, exactly as flanneld writes it.
    etcd.put(&format!("{}/subnets/10.244.200.0-24", tb.prefix), r#"{"PublicIP":"192.168.10.50","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}"#)?;
    etcd.put(
        &format!("{}/subnets/10.244.201.0-24", tb.prefix),
        "{garbage",
    )?;
    etcd.put(
        &format!("{}/subnets/nonsense", tb.prefix),
        r#"{"PublicIP":"192.168.10.51"}"#,
    )?;
    etcd.put(
        &format!("{}/subnets/10.244.202.0-24", tb.prefix),
        r#"{"PublicIP":"192.168.10.52","BackendType":"host-gw"}"#,
    )?;
    tb.wait_for("both good leases as routes", Duration::from_secs(5), || {
        Ok(has_route(&tb, "n1", "10.244.200.0/24")? && has_route(&tb, "n1", "10.244.202.0/24")?)
    })?;
    let routes = tb.routes("n1")?;
    assert!(routes.contains(&("10.244.200.0/24".into(), Ipv4Addr::new(192, 168, 10, 50))));
    assert!(!has_route(&tb, "n1", "10.244.201.0/24")?);
    // Several resyncs later (every second here) each bad value has been reported exactly
    // once. Time passing is the point: nothing more may be logged while it does.
    std::thread::sleep(Duration::from_secs(3));
    let log = std::fs::read_to_string(tb.node("n1").agent_log())?;
    assert_eq!(
        log.matches("skipping malformed lease /coreos.com/network/subnets/10.244.201.0-24")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("skipping malformed lease /coreos.com/network/subnets/nonsense")
            .count(),
        1,
        "{log}"
    );
    assert!(tb.node("n1").agent_running());

    // A lease changed to garbage loses its route; a deleted lease too.
    etcd.put(&format!("{}/subnets/10.244.202.0-24", tb.prefix), "[]")?;
    etcd.delete(&format!("{}/subnets/10.244.200.0-24", tb.prefix))?;
    tb.wait_for(
        "routes of broken and deleted leases to go",
        Duration::from_secs(5),
        || {
            Ok(!has_route(&tb, "n1", "10.244.200.0/24")?
                && !has_route(&tb, "n1", "10.244.202.0/24")?)
        },
    )?;

    // A config that turns invalid while running is reported; the agent keeps going as it was.
    tb.set_network_config(r#"{"Network": "10.244.0.0/16", "SubnetLen": 8}"#)?;
    tb.wait_for(
        "the invalid config to be reported",
        Duration::from_secs(5),
        || {
            Ok(std::fs::read_to_string(tb.node("n1").agent_log())?
                .contains("keeping the running config"))
        },
    )?;
    etcd.put(
        &format!("{}/subnets/10.244.203.0-24", tb.prefix),
        r#"{"PublicIP":"192.168.10.53","BackendType":"host-gw"}"#,
    )?;
    tb.wait_for(
        "a new lease to be routed after the bad config",
        Duration::from_secs(5),
        || has_route(&tb, "n1", "10.244.203.0/24"),
    )?;
    assert!(tb.node("n1").agent_running());
    let log = std::fs::read_to_string(tb.node("n1").agent_log())?;
    assert!(
        log.contains("invalid network config at /coreos.com/network/config: SubnetLen"),
        "{log}"
    );
    Ok(())
}

/// The underlay addresses in a node's PEERS map, read from its pin.
fn peers(tb: &Testbed, node: &str) -> Result<Vec<Ipv4Addr>> {
    let pins = Pins::new(std::path::Path::new(BPF_ROOT), &tb.node(node).ns)?;
    Ok(PeerMap::open(&pins)?
        .list()
        .into_iter()
        .map(|(ip, _)| ip)
        .collect())
}

#[test]
fn rogue_leases_never_reach_routes_or_peers_and_genuine_peers_keep_theirs() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(3).network(HOST_GW))?;
    tb.start_all_agents(&[])?;
    let nodes = ["n1", "n2", "n3"];
    let subnets: Vec<String> = nodes
        .iter()
        .map(|n| tb.subnet_of(n))
        .collect::<Result<_>>()?;
    let ips: Vec<Ipv4Addr> = nodes.iter().map(|n| tb.node(n).public_ip).collect();
    // A /25 inside n2's subnet, and a free /24 for a lease with n2's PublicIP.
    let inside = subnets[1].replace(".0/24", ".128/25");
    let free = (200..250)
        .map(|i| format!("10.244.{i}.0/24"))
        .find(|s| !subnets.contains(s))
        .expect("a free subnet");
    let value = |ip: &str| format!(r#"{{"PublicIP":"{ip}","BackendType":"host-gw"}}"#);
    let put = |subnet: &str, ip: &str| tb.etcd().put(&lease_key(&tb, subnet), &value(ip));
    let rogue = ["0.0.0.0/0", &inside, "10.99.0.0/24", &free];
    for (subnet, ip) in rogue
        .iter()
        .zip(["192.168.10.201", "192.168.10.202", "192.168.10.203"])
    {
        put(subnet, ip)?;
    }
    put(&free, &ips[1].to_string())?;
    // Then a genuine newcomer (seen after the rogue ones) and a younger duplicate of it.
    put("10.244.251.0/24", "192.168.10.60")?;
    put("10.244.252.0/24", "192.168.10.60")?;
    // Every node routes the other nodes' subnets and `extra`.
    let routed_everywhere = |tb: &Testbed, extra: &str| -> Result<bool> {
        for (i, n) in nodes.iter().enumerate() {
            let routes = tb.routes(n)?;
            let mut want = (0..3).filter(|j| *j != i).map(|j| subnets[j].as_str());
            if !want.all(|w| routes.iter().any(|(s, _)| s == w))
                || !routes.iter().any(|(s, _)| s == extra)
            {
                return Ok(false);
            }
        }
        Ok(true)
    };
    tb.wait_for(
        "every node to route the newcomer",
        Duration::from_secs(10),
        || routed_everywhere(&tb, "10.244.251.0/24"),
    )?;
    // Several resyncs later (every second) nothing rogue is routed or a peer, each
    // rejection was logged once, and every genuine peer routes to its own node.
    std::thread::sleep(Duration::from_secs(3));
    let check = |tb: &Testbed, routed_dup: &str, dup_gone: &str| -> Result<()> {
        for (i, n) in nodes.iter().enumerate() {
            let routes = tb.routes(n)?;
            for r in rogue.iter().chain([&dup_gone]) {
                ensure!(
                    !routes.iter().any(|(s, _)| s == r),
                    "{n} routes rogue {r}: {routes:?}"
                );
            }
            let mut want: Vec<(String, Ipv4Addr)> = (0..3)
                .filter(|j| *j != i)
                .map(|j| (subnets[j].clone(), ips[j]))
                .chain([(routed_dup.to_string(), Ipv4Addr::new(192, 168, 10, 60))])
                .collect();
            want.sort();
            ensure!(routes == want, "{n}: {routes:?}, expected {want:?}");
            let peers: BTreeSet<Ipv4Addr> = peers(tb, n)?.into_iter().collect();
            let want: BTreeSet<Ipv4Addr> = want.iter().map(|(_, ip)| *ip).collect();
            ensure!(peers == want, "{n}'s PEERS: {peers:?}, expected {want:?}");
        }
        Ok(())
    };
    check(&tb, "10.244.251.0/24", "10.244.252.0/24")?;
    for n in nodes {
        let log = std::fs::read_to_string(tb.node(n).agent_log())?;
        for r in rogue.iter().chain([&"10.244.252.0/24"]) {
            let line = format!("not routing lease {} ", lease_key(&tb, r));
            ensure!(
                log.matches(&line).count() == 1,
                "{n}: {line:?} not logged once: {log}"
            );
        }
    }
    let log = std::fs::read_to_string(tb.node("n2").agent_log())?;
    ensure!(
        log.contains("its PublicIP is already that of this node's lease"),
        "{log}"
    );

    // The winner goes: its younger duplicate is routed in its place.
    tb.etcd().delete(&lease_key(&tb, "10.244.251.0/24"))?;
    tb.wait_for(
        "the duplicate to take over",
        Duration::from_secs(10),
        || routed_everywhere(&tb, "10.244.252.0/24"),
    )?;
    check(&tb, "10.244.252.0/24", "10.244.251.0/24")?;

    // n2, restarted without its subnet file, takes back its own lease, not the one
    // claiming its PublicIP.
    tb.stop_agent("n2")?;
    std::fs::remove_file(tb.node("n2").subnet_file())?;
    tb.start_agent("n2", &[])?;
    assert_eq!(tb.subnet_of("n2")?, subnets[1]);
    let log = std::fs::read_to_string(tb.node("n2").agent_log())?;
    let claim = format!(
        "lease {} claims this node's PublicIP {}",
        lease_key(&tb, &free),
        ips[1]
    );
    ensure!(log.contains(&claim), "{log}");
    check(&tb, "10.244.252.0/24", "10.244.251.0/24")?;
    Ok(())
}

#[test]
fn an_operator_deleting_the_nodes_lease_makes_it_re_acquire() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(2).network(HOST_GW))?;
    tb.start_all_agents(&[])?;
    let s1 = tb.subnet_of("n1")?;
    tb.etcd().delete(&lease_key(&tb, &s1))?;
    let back = tb.wait_for("n1's lease to come back", Duration::from_secs(10), || {
        Ok(tb.etcd().get(&lease_key(&tb, &s1))?.is_some())
    })?;
    println!("lease re-acquired {back:?} after deletion");
    assert!(tb.node("n1").agent_running());
    tb.wait_for("n2 to route to n1 again", Duration::from_secs(5), || {
        has_route(&tb, "n2", &s1)
    })?;
    Ok(())
}

#[test]
fn a_broken_watch_resumes_and_a_compacted_one_relists() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(1).network(HOST_GW))?;
    tb.start_agent("n1", &[])?;
    let etcd_ip = tb
        .etcd_endpoint()
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap_or("")
        .to_string();
    let put = |tb: &Testbed, third: u8, node: u8| {
        tb.etcd().put(
            &format!("{}/subnets/10.244.{third}.0-24", tb.prefix),
            &format!(r#"{{"PublicIP":"192.168.10.{node}","BackendType":"host-gw"}}"#),
        )
    };
    put(&tb, 100, 60)?;
    tb.wait_for("first peer", Duration::from_secs(5), || {
        has_route(&tb, "n1", "10.244.100.0/24")
    })?;

    // Cut n1 off from etcd (its next keepalive is refused), wait until its watch notices, then
    // change leases behind its back and compact the history away.
    let ns = tb.node("n1").ns.clone();
    let rule = [
        "OUTPUT",
        "-d",
        &etcd_ip,
        "-p",
        "tcp",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ];
    netns::exec(&ns, &[&["iptables", "-I"][..], &rule[..]].concat())?;
    tb.wait_for("n1's lease watch to break", Duration::from_secs(40), || {
        Ok(std::fs::read_to_string(tb.node("n1").agent_log())?.contains("resuming after revision"))
    })?;
    put(&tb, 101, 61)?;
    tb.etcd()
        .delete(&format!("{}/subnets/10.244.100.0-24", tb.prefix))?;
    let status = tb.etcd().ctl(&["endpoint", "status", "-w", "json"])?;
    let rev = status
        .split("\"revision\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap_or("0")
        .to_string();
    tb.etcd().ctl(&["compact", &rev])?;
    netns::exec(&ns, &[&["iptables", "-D"][..], &rule[..]].concat())?;

    tb.wait_for("n1's map to match etcd after the outage", Duration::from_secs(30), || {
        Ok(has_route(&tb, "n1", "10.244.101.0/24")? && !has_route(&tb, "n1", "10.244.100.0/24")?)
    })?;
    let log = std::fs::read_to_string(tb.node("n1").agent_log())?;
    assert!(
        log.contains("re-listing"),
        "the compacted watch did not re-list: {log}"
    );
    // And it keeps watching afterwards.
    put(&tb, 102, 62)?;
    tb.wait_for("a lease after the re-list", Duration::from_secs(5), || {
        has_route(&tb, "n1", "10.244.102.0/24")
    })?;
    Ok(())
}

#[test]
fn an_etcd_outage_does_not_stop_pod_traffic_and_the_agent_catches_up() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(3).network(HOST_GW))?;
    tb.start_agent("n1", &[])?;
    tb.start_agent("n2", &[])?;
    let (a, b) = (tb.add_pod("n1", "p1")?, tb.add_pod("n2", "p1")?);
    // One connection paced to outlast the outage (about 45 s), under way before it starts.
    let flow = traffic::Background::start(
        &a.ns,
        &b.ns,
        b.ip,
        5020,
        28 << 20,
        Duration::from_millis(100),
    );
    flow.wait_received(1 << 20, Duration::from_secs(20))?;
    tb.etcd_mut().stop();
    // A 30 s outage (its length is the point), with pings through it and the connection
    // moving on.
    let at_outage = flow.received();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_secs(5));
        traffic::ping(&a.ns, b.ip, 1)?;
    }
    assert!(
        flow.received() > at_outage,
        "the connection stalled during the etcd outage"
    );
    assert!(
        tb.node("n1").agent_running() && tb.node("n2").agent_running(),
        "an agent died with etcd"
    );
    tb.etcd_mut().restart()?;
    // A node joining after the outage is picked up by the agents that lived through it.
    tb.start_agent("n3", &[])?;
    let s3 = tb.subnet_of("n3")?;
    tb.wait_for(
        "n1 and n2 to route to the new node",
        Duration::from_secs(20),
        || Ok(has_route(&tb, "n1", &s3)? && has_route(&tb, "n2", &s3)?),
    )?;
    let c = tb.add_pod("n3", "p1")?;
    traffic::ping(&a.ns, c.ip, 2)?;
    let t = flow.join()?;
    println!(
        "28 MiB over one connection across a 30 s etcd outage, {:?}",
        t.elapsed
    );
    // n1 still holds its lease and can renew it.
    let leases = tb.netdp(
        "n1",
        &[
            "lease",
            "list",
            &format!("--etcd-endpoints={}", tb.etcd_endpoint()),
            &format!("--subnet-file={}", tb.node("n1").subnet_file().display()),
            "-o",
            "json",
        ],
    )?;
    let v: serde_json::Value = serde_json::from_slice(&leases.stdout)?;
    let mine: Vec<_> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["mine"] == true)
        .collect();
    assert_eq!(mine.len(), 1, "{v}");
    assert!(mine[0]["ttlSeconds"].as_i64().unwrap_or(0) > 3600, "{v}");
    Ok(())
}

#[test]
fn lease_list_and_network_show() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(2).network(HOST_GW))?;
    tb.start_all_agents(&[])?;
    let ep = format!("--etcd-endpoints={}", tb.etcd_endpoint());
    let sf = format!("--subnet-file={}", tb.node("n1").subnet_file().display());
    let out = tb.netdp("n1", &["lease", "list", &ep, &sf])?;
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let s1 = tb.subnet_of("n1")?;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("SUBNET")
            && lines[0].contains("TTL")
            && lines[0].contains("THIS NODE"),
        "{table}"
    );
    assert_eq!(lines.len(), 3, "{table}");
    let mine = lines
        .iter()
        .find(|l| l.starts_with(&s1))
        .expect("own lease listed");
    assert!(
        mine.trim_end().ends_with('*')
            && mine.contains("192.168.10.11")
            && mine.contains("host-gw"),
        "{table}"
    );

    let out = tb.netdp("n1", &["network", "show", &ep])?;
    let cfg: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(cfg["Network"], "10.244.0.0/16");
    assert_eq!(cfg["SubnetLen"], 24);
    assert_eq!(cfg["SubnetMin"], "10.244.1.0");
    assert_eq!(cfg["SubnetMax"], "10.244.255.0");
    assert_eq!(cfg["Backend"]["Type"], "host-gw");
    Ok(())
}
