use serde_json::json;

use super::*;

/// A Node as `kubectl get node -o json` shows one that flanneld (vxlan, kube subnet
/// manager) runs on.
fn flannel_node(name: &str, cidr: &str, annotations: Value) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "uid": "0b5c2a4e-1111-4d8e-9a61-3c0f9d1e2a7b",
            "resourceVersion": "48213", "creationTimestamp": "2026-11-30T09:12:44Z",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
            "annotations": annotations,
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.10.11"}],
            "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .expect("a Node")
}

fn flannel_annotations() -> Value {
    json!({
        "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"9a:4b:1c:2d:3e:4f\"}",
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/public-ip": "192.168.10.11",
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true"
    })
}

fn keys() -> Annotations {
    Annotations::new(DEFAULT_ANNOTATION_PREFIX)
}

#[test]
fn a_flanneld_node_is_a_lease() {
    let node = flannel_node("w1", "10.244.1.0/24", flannel_annotations());
    let lease = node_lease(&keys(), &node).unwrap().expect("a lease");
    assert_eq!(
        lease.subnet,
        "10.244.1.0/24".parse::<Ipv4Network>().unwrap()
    );
    assert_eq!(lease.attrs.public_ip, Ipv4Addr::new(192, 168, 10, 11));
    assert_eq!(lease.attrs.backend_type, "vxlan");
    assert_eq!(
        lease.attrs.vtep_mac(),
        Some([0x9a, 0x4b, 0x1c, 0x2d, 0x3e, 0x4f])
    );
    assert_eq!(lease.attrs.node.as_deref(), Some("w1"));
    // A heartbeat's new resourceVersion is no change of the lease.
    assert_eq!(lease.mod_revision, 0);
    // 2026-11-30T09:12:44Z
    assert_eq!(lease.create_revision, 1_796_029_964);
}

#[test]
fn what_netdp_publishes_is_what_flanneld_writes() {
    let attrs = LeaseAttrs::new(
        Ipv4Addr::new(192, 168, 10, 11),
        "vxlan",
        Some(json!({"VNI": 1, "VtepMAC": "9a:4b:1c:2d:3e:4f"})),
    );
    let published = keys().published(&attrs);
    let want = flannel_annotations();
    for (k, v) in &published {
        assert_eq!(want[k].as_str(), Some(v.as_str()), "{k}");
    }
    assert_eq!(published.len(), 4);
    // host-gw: flanneld marshals no backend data as `null`.
    let hostgw = LeaseAttrs::new(Ipv4Addr::new(192, 168, 10, 12), "host-gw", None);
    let published = keys().published(&hostgw);
    assert_eq!(
        published["flannel.alpha.coreos.com/backend-data"].as_str(),
        "null"
    );
    let mut a = flannel_annotations();
    for (k, v) in &published {
        a[k] = json!(v);
    }
    let lease = node_lease(&keys(), &flannel_node("w2", "10.244.2.0/24", a))
        .unwrap()
        .unwrap();
    assert_eq!(lease.attrs.backend_data, None);
    assert_eq!(lease.attrs.backend_type, "host-gw");
}

#[test]
fn nodes_flannel_does_not_manage_are_no_leases() {
    let mut a = flannel_annotations();
    a.as_object_mut()
        .unwrap()
        .remove("flannel.alpha.coreos.com/kube-subnet-manager");
    assert_eq!(
        node_lease(&keys(), &flannel_node("w1", "10.244.1.0/24", a)),
        Ok(None)
    );
    // Managed, but the controller has not assigned a podCIDR yet.
    let mut node = flannel_node("w1", "10.244.1.0/24", flannel_annotations());
    node.spec = Some(Default::default());
    assert_eq!(node_lease(&keys(), &node), Ok(None));
    node.spec = None;
    assert_eq!(node_lease(&keys(), &node), Ok(None));
    // No annotations at all (a node that has not run flanneld or netdp).
    let mut bare = flannel_node("w3", "10.244.3.0/24", json!({}));
    bare.metadata.annotations = None;
    assert_eq!(node_lease(&keys(), &bare), Ok(None));
}

#[test]
fn dual_stack_nodes_lease_their_ipv4_cidr() {
    let mut node = flannel_node("w1", "fd00:10:244:1::/64", flannel_annotations());
    node.spec.as_mut().unwrap().pod_cidrs = Some(vec![
        "fd00:10:244:1::/64".to_string(),
        "10.244.1.0/24".to_string(),
    ]);
    let lease = node_lease(&keys(), &node).unwrap().unwrap();
    assert_eq!(
        lease.subnet,
        "10.244.1.0/24".parse::<Ipv4Network>().unwrap()
    );
    // IPv6 only: no IPv4 lease.
    node.spec.as_mut().unwrap().pod_cidrs = Some(vec!["fd00:10:244:1::/64".to_string()]);
    assert_eq!(node_lease(&keys(), &node), Ok(None));
}

#[test]
fn wrong_values_name_their_field() {
    let cases = [
        (
            "flannel.alpha.coreos.com/public-ip",
            json!("192.168.10"),
            "metadata.annotations[flannel.alpha.coreos.com/public-ip]: \"192.168.10\" is not an IPv4 address",
        ),
        (
            "flannel.alpha.coreos.com/backend-data",
            json!("{\"VNI\":1,"),
            "metadata.annotations[flannel.alpha.coreos.com/backend-data]: not JSON",
        ),
    ];
    for (key, value, want) in cases {
        let mut a = flannel_annotations();
        a[key] = value;
        let err = node_lease(&keys(), &flannel_node("w1", "10.244.1.0/24", a)).unwrap_err();
        assert!(err.starts_with(want), "{err}");
    }
    let mut a = flannel_annotations();
    a.as_object_mut()
        .unwrap()
        .remove("flannel.alpha.coreos.com/public-ip");
    let err = node_lease(&keys(), &flannel_node("w1", "10.244.1.0/24", a)).unwrap_err();
    assert_eq!(
        err,
        "metadata.annotations[flannel.alpha.coreos.com/public-ip]: missing"
    );
    let mut node = flannel_node("w1", "10.244.1.7/24", flannel_annotations());
    node.spec.as_mut().unwrap().pod_cidrs = None;
    assert_eq!(
        node_lease(&keys(), &node),
        Err("spec.podCIDR: \"10.244.1.7/24\" has host bits set".to_string())
    );
    let node = flannel_node("w1", "ten/24", flannel_annotations());
    assert_eq!(
        node_lease(&keys(), &node),
        Err("spec.podCIDRs[0]: \"ten/24\" is not a CIDR".to_string())
    );
}

#[test]
fn another_annotation_prefix() {
    // flanneld --kube-annotation-prefix=example.com: the default keys mean nothing.
    let keys = Annotations::new("example.com/");
    assert_eq!(keys.public_ip, "example.com/public-ip");
    let node = flannel_node("w1", "10.244.1.0/24", flannel_annotations());
    assert_eq!(node_lease(&keys, &node), Ok(None));
    let a = json!({"example.com/kube-subnet-manager": "true",
        "example.com/public-ip": "192.168.10.11", "example.com/backend-type": "host-gw"});
    let lease = node_lease(&keys, &flannel_node("w1", "10.244.1.0/24", a))
        .unwrap()
        .unwrap();
    assert_eq!(lease.attrs.backend_type, "host-gw");
}

#[test]
fn a_subnet_moves_and_a_shared_one_goes_back_to_its_other_claimant() {
    let keys = keys();
    let mut leases = Leases::default();
    let lease = |name: &str, cidr: &str| {
        let node = flannel_node(name, cidr, flannel_annotations());
        node_lease(&keys, &node).unwrap().unwrap()
    };
    let net = |s: &str| s.parse::<Ipv4Network>().unwrap();
    let mut events = Vec::new();
    leases.set("w1", Some(lease("w1", "10.244.1.0/24")), &mut events);
    leases.set("w2", Some(lease("w2", "10.244.1.0/24")), &mut events);
    events.clear();
    // w2 moves on: the subnet stays w1's.
    leases.set("w2", Some(lease("w2", "10.244.2.0/24")), &mut events);
    assert!(
        matches!(&events[..], [Event::Upsert(a, _), Event::Upsert(b, l)]
        if *a == net("10.244.2.0/24") && *b == net("10.244.1.0/24")
            && l.attrs.node.as_deref() == Some("w1"))
    );
    events.clear();
    // w1 goes: its subnet is removed.
    leases.set("w1", None, &mut events);
    assert!(matches!(&events[..], [Event::Removed(a)] if *a == net("10.244.1.0/24")));
    events.clear();
    // An unchanged lease is no event.
    leases.set("w2", Some(lease("w2", "10.244.2.0/24")), &mut events);
    assert!(events.is_empty());
}

#[test]
fn a_node_edited_wrong_keeps_its_lease_until_deleted() {
    let keys = keys();
    let mut leases = Leases::default();
    let good = flannel_node("w1", "10.244.1.0/24", flannel_annotations());
    let mut events = Vec::new();
    let lease = leases.lease(&keys, &good);
    leases.set("w1", lease, &mut events);
    assert_eq!(events.len(), 1);
    events.clear();
    // A wrong public IP, then the annotations stripped: the lease stays, no events.
    let mut a = flannel_annotations();
    a["flannel.alpha.coreos.com/public-ip"] = json!("not-an-ip");
    let mut stripped = flannel_node("w1", "10.244.1.0/24", json!({}));
    stripped.metadata.annotations = None;
    for bad in [flannel_node("w1", "10.244.1.0/24", a), stripped] {
        let lease = leases.lease(&keys, &bad);
        assert_eq!(
            lease.as_ref().map(|l| l.attrs.public_ip),
            Some(Ipv4Addr::new(192, 168, 10, 11))
        );
        leases.set("w1", lease, &mut events);
        assert!(events.is_empty());
    }
    // A re-list keeps it too; a node never valid has none; a node gone from the list goes.
    let mut broken = flannel_node("w5", "10.244.5.0/24", flannel_annotations());
    broken.metadata.annotations.as_mut().unwrap().insert(
        "flannel.alpha.coreos.com/public-ip".to_string(),
        "x".to_string(),
    );
    let all = leases.relist(&keys, &[good.clone(), broken]);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].1.attrs.node.as_deref(), Some("w1"));
    assert!(leases.relist(&keys, &[]).is_empty());
    // Deleted: removed.
    let lease = leases.lease(&keys, &good);
    leases.set("w1", lease, &mut events);
    events.clear();
    leases.set("w1", None, &mut events);
    assert!(matches!(&events[..], [Event::Removed(_)]));
}
