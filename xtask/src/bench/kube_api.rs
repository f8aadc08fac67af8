//! Services from the Kubernetes API (`--service-source=kubernetes`): how long one agent
//! takes to program N services and their EndpointSlices as they appear on the API, what it
//! then holds in memory, and the time from one EndpointSlice change to the maps with N
//! services programmed. The API is the testbed's replay server (no kube-apiserver can be
//! installed here), so the figures include kube-rs's list and watch over HTTP but not an
//! API server's own work.
use std::{
    io::{Read, Seek, SeekFrom},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use netdp_testbed::{Binaries, Spec, Testbed, flannel::network_config, kube_api::ReplayApiServer};
use serde_json::{Value, json};

use super::{
    control_plane::rss_mib,
    kube_proxy::{self, ServicePort},
    netdp_services,
    report::{MEBIBYTES, Outcome, Row, SECONDS, Section},
    runner::Stats,
    services::case,
};

const SUBJECT: &str = "netdp agent, services from the Kubernetes API (replay server)";
/// Slice changes timed per size.
const CHANGES: usize = 20;

fn service(s: &ServicePort) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": s.name, "namespace": s.namespace},
        "spec": {"type": "ClusterIP", "clusterIP": s.cluster_ip.to_string(),
            "ports": [{"name": s.port_name, "protocol": "TCP", "port": s.port,
                "targetPort": s.endpoints.first().map_or(8080, |e| e.1)}]}})
}

fn slice(s: &ServicePort, endpoints: &[(Ipv4Addr, u16)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, _)| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": format!("{}-s", s.name), "namespace": s.namespace,
            "labels": {"kubernetes.io/service-name": s.name}},
        "endpoints": eps,
        "ports": [{"name": s.port_name, "protocol": "TCP", "port": 8080}]})
}

/// Waits for the agent's next `services updated` line after `mark` (bytes of its log),
/// reading only what was written since (so it can poll every 100 µs); the time since
/// `since` when it appeared.
fn next_update(tb: &Testbed, mark: u64, since: Instant, timeout: Duration) -> Result<Duration> {
    let mut log = std::fs::File::open(tb.node("n1").agent_log())?;
    log.seek(SeekFrom::Start(mark))?;
    let mut text = String::new();
    loop {
        log.read_to_string(&mut text)?;
        if text.contains("services updated: ") {
            return Ok(since.elapsed());
        }
        if since.elapsed() > timeout {
            bail!(
                "no update {timeout:?} after the slice change: {}",
                tb.agent_logs(5)
            );
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn measure(bins: &Binaries, n: usize, rows: &mut Vec<Row>) -> Result<()> {
    let mut tb = Testbed::new(
        Spec::flat(1)
            .network(&network_config("host-gw"))
            .binaries(bins.clone()),
    )?;
    let api = ReplayApiServer::start(&tb.ctl_ns, Ipv4Addr::new(192, 168, 10, 2))?;
    let kubeconfig = format!("--kubeconfig={}", api.write_kubeconfig(&tb.dir)?.display());
    let mut flags = netdp_services::AGENT_FLAGS.to_vec();
    flags.extend(["--service-source=kubernetes", kubeconfig.as_str()]);
    tb.start_agent("n1", &flags)?;
    let real: Vec<_> = (2..5)
        .map(|h| (Ipv4Addr::new(10, 244, 200, h), 8080))
        .collect();
    let services = kube_proxy::bench_services(n, &real);
    eprintln!("bench: control plane: {n} services through the API");
    let marks = netdp_services::log_marks(&tb, &["n1"]);
    let t0 = Instant::now();
    for s in &services {
        api.apply(service(s))?;
        api.apply(slice(s, &s.endpoints))?;
    }
    let p = netdp_services::wait_programmed(
        &tb,
        &["n1"],
        &marks,
        n,
        t0,
        netdp_services::PROGRAM_TIMEOUT,
    )?;
    eprintln!(
        "bench:   programmed in {:.1?} (agent {:.1?})",
        p.wall, p.agent[0]
    );
    let pid = tb.node("n1").agent_pid().context("the agent is gone")?;
    let rss = rss_mib(pid)?;
    // One slice change at a time: its endpoints move to fresh addresses and back.
    let mut latency = Vec::new();
    for k in 0..CHANGES {
        let s = &services[(k * 7919) % n];
        let moved: Vec<_> = s
            .endpoints
            .iter()
            .map(|(ip, p)| (Ipv4Addr::from(u32::from(*ip) ^ 0x0001_0000 ^ k as u32), *p))
            .collect();
        let mark = netdp_services::log_marks(&tb, &["n1"])[0];
        let sent = Instant::now();
        api.apply(slice(s, &moved))?;
        latency.push(next_update(&tb, mark, sent, Duration::from_secs(30))?.as_secs_f64());
    }
    let sized = |what: &str| format!("{what} with {}", case(n));
    rows.push(Row::from_result(
        Section::ControlPlane,
        SUBJECT,
        &sized("programming from the API (Service + EndpointSlice each)"),
        SECONDS,
        Stats::new(vec![p.wall.as_secs_f64()]),
    ));
    rows.push(Row::from_result(
        Section::ControlPlane,
        SUBJECT,
        &sized("EndpointSlice change to the maps"),
        SECONDS,
        Stats::new(latency),
    ));
    rows.push(Row::from_result(
        Section::ControlPlane,
        SUBJECT,
        &sized("resident memory"),
        MEBIBYTES,
        Stats::new(vec![rss]),
    ));
    Ok(())
}

/// The rows at each of `counts`.
pub fn run(bins: &Binaries, counts: &[usize]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &n in counts {
        if let Err(e) = measure(bins, n, &mut rows) {
            rows.push(Row::new(
                Section::ControlPlane,
                SUBJECT,
                &format!("programming from the API with {}", case(n)),
                SECONDS,
                Outcome::Failed(format!("{e:#}")),
            ));
        }
    }
    rows
}
