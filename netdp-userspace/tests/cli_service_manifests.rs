//! `netdp service apply -f` with Kubernetes manifests against a real etcd: the Service
//! YAMLs of the user's notes apply as written (no clusterIP, no nodePort for the
//! LoadBalancer, a headless service), with a clusterIP and node ports allocated as
//! kube-apiserver would and kept when applied again; Services and EndpointSlices as
//! `kubectl get -o yaml` prints them (server fields, several slices, named ports,
//! terminating endpoints) become services with their endpoints; what cannot be used is
//! skipped with a line naming the object and the field.
use std::process::{Command, Output};

use anyhow::{Context, Result};
use netdp_testbed::etcd::LocalEtcd;
use netdp_testbed::process::said;
use serde_json::Value;

/// The four Service manifests of the notes (seeds/004), as written there (each its own
/// example: two are called nginx).
const CLUSTER_IP: &str = r#"
apiVersion: v1
kind: Service
metadata:
  labels:
    app: nginx
  name: nginx-clusterip
spec:
  ports:
  - name: service0
    port: 8080                # 访问Service的端口
    protocol: TCP             # 访问Service的协议，支持TCP和UDP
    targetPort: 80
  selector:
    app: nginx
  type: ClusterIP
"#;
const HEADLESS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: nginx
  labels:
    app: nginx
spec:
  ports:
  - port: 80
    name: nginx-web
  # clusterIP 设置为 None
  clusterIP: None
  selector:
    app: nginx
"#;
const LOAD_BALANCER: &str = r#"
apiVersion: v1 
kind: Service 
metadata: 
  annotations:   
    kubernetes.io/elb.pass-through: "true"
    kubernetes.io/elb.class: union
    kubernetes.io/session-affinity-mode: SOURCE_IP
    kubernetes.io/elb.subnet-id: a9cf6d24-ad43-4f75-94d1-4e0e0464afac
    kubernetes.io/elb.autocreate: '{"type":"public","bandwidth_name":"cce-bandwidth","bandwidth_chargemode":"bandwidth","bandwidth_size":5,"bandwidth_sharetype":"PER","eip_type":"5_bgp","name":"james"}'
  labels: 
    app: nginx 
  name: nginx 
spec: 
  externalTrafficPolicy: Local
  ports: 
  - name: service0 
    port: 80
    protocol: TCP 
    targetPort: 80
  selector: 
    app: nginx 
  type: LoadBalancer
"#;
const NODE_PORT: &str = r#"
apiVersion: v1
kind: Service
metadata:
  labels:
    app: nginx
  name: nginx-nodeport
spec:
  ports:
  - name: service
    nodePort: 30000     # 节点端口，取值范围为30000-32767
    port: 8080
    protocol: TCP
    targetPort: 80
  selector:
    app: nginx
  type: NodePort
"#;

/// A Service and its slices as `kubectl get svc,endpointslices -o yaml` prints them: server
/// fields everywhere, a named target port that only the slices resolve, two IPv4 slices
/// (one endpoint terminating but serving, one not ready), an IPv6 slice, a slice of a
/// service not in the file, one missing the service's port, and a Deployment.
const KUBECTL: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2026-11-30T10:00:00Z"
    labels: {app: web}
    name: web
    namespace: shop
    resourceVersion: "4711"
    uid: 5f0b6c2e-1d2b-4f7e-9f8a-0c1d2e3f4a5b
  spec:
    clusterIP: 10.96.40.10
    clusterIPs: [10.96.40.10]
    internalTrafficPolicy: Cluster
    ipFamilies: [IPv4]
    ipFamilyPolicy: SingleStack
    ports:
    - {name: http, port: 80, protocol: TCP, targetPort: web-http}
    - {name: metrics, port: 9100, protocol: TCP, targetPort: 9100}
    selector: {app: web}
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses: [10.244.1.5]
    conditions: {ready: true, serving: true, terminating: false}
    nodeName: node-1
    targetRef: {kind: Pod, name: web-1, namespace: shop, uid: 0a}
    zone: zone-a
  - addresses: [10.244.2.6]
    conditions: {ready: false, serving: true, terminating: true}
    nodeName: node-2
  kind: EndpointSlice
  metadata:
    generateName: web-
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: web
    name: web-abc12
    namespace: shop
    ownerReferences:
    - {apiVersion: v1, kind: Service, name: web, uid: 5f0b6c2e-1d2b-4f7e-9f8a-0c1d2e3f4a5b}
  ports:
  - {name: http, port: 8080, protocol: TCP}
  - {name: metrics, port: 9100, protocol: TCP}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses: [10.244.3.7]
    conditions: {ready: false}
    nodeName: node-3
  - addresses: [10.244.1.5]
    conditions: {ready: true}
  kind: EndpointSlice
  metadata:
    labels: {kubernetes.io/service-name: web}
    name: web-def34
    namespace: shop
  ports:
  - {name: metrics, port: 9100, protocol: TCP}
  - {name: http, port: 8080}
- addressType: IPv6
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses: ["fd00::5"]
  kind: EndpointSlice
  metadata:
    labels: {kubernetes.io/service-name: web}
    name: web-v6
    namespace: shop
  ports:
  - {name: http, port: 8080}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses: [10.244.9.9]
  kind: EndpointSlice
  metadata:
    labels: {kubernetes.io/service-name: gone}
    name: gone-x1
    namespace: shop
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses: [10.244.8.8]
  kind: EndpointSlice
  metadata:
    labels: {kubernetes.io/service-name: web}
    name: web-noport
    namespace: shop
  ports:
  - {name: metrics, port: 9100}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web, namespace: shop}
  spec: {replicas: 2}
"#;

fn apply(etcd: &LocalEtcd, text: &str, extra: &[&str]) -> Result<Output> {
    let file = etcd.dir.join("manifests.yaml");
    std::fs::write(&file, text)?;
    Ok(Command::new(env!("CARGO_BIN_EXE_netdp"))
        .args(["service", "apply", "-f"])
        .arg(&file)
        .arg(format!("--etcd-endpoints={}", etcd.endpoint))
        .args(extra)
        .output()?)
}

fn stored(etcd: &LocalEtcd, id: &str) -> Result<Value> {
    let v = etcd
        .get(&format!("/netdp/services/{id}"))?
        .with_context(|| format!("{id} is not in etcd"))?;
    Ok(serde_json::from_str(&v)?)
}

const RANGE: &str = "--service-cluster-ip-range=10.96.0.0/16";

#[test]
fn the_notes_service_manifests_apply_as_written_with_addresses_allocated() -> Result<()> {
    let etcd = LocalEtcd::start()?;
    // Without a service range there is nothing to allocate a clusterIP from.
    let out = apply(&etcd, CLUSTER_IP, &[])?;
    assert!(!out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("nginx-clusterip") && said(&out).contains("spec.clusterIP: not given"),
        "{}",
        said(&out)
    );
    assert_eq!(etcd.get("/netdp/services/default/nginx-clusterip")?, None);

    // One file each, in this order: the range's first addresses, and the first node port
    // the NodePort service leaves to the LoadBalancer.
    let expected = [
        (
            CLUSTER_IP,
            "service default/nginx-clusterip configured (clusterIP 10.96.0.1 allocated)",
        ),
        (
            NODE_PORT,
            "service default/nginx-nodeport configured (clusterIP 10.96.0.2 allocated)",
        ),
        (
            LOAD_BALANCER,
            "service default/nginx configured (clusterIP 10.96.0.3, spec.ports[0].nodePort 30001 allocated)",
        ),
    ];
    for (manifest, line) in expected {
        let out = apply(&etcd, manifest, &[RANGE])?;
        assert!(out.status.success(), "{}", said(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), line);
    }
    let lb = stored(&etcd, "default/nginx")?;
    assert_eq!(lb["spec"]["clusterIP"], "10.96.0.3");
    assert_eq!(lb["spec"]["ports"][0]["nodePort"], 30001);
    assert_eq!(lb["spec"]["externalTrafficPolicy"], "Local");
    assert_eq!(
        stored(&etcd, "default/nginx-nodeport")?["spec"]["ports"][0]["nodePort"],
        30000
    );

    // Applied again, each keeps what it was given; nothing is allocated anew.
    for (manifest, line) in expected {
        let out = apply(&etcd, manifest, &[RANGE])?;
        assert!(out.status.success(), "{}", said(&out));
        let kept = line.split(" (").next().unwrap_or(line);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), kept);
    }
    assert_eq!(stored(&etcd, "default/nginx")?, lb);

    // The headless example (also called nginx), on its own: nothing to allocate.
    let other = LocalEtcd::start()?;
    let out = apply(&other, HEADLESS, &[])?;
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "service default/nginx configured"
    );
    assert_eq!(
        stored(&other, "default/nginx")?["spec"]["clusterIP"],
        "None"
    );
    Ok(())
}

#[test]
fn kubectl_services_and_endpoint_slices_become_services_with_their_endpoints() -> Result<()> {
    let etcd = LocalEtcd::start()?;
    let out = apply(&etcd, KUBECTL, &[RANGE])?;
    let text = said(&out);
    println!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("service shop/web configured"), "{text}");
    // One line for each thing skipped, naming it and the field.
    for line in [
        "EndpointSlice shop/web-v6: addressType: IPv6 (only IPv4 is supported so far); skipped",
        "EndpointSlice shop/gone-x1: metadata.labels[\"kubernetes.io/service-name\"]: service shop/gone is not in the input; skipped",
        "EndpointSlice shop/web-noport: ports: no TCP port named \"http\" for the service's spec.ports[0]; skipped",
        "kind Deployment is not a Service or an EndpointSlice; skipped",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let web = stored(&etcd, "shop/web")?;
    // The named target port is what the slices say; the numeric one stays.
    assert_eq!(web["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(web["spec"]["ports"][1]["targetPort"], 9100);
    // Both IPv4 slices' endpoints, each once (10.244.1.5 is in both), with their
    // conditions.
    let mut eps: Vec<(String, Value, Value, Value, Value)> = web["endpoints"]
        .as_array()
        .context("endpoints")?
        .iter()
        .map(|e| {
            (
                e["ip"].as_str().unwrap_or_default().to_string(),
                e["nodeName"].clone(),
                e["ready"].clone(),
                e["serving"].clone(),
                e["terminating"].clone(),
            )
        })
        .collect();
    eps.sort_by(|a, b| a.0.cmp(&b.0));
    let t = Value::Bool(true);
    let f = Value::Bool(false);
    assert_eq!(
        eps,
        vec![
            (
                "10.244.1.5".into(),
                "node-1".into(),
                t.clone(),
                t.clone(),
                f.clone()
            ),
            (
                "10.244.2.6".into(),
                "node-2".into(),
                f.clone(),
                t.clone(),
                t.clone()
            ),
            (
                "10.244.3.7".into(),
                "node-3".into(),
                f.clone(),
                f.clone(),
                f.clone()
            ),
        ]
    );

    // A slice with a wrong value is an error naming its document and path.
    let bad = "kind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}\n---\nkind: EndpointSlice\naddressType: IPv4\nmetadata: {name: a-1, labels: {kubernetes.io/service-name: a}}\nendpoints: [{addresses: [10.244.1.1], conditions: {ready: maybe}}]\n";
    let out = apply(&etcd, bad, &[RANGE])?;
    assert!(!out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("document 2: EndpointSlice endpoints[0].conditions.ready"),
        "{}",
        said(&out)
    );
    Ok(())
}
