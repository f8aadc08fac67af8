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

fn rows_for(
    subject: &str,
    compare: &[&str],
    plan: Plan,
    ends: Result<(Testbed, Endpoints)>,
    check: impl Fn(&Testbed) -> Result<()>,
) -> Vec<Row> {
    let rr_row =
        |r| Row::from_result(Section::PodToPod, subject, RR_CASE, RR_RATE, r).compared_to(compare);
    let st_row = |r| {
        Row::from_result(Section::PodToPod, subject, STREAM_CASE, THROUGHPUT, r)
            .compared_to(compare)
    };
    let (tb, e) = match ends {
        Ok(x) => x,
        Err(e) => {
            let msg = format!("{e:#}");
            return vec![
                rr_row(Err(anyhow::anyhow!("{msg}"))),
                st_row(Err(anyhow::anyhow!("{msg}"))),
            ];
        }
    };
    let measured = (|| -> Result<_> {
        let _server = Server::start(&e.server_ns, PORT)?;
        let to = (e.server_ip, PORT);
        let rr = runner::repeat(subject, plan.repeats, |_| {
            load::request_rate(&e.client_ns, to, plan.sample)
        });
        let st = runner::repeat(subject, plan.repeats, |_| {
            load::stream(&e.client_ns, to, plan.sample)
        });
        check(&tb)
            .with_context(|| format!("{subject}: the path under test did not carry the traffic"))?;
        Ok((rr, st))
    })();
    match measured {
        Ok((rr, st)) => vec![rr_row(rr), st_row(st)],
        Err(e) => {
            let msg = format!("{e:#}");
            vec![
                rr_row(Err(anyhow::anyhow!("{msg}"))),
                st_row(Err(anyhow::anyhow!("{msg}"))),
            ]
        }
    }
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

pub fn run(bins: &Binaries, plan: Plan) -> Vec<Row> {
    let mut rows = Vec::new();
    for (subject, compare) in subjects() {
        let new = match subject {
            UNDERLAY => rows_for(subject, &compare, plan, underlay(bins), |_| Ok(())),
            NETDP_HOST_GW => rows_for(
                subject,
                &compare,
                plan,
                netdp_host_gw(bins),
                netdp_forwarded,
            ),
            _ => {
                let why = match subject {
                    FLANNEL_HOST_GW | FLANNEL_VXLAN => {
                        "needs the testbed's Flannel-style nodes (issue #4)"
                    }
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
                        .compared_to(&compare)
                    })
                    .collect()
            }
        };
        rows.extend(new);
    }
    rows
}
