//! End to end, two clusters in direct mode (ClusterMesh's): cluster east (10.244.0.0/16,
//! nodes e1 and e2 on underlay 192.168.10.0/24, etcd at 192.168.10.2) and cluster west
//! (10.245.0.0/16, nodes w1 and w2 on 192.168.20.0/24, an etcd of its own at
//! 192.168.20.2), joined by a router. Each cluster's network config names the other by
//! its etcd. Nodes forward with IP forwarding off, so what crosses was carried by the
//! programs, and their counters must show it.
use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use netdp_testbed::{
    Spec, Testbed,
    services::{Connect, EchoServer, echo_many},
    traffic,
};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
const TRANSFER: u64 = 50 * MIB;

fn config(name: &str, id: u8, network: &str, other: &str, other_etcd: Ipv4Addr) -> String {
    format!(
        r#"{{"Network": "{network}", "Backend": {{"Type": "vxlan"}},
            "ClusterName": "{name}", "ClusterID": {id},
            "Clusters": [{{"Name": "{other}", "Endpoints": ["http://{other_etcd}:2379"]}}]}}"#
    )
}

const EAST_ETCD: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 2);
const WEST_ETCD: Ipv4Addr = Ipv4Addr::new(192, 168, 20, 2);

fn east() -> String {
    config("east", 1, "10.244.0.0/16", "west", WEST_ETCD)
}

fn west() -> String {
    config("west", 2, "10.245.0.0/16", "east", EAST_ETCD)
}

/// `netdp cluster list -o json` on a node.
fn clusters(tb: &Testbed, node: &str) -> Result<Vec<Value>> {
    let out = tb.netdp(node, &["cluster", "list", "-o", "json"])?;
    ensure!(
        out.status.success(),
        "netdp cluster list on {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn cluster_state(tb: &Testbed, node: &str, name: &str) -> Result<Value> {
    clusters(tb, node)?
        .into_iter()
        .find(|c| c["name"] == name)
        .with_context(|| format!("{node} lists no cluster {name}"))
}

/// Waits until `node` routes `n` subnets.
fn wait_routes(tb: &Testbed, node: &str, n: usize) -> Result<()> {
    tb.wait_for(
        &format!("{node} to route {n} subnets"),
        Duration::from_secs(30),
        || Ok(tb.routes(node)?.len() == n),
    )?;
    Ok(())
}

fn mesh() -> Result<Testbed> {
    let spec = Spec::default()
        .underlays(2)
        .network(&east())
        .cluster(&west())
        .cluster_node("e1", 0, 0)
        .cluster_node("e2", 0, 0)
        .cluster_node("w1", 1, 1)
        .cluster_node("w2", 1, 1);
    let mut tb = Testbed::new(spec)?;
    tb.start_all_agents(&[])?;
    for n in ["e1", "e2", "w1", "w2"] {
        tb.add_pod(n, "p1")?;
    }
    for n in ["e1", "e2", "w1", "w2"] {
        // Its cluster's other node and both of the other cluster's.
        wait_routes(&tb, n, 3)?;
    }
    Ok(tb)
}

fn counter(tb: &Testbed, node: &str, prog: &str, reason: &str) -> Result<u64> {
    tb.counter(node, prog, reason)
}

#[test]
fn direct_mode_routes_pods_across_clusters_as_inside_one() -> Result<()> {
    let mut tb = mesh()?;
    // What the operator sees: both clusters, the other connected with its two leases
    // routed; the routes of the other cluster's subnets labelled with its id.
    let west_seen = cluster_state(&tb, "e1", "west")?;
    assert_eq!(west_seen["state"], "connected", "{west_seen}");
    assert_eq!(west_seen["id"], 2);
    assert_eq!(west_seen["network"], "10.245.0.0/16");
    assert_eq!(west_seen["routes"], 2, "{west_seen}");
    let own = cluster_state(&tb, "e1", "east")?;
    assert_eq!(own["local"], true);
    let routes = tb.netdp_json("e1", &["route", "list"])?;
    let by_cluster = |c: &str| {
        routes
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["cluster"] == c)
            .count()
    };
    assert_eq!((by_cluster("local"), by_cluster("2")), (1, 2), "{routes}");

    // Both directions, from and to each node of the other cluster.
    let pairs = [("e1", "w1"), ("w2", "e2"), ("e2", "w1"), ("w2", "e1")];
    let before: Vec<_> = ["e1", "e2", "w1", "w2"]
        .iter()
        .map(|n| {
            Ok((
                counter(&tb, n, "from_pod", "encap_vxlan")?,
                counter(&tb, n, "from_netdev", "decap_vxlan")?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut report = Vec::new();
    for (i, (a, b)) in pairs.iter().enumerate() {
        let (pa, pb) = (tb.pod(a, "p1").clone(), tb.pod(b, "p1").clone());
        traffic::ping(&pa.ns, pb.ip, 3).with_context(|| format!("ping {a} -> {b}"))?;
        if i < 2 {
            let t = traffic::tcp_transfer(&pa.ns, &pb.ns, pb.ip, 7000 + i as u16, TRANSFER)
                .with_context(|| format!("TCP {a} -> {b}"))?;
            report.push(format!("{a}->{b} {:.0} Mbit/s", t.mbit_per_s()));
        }
    }
    println!(
        "across clusters: {} MiB byte-exact: {}",
        TRANSFER / MIB,
        report.join(", ")
    );
    // The programs carried it: every node encapsulated and decapsulated hundreds of
    // packets (50 MiB each way is hundreds even as 64 KiB GSO packets).
    for (i, n) in ["e1", "e2", "w1", "w2"].iter().enumerate() {
        let encap = counter(&tb, n, "from_pod", "encap_vxlan")? - before[i].0;
        let decap = counter(&tb, n, "from_netdev", "decap_vxlan")? - before[i].1;
        assert!(encap > 3, "{n}: {encap} packets encapsulated");
        assert!(decap > 3, "{n}: {decap} packets decapsulated");
        if ["e1", "w2"].contains(n) {
            assert!(encap > 300, "{n} sent 50 MiB: {encap} packets encapsulated");
        }
        if ["w1", "e2"].contains(n) {
            assert!(decap > 300, "{n} got 50 MiB: {decap} packets decapsulated");
        }
        assert_eq!(
            counter(&tb, n, "from_netdev", "decap_unknown_peer")?,
            0,
            "{n}"
        );
        assert_eq!(
            counter(&tb, n, "from_netdev", "decap_spoofed_source")?,
            0,
            "{n}"
        );
    }

    // A lease gone in the other cluster's etcd is gone here too.
    let (w2_subnet, _) = tb.node("w2").subnet()?;
    let w2_len = tb.node("w2").subnet()?.1;
    tb.stop_agent("w2")?;
    let key = format!("{}/subnets/{w2_subnet}-{w2_len}", tb.prefix);
    tb.cluster_etcd(1).delete(&key)?;
    wait_routes(&tb, "e1", 2)?;
    assert_eq!(cluster_state(&tb, "e1", "west")?["routes"], 1);

    // The other cluster's etcd goes away: east keeps routing to west as last learned,
    // and says so.
    tb.cluster_etcd(1).stop();
    tb.wait_for(
        "e1 to see west's etcd gone",
        Duration::from_secs(30),
        || Ok(cluster_state(&tb, "e1", "west")?["state"] == "down"),
    )?;
    let (pe, pw) = (tb.pod("e1", "p1").clone(), tb.pod("w1", "p1").clone());
    traffic::ping(&pe.ns, pw.ip, 3).context("e1 -> w1 with west's etcd down")?;
    traffic::tcp_transfer(&pw.ns, &pe.ns, pe.ip, 7100, 4 * MIB)
        .context("w1 -> e1 with west's etcd down")?;
    let pe2 = tb.pod("e2", "p1").clone();
    traffic::ping(&pe.ns, pe2.ip, 3).context("inside east with west's etcd down")?;
    assert_eq!(tb.routes("e1")?.len(), 2, "routes kept");
    // It comes back: connected again, nothing lost.
    tb.cluster_etcd(1).restart()?;
    tb.wait_for(
        "e1 to reconnect to west's etcd",
        Duration::from_secs(30),
        || Ok(cluster_state(&tb, "e1", "west")?["state"] == "connected"),
    )?;
    assert_eq!(tb.routes("e1")?.len(), 2);
    traffic::ping(&pe.ns, pw.ip, 3).context("e1 -> w1 after west's etcd is back")?;
    Ok(())
}

#[test]
fn a_cluster_whose_network_overlaps_is_refused_naming_both_and_joins_once_fixed() -> Result<()> {
    // West's config claims part of east's Network: east refuses it and routes none of
    // its leases, and says which clusters and networks collide.
    let bad_west = config("west", 2, "10.244.128.0/17", "east", EAST_ETCD);
    let spec = Spec::default()
        .underlays(2)
        .network(&east())
        .cluster(&bad_west)
        .cluster_node("e1", 0, 0)
        .cluster_node("e2", 0, 0);
    let mut tb = Testbed::new(spec)?;
    // A lease in west's etcd for a subnet inside east's Network.
    let lease = r#"{"PublicIP":"192.168.20.11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:20:11"}}"#;
    let prefix = tb.prefix.clone();
    tb.cluster_etcd(1)
        .put(&format!("{prefix}/subnets/10.244.200.0-24"), lease)?;
    tb.start_all_agents(&[])?;
    let refused = |tb: &Testbed| -> Result<bool> {
        let w = cluster_state(tb, "e1", "west")?;
        Ok(w["state"] == "refused")
    };
    tb.wait_for("e1 to refuse west", Duration::from_secs(30), || {
        refused(&tb)
    })?;
    let w = cluster_state(&tb, "e1", "west")?;
    let why = w["error"].as_str().unwrap_or_default().to_string();
    ensure!(
        why.contains(
            "cluster west's Network 10.244.128.0/17 overlaps cluster east's Network 10.244.0.0/16"
        ),
        "{w}"
    );
    let log = std::fs::read_to_string(tb.node("e1").agent_log())?;
    ensure!(log.contains("cluster west refused"), "no refusal logged");
    assert_eq!(tb.routes("e1")?.len(), 1, "only e2's subnet");
    ensure!(tb.agent_alive("e1"), "the agent keeps running");
    // The other cluster puts its config right: joined within the config re-read.
    let fixed = west();
    tb.cluster_etcd(1)
        .put(&format!("{prefix}/config"), &fixed)?;
    tb.cluster_etcd(1)
        .delete(&format!("{prefix}/subnets/10.244.200.0-24"))?;
    tb.cluster_etcd(1)
        .put(&format!("{prefix}/subnets/10.245.7.0-24"), lease)?;
    tb.wait_for("e1 to accept west", Duration::from_secs(30), || {
        Ok(cluster_state(&tb, "e1", "west")?["state"] == "connected")
    })?;
    wait_routes(&tb, "e1", 2)?;
    let routes = tb.routes("e1")?;
    if !routes
        .iter()
        .any(|(s, ip)| s == "10.245.7.0/24" && *ip == Ipv4Addr::new(192, 168, 20, 11))
    {
        bail!("west's lease not routed: {routes:?}");
    }
    Ok(())
}

#[test]
fn the_other_clusters_etcd_is_read_over_tls_with_the_files_the_config_names() -> Result<()> {
    let spec = Spec::default()
        .underlays(2)
        .network(&east())
        .cluster(&west())
        .cluster_tls()
        .cluster_node("e1", 0, 0);
    let mut tb = Testbed::new(spec)?;
    let tls = tb
        .cluster_etcd(1)
        .tls
        .clone()
        .context("west's etcd has TLS")?;
    let path = |p: &std::path::Path| p.display().to_string();
    let config = json!({
        "Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"},
        "ClusterName": "east", "ClusterID": 1,
        "Clusters": [{"Name": "west", "Endpoints": [format!("https://{WEST_ETCD}:2379")],
                      "CAFile": path(&tls.ca), "CertFile": path(&tls.client_cert),
                      "KeyFile": path(&tls.client_key)}],
    });
    tb.set_network_config(&config.to_string())?;
    let lease = r#"{"PublicIP":"192.168.20.11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:20:11"}}"#;
    let prefix = tb.prefix.clone();
    tb.cluster_etcd(1)
        .put(&format!("{prefix}/subnets/10.245.7.0-24"), lease)?;
    tb.start_agent("e1", &[])?;
    tb.wait_for("e1 to read west over TLS", Duration::from_secs(30), || {
        Ok(cluster_state(&tb, "e1", "west")?["state"] == "connected")
    })?;
    wait_routes(&tb, "e1", 1)?;
    ensure!(
        tb.routes("e1")?.iter().any(|(s, _)| s == "10.245.7.0/24"),
        "west's lease, read over TLS, is routed"
    );
    Ok(())
}

/// A service document of `name` in namespace shop: port 80 to 8080, `annotations`, the
/// pods of `backends` (node names as the agents know them) as endpoints.
fn service(tb: &Testbed, cluster_ip: &str, annotations: Value, backends: &[&str]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
        "spec": {"clusterIP": cluster_ip, "ports": [{"port": 80, "targetPort": 8080}]},
        "endpoints": backends.iter().map(|n| json!({
            "ip": tb.pod(n, "p1").ip.to_string(), "nodeName": tb.node(n).ns,
        })).collect::<Vec<_>>(),
    })
}

/// `netdp service apply` of `doc` into the etcd at `endpoint` (east's or west's).
fn apply(tb: &Testbed, endpoint: &str, doc: &Value) -> Result<()> {
    let file = tb.dir.join(format!("svc-{}.json", rand_name(doc)));
    std::fs::write(&file, doc.to_string())?;
    let flag = format!("--etcd-endpoints={endpoint}");
    let path = file.display().to_string();
    let out = tb.netdp_ctl(&["service", "apply", "-f", &path, &flag])?;
    ensure!(
        out.status.success(),
        "service apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn rand_name(doc: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    doc.to_string().hash(&mut h);
    h.finish()
}

/// Which backends `n` connections from east's client to the cluster IP reached.
fn spread(tb: &Testbed, cluster_ip: Ipv4Addr, n: usize) -> Result<BTreeMap<String, usize>> {
    let client = tb.pod("e1", "client").clone();
    let who = echo_many(&client.ns, Connect::new(cluster_ip, 80), n)?;
    let mut m = BTreeMap::new();
    for w in who {
        *m.entry(w).or_insert(0) += 1;
    }
    Ok(m)
}

#[test]
fn a_global_service_is_balanced_over_both_clusters_endpoints_as_its_affinity_says() -> Result<()> {
    let mut tb = mesh()?;
    let mut servers = Vec::new();
    for n in ["e1", "e2", "w1", "w2"] {
        let ns = tb.pod(n, "p1").ns.clone();
        servers.push(EchoServer::start(&ns, 8080, n)?);
    }
    tb.add_pod("e1", "client")?;
    let (east_etcd, west_etcd) = (tb.etcd_endpoint_of(0), tb.etcd_endpoint_of(1));
    let web: Ipv4Addr = "10.96.0.10".parse()?;
    let global = json!({"netdp.io/global": "true"});
    // West's copy uses Cilium's annotation: services move over unchanged.
    let cilium = json!({"service.cilium.io/global": "true"});
    apply(
        &tb,
        &west_etcd,
        &service(&tb, "10.97.0.10", cilium, &["w1", "w2"]),
    )?;
    apply(
        &tb,
        &east_etcd,
        &service(&tb, "10.96.0.10", global.clone(), &["e1", "e2"]),
    )?;
    let all_four = |m: &BTreeMap<String, usize>| m.len() == 4;
    tb.wait_for(
        "east's service to reach west's endpoints",
        Duration::from_secs(30),
        || Ok(spread(&tb, web, 20)?.len() == 4),
    )?;
    let m = spread(&tb, web, 200)?;
    println!("global service, no affinity: {m:?}");
    ensure!(all_four(&m), "{m:?}");
    for (who, n) in &m {
        // 50 each expected; 5 standard deviations of a fair split.
        ensure!((20..=80).contains(n), "{who} got {n} of 200: {m:?}");
    }

    // Local first: only east's while one of them is ready.
    let local = json!({"netdp.io/global": "true", "netdp.io/global-affinity": "local"});
    apply(
        &tb,
        &east_etcd,
        &service(&tb, "10.96.0.10", local.clone(), &["e1", "e2"]),
    )?;
    tb.wait_for("local affinity", Duration::from_secs(30), || {
        Ok(spread(&tb, web, 20)?.keys().all(|k| k.starts_with('e')))
    })?;
    let m = spread(&tb, web, 60)?;
    ensure!(
        m.keys().all(|k| k.starts_with('e')) && m.len() == 2,
        "{m:?}"
    );
    // East's endpoints go: west's take over.
    apply(&tb, &east_etcd, &service(&tb, "10.96.0.10", local, &[]))?;
    tb.wait_for(
        "west's endpoints once east has none",
        Duration::from_secs(30),
        || Ok(spread(&tb, web, 20)?.len() == 2),
    )?;
    let m = spread(&tb, web, 60)?;
    ensure!(
        m.keys().all(|k| k.starts_with('w')) && m.len() == 2,
        "{m:?}"
    );

    // West's no longer global: none of its endpoints are used here (east has none left,
    // so connections are refused, not sent to west).
    apply(
        &tb,
        &east_etcd,
        &service(&tb, "10.96.0.10", global, &["e1"]),
    )?;
    apply(
        &tb,
        &west_etcd,
        &service(&tb, "10.97.0.10", json!({}), &["w1", "w2"]),
    )?;
    tb.wait_for(
        "west's endpoints withdrawn",
        Duration::from_secs(30),
        || Ok(spread(&tb, web, 20)?.keys().all(|k| k == "e1")),
    )?;
    drop(servers);
    Ok(())
}
