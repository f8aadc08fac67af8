//! Pod to pod across nodes: request/response rate and one TCP stream for each way of
//! carrying pod traffic, next to the bare underlay (node to node, no pods).
//!
//! Every subject is a 2-node testbed of its own: netdp's agents with one backend, or both
//! nodes set up as flanneld sets them up (the kernel forwarding through host-gw routes or
//! Flannel's VXLAN device). After each rotation the path's own counters must show that it
//! carried at least the traffic the samples measured, each way: netdp's program counters
//! (encapsulated and decapsulated for tunnels; nodes forward nothing themselves), or the
//! kernel's counters of the device Flannel's path goes through.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result, bail};
use netdp_common::counters::{Program, Reason};
use netdp_testbed::{
    Binaries, Count, Spec, Testbed,
    flannel::{self, FlannelBackend, FlannelNode},
    netns::{self, LinkStats},
};

use super::{
    load::{self, Server},
    report::{Metric, RR_RATE, Row, Section, THROUGHPUT},
    runner::{self, Plan, Stats},
};

pub const UNDERLAY: &str = "bare underlay (node to node)";
pub const NETDP_HOST_GW: &str = "netdp host-gw";
pub const FLANNEL_HOST_GW: &str = "kernel host-gw (as Flannel)";
pub const FLANNEL_VXLAN: &str = "kernel vxlan flannel.1 (as Flannel)";
pub const NETDP_VXLAN: &str = "netdp vxlan";
pub const NETDP_IPIP: &str = "netdp ipip";
pub const NETDP_UDP: &str = "netdp udp";
pub const NETDP_ROUTED: &str = "netdp vxlan across a router, one cluster";
pub const NETDP_MESH_DIRECT: &str = "netdp vxlan across clusters, direct";
pub const NETDP_MESH_GATEWAY: &str = "netdp vxlan across clusters, through gateways";
pub const RR_CASE: &str = "64 B request/response, 1 connection";
pub const STREAM_CASE: &str = "1 TCP stream";

const PORT: u16 = 5201;
/// Bytes of each request and each response (load.rs).
const RR_BYTES: u64 = 64;

/// How a subject carries pod traffic between its two nodes.
#[derive(Debug, Clone, Copy)]
enum Carrier {
    /// Node to node, no pods.
    Underlay,
    /// netdp agents with this backend type: from_pod counts what it sends to the peer
    /// under `sent`, from_netdev what it delivers from the peer under `received`.
    Netdp {
        backend: &'static str,
        sent: &'static [Reason],
        received: Reason,
    },
    /// Both nodes set up as flanneld sets them up, the kernel forwarding.
    Flannel(FlannelBackend),
    /// netdp vxlan, the client's node in one cluster and the server's in another, each
    /// with its own etcd and underlay, joined by a router: directly, or through each
    /// cluster's gateway (`gateway`: two more nodes, three tunnels on the way).
    Mesh { gateway: bool },
    /// netdp vxlan in one cluster, its two nodes on two underlays joined by the router:
    /// the path of `Mesh { gateway: false }` but for the second cluster.
    Routed,
}

/// The reasons the client's and the server's nodes count pod traffic under, for netdp.
fn netdp_reasons(carrier: Carrier) -> Option<(&'static [Reason], Reason)> {
    match carrier {
        Carrier::Netdp { sent, received, .. } => Some((sent, received)),
        Carrier::Mesh { .. } | Carrier::Routed => Some((&[Reason::EncapVxlan], Reason::DecapVxlan)),
        _ => None,
    }
}

struct Subject {
    name: &'static str,
    /// The rows it is compared with, most relevant first.
    compare: &'static [&'static str],
    carrier: Carrier,
}

/// The subjects in the order the table and the plot show them.
const SUBJECTS: &[Subject] = &[
    Subject {
        name: UNDERLAY,
        compare: &[],
        carrier: Carrier::Underlay,
    },
    Subject {
        name: FLANNEL_HOST_GW,
        compare: &[UNDERLAY],
        carrier: Carrier::Flannel(FlannelBackend::HostGw),
    },
    Subject {
        name: NETDP_HOST_GW,
        compare: &[FLANNEL_HOST_GW, UNDERLAY],
        carrier: Carrier::Netdp {
            backend: "host-gw",
            sent: &[Reason::Direct, Reason::DirectNeigh],
            received: Reason::LocalDelivery,
        },
    },
    Subject {
        name: FLANNEL_VXLAN,
        compare: &[UNDERLAY],
        carrier: Carrier::Flannel(FlannelBackend::Vxlan),
    },
    Subject {
        name: NETDP_VXLAN,
        compare: &[FLANNEL_VXLAN, UNDERLAY],
        carrier: Carrier::Netdp {
            backend: "vxlan",
            sent: &[Reason::EncapVxlan],
            received: Reason::DecapVxlan,
        },
    },
    Subject {
        name: NETDP_IPIP,
        compare: &[FLANNEL_VXLAN, UNDERLAY],
        carrier: Carrier::Netdp {
            backend: "ipip",
            sent: &[Reason::EncapIpip],
            received: Reason::DecapIpip,
        },
    },
    Subject {
        name: NETDP_UDP,
        compare: &[FLANNEL_VXLAN, UNDERLAY],
        carrier: Carrier::Netdp {
            backend: "udp",
            sent: &[Reason::EncapUdp],
            received: Reason::DecapUdp,
        },
    },
    Subject {
        name: NETDP_ROUTED,
        compare: &[NETDP_VXLAN],
        carrier: Carrier::Routed,
    },
    Subject {
        name: NETDP_MESH_DIRECT,
        compare: &[NETDP_ROUTED, NETDP_VXLAN],
        carrier: Carrier::Mesh { gateway: false },
    },
    Subject {
        name: NETDP_MESH_GATEWAY,
        compare: &[NETDP_ROUTED, NETDP_MESH_DIRECT],
        carrier: Carrier::Mesh { gateway: true },
    },
];

/// The two clusters' network configs, each naming the other (`mode`: direct, gateway).
fn mesh_configs(mode: &str) -> (String, String) {
    let config = |name: &str, id: u8, network: &str, other: &str, etcd: &str| {
        format!(
            r#"{{"Network": "{network}", "Backend": {{"Type": "vxlan"}},
                "ClusterName": "{name}", "ClusterID": {id},
                "Clusters": [{{"Name": "{other}", "Mode": "{mode}",
                               "Endpoints": ["http://{etcd}:2379"]}}]}}"#
        )
    };
    (
        config("east", 1, "10.244.0.0/16", "west", "192.168.20.2"),
        config("west", 2, "10.245.0.0/16", "east", "192.168.10.2"),
    )
}

/// A mesh subject's testbed: n1 (east) holds the client, n2 (west) the server; with
/// gateways, g1 and g2 are the clusters' gateways. Ready once n1 routes west's pods.
fn mesh(
    bins: &Binaries,
    gateway: bool,
) -> Result<(Testbed, netdp_testbed::Pod, netdp_testbed::Pod)> {
    let (east, west) = mesh_configs(if gateway { "gateway" } else { "direct" });
    let mut spec = Spec::default()
        .underlays(2)
        .binaries(bins.clone())
        .network(&east)
        .cluster(&west)
        .cluster_node("n1", 0, 0)
        .cluster_node("n2", 1, 1);
    if gateway {
        spec = spec.cluster_node("g1", 0, 0).cluster_node("g2", 1, 1);
    }
    let mut tb = Testbed::new(spec)?;
    if gateway {
        tb.start_agent("g1", &["--gateway"])?;
        tb.start_agent("g2", &["--gateway"])?;
    }
    tb.start_agent("n1", &[])?;
    tb.start_agent("n2", &[])?;
    let (a, b) = (tb.add_pod("n1", "client")?, tb.add_pod("n2", "server")?);
    let want = if gateway {
        "10.245.0.0/16".to_string()
    } else {
        tb.subnet_of("n2")?
    };
    tb.wait_for(
        "the client's node to route the other cluster",
        Duration::from_secs(60),
        || Ok(tb.routes("n1")?.iter().any(|(s, _)| *s == want)),
    )?;
    // Both ways through the gateways, before anything is measured.
    netdp_testbed::traffic::ping(&a.ns, b.ip, 3)?;
    Ok((tb, a, b))
}

/// The subjects' names in the order the table and the plot show them.
pub fn subjects() -> Vec<&'static str> {
    SUBJECTS.iter().map(|s| s.name).collect()
}

/// Where a subject's client and server run.
struct Endpoints {
    client_ns: String,
    server_ns: String,
    server_ip: Ipv4Addr,
}

/// Builds a subject's testbed: n1 holds the client, n2 the server.
fn setup(bins: &Binaries, carrier: Carrier) -> Result<(Testbed, Endpoints)> {
    let spec = Spec::flat(2).binaries(bins.clone());
    let (tb, client, server) = match carrier {
        Carrier::Underlay => {
            let tb = Testbed::new(spec)?;
            let (a, b) = (tb.node("n1"), tb.node("n2"));
            let ends = Endpoints {
                client_ns: a.ns.clone(),
                server_ns: b.ns.clone(),
                server_ip: b.ip,
            };
            return Ok((tb, ends));
        }
        Carrier::Netdp { backend, .. } => {
            let mut tb = Testbed::new(spec.network(&flannel::network_config(backend)))?;
            tb.start_all_agents(&[])?;
            let (a, b) = (tb.add_pod("n1", "client")?, tb.add_pod("n2", "server")?);
            (tb, a, b)
        }
        Carrier::Mesh { gateway } => mesh(bins, gateway)?,
        Carrier::Routed => {
            let spec = Spec::default()
                .underlays(2)
                .binaries(bins.clone())
                .network(&flannel::network_config("vxlan"))
                .node("n1", 0)
                .node("n2", 1);
            let mut tb = Testbed::new(spec)?;
            tb.start_all_agents(&[])?;
            let (a, b) = (tb.add_pod("n1", "client")?, tb.add_pod("n2", "server")?);
            (tb, a, b)
        }
        Carrier::Flannel(backend) => {
            let mut tb = Testbed::new(spec.network(&flannel::network_config(backend.type_name())))?;
            let mut nodes = FlannelNode::start_all(&tb, backend)?;
            let a = nodes[0].add_pod(&mut tb, "client")?;
            let b = nodes[1].add_pod(&mut tb, "server")?;
            (tb, a, b)
        }
    };
    let ends = Endpoints {
        client_ns: client.ns,
        server_ns: server.ns,
        server_ip: server.ip,
    };
    Ok((tb, ends))
}

/// What the path under test has counted so far, each way (0: client to server, 1: back):
/// on the sending node and on the receiving node, with what those counters are.
struct Tally {
    sent: [Count; 2],
    received: [Count; 2],
    labels: (String, String),
}

fn sum(
    counts: &std::collections::HashMap<(String, String), Count>,
    program: Program,
    reasons: &[Reason],
) -> Count {
    reasons.iter().fold(Count::default(), |acc, r| {
        let c = counts
            .get(&(program.name().to_string(), r.name().to_string()))
            .copied()
            .unwrap_or_default();
        Count {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        }
    })
}

/// The path's counters now; none for the underlay, which has nothing to prove.
fn tally(tb: &Testbed, carrier: Carrier) -> Result<Option<Tally>> {
    Ok(Some(match carrier {
        Carrier::Underlay => return Ok(None),
        Carrier::Netdp { .. } | Carrier::Mesh { .. } | Carrier::Routed => {
            let Some((sent, received)) = netdp_reasons(carrier) else {
                return Ok(None);
            };
            let c = [tb.counter_totals("n1")?, tb.counter_totals("n2")?];
            let names = |rs: &[Reason]| rs.iter().map(|r| r.name()).collect::<Vec<_>>().join("+");
            Tally {
                sent: [0, 1].map(|n| sum(&c[n], Program::FromPod, sent)),
                received: [1, 0].map(|n| sum(&c[n], Program::FromNetdev, &[received])),
                labels: (
                    format!("from_pod {}", names(sent)),
                    format!("from_netdev {}", received.name()),
                ),
            }
        }
        Carrier::Flannel(backend) => {
            // Pod traffic leaves through flannel.1 (vxlan), or comes up from the pods'
            // bridge to be routed (host-gw); on the receiving node the other way round.
            let (dev, out_is_tx) = match backend {
                FlannelBackend::Vxlan => (flannel::VXLAN_DEV, true),
                FlannelBackend::HostGw => (flannel::BRIDGE, false),
            };
            let out = |s: &LinkStats| if out_is_tx { s.tx } else { s.rx };
            let into = |s: &LinkStats| if out_is_tx { s.rx } else { s.tx };
            let s = [
                netns::link_stats(&tb.node("n1").ns, dev)?,
                netns::link_stats(&tb.node("n2").ns, dev)?,
            ];
            Tally {
                sent: [out(&s[0]), out(&s[1])],
                received: [into(&s[1]), into(&s[0])],
                labels: (
                    format!("{dev} on the sending node"),
                    format!("{dev} on the receiving node"),
                ),
            }
        }
    }))
}

/// The least traffic the samples of one rotation exchanged each way.
#[derive(Debug, Clone, Copy)]
struct Least {
    packets: [u64; 2],
    bytes: [u64; 2],
}

/// A rate over a sample that lasted at least `dur` counts at least rate × dur events.
fn least(metric: Metric, s: &Stats, dur: Duration) -> Least {
    let total: f64 = s.samples.iter().map(|v| v * dur.as_secs_f64()).sum();
    if metric == RR_RATE {
        // Each round trip is a request one way and a response the other.
        let n = total.floor() as u64;
        Least {
            packets: [n, n],
            bytes: [n * RR_BYTES, n * RR_BYTES],
        }
    } else {
        // Gbit/s: the stream's bytes one way, acknowledgements the other.
        Least {
            packets: [1, 1],
            bytes: [(total * 1e9 / 8.0).floor() as u64, 0],
        }
    }
}

fn verify(before: &Tally, after: &Tally, least: Least) -> Result<()> {
    for (dir, way) in ["client -> server", "server -> client"].iter().enumerate() {
        for (label, b, a) in [
            (&after.labels.0, before.sent[dir], after.sent[dir]),
            (&after.labels.1, before.received[dir], after.received[dir]),
        ] {
            let (p, by) = (
                a.packets.saturating_sub(b.packets),
                a.bytes.saturating_sub(b.bytes),
            );
            if p < least.packets[dir] || by < least.bytes[dir] {
                bail!(
                    "{way}: {label} counted {p} packets, {by} bytes; the samples alone \
                     exchanged at least {} packets, {} bytes",
                    least.packets[dir],
                    least.bytes[dir]
                );
            }
        }
    }
    Ok(())
}

/// A subject that is set up and serving.
struct Live {
    subject: &'static Subject,
    tb: Testbed,
    ends: Endpoints,
    _server: Server,
}

fn start(subject: &'static Subject, bins: &Binaries) -> Result<Live> {
    let (tb, ends) =
        setup(bins, subject.carrier).with_context(|| format!("setting up {}", subject.name))?;
    let server = Server::start(&ends.server_ns, PORT)?;
    Ok(Live {
        subject,
        tb,
        ends,
        _server: server,
    })
}

type Sample = fn(&str, (Ipv4Addr, u16), Duration) -> Result<f64>;

/// Every subject is set up first, then sampled in rotation.
pub fn run(bins: &Binaries, plan: Plan) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut live = Vec::new();
    for subject in SUBJECTS {
        match start(subject, bins) {
            Ok(l) => live.push(l),
            Err(e) => {
                for (case, metric) in [(RR_CASE, RR_RATE), (STREAM_CASE, THROUGHPUT)] {
                    rows.push(
                        Row::from_result(
                            Section::PodToPod,
                            subject.name,
                            case,
                            metric,
                            Err(anyhow::anyhow!("{e:#}")),
                        )
                        .compared_to(subject.compare),
                    );
                }
            }
        }
    }
    let metrics: [(&str, Metric, Sample); 2] = [
        (RR_CASE, RR_RATE, load::request_rate),
        (STREAM_CASE, THROUGHPUT, load::stream),
    ];
    for (case, metric, sample) in metrics {
        let before: Vec<Result<Option<Tally>>> = live
            .iter()
            .map(|l| tally(&l.tb, l.subject.carrier))
            .collect();
        let samplers: Vec<(String, runner::Sampler)> = live
            .iter()
            .map(|l| {
                let to = (l.ends.server_ip, PORT);
                let ns = l.ends.client_ns.clone();
                let f: runner::Sampler = Box::new(move || sample(&ns, to, plan.sample));
                (format!("{} {case}", l.subject.name), f)
            })
            .collect();
        let results = runner::interleave(plan.repeats, samplers);
        for ((l, r), before) in live.iter().zip(results).zip(before) {
            let r = r.and_then(|s| {
                let after = tally(&l.tb, l.subject.carrier)?;
                if let (Some(b), Some(a)) = (before?, after) {
                    verify(&b, &a, least(metric, &s, plan.sample)).with_context(|| {
                        format!(
                            "{}: the path under test did not carry the traffic",
                            l.subject.name
                        )
                    })?;
                }
                Ok(s)
            });
            rows.push(
                Row::from_result(Section::PodToPod, l.subject.name, case, metric, r)
                    .compared_to(l.subject.compare),
            );
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(sent: u64, received: u64) -> Tally {
        let c = |n: u64| Count {
            packets: n,
            bytes: n * 100,
        };
        Tally {
            sent: [c(sent), c(sent)],
            received: [c(received), c(received)],
            labels: (
                "from_pod encap_vxlan".into(),
                "from_netdev decap_vxlan".into(),
            ),
        }
    }

    #[test]
    fn a_path_must_count_at_least_what_the_samples_exchanged() {
        let s = Stats::new(vec![1000.0, 2000.0]).unwrap();
        let l = least(RR_RATE, &s, Duration::from_millis(500));
        assert_eq!(l.packets, [1500, 1500]);
        assert_eq!(l.bytes, [1500 * 64, 1500 * 64]);
        verify(&tally(10, 10), &tally(1510, 1600), l).unwrap();
        let err = verify(&tally(10, 10), &tally(1510, 1000), l).unwrap_err();
        assert!(
            format!("{err}").contains("from_netdev decap_vxlan counted 990 packets"),
            "{err}"
        );
        let g = least(
            THROUGHPUT,
            &Stats::new(vec![8.0]).unwrap(),
            Duration::from_secs(1),
        );
        assert_eq!((g.bytes, g.packets), ([1_000_000_000, 0], [1, 1]));
    }
}
