//! Service connection cost versus number of services: a pod on one node connects to a
//! ClusterIP whose 3 endpoints are pods on another node, with N services programmed (the
//! measured one last). Nodes route with the kernel as Flannel's host-gw sets them up, and
//! kube-proxy's rulesets are loaded on both nodes, as every node runs kube-proxy.
//!
//! Loading the rulesets is timed too: those are the control plane's rule-load figures.
//! A ruleset that does not load within the budget is stopped, and larger sizes of that
//! implementation are skipped.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result, bail};
use netdp_testbed::{
    Binaries, Spec, Testbed,
    flannel::{FlannelBackend, FlannelNode, network_config},
};

use super::{
    kube_proxy::{self, Cluster, ServicePort},
    load::{self, Server},
    netfilter::{self, IptBackend, Load},
    report::{CONN_RATE, Outcome, RR_RATE, Row, SECONDS, Section, count},
    runner::{self, Plan, Stats},
};

pub const NETDP: &str = "netdp (eBPF services)";
pub const IPTABLES: &str = "kube-proxy iptables (legacy)";
pub const NFTABLES: &str = "kube-proxy nftables";
pub const NO_SERVICE: &str = "no service: pod IP directly (kernel routing)";
const NO_SERVICE_CASE: &str = "pod IP directly";
/// Control-plane subjects of the rule loads measured here.
pub const IPTABLES_LOAD: &str = "kube-proxy iptables (iptables-legacy-restore)";
pub const NFTABLES_LOAD: &str = "kube-proxy nftables (nft -f)";
const ENDPOINT_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;

pub fn case(n: usize) -> String {
    format!("{} services", count(n))
}

pub fn load_case(n: usize) -> String {
    format!("program {}", case(n))
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Iptables,
    Nftables,
    /// No rules: the client talks to an endpoint's pod IP.
    None,
}

/// A kernel-routed 2-node cluster as Flannel's host-gw runs it (what kube-proxy runs on
/// today): a client pod on n1, 3 endpoint pods on n2.
struct Cluster2 {
    tb: Testbed,
    client: String,
    endpoints: Vec<(String, Ipv4Addr)>,
}

fn cluster(bins: &Binaries) -> Result<Cluster2> {
    let mut tb = Testbed::new(
        Spec::flat(2)
            .network(&network_config(FlannelBackend::HostGw.type_name()))
            .binaries(bins.clone()),
    )?;
    let mut nodes = FlannelNode::start_all(&tb, FlannelBackend::HostGw)?;
    let client = nodes[0].add_pod(&mut tb, "client")?.ns;
    let mut endpoints = Vec::new();
    for j in 0..3 {
        let p = nodes[1].add_pod(&mut tb, &format!("ep{j}"))?;
        endpoints.push((p.ns, p.ip));
    }
    Ok(Cluster2 {
        tb,
        client,
        endpoints,
    })
}

/// Loads the ruleset on every node; the load time of each, or the budget it ran out of.
fn program(
    c: &Cluster2,
    mode: Mode,
    services: &[ServicePort],
    cfg: &Cluster,
    budget: Duration,
) -> Result<Vec<Load>> {
    let mut loads = Vec::new();
    for node in &c.tb.nodes {
        let load = match mode {
            Mode::Iptables => {
                netfilter::load_iptables(&node.ns, IptBackend::Legacy, services, cfg, budget)?
            }
            Mode::Nftables => netfilter::load_nftables(&node.ns, services, cfg, budget)?,
            Mode::None => return Ok(loads),
        };
        eprintln!(
            "bench:   {} services on {}: {load:?}",
            count(services.len()),
            node.name
        );
        loads.push(load);
        if let Load::OverBudget(_) = load {
            break;
        }
    }
    Ok(loads)
}

/// One implementation at one service count, programmed and serving.
struct Prepared {
    c: Cluster2,
    loads: Vec<Load>,
    servers: Vec<Server>,
    to: (Ipv4Addr, u16),
}

impl Prepared {
    fn over_budget(&self) -> bool {
        matches!(self.loads.last(), Some(Load::OverBudget(_)))
    }
}

fn prepare(bins: &Binaries, mode: Mode, n: usize, budget: Duration) -> Result<Prepared> {
    let c = cluster(bins)?;
    let real: Vec<(Ipv4Addr, u16)> = c
        .endpoints
        .iter()
        .map(|(_, ip)| (*ip, ENDPOINT_PORT))
        .collect();
    let services = kube_proxy::bench_services(n.max(1), &real);
    let cfg = kube_proxy::bench_cluster(c.tb.node("n1").ip);
    let loads = program(&c, mode, &services, &cfg, budget)?;
    let to = match mode {
        Mode::None => real[0],
        _ => (kube_proxy::cluster_ip(n - 1), SERVICE_PORT),
    };
    let mut p = Prepared {
        c,
        loads,
        servers: Vec::new(),
        to,
    };
    if !p.over_budget() {
        p.servers =
            p.c.endpoints
                .iter()
                .map(|(ns, _)| Server::start(ns, ENDPOINT_PORT))
                .collect::<Result<_>>()?;
    }
    Ok(p)
}

/// Connection and request rates of every prepared subject, sampled in rotation.
fn sample(plan: Plan, live: &[(&str, &Prepared)]) -> Vec<(Result<Stats>, Result<Stats>)> {
    let mut by_metric = Vec::new();
    for f in [load::connection_rate, load::request_rate] {
        let samplers: Vec<(String, runner::Sampler)> = live
            .iter()
            .map(|(subject, p)| {
                let (ns, to) = (p.c.client.clone(), p.to);
                let s: runner::Sampler = Box::new(move || f(&ns, to, plan.sample));
                (format!("{subject} to {}:{}", to.0, to.1), s)
            })
            .collect();
        by_metric.push(runner::interleave(plan.repeats, samplers));
    }
    let rr = by_metric.pop().unwrap_or_default();
    let crr = by_metric.pop().unwrap_or_default();
    crr.into_iter().zip(rr).collect()
}

/// DNAT must have spread new connections over all 3 endpoints.
fn balanced(p: &Prepared) -> Result<()> {
    let per: Vec<u64> = p.servers.iter().map(Server::connections).collect();
    if per.contains(&0) {
        bail!("connections per endpoint {per:?}: the service did not balance over its endpoints");
    }
    Ok(())
}

fn load_row(subject: &str, n: usize, compare: &[&str], loads: &[Load]) -> Row {
    let outcome = match loads.last() {
        Some(Load::OverBudget(b)) => Outcome::OverBudget(b.as_secs_f64()),
        _ => {
            let secs: Vec<f64> = loads
                .iter()
                .filter_map(|l| match l {
                    Load::Done(d) => Some(d.as_secs_f64()),
                    Load::OverBudget(_) => None,
                })
                .collect();
            match Stats::new(secs) {
                Ok(s) => Outcome::Measured(s),
                Err(e) => Outcome::Failed(format!("{e:#}")),
            }
        }
    };
    Row::new(
        Section::ControlPlane,
        subject,
        &load_case(n),
        SECONDS,
        outcome,
    )
    .compared_to(compare)
}

fn rate_rows(
    subject: &str,
    case: &str,
    compare: &[&str],
    crr: Result<Stats>,
    rr: Result<Stats>,
) -> Vec<Row> {
    vec![
        Row::from_result(Section::Services, subject, case, CONN_RATE, crr).compared_to(compare),
        Row::from_result(Section::Services, subject, case, RR_RATE, rr).compared_to(compare),
    ]
}

fn skipped_rows(subject: &str, case: &str, compare: &[&str], why: &str) -> Vec<Row> {
    [CONN_RATE, RR_RATE]
        .into_iter()
        .map(|m| {
            Row::new(
                Section::Services,
                subject,
                case,
                m,
                Outcome::Skipped(why.into()),
            )
            .compared_to(compare)
        })
        .collect()
}

/// A kube-proxy implementation, with what it is compared with.
struct Impl {
    mode: Mode,
    subject: &'static str,
    load_subject: &'static str,
    compare: &'static [&'static str],
    load_compare: &'static [&'static str],
}

const KUBE_PROXY: [Impl; 2] = [
    Impl {
        mode: Mode::Iptables,
        subject: IPTABLES,
        load_subject: IPTABLES_LOAD,
        compare: &[],
        load_compare: &[],
    },
    Impl {
        mode: Mode::Nftables,
        subject: NFTABLES,
        load_subject: NFTABLES_LOAD,
        compare: &[IPTABLES],
        load_compare: &[IPTABLES_LOAD],
    },
];

pub fn run(bins: &Binaries, plan: Plan, counts: &[usize], budget: Duration) -> Vec<Row> {
    let mut out = Vec::new();
    let mut baseline = match prepare(bins, Mode::None, 0, budget) {
        Ok(p) => Some(p),
        Err(e) => {
            let m = format!("{e:#}");
            out.extend(rate_rows(
                NO_SERVICE,
                NO_SERVICE_CASE,
                &[],
                Err(anyhow::anyhow!("{m}")),
                Err(anyhow::anyhow!("{m}")),
            ));
            None
        }
    };
    let mut over = [false; 2];
    for &n in counts {
        eprintln!("bench: services: {}", case(n));
        for metric in [CONN_RATE, RR_RATE] {
            out.push(
                Row::new(
                    Section::Services,
                    NETDP,
                    &case(n),
                    metric,
                    Outcome::NotAvailable("needs services in eBPF (issue #5)".into()),
                )
                .compared_to(&[IPTABLES]),
            );
        }
        let mut prepared: Vec<(usize, Prepared)> = Vec::new();
        for (k, imp) in KUBE_PROXY.iter().enumerate() {
            let Impl {
                mode,
                subject,
                load_subject,
                compare,
                load_compare,
            } = imp;
            if over[k] {
                let why = "a smaller ruleset already ran out of the load budget";
                out.extend(skipped_rows(subject, &case(n), compare, why));
                out.push(
                    Row::new(
                        Section::ControlPlane,
                        load_subject,
                        &load_case(n),
                        SECONDS,
                        Outcome::Skipped(why.into()),
                    )
                    .compared_to(load_compare),
                );
                continue;
            }
            match prepare(bins, *mode, n, budget).with_context(|| format!("{subject}, {}", case(n)))
            {
                Ok(p) => {
                    out.push(load_row(load_subject, n, load_compare, &p.loads));
                    if p.over_budget() {
                        over[k] = true;
                        out.extend(skipped_rows(
                            subject,
                            &case(n),
                            compare,
                            "its ruleset did not load within the budget (see control plane)",
                        ));
                    } else {
                        prepared.push((k, p));
                    }
                }
                Err(e) => {
                    let m = format!("{e:#}");
                    out.extend(rate_rows(
                        subject,
                        &case(n),
                        compare,
                        Err(anyhow::anyhow!("{m}")),
                        Err(anyhow::anyhow!("{m}")),
                    ));
                }
            }
        }
        // The baseline joins the first rotation, so it sees the same machine.
        let base = baseline.take();
        let mut live: Vec<(&str, &Prepared)> = prepared
            .iter()
            .map(|(k, p)| (KUBE_PROXY[*k].subject, p))
            .collect();
        if let Some(b) = &base {
            live.push((NO_SERVICE, b));
        }
        for ((subject, p), (crr, rr)) in live.iter().zip(sample(plan, &live)) {
            if *subject == NO_SERVICE {
                out.extend(rate_rows(NO_SERVICE, NO_SERVICE_CASE, &[], crr, rr));
                continue;
            }
            let compare = KUBE_PROXY
                .iter()
                .find(|k| k.subject == *subject)
                .map(|k| k.compare)
                .unwrap_or(&[]);
            let crr = crr.and_then(|s| balanced(p).map(|_| s));
            out.extend(rate_rows(subject, &case(n), compare, crr, rr));
        }
    }
    out
}
