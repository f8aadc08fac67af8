//! Pod to pod across nodes: request/response rate and one TCP stream for each way of
//! carrying pod traffic, next to the bare underlay (node to node, no pods).
use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use netdp_testbed::{Binaries, Spec, Testbed};

use super::{
    load::{self, Server},
    report::{Outcome, RR_RATE, Row, Section, THROUGHPUT},
    runner::{self, Plan},
};

pub const UNDERLAY: &str = "bare underlay (node to node)";
pub const NETDP_HOST_GW: &str = "netdp host-gw";
pub const FLANNEL_HOST_GW: &str = "kernel host-gw (as Flannel)";
pub const FLANNEL_VXLAN: &str = "kernel vxlan flannel.1 (as Flannel)";
pub const NETDP_VXLAN: &str = "netdp vxlan";
pub const NETDP_IPIP: &str = "netdp ipip";
pub const NETDP_UDP: &str = "netdp udp";
pub const RR_CASE: &str = "64 B request/response, 1 connection";
pub const STREAM_CASE: &str = "1 TCP stream";

const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const PORT: u16 = 5201;

/// The subjects in the order the table and the plot show them, with what each is
/// compared with.
pub fn subjects() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        (UNDERLAY, vec![]),
        (FLANNEL_HOST_GW, vec![UNDERLAY]),
        (NETDP_HOST_GW, vec![FLANNEL_HOST_GW, UNDERLAY]),
        (FLANNEL_VXLAN, vec![UNDERLAY]),
        (NETDP_VXLAN, vec![FLANNEL_VXLAN, UNDERLAY]),
        (NETDP_IPIP, vec![FLANNEL_VXLAN, UNDERLAY]),
        (NETDP_UDP, vec![FLANNEL_VXLAN, UNDERLAY]),
    ]
}

/// Where a subject's client and server run.
struct Endpoints {
    client_ns: String,
    server_ns: String,
    server_ip: Ipv4Addr,
}

fn underlay(bins: &Binaries) -> Result<(Testbed, Endpoints)> {
    let tb = Testbed::new(Spec::flat(2).binaries(bins.clone()))?;
    let e = Endpoints {
        client_ns: tb.node("n1").ns.clone(),
        server_ns: tb.node("n2").ns.clone(),
        server_ip: tb.node("n2").ip,
    };
    Ok((tb, e))
}

fn netdp_host_gw(bins: &Binaries) -> Result<(Testbed, Endpoints)> {
    let mut tb = Testbed::new(Spec::flat(2).network(HOST_GW).binaries(bins.clone()))?;
    tb.start_all_agents(&[])?;
    let a = tb.add_pod("n1", "client")?;
    let b = tb.add_pod("n2", "server")?;
    Ok((
        tb,
        Endpoints {
            client_ns: a.ns,
            server_ns: b.ns,
            server_ip: b.ip,
        },
    ))
}

/// Nodes run with IP forwarding off; the counters must also show netdp forwarded.
fn netdp_forwarded(tb: &Testbed) -> Result<()> {
    let sent =
        tb.counter("n1", "from_pod", "direct")? + tb.counter("n1", "from_pod", "direct_neigh")?;
    let delivered = tb.counter("n2", "from_netdev", "local_delivery")?;
    if sent < 1000 || delivered < 1000 {
        bail!("from_pod forwarded {sent} and from_netdev delivered {delivered} packets");
    }
    Ok(())
}

/// Builds a subject's testbed and says where its client and server run.
type Setup = fn(&Binaries) -> Result<(Testbed, Endpoints)>;
/// Checks after sampling that the path under test carried the traffic.
type Check = fn(&Testbed) -> Result<()>;

/// A subject that is set up and serving.
struct Live {
    subject: &'static str,
    compare: Vec<&'static str>,
    tb: Testbed,
    ends: Endpoints,
    _server: Server,
    check: Check,
}

fn start(
    subject: &'static str,
    compare: Vec<&'static str>,
    bins: &Binaries,
) -> Result<Option<Live>> {
    let (setup, check): (Setup, Check) = match subject {
        UNDERLAY => (underlay, |_| Ok(())),
        NETDP_HOST_GW => (netdp_host_gw, netdp_forwarded),
        _ => return Ok(None),
    };
    let (tb, ends) = setup(bins).with_context(|| format!("setting up {subject}"))?;
    let server = Server::start(&ends.server_ns, PORT)?;
    Ok(Some(Live {
        subject,
        compare,
        tb,
        ends,
        _server: server,
        check,
    }))
}

fn not_available(subject: &str, compare: &[&str]) -> Vec<Row> {
    let why = match subject {
        FLANNEL_HOST_GW | FLANNEL_VXLAN => "needs the testbed's Flannel-style nodes (issue #4)",
        _ => "needs the encapsulating backends in eBPF (issue #4)",
    };
    [(RR_CASE, RR_RATE), (STREAM_CASE, THROUGHPUT)]
        .into_iter()
        .map(|(case, metric)| {
            Row::new(
                Section::PodToPod,
                subject,
                case,
                metric,
                Outcome::NotAvailable(why.into()),
            )
            .compared_to(compare)
        })
        .collect()
}

/// Every available subject is set up first, then sampled in rotation.
pub fn run(bins: &Binaries, plan: Plan) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut live = Vec::new();
    for (subject, compare) in subjects() {
        match start(subject, compare.clone(), bins) {
            Ok(Some(l)) => live.push(l),
            Ok(None) => rows.extend(not_available(subject, &compare)),
            Err(e) => {
                for (case, metric) in [(RR_CASE, RR_RATE), (STREAM_CASE, THROUGHPUT)] {
                    rows.push(
                        Row::new(
                            Section::PodToPod,
                            subject,
                            case,
                            metric,
                            Outcome::Failed(format!("{e:#}")),
                        )
                        .compared_to(&compare),
                    );
                }
            }
        }
    }
    for (case, metric, sample) in [
        (
            RR_CASE,
            RR_RATE,
            load::request_rate as fn(&str, (Ipv4Addr, u16), std::time::Duration) -> Result<f64>,
        ),
        (STREAM_CASE, THROUGHPUT, load::stream),
    ] {
        let samplers: Vec<(String, runner::Sampler)> = live
            .iter()
            .map(|l| {
                let to = (l.ends.server_ip, PORT);
                let ns = l.ends.client_ns.clone();
                let f: runner::Sampler = Box::new(move || sample(&ns, to, plan.sample));
                (format!("{} {case}", l.subject), f)
            })
            .collect();
        for (l, r) in live.iter().zip(runner::interleave(plan.repeats, samplers)) {
            let r = r.and_then(|s| {
                (l.check)(&l.tb).with_context(|| {
                    format!(
                        "{}: the path under test did not carry the traffic",
                        l.subject
                    )
                })?;
                Ok(s)
            });
            rows.push(
                Row::from_result(Section::PodToPod, l.subject, case, metric, r)
                    .compared_to(&l.compare),
            );
        }
    }
    rows
}
