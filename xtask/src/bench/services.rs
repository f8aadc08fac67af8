//! Service connection cost versus number of services: a pod on one node connects to a
//! ClusterIP whose 3 endpoints are pods on another node, with N services programmed (the
//! measured one last). Nodes route with the kernel, as kube-proxy needs; kube-proxy's
//! rulesets are loaded on both nodes, as every node runs kube-proxy.
use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use netdp_testbed::{Binaries, Spec, Testbed};

use super::{
    kube_proxy::{self, Cluster, ServicePort},
    load::{self, Server},
    netfilter,
    report::{CONN_RATE, Outcome, RR_RATE, Row, Section},
    runner::{self, Plan},
};

pub const NETDP: &str = "netdp (eBPF services)";
pub const IPTABLES: &str = "kube-proxy iptables";
pub const NFTABLES: &str = "kube-proxy nftables";
pub const NO_SERVICE: &str = "no service: pod IP directly (kernel routing)";
const ENDPOINT_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;

pub fn case(n: usize) -> String {
    format!("{} services", super::report::human(n as f64))
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Iptables,
    Nftables,
    /// No rules: the client talks to an endpoint's pod IP.
    None,
}

/// A kernel-routed 2-node cluster: a client pod on n1, 3 endpoint pods on n2.
struct Cluster2 {
    tb: Testbed,
    client: String,
    endpoints: Vec<(String, Ipv4Addr)>,
}

fn cluster(bins: &Binaries) -> Result<Cluster2> {
    let mut tb = Testbed::new(Spec::flat(2).binaries(bins.clone()))?;
    tb.route_by_kernel()?;
    let client = tb.add_kernel_pod("n1", "client")?.ns;
    let mut endpoints = Vec::new();
    for j in 0..3 {
        let p = tb.add_kernel_pod("n2", &format!("ep{j}"))?;
        endpoints.push((p.ns, p.ip));
    }
    Ok(Cluster2 {
        tb,
        client,
        endpoints,
    })
}

fn program(c: &Cluster2, mode: Mode, services: &[ServicePort], cfg: &Cluster) -> Result<()> {
    for node in &c.tb.nodes {
        match mode {
            Mode::Iptables => netfilter::load_iptables(&node.ns, services, cfg).map(|_| ()),
            Mode::Nftables => netfilter::load_nftables(&node.ns, services, cfg).map(|_| ()),
            Mode::None => Ok(()),
        }
        .with_context(|| format!("loading {} services on {}", services.len(), node.name))?;
    }
    Ok(())
}

/// Connection and request rates for one implementation at one service count.
fn measure(
    bins: &Binaries,
    plan: Plan,
    mode: Mode,
    n: usize,
) -> Result<(Result<runner::Stats>, Result<runner::Stats>)> {
    let c = cluster(bins)?;
    let real: Vec<(Ipv4Addr, u16)> = c
        .endpoints
        .iter()
        .map(|(_, ip)| (*ip, ENDPOINT_PORT))
        .collect();
    let services = kube_proxy::bench_services(n.max(1), &real);
    let cfg = kube_proxy::bench_cluster(c.tb.node("n1").ip);
    program(&c, mode, &services, &cfg)?;
    let servers: Vec<Server> = c
        .endpoints
        .iter()
        .map(|(ns, _)| Server::start(ns, ENDPOINT_PORT))
        .collect::<Result<_>>()?;
    let to = match mode {
        Mode::None => real[0],
        _ => (kube_proxy::cluster_ip(n - 1), SERVICE_PORT),
    };
    let what = format!("{} to {}:{}", case(n), to.0, to.1);
    let crr = runner::repeat(&what, plan.repeats, |_| {
        load::connection_rate(&c.client, to, plan.sample)
    });
    let rr = runner::repeat(&what, plan.repeats, |_| {
        load::request_rate(&c.client, to, plan.sample)
    });
    if mode != Mode::None && crr.is_ok() {
        // DNAT spread new connections over all 3 endpoints.
        let per: Vec<u64> = servers.iter().map(Server::connections).collect();
        if per.contains(&0) {
            bail!(
                "connections per endpoint {per:?}: the service did not balance over its endpoints"
            );
        }
    }
    Ok((crr, rr))
}

fn rows(
    subject: &str,
    n_case: &str,
    compare: &[&str],
    r: Result<(Result<runner::Stats>, Result<runner::Stats>)>,
) -> Vec<Row> {
    let (crr, rr) = match r {
        Ok(x) => x,
        Err(e) => {
            let m = format!("{e:#}");
            (Err(anyhow::anyhow!("{m}")), Err(anyhow::anyhow!("{m}")))
        }
    };
    vec![
        Row::from_result(Section::Services, subject, n_case, CONN_RATE, crr).compared_to(compare),
        Row::from_result(Section::Services, subject, n_case, RR_RATE, rr).compared_to(compare),
    ]
}

pub fn run(bins: &Binaries, plan: Plan, counts: &[usize]) -> Vec<Row> {
    let mut out = rows(
        NO_SERVICE,
        "pod IP directly",
        &[],
        measure(bins, plan, Mode::None, 0),
    );
    for &n in counts {
        let c = case(n);
        eprintln!("bench: services: {c}");
        for metric in [CONN_RATE, RR_RATE] {
            out.push(
                Row::new(
                    Section::Services,
                    NETDP,
                    &c,
                    metric,
                    Outcome::NotAvailable("needs services in eBPF (issue #5)".into()),
                )
                .compared_to(&[IPTABLES]),
            );
        }
        out.extend(rows(
            IPTABLES,
            &c,
            &[],
            measure(bins, plan, Mode::Iptables, n),
        ));
        out.extend(rows(
            NFTABLES,
            &c,
            &[IPTABLES],
            measure(bins, plan, Mode::Nftables, n),
        ));
    }
    out
}
