//! Scale: 100,000 services with 1 to 10 endpoints each, applied with the CLI to a running
//! agent, programmed, and usable; then the agent restarts and takes the programmed maps
//! over. Times are printed (the benchmark, not this test, judges them).
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use netdp::dataplane::{Pins, lb::LbMaps};
use netdp_testbed::{
    BPF_ROOT, Spec, Testbed,
    services::{Connect, EchoServer, echo_many, programmed_batches},
};
use serde_json::json;

const SERVICES: u32 = 100_000;
const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;

fn cluster_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i)
}

/// Frontends programmed on the node, counted from its pinned map.
fn frontends(pins: &Pins) -> Result<usize> {
    Ok(LbMaps::open(pins)?
        .frontends
        .keys()
        .filter(|k| k.is_ok())
        .count())
}

#[test]
fn a_hundred_thousand_services() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(1).network(HOST_GW))?;
    let sizes = [
        "--lb-frontend-map-size=262144",
        "--lb-backend-map-size=2097152",
    ];
    tb.start_agent("n1", &sizes)?;
    let backend = tb.add_pod("n1", "backend")?;
    let client = tb.add_pod("n1", "client")?;
    let _server = EchoServer::start(&backend.ns, 8080, "last")?;
    let node_ns = tb.node("n1").ns.clone();
    let pins = Pins::new(std::path::Path::new(BPF_ROOT), &node_ns)?;

    // Service i has 1 + i % 10 endpoints (made-up pods elsewhere in the cluster); the last
    // one is served by the real backend pod.
    let mut endpoints_total = 0u64;
    let docs: Vec<_> = (0..SERVICES)
        .map(|i| {
            let eps: Vec<_> = if i == SERVICES - 1 {
                vec![json!({"ip": backend.ip.to_string(), "nodeName": node_ns})]
            } else {
                (0..1 + i % 10)
                    .map(|j| {
                        let ip =
                            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i * 10 + j);
                        json!({"ip": ip.to_string()})
                    })
                    .collect()
            };
            endpoints_total += eps.len() as u64;
            json!({
                "metadata": {"name": format!("svc-{i}")},
                "spec": {"clusterIP": cluster_ip(i).to_string(),
                         "ports": [{"port": 80, "targetPort": 8080}]},
                "endpoints": eps,
            })
        })
        .collect();
    let text = serde_json::to_string(&docs)?;
    println!(
        "{SERVICES} services, {endpoints_total} endpoints, {} MB of JSON",
        text.len() / 1_000_000
    );

    let start = Instant::now();
    let out = tb.apply_services(&text)?;
    let applied = start.elapsed();
    ensure!(
        out.contains(&format!("{SERVICES} services configured")),
        "{out}"
    );
    let mut n = 0;
    tb.wait_for(
        &format!("all {SERVICES} frontends in n1's FRONTENDS"),
        Duration::from_secs(300),
        || {
            n = frontends(&pins)?;
            Ok(n == SERVICES as usize)
        },
    )
    .with_context(|| format!("{n} of {SERVICES} frontends programmed"))?;
    let programmed = start.elapsed();
    // The agent's own time: the batches it programmed, as it logged them.
    let log = std::fs::read_to_string(tb.node("n1").agent_log())?;
    let agent: Duration = programmed_batches(&log, "updated")
        .iter()
        .map(|b| b.took)
        .sum();
    println!(
        "scale: `netdp service apply` of {SERVICES} services took {applied:.1?}; all programmed \
         {programmed:.1?} after the apply started; the agent spent {agent:.1?} programming"
    );

    let last = cluster_ip(SERVICES - 1);
    let who = echo_many(&client.ns, Connect::new(last, 80), 3)?;
    ensure!(who.iter().all(|w| w == "last"), "{who:?}");
    let fe = LbMaps::open(&pins)?
        .get(last, 80, 6)
        .ok_or_else(|| anyhow::anyhow!("{last}:80 missing from FRONTENDS"))?;
    ensure!(fe.backends.len() == 1 && fe.backends[0].addr == backend.ip.octets());

    // A restarted agent reads the 100,000 services at once and adopts what is programmed.
    tb.stop_agent("n1")?;
    let restart = Instant::now();
    tb.start_agent("n1", &sizes)?;
    let ready = restart.elapsed();
    let log = std::fs::read_to_string(tb.node("n1").agent_log())?;
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("services programmed"))
        .unwrap_or("")
        .to_string();
    println!("scale: agent restart with {SERVICES} services ready in {ready:.1?}: {line}");
    ensure!(
        line.contains(&format!("{SERVICES} adopted")),
        "the restarted agent reprogrammed instead of adopting: {line}"
    );
    let who = echo_many(&client.ns, Connect::new(last, 80), 3)?;
    ensure!(who.iter().all(|w| w == "last"), "{who:?}");
    Ok(())
}
