//! End to end: a Service and its EndpointSlice, as `kubectl get -o yaml` prints them,
//! applied with `netdp service apply -f` and followed by the agents through a rolling
//! update. Pod a serves first; a transfer through the service is held open halfway; the
//! slice is applied again with a terminating but serving and b ready: new connections go
//! to b and the held transfer completes on a. Then b stops serving too, and a, the only
//! endpoint still serving, takes new connections again (kube-proxy's rule: terminating
//! endpoints only when none is ready). The named target port only the slice resolves.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Result, ensure};
use netdp_testbed::{
    Spec, Testbed,
    services::{Connect, EchoServer, HeldEcho, echo_many},
};

const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 9, 10);

/// The Service and its slice, with `a` and `b`'s conditions as given.
fn manifests(a: (Ipv4Addr, &str), b: (Ipv4Addr, &str), nodes: (&str, &str)) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  resourceVersion: "812"
  uid: 3e0c1b52-6a3f-4d5e-8f7a-9b0c1d2e3f40
spec:
  clusterIP: {VIP}
  clusterIPs: [{VIP}]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: web-http
  selector:
    app: web
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {{}}
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  labels:
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
    kubernetes.io/service-name: web
  name: web-7xk2p
  namespace: default
endpoints:
- addresses: [{}]
  conditions: {}
  nodeName: {}
- addresses: [{}]
  conditions: {}
  nodeName: {}
ports:
- name: http
  port: 8080
  protocol: TCP
"#,
        a.0, a.1, nodes.0, b.0, b.1, nodes.1
    )
}

const READY: &str = "{ready: true, serving: true, terminating: false}";
const UNREADY: &str = "{ready: false, serving: false, terminating: false}";
const DRAINING: &str = "{ready: false, serving: true, terminating: true}";
const GONE: &str = "{ready: false, serving: false, terminating: true}";

#[test]
fn endpoint_slices_follow_a_rolling_update_without_dropping_a_transfer() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(2).network(HOST_GW))?;
    tb.start_all_agents(&[])?;
    let a = tb.add_pod("n1", "a")?;
    let b = tb.add_pod("n2", "b")?;
    let client = tb.add_pod("n1", "client")?;
    let _sa = EchoServer::start(&a.ns, 8080, "a")?;
    let _sb = EchoServer::start(&b.ns, 8080, "b")?;
    let nodes = (tb.node("n1").ns.clone(), tb.node("n2").ns.clone());
    let nodes = (nodes.0.as_str(), nodes.1.as_str());
    let web = Connect::new(VIP, 80);

    let out = tb.apply_services(&manifests((a.ip, READY), (b.ip, UNREADY), nodes))?;
    ensure!(out.contains("service default/web configured"), "{out}");
    tb.wait_services_programmed(Duration::from_secs(20))?;
    let who = echo_many(&client.ns, web, 6)?;
    ensure!(who.iter().all(|w| w == "a"), "only a is ready: {who:?}");

    // A transfer to a, held open halfway through the rolling update.
    let held = HeldEcho::start(
        &client.ns,
        Connect {
            bytes: 1 << 20,
            ..web
        },
        7,
    )?;
    ensure!(held.who == "a", "the held transfer went to {}", held.who);
    tb.apply_services(&manifests((a.ip, DRAINING), (b.ip, READY), nodes))?;
    let mut who = Vec::new();
    tb.wait_for(
        "new connections to go to b",
        Duration::from_secs(20),
        || {
            who = echo_many(&client.ns, web, 6)?;
            Ok(who.iter().all(|w| w == "b"))
        },
    )?;
    println!("a terminating, b ready: new connections go to {who:?}");
    let done = held.finish()?;
    ensure!(done == "a", "the held transfer finished on {done}");

    // b goes too; a still serves and is all there is.
    tb.apply_services(&manifests((a.ip, DRAINING), (b.ip, GONE), nodes))?;
    tb.wait_for(
        "new connections to go back to a",
        Duration::from_secs(20),
        || {
            who = echo_many(&client.ns, web, 6)?;
            Ok(who.iter().all(|w| w == "a"))
        },
    )?;
    println!("nothing ready, a terminating but serving: new connections go to {who:?}");
    Ok(())
}
