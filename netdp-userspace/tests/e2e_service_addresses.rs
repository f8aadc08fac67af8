//! Service addresses end to end (the CVE-2020-8554 mitigation): real agents skip services
//! whose clusterIP is a pod's or outside the service range, or whose externalIPs are a
//! node's or outside `--external-ip-allow`, and program the rest; `netdp service apply`
//! refuses them up front.
use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Result, ensure};
use netdp::dataplane::{Pins, lb::LbMaps};
use netdp_testbed::{BPF_ROOT, Spec, Testbed};
use serde_json::{Value, json};

const NET: &str = r#"{"Network": "10.244.0.0/16", "ServiceNetwork": "10.96.0.0/16", "Backend": {"Type": "host-gw"}}"#;

/// The (address, port) pairs in a node's FRONTENDS map, read from its pin.
fn frontends(tb: &Testbed, node: &str) -> Result<Vec<(Ipv4Addr, u16)>> {
    let pins = Pins::new(Path::new(BPF_ROOT), &tb.node(node).ns)?;
    Ok(LbMaps::open(&pins)?
        .list()
        .iter()
        .map(|f| (f.addr(), f.port()))
        .collect())
}

fn service(name: &str, mut spec: Value, endpoint: Ipv4Addr) -> Value {
    spec["ports"] = json!([{"port": 80, "targetPort": 8080}]);
    json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec,
           "endpoints": [{"ip": endpoint.to_string()}]})
}

#[test]
fn services_claiming_pod_or_node_addresses_are_never_programmed() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(2).network(NET))?;
    tb.start_all_agents(&["--external-ip-allow=198.51.100.0/24"])?;
    let pod = tb.add_pod("n2", "p1")?.ip;
    let (n1, n2) = (tb.node("n1").public_ip, tb.node("n2").public_ip);
    // Written straight to etcd: the CLI would not let them in.
    let put = |name: &str, spec: Value| {
        let key = format!("/netdp/services/default/{name}");
        tb.etcd().put(&key, &service(name, spec, pod).to_string())
    };
    put(
        "good",
        json!({"clusterIP": "10.96.5.10", "externalIPs": ["198.51.100.9"]}),
    )?;
    put("pod-ip", json!({"clusterIP": pod.to_string()}))?;
    put(
        "node-ip",
        json!({"clusterIP": "10.96.5.11", "externalIPs": [n2.to_string()]}),
    )?;
    put("off-range", json!({"clusterIP": "10.97.0.1"}))?;
    put(
        "not-allowed",
        json!({"clusterIP": "10.96.5.12", "externalIPs": ["203.0.113.9"]}),
    )?;
    let has = |tb: &Testbed, want: &[(Ipv4Addr, u16)]| -> Result<bool> {
        for n in ["n1", "n2"] {
            let fe = frontends(tb, n)?;
            if !want.iter().all(|w| fe.contains(w)) {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let good = [
        (Ipv4Addr::new(10, 96, 5, 10), 80),
        (Ipv4Addr::new(198, 51, 100, 9), 80),
    ];
    tb.wait_for(
        "the good service everywhere",
        Duration::from_secs(10),
        || has(&tb, &good),
    )?;
    // Several resyncs later (every second): none of the others, each said once.
    std::thread::sleep(Duration::from_secs(3));
    let refused = [
        (
            "pod-ip",
            format!("spec.clusterIP: {pod} is inside the pod Network 10.244.0.0/16"),
        ),
        (
            "node-ip",
            format!("spec.externalIPs[0]: {n2} is a node address"),
        ),
        (
            "off-range",
            "spec.clusterIP: 10.97.0.1 is outside the service range 10.96.0.0/16 (ServiceNetwork)"
                .into(),
        ),
        (
            "not-allowed",
            "spec.externalIPs[0]: 203.0.113.9 is not in --external-ip-allow (198.51.100.0/24)"
                .into(),
        ),
    ];
    for n in ["n1", "n2"] {
        let fe = frontends(&tb, n)?;
        let mut want = good.to_vec();
        want.sort();
        let mut got = fe.clone();
        got.sort();
        ensure!(
            got == want,
            "{n}'s FRONTENDS: {got:?}, expected only {want:?}"
        );
        let log = std::fs::read_to_string(tb.node(n).agent_log())?;
        for (name, why) in &refused {
            let line = format!("service default/{name} not programmed: {why}");
            ensure!(
                log.matches(&line).count() == 1,
                "{n}: {line:?} not logged once: {log}"
            );
        }
        ensure!(tb.node(n).agent_running(), "the agent on {n} died");
    }

    // Fixed, it is programmed.
    put(
        "node-ip",
        json!({"clusterIP": "10.96.5.11", "externalIPs": ["198.51.100.11"]}),
    )?;
    tb.wait_for("the fixed service", Duration::from_secs(10), || {
        has(&tb, &[(Ipv4Addr::new(198, 51, 100, 11), 80)])
    })?;

    // The CLI refuses what it can know (the config's ranges, the leases' PublicIPs).
    for (spec, why) in [
        (
            json!({"clusterIP": "10.96.5.20", "externalIPs": [n1.to_string()]}),
            format!("spec.externalIPs[0]: {n1} is a node address"),
        ),
        (
            json!({"clusterIP": pod.to_string()}),
            format!("spec.clusterIP: {pod} is inside the pod Network 10.244.0.0/16"),
        ),
    ] {
        let doc = json!([service("cli", spec, pod)]).to_string();
        let err = tb.apply_services(&doc).expect_err("apply must refuse");
        ensure!(err.to_string().contains(&why), "{err:#}");
    }

    // A node leaving changes the node addresses: the services naming it are checked again
    // (and only those: nobody else's verdict can change).
    let left = service(
        "node-left",
        json!({"clusterIP": "10.96.5.12", "externalIPs": [n2.to_string()]}),
        pod,
    );
    tb.etcd()
        .put("/netdp/services/default/node-left", &left.to_string())?;
    let logged = |tb: &Testbed, why: &str| -> Result<bool> {
        let log = std::fs::read_to_string(tb.node("n1").agent_log())?;
        Ok(log.contains(&format!(
            "service default/node-left not programmed: spec.externalIPs[0]: {n2} {why}"
        )))
    };
    tb.wait_for("n1 to refuse node-left", Duration::from_secs(10), || {
        logged(&tb, "is a node address")
    })?;
    let n2_subnet = tb.subnet_of("n2")?;
    tb.stop_agent("n2")?;
    tb.etcd().delete(&format!(
        "{}/subnets/{}",
        tb.prefix,
        n2_subnet.replace('/', "-")
    ))?;
    tb.wait_for(
        "n1 to re-check node-left once n2's lease is gone",
        Duration::from_secs(10),
        || logged(&tb, "is not in --external-ip-allow (198.51.100.0/24)"),
    )?;
    Ok(())
}
