//! Service connection cost versus number of services: a pod on one node connects to a
//! ClusterIP whose 3 endpoints are pods on another node, with N services programmed (the
//! measured one last). kube-proxy runs on nodes that route with the kernel as Flannel's
//! host-gw sets them up, its rulesets loaded on both nodes, as every node runs kube-proxy;
//! netdp runs its host-gw agents, which program the same services (applied with `netdp
//! service apply`) into both nodes' maps.
//!
//! Loading kube-proxy's rulesets is timed too: those are the control plane's rule-load
//! figures (netdp's programming is timed there). A ruleset that does not load within the
//! budget is stopped, and larger sizes of that implementation are skipped.
//!
//! After each rotation, netdp's client node must have counted a service translation
//! (`service_flow`) for every connection its endpoints accepted: nothing else on those
//! nodes knows the ClusterIP.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use netdp_common::counters::{Event, Program};
use netdp_testbed::{
    Binaries, Spec, Testbed,
    flannel::{FlannelBackend, FlannelNode, network_config},
};

use super::{
    kube_proxy::{self, Cluster, ServicePort},
    load::{self, Server},
    netdp_services,
    netfilter::{self, IptBackend, Load, LoadSizes},
    report::{CONN_RATE, LATENCY_P50, LATENCY_P99, Outcome, RR_RATE, Row, SECONDS, Section, count},
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
    /// netdp's agents and eBPF programs (host-gw), services in their maps.
    Netdp,
    Iptables,
    Nftables,
    /// No rules: the client talks to an endpoint's pod IP.
    None,
}

/// A 2-node cluster: a client pod on n1, 3 endpoint pods on n2.
struct Cluster2 {
    tb: Testbed,
    client: String,
    endpoints: Vec<(String, Ipv4Addr)>,
}

/// netdp's host-gw cluster, or for kube-proxy and the baseline a kernel-routed one as
/// Flannel's host-gw runs it (what kube-proxy runs on today).
fn cluster(bins: &Binaries, mode: Mode) -> Result<Cluster2> {
    let spec = Spec::flat(2)
        .network(&network_config(FlannelBackend::HostGw.type_name()))
        .binaries(bins.clone());
    let mut tb = Testbed::new(spec)?;
    let (client, endpoints) = if mode == Mode::Netdp {
        tb.start_all_agents(netdp_services::AGENT_FLAGS)?;
        let client = tb.add_pod("n1", "client")?.ns;
        let endpoints = (0..3)
            .map(|j| tb.add_pod("n2", &format!("ep{j}")).map(|p| (p.ns, p.ip)))
            .collect::<Result<Vec<_>>>()?;
        (client, endpoints)
    } else {
        let mut nodes = FlannelNode::start_all(&tb, FlannelBackend::HostGw)?;
        let client = nodes[0].add_pod(&mut tb, "client")?.ns;
        let endpoints = (0..3)
            .map(|j| {
                nodes[1]
                    .add_pod(&mut tb, &format!("ep{j}"))
                    .map(|p| (p.ns, p.ip))
            })
            .collect::<Result<Vec<_>>>()?;
        (client, endpoints)
    };
    Ok(Cluster2 {
        tb,
        client,
        endpoints,
    })
}

/// Programs the services on every node: kube-proxy's ruleset loads (the load time of
/// each, or the budget it ran out of), or netdp's apply, waited for on both nodes.
fn program(
    c: &Cluster2,
    mode: Mode,
    services: &[ServicePort],
    cfg: &Cluster,
    budget: Duration,
) -> Result<Vec<Load>> {
    if mode == Mode::Netdp {
        let n2 = c.tb.node("n2").ns.clone();
        let nodes: Vec<_> = c
            .endpoints
            .iter()
            .map(|(_, ip)| (*ip, n2.clone()))
            .collect();
        let json = netdp_services::to_json(services, &nodes);
        let took = netdp_services::apply(
            &c.tb,
            &json,
            &["n1", "n2"],
            services.len(),
            netdp_services::PROGRAM_TIMEOUT,
        )?;
        eprintln!(
            "bench:   {} services applied and programmed on both nodes in {:.1?}",
            count(services.len()),
            took.wall
        );
        return Ok(Vec::new());
    }
    let mut loads = Vec::new();
    for node in &c.tb.nodes {
        let load = match mode {
            Mode::Iptables => {
                netfilter::load_iptables(&node.ns, IptBackend::Legacy, services, cfg, budget)?
            }
            Mode::Nftables => netfilter::load_nftables(&node.ns, services, cfg, budget)?,
            Mode::Netdp | Mode::None => return Ok(loads),
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
    mode: Mode,
    loads: Vec<Load>,
    servers: Vec<Server>,
    to: (Ipv4Addr, u16),
}

impl Prepared {
    fn over_budget(&self) -> bool {
        matches!(self.loads.last(), Some(Load::OverBudget(_)))
    }

    /// Connections the endpoints accepted so far.
    fn connections(&self) -> u64 {
        self.servers.iter().map(Server::connections).sum()
    }

    /// Service translations netdp's client node has counted (none for the others).
    fn translations(&self) -> Result<Option<u64>> {
        if self.mode != Mode::Netdp {
            return Ok(None);
        }
        let n = self
            .c
            .tb
            .event("n1", Program::FromPod.name(), Event::ServiceFlow.name())?;
        Ok(Some(n))
    }
}

fn prepare(bins: &Binaries, mode: Mode, n: usize, budget: Duration) -> Result<Prepared> {
    let c = cluster(bins, mode)?;
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
        mode,
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

/// What one subject's rotation measured: connection rate, its connections' latency p50
/// and p99 (each a median over the samples), request/response rate.
struct Sampled {
    crr: Result<Stats>,
    p50: Result<Stats>,
    p99: Result<Stats>,
    rr: Result<Stats>,
}

/// Connection and request rates of every prepared subject, sampled in rotation.
fn sample(plan: Plan, live: &[(&str, &Prepared)]) -> Vec<Sampled> {
    let name = |p: &Prepared, subject: &str| format!("{subject} to {}:{}", p.to.0, p.to.1);
    let connections: Vec<(String, runner::SamplerOf<load::Connections>)> = live
        .iter()
        .map(|(subject, p)| {
            let (ns, to) = (p.c.client.clone(), p.to);
            let s: runner::SamplerOf<load::Connections> =
                Box::new(move || load::connections(&ns, to, plan.sample));
            (name(p, subject), s)
        })
        .collect();
    let requests: Vec<(String, runner::Sampler)> = live
        .iter()
        .map(|(subject, p)| {
            let (ns, to) = (p.c.client.clone(), p.to);
            let s: runner::Sampler = Box::new(move || load::request_rate(&ns, to, plan.sample));
            (name(p, subject), s)
        })
        .collect();
    let conns = runner::interleave_each(plan.repeats, connections);
    let rr = runner::interleave(plan.repeats, requests);
    conns
        .into_iter()
        .zip(rr)
        .map(|(c, rr)| {
            let figure = |f: &dyn Fn(&load::Connections) -> f64| match &c {
                Ok(v) => Stats::new(v.iter().map(f).collect()),
                Err(e) => Err(runner::same_error(e)),
            };
            Sampled {
                crr: figure(&|c| c.rate),
                p50: figure(&|c| c.latency(0.50)),
                p99: figure(&|c| c.latency(0.99)),
                rr,
            }
        })
        .collect()
}

/// DNAT must have spread new connections over all 3 endpoints.
fn balanced(p: &Prepared) -> Result<()> {
    let per: Vec<u64> = p.servers.iter().map(Server::connections).collect();
    if per.contains(&0) {
        bail!("connections per endpoint {per:?}: the service did not balance over its endpoints");
    }
    Ok(())
}

/// What a subject's proof counters said before a rotation.
#[derive(Clone, Copy)]
struct Before {
    connections: u64,
    translations: Option<u64>,
}

impl Before {
    fn of(p: &Prepared) -> Result<Self> {
        Ok(Before {
            connections: p.connections(),
            translations: p.translations()?,
        })
    }

    /// netdp's programs must have translated every connection its endpoints accepted.
    fn check(self, p: &Prepared) -> Result<()> {
        let (Some(before), Some(after)) = (self.translations, p.translations()?) else {
            return Ok(());
        };
        let (events, conns) = (after - before, p.connections() - self.connections);
        if conns == 0 || events < conns {
            bail!(
                "the endpoints accepted {conns} connections but from_pod counted {events} \
                 service translations (service_flow): netdp's programs did not translate them"
            );
        }
        Ok(())
    }
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

fn rate_rows(subject: &str, case: &str, compare: &[&str], s: Sampled) -> Vec<Row> {
    [
        (CONN_RATE, s.crr),
        (LATENCY_P50, s.p50),
        (LATENCY_P99, s.p99),
        (RR_RATE, s.rr),
    ]
    .into_iter()
    .map(|(metric, stats)| {
        Row::from_result(Section::Services, subject, case, metric, stats).compared_to(compare)
    })
    .collect()
}

impl Sampled {
    /// Every figure failed with `e`.
    fn failed(e: &anyhow::Error) -> Self {
        Sampled {
            crr: Err(runner::same_error(e)),
            p50: Err(runner::same_error(e)),
            p99: Err(runner::same_error(e)),
            rr: Err(runner::same_error(e)),
        }
    }
}

fn failed_rows(subject: &str, case: &str, compare: &[&str], e: &anyhow::Error) -> Vec<Row> {
    rate_rows(subject, case, compare, Sampled::failed(e))
}

fn skipped_rows(subject: &str, case: &str, compare: &[&str], why: &str) -> Vec<Row> {
    [CONN_RATE, LATENCY_P50, LATENCY_P99, RR_RATE]
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

/// An implementation, with what it is compared with.
struct Impl {
    mode: Mode,
    subject: &'static str,
    /// The control-plane row of its rule loads, if this comparison times them.
    load_subject: Option<&'static str>,
    compare: &'static [&'static str],
    load_compare: &'static [&'static str],
}

/// In the order the table shows them.
const IMPLS: [Impl; 3] = [
    Impl {
        mode: Mode::Netdp,
        subject: NETDP,
        load_subject: None,
        compare: &[IPTABLES, NFTABLES],
        load_compare: &[],
    },
    Impl {
        mode: Mode::Iptables,
        subject: IPTABLES,
        load_subject: Some(IPTABLES_LOAD),
        compare: &[],
        load_compare: &[],
    },
    Impl {
        mode: Mode::Nftables,
        subject: NFTABLES,
        load_subject: Some(NFTABLES_LOAD),
        compare: &[IPTABLES],
        load_compare: &[IPTABLES_LOAD],
    },
];

/// Rows of an implementation not tried at this size: its rule load ran out of budget at
/// a smaller size, or is bound to at this one.
fn skipped_size(imp: &Impl, n: usize, why: &str) -> Vec<Row> {
    let mut rows = skipped_rows(imp.subject, &case(n), imp.compare, why);
    if let Some(load_subject) = imp.load_subject {
        rows.push(
            Row::new(
                Section::ControlPlane,
                load_subject,
                &load_case(n),
                SECONDS,
                Outcome::Skipped(why.into()),
            )
            .compared_to(imp.load_compare),
        );
    }
    rows
}

pub fn run(bins: &Binaries, plan: Plan, counts: &[usize], budget: Duration) -> Vec<Row> {
    let mut out = Vec::new();
    let mut baseline = match prepare(bins, Mode::None, 0, budget) {
        Ok(p) => Some(p),
        Err(e) => {
            out.extend(failed_rows(NO_SERVICE, NO_SERVICE_CASE, &[], &e));
            None
        }
    };
    let mut sizes: [LoadSizes; IMPLS.len()] = Default::default();
    for &n in counts {
        eprintln!("bench: services: {}", case(n));
        let mut prepared: Vec<(usize, Prepared)> = Vec::new();
        for (k, imp) in IMPLS.iter().enumerate() {
            if let Some(why) = sizes[k].skip(n, budget) {
                eprintln!("bench:   {} not loaded: {why}", imp.subject);
                out.extend(skipped_size(imp, n, &why));
                continue;
            }
            let started = Instant::now();
            match prepare(bins, imp.mode, n, budget)
                .with_context(|| format!("{}, {}", imp.subject, case(n)))
            {
                Ok(p) => {
                    eprintln!(
                        "bench:   {} ready in {:.1?}",
                        imp.subject,
                        started.elapsed()
                    );
                    if let Some(load_subject) = imp.load_subject {
                        out.push(load_row(load_subject, n, imp.load_compare, &p.loads));
                    }
                    sizes[k].loaded(n, &p.loads);
                    if p.over_budget() {
                        out.extend(skipped_rows(
                            imp.subject,
                            &case(n),
                            imp.compare,
                            "its ruleset did not load within the budget (see control plane)",
                        ));
                    } else {
                        prepared.push((k, p));
                    }
                }
                Err(e) => out.extend(failed_rows(imp.subject, &case(n), imp.compare, &e)),
            }
        }
        // The baseline joins the first rotation, so it sees the same machine.
        let base = baseline.take();
        let mut live: Vec<(&str, &Prepared)> = prepared
            .iter()
            .map(|(k, p)| (IMPLS[*k].subject, p))
            .collect();
        if let Some(b) = &base {
            live.push((NO_SERVICE, b));
        }
        let before: Vec<Result<Before>> = live.iter().map(|(_, p)| Before::of(p)).collect();
        let results = sample(plan, &live);
        for (((subject, p), sampled), before) in live.iter().zip(results).zip(before) {
            if *subject == NO_SERVICE {
                out.extend(rate_rows(NO_SERVICE, NO_SERVICE_CASE, &[], sampled));
                continue;
            }
            let compare = IMPLS
                .iter()
                .find(|k| k.subject == *subject)
                .map(|k| k.compare)
                .unwrap_or(&[]);
            let proof = before.and_then(|b| b.check(p)).and_then(|_| balanced(p));
            let sampled = match proof {
                Ok(()) => sampled,
                Err(e) => Sampled::failed(&e),
            };
            out.extend(rate_rows(subject, &case(n), compare, sampled));
        }
    }
    out
}
