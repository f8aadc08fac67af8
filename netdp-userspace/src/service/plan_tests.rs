//! Which endpoints a node's plan takes: kube-proxy's rules for traffic policies,
//! terminating endpoints and topology hints, on services as `service apply -f` reads them.
use super::*;
use crate::service::{schema::parse_file, validate::validate};

/// An endpoint: `(ip, node, ready, terminating, zones hinted, nodes hinted)`.
type Ep<'a> = (&'a str, &'a str, bool, bool, &'a [&'a str], &'a [&'a str]);

/// A service with `endpoints`, `spec` lines added to its spec.
fn service(spec: &str, endpoints: &[Ep]) -> ServiceDef {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(ip, node, ready, terminating, zones, nodes)| {
            let names = |l: &[&str]| {
                let items: Vec<String> = l.iter().map(|n| format!("{{name: {n}}}")).collect();
                format!("[{}]", items.join(", "))
            };
            format!(
                "  - {{ip: {ip}, nodeName: {node}, ready: {ready}, serving: true, terminating: {terminating}, \
                 hints: {{forZones: {}, forNodes: {}}}}}",
                names(zones),
                names(nodes)
            )
        })
        .collect();
    let node_port = if spec.contains("NodePort") {
        ", nodePort: 30080"
    } else {
        ""
    };
    let text = format!(
        "metadata: {{name: web, namespace: shop}}\nspec:\n  clusterIP: 10.96.0.10\n{spec}\n  ports:\n  - {{port: 80, targetPort: 8080{node_port}}}\nendpoints:\n{}\n",
        eps.join("\n")
    );
    validate(&parse_file(&text).expect("parses")[0]).expect("valid")
}

fn node(name: &str, zone: Option<&str>) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        addresses: vec![Ipv4Addr::new(192, 168, 10, 11)],
        subnet: "10.244.1.0/24".parse().unwrap(),
        zone: zone.map(String::from),
        forwarding: Default::default(),
    }
}

/// The plan's backends: (local ones, remote ones), and whether cluster IP traffic is
/// local-only.
fn picked(def: &ServiceDef, node: &NodeInfo) -> (Vec<String>, Vec<String>, bool) {
    let p = plan(def, node).expect("a plan");
    let ips: Vec<String> = p
        .backends
        .iter()
        .map(|b| Ipv4Addr::from(b.addr).to_string())
        .collect();
    let (l, r) = ips.split_at(p.local_count as usize);
    let cluster_local = p
        .frontends
        .values()
        .filter(|f| !f.external)
        .all(|f| f.local_only);
    (l.to_vec(), r.to_vec(), cluster_local)
}

fn strings(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

const NONE: &[&str] = &[];

#[test]
fn internal_traffic_policy_local_keeps_cluster_ip_traffic_on_the_node() {
    let def = service(
        "  internalTrafficPolicy: Local",
        &[
            ("10.244.1.5", "n1", true, false, NONE, NONE),
            ("10.244.2.5", "n2", true, false, NONE, NONE),
        ],
    );
    assert!(def.internal_local);
    let (local, remote, cluster_local) = picked(&def, &node("n1", None));
    assert_eq!((local, cluster_local), (strings(&["10.244.1.5"]), true));
    assert_eq!(remote, strings(&["10.244.2.5"]));
    // A node without an endpoint of its own: nothing local, so cluster IP traffic is
    // dropped there, as kube-proxy drops it.
    let (local, _, cluster_local) = picked(&def, &node("n3", None));
    assert!(local.is_empty() && cluster_local);
    // The default: Cluster.
    let def = service("", &[("10.244.1.5", "n1", true, false, NONE, NONE)]);
    assert!(!picked(&def, &node("n1", None)).2);
}

#[test]
fn a_local_policy_keeps_a_terminating_local_endpoint_while_remote_ones_are_ready() {
    // externalTrafficPolicy: Local mid rolling update: this node's pod is terminating but
    // serving, another node's is ready. Node-port traffic here stays on the local one.
    let def = service(
        "  type: NodePort\n  externalTrafficPolicy: Local",
        &[
            ("10.244.1.5", "n1", false, true, NONE, NONE),
            ("10.244.2.5", "n2", true, false, NONE, NONE),
        ],
    );
    let (local, remote, _) = picked(&def, &node("n1", None));
    assert_eq!(local, strings(&["10.244.1.5"]));
    assert_eq!(remote, strings(&["10.244.2.5"]));
    // Without a local policy the terminating one is left out while another is ready.
    let def = service(
        "  type: NodePort",
        &[
            ("10.244.1.5", "n1", false, true, NONE, NONE),
            ("10.244.2.5", "n2", true, false, NONE, NONE),
        ],
    );
    let (local, remote, _) = picked(&def, &node("n1", None));
    assert!(local.is_empty());
    assert_eq!(remote, strings(&["10.244.2.5"]));
}

#[test]
fn zone_hints_narrow_cluster_traffic_to_the_nodes_zone() {
    let eps = [
        ("10.244.1.5", "n1", true, false, &["z1"][..], NONE),
        ("10.244.2.5", "n2", true, false, &["z2"][..], NONE),
        ("10.244.3.5", "n3", true, false, &["z1"][..], NONE),
    ];
    let def = service("  trafficDistribution: PreferClose", &eps);
    let (local, remote, _) = picked(&def, &node("n1", Some("z1")));
    assert_eq!(local, strings(&["10.244.1.5"]));
    assert_eq!(remote, strings(&["10.244.3.5"]));
    let (_, remote, _) = picked(&def, &node("n4", Some("z2")));
    assert_eq!(remote, strings(&["10.244.2.5"]));
    // A node without a zone label, or in a zone no hint names: every endpoint.
    for n in [node("n4", None), node("n4", Some("z9"))] {
        let (local, remote, _) = picked(&def, &n);
        assert_eq!(local.len() + remote.len(), 3, "{:?}", n.zone);
    }
    // One ready endpoint without hints: hints are ignored (kube-proxy's rule).
    let mut partial = eps.to_vec();
    partial[1].4 = NONE;
    let def = service("", &partial);
    let (local, remote, _) = picked(&def, &node("n1", Some("z1")));
    assert_eq!(local.len() + remote.len(), 3);
    // An unready endpoint without hints does not count.
    partial[1].2 = false;
    let def = service("", &partial);
    let (_, remote, _) = picked(&def, &node("n1", Some("z1")));
    assert_eq!(remote, strings(&["10.244.3.5"]));
}

#[test]
fn node_hints_come_before_zone_hints() {
    // PreferSameNode: the endpoint hinted for this node, zone hints aside.
    let def = service(
        "  trafficDistribution: PreferSameNode",
        &[
            ("10.244.1.5", "n1", true, false, &["z1"][..], &["n1"][..]),
            ("10.244.3.5", "n3", true, false, &["z1"][..], &["n3"][..]),
        ],
    );
    let (local, remote, _) = picked(&def, &node("n1", Some("z1")));
    assert_eq!((local, remote), (strings(&["10.244.1.5"]), vec![]));
    // No node hint for this node: the zone hints decide.
    let (local, remote, _) = picked(&def, &node("n7", Some("z1")));
    assert_eq!(local.len() + remote.len(), 2);
}

#[test]
fn a_wrong_internal_policy_names_its_field_and_any_distribution_passes() {
    let text = |spec: &str| {
        format!(
            "metadata: {{name: web}}\nspec:\n  clusterIP: 10.96.0.10\n{spec}\n  ports:\n  - {{port: 80}}\n"
        )
    };
    let err =
        validate(&parse_file(&text("  internalTrafficPolicy: local")).unwrap()[0]).unwrap_err();
    assert!(
        err.contains("spec.internalTrafficPolicy: \"local\" is not one of Cluster, Local"),
        "{err}"
    );
    // A value this version does not know (a newer API server's) changes nothing.
    assert!(
        validate(&parse_file(&text("  trafficDistribution: PreferSameRack")).unwrap()[0]).is_ok()
    );
}
