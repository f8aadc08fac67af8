//! End to end: agents on three nodes take their subnets from their Node objects
//! (`--kube-subnet-mgr`) and services from the Kubernetes API
//! (`--service-source=kubernetes`) through kube-rs's watcher; no etcd is involved. No API
//! server can be installed here, so the API is the testbed's replay server
//! (`netdp_testbed::kube_api`, a stand-in serving list and watch as kube-apiserver does),
//! holding real API JSON.
//!
//! Each agent leases its Node's podCIDR and publishes Flannel's annotations (as flanneld
//! writes them) and the NetworkUnavailable=False condition; annotations somebody strips
//! are written back; a Node with a wrong public-ip annotation is skipped with a line.
//! Topology: Nodes carry zone labels; a PreferClose Service's zone hints keep a client's
//! connections in its zone, and an internalTrafficPolicy: Local Service's on its node.
//! A Service with two EndpointSlices appears and connections spread over its three
//! endpoints; the endpoint a held transfer uses turns terminating (still serving): new
//! connections avoid it and the transfer completes; a slice is replaced by another and the
//! maps follow; the watch connections are cut and the history compacted, so every watch
//! gets 410 Gone and re-lists: programmed services keep working through it, and the
//! re-list programs only the difference (a service added, one deleted meanwhile, the
//! unchanged one not rewritten). A slice missing the service's port, and a LoadBalancer
//! without ingress, are skipped with a line naming them; the rest is unaffected.
use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use anyhow::{Result, ensure};
use netdp_testbed::{
    Spec, Testbed,
    kube_api::{self, ReplayApiServer},
    services::{Connect, EchoServer, HeldEcho, echo_many},
    wait::wait_until,
};
use serde_json::{Value, json};

const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const FLANNEL: &str = "flannel.alpha.coreos.com";
const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 20, 10);
const WEB2: Ipv4Addr = Ipv4Addr::new(10, 96, 20, 11);
const OLD: Ipv4Addr = Ipv4Addr::new(10, 96, 20, 12);
const STRAY: Ipv4Addr = Ipv4Addr::new(10, 96, 20, 17);
const NEAR: Ipv4Addr = Ipv4Addr::new(10, 96, 20, 15);
const HERE: Ipv4Addr = Ipv4Addr::new(10, 96, 20, 16);
/// Where the replay server listens: the testbed's etcd host.
const API_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 2);

/// A Service as `kubectl get svc -o json` shows it (fields the dataplane ignores included).
fn service(name: &str, ip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": name, "namespace": "default",
            "uid": format!("5b0e6f0e-2c1d-4c8e-9a61-{:012x}", u32::from(ip)),
            "creationTimestamp": "2026-11-30T09:12:44Z",
            "labels": {"app": name},
            "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update",
                "apiVersion": "v1", "time": "2026-11-30T09:12:44Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:ports": {}}}}]
        },
        "spec": {
            "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
            "internalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web-http"}],
            "selector": {"app": name}, "sessionAffinity": "None", "type": "ClusterIP"
        },
        "status": {"loadBalancer": {}}
    })
}

/// An EndpointSlice of `svc` as the endpointslice controller writes it.
fn slice(svc: &str, name: &str, endpoints: &[(Ipv4Addr, &str, Value)], port: &str) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, node, conditions)| {
            json!({"addresses": [ip.to_string()], "conditions": conditions, "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("{svc}-{ip}")}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {
            "name": name, "namespace": "default",
            "generateName": format!("{svc}-"),
            "labels": {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "kubernetes.io/service-name": svc},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": svc,
                "uid": "5b0e6f0e-2c1d-4c8e-9a61-000000000000", "controller": true,
                "blockOwnerDeletion": true}]
        },
        "endpoints": endpoints,
        "ports": [{"name": port, "port": 8080, "protocol": "TCP"}]
    })
}

fn annotation<'a>(node: &'a Value, key: &str) -> Option<&'a str> {
    node["metadata"]["annotations"][format!("{FLANNEL}/{key}")].as_str()
}

fn ready() -> Value {
    json!({"ready": true, "serving": true, "terminating": false})
}

fn draining() -> Value {
    json!({"ready": false, "serving": true, "terminating": true})
}

/// A node's `services updated` lines: how many so far, and the counts (added, updated,
/// removed, unchanged) summed over those after the first `skip`.
fn updates(tb: &Testbed, node: &str, skip: usize) -> Result<(usize, [u64; 4])> {
    let log = std::fs::read_to_string(tb.node(node).agent_log())?;
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("services updated: "))
        .collect();
    let mut sum = [0; 4];
    for l in lines.iter().skip(skip) {
        let counts = l.split("services updated: ").nth(1).unwrap_or_default();
        // "3 added, 0 updated, 0 removed, 0 unchanged, ...", in that order.
        for (i, part) in counts.split(", ").take(4).enumerate() {
            sum[i] += part
                .split(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok((lines.len(), sum))
}

#[test]
fn services_and_slices_from_the_api_are_programmed_and_followed_through_a_relist() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(3).network(HOST_GW))?;
    let api = ReplayApiServer::start(&tb.ctl_ns, API_HOST)?;
    let kubeconfig = api.write_kubeconfig(&tb.dir)?;
    let kubeconfig = format!("--kubeconfig={}", kubeconfig.display());
    // kube-flannel's ConfigMap, mounted: the same network config, from a file.
    let net_conf = tb.dir.join("net-conf.json");
    std::fs::write(&net_conf, HOST_GW)?;
    let net_conf = format!("--net-config-path={}", net_conf.display());
    let names: Vec<(String, Ipv4Addr)> = tb.nodes.iter().map(|n| (n.ns.clone(), n.ip)).collect();
    // Zones: n1 and n3 in z1, n2 in z2.
    for (i, ((name, ip), zone)) in names.iter().zip(["z1", "z2", "z1"]).enumerate() {
        let mut n = kube_api::node(name, *ip, &format!("10.244.{}.0/24", 11 + i));
        n["metadata"]["labels"]["topology.kubernetes.io/zone"] = json!(zone);
        api.apply(n)?;
    }
    // A flanneld node whose public-ip annotation is wrong: skipped, the rest unaffected.
    let mut broken = kube_api::node(
        "w-broken",
        Ipv4Addr::new(192, 168, 10, 99),
        "10.244.99.0/24",
    );
    broken["metadata"]["annotations"] = json!({
        format!("{FLANNEL}/backend-data"): "null", format!("{FLANNEL}/backend-type"): "host-gw",
        format!("{FLANNEL}/kube-subnet-manager"): "true", format!("{FLANNEL}/public-ip"): "192.168.10"});
    api.apply(broken)?;
    tb.start_all_agents(&[
        "--kube-subnet-mgr",
        &net_conf,
        "--service-source=kubernetes",
        &kubeconfig,
    ])?;
    // Every node leased its podCIDR and published it as flanneld does.
    for (i, (name, ip)) in names.iter().enumerate() {
        let cidr = format!("10.244.{}.0/24", 11 + i);
        let subnet_file = std::fs::read_to_string(tb.node(&format!("n{}", i + 1)).subnet_file())?;
        ensure!(
            subnet_file.contains(&format!("FLANNEL_SUBNET=10.244.{}.1/24", 11 + i)),
            "{name}'s subnet file: {subnet_file}"
        );
        let n = api.get("Node", name)?.unwrap_or_default();
        let published = (
            annotation(&n, "public-ip"),
            annotation(&n, "backend-type"),
            annotation(&n, "backend-data"),
            annotation(&n, "kube-subnet-manager"),
        );
        ensure!(
            published
                == (
                    Some(ip.to_string().as_str()),
                    Some("host-gw"),
                    Some("null"),
                    Some("true")
                ),
            "Node {name} ({cidr}) annotations: {}",
            n["metadata"]["annotations"]
        );
        let conditions = n["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let unavailable = conditions
            .iter()
            .find(|c| c["type"] == "NetworkUnavailable");
        ensure!(
            unavailable.is_some_and(|c| c["status"] == "False" && c["reason"] == "NetdpIsUp")
                && conditions.iter().any(|c| c["type"] == "Ready"),
            "Node {name} conditions: {conditions:?}"
        );
    }
    ensure!(
        tb.agent_logs(400)
            .matches("Node w-broken: metadata.annotations[flannel.alpha.coreos.com/public-ip]: \"192.168.10\" is not an IPv4 address")
            .count()
            == 3,
        "each agent says once why w-broken is not routed: {}",
        tb.agent_logs(60)
    );
    let etcd = tb
        .etcd
        .as_ref()
        .map(|e| e.get_prefix(&format!("{}/subnets/", tb.prefix)));
    ensure!(
        matches!(etcd, Some(Ok(ref kvs)) if kvs.is_empty()),
        "no lease in etcd: {etcd:?}"
    );
    println!("three Nodes leased and annotated as flanneld does; no lease in etcd");
    let pods: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .zip(["a", "b", "c"])
        .map(|(n, p)| tb.add_pod(n, p))
        .collect::<Result<_>>()?;
    let client = tb.add_pod("n1", "client")?;
    let _servers: Vec<_> = pods
        .iter()
        .zip(["a", "b", "c"])
        .map(|(p, who)| EchoServer::start(&p.ns, 8080, who))
        .collect::<Result<_>>()?;
    let node = |i: usize| tb.node(&format!("n{}", i + 1)).ns.clone();
    let (n1, n2, n3) = (node(0), node(1), node(2));
    let (a, b, c) = (pods[0].ip, pods[1].ip, pods[2].ip);

    api.apply(service("web", WEB))?;
    api.apply(slice(
        "web",
        "web-x1",
        &[(a, &n1, ready()), (b, &n2, ready())],
        "http",
    ))?;
    api.apply(slice("web", "web-x2", &[(c, &n3, ready())], "http"))?;
    api.apply(service("old", OLD))?;
    api.apply(slice("old", "old-q", &[(c, &n3, ready())], "http"))?;
    // An EndpointSlice written to point the service at the cloud metadata address and at an
    // address outside the cluster: those endpoints are skipped, the pod one is used.
    api.apply(service("stray", STRAY))?;
    api.apply(slice(
        "stray",
        "stray-m",
        &[
            (Ipv4Addr::new(169, 254, 169, 254), &n1, ready()),
            (a, &n1, ready()),
            (Ipv4Addr::new(198, 51, 100, 7), &n2, ready()),
        ],
        "http",
    ))?;
    // Bad input: a slice without the service's port; a LoadBalancer with no ingress yet.
    api.apply(service("noport", Ipv4Addr::new(10, 96, 20, 13)))?;
    api.apply(slice("noport", "noport-z", &[(a, &n1, ready())], "metrics"))?;
    let mut lb = service("pending-lb", Ipv4Addr::new(10, 96, 20, 14));
    lb["spec"]["type"] = json!("LoadBalancer");
    lb["spec"]["ports"][0]["nodePort"] = json!(31080);
    api.apply(lb)?;

    // Spread over both slices' endpoints.
    let web = Connect::new(WEB, 80);
    let mut seen = BTreeSet::new();
    wait_until(
        "web's three endpoints to answer",
        Duration::from_secs(30),
        || {
            // Until programmed there is no route to the address.
            seen.extend(echo_many(&client.ns, web, 12).unwrap_or_default());
            Ok(seen.len() == 3)
        },
    )?;
    println!("web from the API: connections reached {seen:?}");

    // trafficDistribution: PreferClose, the slice hinted by zone as the controller does:
    // n1's client (zone z1) reaches a and c, never b (z2). internalTrafficPolicy: Local:
    // n1's client reaches only n1's a.
    let mut near = service("near", NEAR);
    near["spec"]["trafficDistribution"] = json!("PreferClose");
    api.apply(near)?;
    let mut hinted = slice(
        "near",
        "near-h",
        &[(a, &n1, ready()), (b, &n2, ready()), (c, &n3, ready())],
        "http",
    );
    for (i, zone) in ["z1", "z2", "z1"].iter().enumerate() {
        hinted["endpoints"][i]["zone"] = json!(zone);
        hinted["endpoints"][i]["hints"] = json!({"forZones": [{"name": zone}]});
    }
    api.apply(hinted)?;
    let mut here = service("here", HERE);
    here["spec"]["internalTrafficPolicy"] = json!("Local");
    api.apply(here)?;
    api.apply(slice(
        "here",
        "here-x",
        &[(a, &n1, ready()), (b, &n2, ready())],
        "http",
    ))?;
    for (svc, ip, want) in [("near", NEAR, vec!["a", "c"]), ("here", HERE, vec!["a"])] {
        let mut seen = BTreeSet::new();
        wait_until(&format!("{svc} to answer"), Duration::from_secs(20), || {
            seen.extend(echo_many(&client.ns, Connect::new(ip, 80), 2).unwrap_or_default());
            Ok(!seen.is_empty())
        })?;
        seen.extend(echo_many(&client.ns, Connect::new(ip, 80), 24)?);
        let want: BTreeSet<String> = want.iter().map(|w| w.to_string()).collect();
        ensure!(seen == want, "{svc} from n1 reached {seen:?}, not {want:?}");
        println!("{svc} from n1 (zone z1): {seen:?}");
    }
    // n1's zone label changes (a cloud controller labels late): its agent follows the
    // Node, and near's connections from n1 go to z2's b.
    let mut relabelled = api.get("Node", &names[0].0)?.unwrap_or_default();
    relabelled["metadata"]["labels"]["topology.kubernetes.io/zone"] = json!("z2");
    api.apply(relabelled)?;
    wait_until(
        "near from n1 to follow zone z2",
        Duration::from_secs(20),
        || {
            Ok(echo_many(&client.ns, Connect::new(NEAR, 80), 8)
                .is_ok_and(|who| who.iter().all(|w| w == "b")))
        },
    )?;
    println!("n1 relabelled to zone z2: near goes to b");
    // The nodes' own connections (translated at connect()) keep to the policy too: n2 to
    // its b, and n3, with no endpoint of its own, is refused.
    let here = Connect::new(HERE, 80);
    ensure!(
        echo_many(&n2, here, 6)?.iter().all(|w| w == "b"),
        "node n2 reaches here's b only"
    );
    ensure!(
        echo_many(&n3, here, 1).is_err(),
        "node n3 has no local endpoint of here"
    );
    ensure!(
        echo_many(&client.ns, Connect::new(OLD, 80), 3)?
            .iter()
            .all(|w| w == "c"),
        "old goes to c"
    );
    ensure!(
        echo_many(&client.ns, Connect::new(STRAY, 80), 12)?
            .iter()
            .all(|w| w == "a"),
        "stray reaches only its pod endpoint"
    );
    for want in [
        "service default/stray: endpoint 169.254.169.254 is a link-local address",
        "endpoint 198.51.100.7 is outside the pod Network 10.244.0.0/16",
        "EndpointSlice default/noport-z: ports: no TCP port named \"http\"",
        "Service default/pending-lb: status.loadBalancer.ingress: no IP yet",
    ] {
        wait_until("the skip lines", Duration::from_secs(10), || {
            Ok(tb.agent_logs(400).matches(want).count() == 3)
        })?;
    }

    // The endpoint of a held transfer turns terminating, still serving.
    let held = HeldEcho::start(
        &client.ns,
        Connect {
            bytes: 1 << 20,
            ..web
        },
        7,
    )?;
    let (held_ip, rest): (Ipv4Addr, Vec<&str>) = match held.who.as_str() {
        "a" => (a, vec!["b", "c"]),
        "b" => (b, vec!["a", "c"]),
        _ => (c, vec!["a", "b"]),
    };
    let cond = |ip: Ipv4Addr| if ip == held_ip { draining() } else { ready() };
    api.apply(slice(
        "web",
        "web-x1",
        &[(a, &n1, cond(a)), (b, &n2, cond(b))],
        "http",
    ))?;
    api.apply(slice("web", "web-x2", &[(c, &n3, cond(c))], "http"))?;
    wait_until(
        "new connections to avoid the terminating endpoint",
        Duration::from_secs(20),
        || {
            let who = echo_many(&client.ns, web, 8)?;
            Ok(who.iter().all(|w| rest.contains(&w.as_str())))
        },
    )?;
    let who = held.who.clone();
    let done = held.finish()?;
    ensure!(done == who, "the held transfer finished on {done}");
    println!("{who} terminating: the held transfer completed on it");

    // Slice x1 replaced by y1, with a only.
    api.delete("EndpointSlice", "default/web-x1")?;
    api.apply(slice("web", "web-y1", &[(a, &n1, ready())], "http"))?;
    api.apply(slice("web", "web-x2", &[(c, &n3, ready())], "http"))?;
    wait_until("web to be a and c only", Duration::from_secs(20), || {
        let who: BTreeSet<String> = echo_many(&client.ns, web, 12)?.into_iter().collect();
        Ok(who == BTreeSet::from(["a".to_string(), "c".to_string()]))
    })?;

    // Somebody strips n2's annotations: its agent writes them back.
    let n2_name = &names[1].0;
    let mut stripped = api.get("Node", n2_name)?.unwrap_or_default();
    stripped["metadata"]["annotations"] = json!({"node.alpha.kubernetes.io/ttl": "0"});
    let patches = api.stats().patches;
    api.apply(stripped)?;
    wait_until(
        "n2's annotations to be written back",
        Duration::from_secs(20),
        || {
            let n = api.get("Node", n2_name)?.unwrap_or_default();
            Ok(annotation(&n, "public-ip") == Some(names[1].1.to_string().as_str()))
        },
    )?;
    ensure!(
        api.stats().patches == patches + 1,
        "one patch wrote them back"
    );
    ensure!(
        echo_many(&client.ns, Connect::new(b, 8080), 3)?
            .iter()
            .all(|w| w == "b"),
        "n1 reaches n2's pod b"
    );

    // The API goes away mid-watch, its history compacted: every watch must re-list.
    let before = api.stats();
    let marks: Vec<usize> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| Ok(updates(&tb, n, 0)?.0))
        .collect::<Result<_>>()?;
    api.go_down();
    api.delete("Service", "default/old")?;
    api.delete("EndpointSlice", "default/old-q")?;
    api.apply(service("web2", WEB2))?;
    api.apply(slice("web2", "web2-k", &[(b, &n2, ready())], "http"))?;
    api.compact();
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        echo_many(&client.ns, web, 4)?
            .iter()
            .all(|w| w == "a" || w == "c"),
        "web keeps working while the API is down"
    );
    api.come_back();
    wait_until(
        "web2 to reach b after the re-list",
        Duration::from_secs(40),
        || {
            // Not programmed yet: no route to the address.
            Ok(echo_many(&client.ns, Connect::new(WEB2, 80), 2)
                .is_ok_and(|who| who.iter().all(|w| w == "b")))
        },
    )?;
    // Three agents' three watches (Services, EndpointSlices, Nodes) each got 410 Gone
    // and re-listed.
    let mut after = before;
    wait_until("every watch to re-list", Duration::from_secs(40), || {
        after = api.stats();
        Ok(after.gone >= before.gone + 9 && after.lists >= before.lists + 9)
    })?;
    println!("API stats before the drop {before:?}, after the re-list {after:?}");
    // Programmed after the re-lists: web2 added (and its slice, if the Service's re-list
    // came first), old removed, web untouched.
    for (n, mark) in ["n1", "n2", "n3"].into_iter().zip(marks) {
        let mut sum = [0; 4];
        wait_until("old to be removed", Duration::from_secs(20), || {
            sum = updates(&tb, n, mark)?.1;
            Ok(sum[2] >= 1)
        })?;
        let [added, updated, removed, unchanged] = sum;
        println!(
            "{n} after the re-list: {added} added, {updated} updated, {removed} removed, {unchanged} unchanged"
        );
        ensure!(
            added == 1 && updated <= 1 && removed == 1 && unchanged == 0,
            "{n}: the re-list programs only web2 and old, not web: {sum:?}"
        );
    }
    Ok(())
}
