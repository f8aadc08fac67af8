//! Service connection cost versus number of services: a pod on one node connects to a
//! ClusterIP whose 3 endpoints are pods on another node, with N services programmed (the
//! measured one last). Nodes route with the kernel, as kube-proxy needs; kube-proxy's
//! rulesets are loaded on both nodes, as every node runs kube-proxy.
//!
//! Loading the rulesets is timed too: those are the control plane's rule-load figures.
//! A ruleset that does not load within the budget is stopped, and larger sizes of that
//! implementation are skipped.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result, bail};
use netdp_testbed::{Binaries, Spec, Testbed};

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

/// What one implementation at one service count gave.
struct Measured {
    loads: Vec<Load>,
    crr: Result<Stats>,
    rr: Result<Stats>,
}

fn measure(
    bins: &Binaries,
    plan: Plan,
    mode: Mode,
    n: usize,
    budget: Duration,
) -> Result<Measured> {
    let c = cluster(bins)?;
    let real: Vec<(Ipv4Addr, u16)> = c
        .endpoints
        .iter()
        .map(|(_, ip)| (*ip, ENDPOINT_PORT))
        .collect();
    let services = kube_proxy::bench_services(n.max(1), &real);
    let cfg = kube_proxy::bench_cluster(c.tb.node("n1").ip);
    let loads = program(&c, mode, &services, &cfg, budget)?;
    if let Some(Load::OverBudget(b)) = loads.last() {
        let why = format!("the ruleset did not load within {b:?}");
        return Ok(Measured {
            loads,
            crr: Err(anyhow::anyhow!("{why}")),
            rr: Err(anyhow::anyhow!("{why}")),
        });
    }
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
    Ok(Measured { loads, crr, rr })
}

fn err_copy(e: &anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

/// Rate rows and the load row of one implementation at one size.
fn rows(
    subject: &str,
    load_subject: Option<&str>,
    n: usize,
    compare: &[&str],
    load_compare: &[&str],
    m: Result<Measured>,
) -> (Vec<Row>, bool) {
    let c = if n == 0 {
        "pod IP directly".to_string()
    } else {
        case(n)
    };
    let rate = |metric, r: Result<Stats>| {
        Row::from_result(Section::Services, subject, &c, metric, r).compared_to(compare)
    };
    let mut out = Vec::new();
    let mut over = false;
    match m {
        Err(e) => {
            out.push(rate(CONN_RATE, Err(err_copy(&e))));
            out.push(rate(RR_RATE, Err(e)));
        }
        Ok(m) => {
            over = matches!(m.loads.last(), Some(Load::OverBudget(_)));
            if over {
                let why = "its ruleset did not load within the budget (see control plane)";
                for metric in [CONN_RATE, RR_RATE] {
                    out.push(
                        Row::new(
                            Section::Services,
                            subject,
                            &c,
                            metric,
                            Outcome::Skipped(why.into()),
                        )
                        .compared_to(compare),
                    );
                }
            } else {
                out.push(rate(CONN_RATE, m.crr));
                out.push(rate(RR_RATE, m.rr));
            }
            if let Some(ls) = load_subject {
                let outcome = match m.loads.last() {
                    Some(Load::OverBudget(b)) => Outcome::OverBudget(b.as_secs_f64()),
                    _ => {
                        let secs: Vec<f64> = m
                            .loads
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
                out.push(
                    Row::new(Section::ControlPlane, ls, &load_case(n), SECONDS, outcome)
                        .compared_to(load_compare),
                );
            }
        }
    }
    (out, over)
}

fn skipped(
    subject: &str,
    load_subject: &str,
    n: usize,
    compare: &[&str],
    load_compare: &[&str],
) -> Vec<Row> {
    let why = "a smaller ruleset already ran out of the load budget";
    let mut out: Vec<Row> = [CONN_RATE, RR_RATE]
        .into_iter()
        .map(|m| {
            Row::new(
                Section::Services,
                subject,
                &case(n),
                m,
                Outcome::Skipped(why.into()),
            )
            .compared_to(compare)
        })
        .collect();
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
    out
}

pub fn run(bins: &Binaries, plan: Plan, counts: &[usize], budget: Duration) -> Vec<Row> {
    eprintln!("bench: services: no service");
    let (mut out, _) = rows(
        NO_SERVICE,
        None,
        0,
        &[],
        &[],
        measure(bins, plan, Mode::None, 0, budget),
    );
    let (mut ipt_over, mut nft_over) = (false, false);
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
        if ipt_over {
            out.extend(skipped(IPTABLES, IPTABLES_LOAD, n, &[], &[]));
        } else {
            let m = measure(bins, plan, Mode::Iptables, n, budget)
                .with_context(|| format!("{IPTABLES}, {}", case(n)));
            let (r, over) = rows(IPTABLES, Some(IPTABLES_LOAD), n, &[], &[], m);
            out.extend(r);
            ipt_over = over;
        }
        if nft_over {
            out.extend(skipped(
                NFTABLES,
                NFTABLES_LOAD,
                n,
                &[IPTABLES],
                &[IPTABLES_LOAD],
            ));
        } else {
            let m = measure(bins, plan, Mode::Nftables, n, budget)
                .with_context(|| format!("{NFTABLES}, {}", case(n)));
            let (r, over) = rows(
                NFTABLES,
                Some(NFTABLES_LOAD),
                n,
                &[IPTABLES],
                &[IPTABLES_LOAD],
                m,
            );
            out.extend(r);
            nft_over = over;
        }
    }
    out
}
