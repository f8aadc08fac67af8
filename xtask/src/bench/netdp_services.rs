//! netdp's side of the service benchmarks: the benchmark's services (the same ones the
//! kube-proxy rulesets are written for) as `netdp service apply` reads them, applied with
//! the real CLI, and waited for until the agents have programmed every one.
//!
//! "Programmed" is read from the agent's own log (each batch it programs ends with the
//! number of services it now holds, and how long the batch took) and then proven by
//! counting the frontends in the node's pinned FRONTENDS map.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use aya::maps::HashMap;
use netdp_common::{
    lb::{Frontend, FrontendKey},
    map_names,
};
use netdp_testbed::{Testbed, services::programmed_batches, testbed::open_pinned_map};
use serde_json::json;

use super::kube_proxy::ServicePort;

/// Agent flags for up to 100,000 services of 3 endpoints (one frontend each; the default
/// FRONTENDS map holds 65,536).
pub const AGENT_FLAGS: &[&str] = &["--lb-frontend-map-size=262144"];
/// Where `netdp service apply` stores services (the agents' default `--service-prefix`).
pub const PREFIX: &str = "/netdp/services/";
/// How long agents may take to program (or remove) the services.
pub const PROGRAM_TIMEOUT: Duration = Duration::from_secs(300);

/// The services as one JSON list of Kubernetes-shaped Services with their endpoints.
/// Endpoints listed in `nodes` carry that `nodeName`; the others are judged by address.
pub fn to_json(services: &[ServicePort], nodes: &[(Ipv4Addr, String)]) -> String {
    let docs: Vec<_> = services
        .iter()
        .map(|s| {
            let eps: Vec<_> = s
                .endpoints
                .iter()
                .map(|(ip, _)| match nodes.iter().find(|(a, _)| a == ip) {
                    Some((_, node)) => json!({"ip": ip.to_string(), "nodeName": node}),
                    None => json!({"ip": ip.to_string()}),
                })
                .collect();
            let target = s.endpoints.first().map_or(s.port, |e| e.1);
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": s.name, "namespace": s.namespace},
                "spec": {
                    "clusterIP": s.cluster_ip.to_string(),
                    "ports": [{"name": s.port_name, "protocol": "TCP", "port": s.port,
                               "targetPort": target}],
                },
                "endpoints": eps,
            })
        })
        .collect();
    serde_json::Value::Array(docs).to_string()
}

/// Frontends in a node's pinned FRONTENDS map.
pub fn frontends(tb: &Testbed, node: &str) -> Result<usize> {
    let pin = tb.node(node).map_pin(map_names::FRONTENDS);
    let map: HashMap<_, FrontendKey, Frontend> = HashMap::try_from(open_pinned_map(&pin)?)?;
    Ok(map.keys().filter(|k| k.is_ok()).count())
}

/// How long a change took to be programmed.
#[derive(Debug, Clone)]
pub struct Programmed {
    /// From the start of the change until the last node logged holding the wanted number
    /// of services.
    pub wall: Duration,
    /// The agent's own time programming it (the batches it logged), per node in order.
    pub agent: Vec<Duration>,
}

/// Where each node's agent log ends now: only what is logged later belongs to a change.
pub fn log_marks(tb: &Testbed, nodes: &[&str]) -> Vec<u64> {
    nodes
        .iter()
        .map(|n| {
            std::fs::metadata(tb.node(n).agent_log())
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .collect()
}

/// Waits until every node's agent has logged holding `want` services after its mark and
/// its FRONTENDS map holds that many (one frontend per service); the time since `since`.
pub fn wait_programmed(
    tb: &Testbed,
    nodes: &[&str],
    marks: &[u64],
    want: usize,
    since: Instant,
    timeout: Duration,
) -> Result<Programmed> {
    let mut agent = vec![Duration::ZERO; nodes.len()];
    let mut done = vec![false; nodes.len()];
    loop {
        for (i, node) in nodes.iter().enumerate() {
            if done[i] {
                continue;
            }
            let log = std::fs::read(tb.node(node).agent_log())?;
            let text = String::from_utf8_lossy(log.get(marks[i] as usize..).unwrap_or_default());
            let batches = programmed_batches(&text, "updated");
            if let Some(b) = batches.iter().find(|b| b.failed > 0) {
                bail!(
                    "the agent on {node} failed to program {} services",
                    b.failed
                );
            }
            if batches.last().is_some_and(|b| b.total == want) {
                done[i] = true;
                agent[i] = batches.iter().map(|b| b.took).sum();
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
        if since.elapsed() > timeout {
            bail!(
                "not all nodes hold {want} services {timeout:?} after the change: {}",
                tb.agent_logs(5)
            );
        }
        if let Some(n) = nodes.iter().find(|n| !tb.node(n).agent_running()) {
            bail!("the agent on {n} exited: {}", tb.agent_logs(10));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = since.elapsed();
    for node in nodes {
        let have = frontends(tb, node)?;
        if have != want {
            bail!("{node} logged {want} services but FRONTENDS holds {have} frontends");
        }
    }
    Ok(Programmed { wall, agent })
}

/// `netdp service apply -f` of `json` (holding `want` services in all), timed until every
/// node has programmed them.
pub fn apply(
    tb: &Testbed,
    json: &str,
    nodes: &[&str],
    want: usize,
    timeout: Duration,
) -> Result<Programmed> {
    let marks = log_marks(tb, nodes);
    let start = Instant::now();
    tb.apply_services(json)?;
    wait_programmed(tb, nodes, &marks, want, start, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::kube_proxy::bench_services;

    #[test]
    fn services_read_as_kubernetes_services_with_endpoints() {
        let real = [(Ipv4Addr::new(10, 244, 1, 2), 8080)];
        let v: serde_json::Value = serde_json::from_str(&to_json(
            &bench_services(3, &real),
            &[(real[0].0, "node-2".into())],
        ))
        .unwrap();
        let last = &v[2];
        assert_eq!(last["metadata"]["name"], "svc-2");
        assert_eq!(last["spec"]["clusterIP"], "10.96.0.12");
        assert_eq!(last["spec"]["ports"][0]["port"], 80);
        assert_eq!(last["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(
            last["endpoints"],
            json!([{"ip": "10.244.1.2", "nodeName": "node-2"}])
        );
        assert_eq!(v[0]["endpoints"].as_array().unwrap().len(), 3);
        assert!(v[0]["endpoints"][0].get("nodeName").is_none());
    }
}
