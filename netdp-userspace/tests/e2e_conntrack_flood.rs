//! End to end: a SYN flood does not cost established connections their conntrack entries.
//! Two nodes whose agents have small tables (1,024 entries in CONNTRACK and in HALF_OPEN),
//! a random-algorithm ClusterIP service with a backend on each node, also a NodePort. A
//! client pod on n1 holds an idle connection through the ClusterIP (silent for the whole
//! flood) while the outside host floods n1's node port for 30 s with spoofed SYNs (random
//! source ports, sources on the outside network that nobody holds, so no handshake is ever
//! completed). The connection goes on afterwards, on the same socket with the same backend,
//! and its two entries never leave CONNTRACK; the flood is shown to have been real (tens of
//! thousands of service flows on n1's underlay programs, XDP or `from_netdev`) and to have
//! filled HALF_OPEN, so one table of that size would have evicted the idle connection many
//! times over.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use aya::maps::{HashMap, MapData};
use netdp::dataplane::{Pins, conntrack::ConntrackMap};
use netdp_common::conntrack::{CtEntry, CtKey, state};
use netdp_testbed::{
    BPF_ROOT, Spec, Testbed,
    flood::{Flood, SynFlood},
    hold::{HoldServer, IdleConn},
    services::{Connect, EchoServer, echo_many},
    testbed::open_pinned_map,
};
use serde_json::json;

const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 10);
/// The service's two ports: `http` (80 -> 8080, the testbed's echo server; node port
/// 30080, the one flooded) and `hold` (81 -> 8081, an echo server without an idle timeout,
/// for the connection that stays silent for the whole flood).
const HTTP: (u16, u16, u16) = (80, 8080, 30080);
const HOLD: (u16, u16) = (81, 8081);
/// Entries of CONNTRACK and of HALF_OPEN (two per flow).
const TABLE: usize = 1024;
const FLOOD: Duration = Duration::from_secs(30);
/// SYNs per second aimed for: 512 half-open flows fit, so HALF_OPEN would turn over ~10
/// times a second.
const RATE: u64 = 5000;
/// Spoofed sources: on the outside host's network, held by nobody.
const SPOOFED: (Ipv4Addr, Ipv4Addr) = (
    Ipv4Addr::new(203, 0, 113, 100),
    Ipv4Addr::new(203, 0, 113, 200),
);
const WAIT: Duration = Duration::from_secs(20);
/// A node's two conntrack tables.
struct Tables {
    conntrack: HashMap<MapData, CtKey, CtEntry>,
    both: ConntrackMap,
}

impl Tables {
    fn open(tb: &Testbed, node: &str) -> Result<Self> {
        let n = tb.node(node);
        let map = open_pinned_map(&n.map_pin("CONNTRACK"))?;
        Ok(Tables {
            conntrack: HashMap::try_from(map)?,
            both: ConntrackMap::open(&Pins::new(std::path::Path::new(BPF_ROOT), &n.ns)?)?,
        })
    }

    /// CONNTRACK's entries of the TCP connection from `client`, found by walking the table
    /// (only while nothing else changes it: a walk under churn can miss keys).
    fn walk_for(&self, client: SocketAddrV4) -> Vec<(CtKey, CtEntry)> {
        let (ip, port) = (client.ip().octets(), client.port());
        self.conntrack
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, _)| {
                k.proto == 6
                    && ((k.saddr == ip && k.sport == port) || (k.daddr == ip && k.dport == port))
            })
            .collect()
    }

    /// The entries at `keys`, looked up one by one (`None` for one not in CONNTRACK).
    fn get(&self, keys: &[CtKey]) -> Vec<Option<CtEntry>> {
        keys.iter().map(|k| self.conntrack.get(k, 0).ok()).collect()
    }

    /// Entries in CONNTRACK, and those of established flows from outside the cluster (they
    /// carry the interface they came in on): a walk, so only meaningful while the programs
    /// leave the table alone.
    fn conntrack_len(&self) -> (usize, usize) {
        let entries: Vec<CtEntry> = self
            .conntrack
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, e)| e)
            .collect();
        let outside = entries
            .iter()
            .filter(|e| e.ifindex != 0 && e.state == state::ESTABLISHED)
            .count();
        (entries.len(), outside)
    }
}

fn established(e: &[Option<CtEntry>]) -> bool {
    e.len() == 2
        && e.iter()
            .all(|e| e.is_some_and(|e| e.state == state::ESTABLISHED))
}

fn describe(e: &[(CtKey, CtEntry)]) -> String {
    e.iter()
        .map(|(k, v)| {
            format!(
                "{}:{} -> {}:{} state {} flags {:#x}",
                Ipv4Addr::from(k.saddr),
                k.sport,
                Ipv4Addr::from(k.daddr),
                k.dport,
                v.state,
                v.flags
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn an_idle_connection_through_a_cluster_ip_survives_a_syn_flood_at_a_node_port() -> Result<()> {
    let started = Instant::now();
    let sizes = [
        format!("--conntrack-map-size={TABLE}"),
        format!("--conntrack-half-open-size={TABLE}"),
    ];
    let mut tb = Testbed::new(Spec::flat(2).network(HOST_GW).outside())?;
    tb.start_all_agents(&sizes.iter().map(String::as_str).collect::<Vec<_>>())?;
    let (mut servers, mut holders, mut endpoints) = (Vec::new(), Vec::new(), Vec::new());
    for node in ["n1", "n2"] {
        let pod = tb.add_pod(node, "backend")?;
        servers.push(EchoServer::start(&pod.ns, HTTP.1, node)?);
        holders.push(HoldServer::start(&pod.ns, HOLD.1, node)?);
        endpoints.push(json!({"ip": pod.ip.to_string(), "nodeName": tb.node(node).ns}));
    }
    let client = tb.add_pod("n1", "client")?;
    let out_ns = tb.outside_ns.clone().expect("outside host");
    let n1 = tb.node("n1").ip;
    let doc = json!([{
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default",
                     "annotations": {"netdp.io/lb-algorithm": "random"}},
        "spec": {"type": "NodePort", "clusterIP": VIP.to_string(), "ports": [
            {"name": "http", "protocol": "TCP", "port": HTTP.0, "targetPort": HTTP.1,
             "nodePort": HTTP.2},
            {"name": "hold", "protocol": "TCP", "port": HOLD.0, "targetPort": HOLD.1,
             "nodePort": 30081},
        ]},
        "endpoints": endpoints,
    }]);
    tb.apply_services(&doc.to_string())?;
    tb.wait_services_programmed(WAIT)?;
    // The node port answers from outside before the flood.
    let who = echo_many(&out_ns, Connect::new(n1, HTTP.2), 4)?;
    println!("outside -> {n1}:{} before the flood: {who:?}", HTTP.2);

    // The idle connection: one exchange, then silence. Its two entries, found while
    // nothing else happens, are looked up by key from then on.
    let mut idle = IdleConn::open(&client.ns, VIP, HOLD.0)?;
    let tables = Tables::open(&tb, "n1")?;
    let ours = tables.walk_for(idle.local);
    println!(
        "idle connection {} -> {VIP}:{} served by {}; CONNTRACK: {}",
        idle.local,
        HOLD.0,
        idle.who,
        describe(&ours)
    );
    let keys: Vec<CtKey> = ours.iter().map(|(k, _)| *k).collect();
    ensure!(
        established(&tables.get(&keys)) && tables.both.half_open() == 0,
        "the idle connection is not established in CONNTRACK: {}",
        describe(&ours)
    );
    let flows_before = tb.underlay_event("n1", "service_flow")?;

    let flood = Flood::start(
        &out_ns,
        SynFlood {
            dst: n1,
            dport: HTTP.2,
            sources: SPOOFED,
            rate: RATE,
            duration: FLOOD,
            seed: 0x5eed_f100d,
        },
    )?;
    let flood_started = Instant::now();
    let mut max_half_open = 0;
    let mut lost = None;
    while !flood.is_finished() {
        std::thread::sleep(Duration::from_millis(500));
        max_half_open = max_half_open.max(tables.both.half_open());
        let now = tables.get(&keys);
        if lost.is_none() && !established(&now) {
            println!(
                "after {:.1?} of the flood ({} SYNs) the idle connection's entries are \
                 {now:?}; HALF_OPEN holds {}",
                flood_started.elapsed(),
                flood.sent(),
                tables.both.half_open()
            );
            lost = Some(flood_started.elapsed());
        }
    }
    let report = flood.wait()?;
    let flows = tb.underlay_event("n1", "service_flow")? - flows_before;
    let snat = tb.underlay_event("n1", "service_snat")?;
    let not_syn = tb.counter("n1", "from_pod", "service_not_syn")?;
    let (ct_after, from_outside) = tables.conntrack_len();
    println!(
        "flood: {} SYNs in {:.1?} ({:.0}/s, {} refused by the kernel) from {}-{} to \
         {n1}:{}; n1's underlay programs service_flow +{flows} (service_snat {snat}); HALF_OPEN held \
         at most {max_half_open} of {TABLE} live entries ({} now); CONNTRACK holds {ct_after} of \
         {TABLE}, {from_outside} of them of established flows from outside",
        report.sent,
        report.elapsed,
        report.rate(),
        report.failed,
        SPOOFED.0,
        SPOOFED.1,
        HTTP.2,
        tables.both.half_open()
    );

    // The idle connection, silent through the whole flood: still in CONNTRACK, still
    // working, with the same backend on the same socket.
    let after = tables.get(&keys);
    println!("after the flood, the idle connection's CONNTRACK entries: {after:?}");
    let (who, local) = (idle.who.clone(), idle.local);
    let silent = flood_started.elapsed();
    idle.exchange()
        .and_then(|()| idle.finish())
        .with_context(|| {
            format!(
                "the idle connection's exchange after {silent:.1?} of silence (its entries \
                 lost after {lost:?}; from_pod service_not_syn {not_syn})"
            )
        })?;
    println!("the idle connection, silent for {silent:.1?}, answered by {who} after the flood");
    ensure!(
        lost.is_none() && established(&after),
        "the idle connection's CONNTRACK entries went missing after {lost:?} of the flood \
         ({after:?} after it)"
    );
    // The same backend: the one its greeting named saw this client port, no other did.
    let saw: Vec<bool> = holders
        .iter()
        .map(|s| s.peers().contains(&SocketAddr::V4(local)))
        .collect();
    let by = ["n1", "n2"].iter().position(|n| *n == who);
    ensure!(
        by.is_some_and(|i| saw[i]) && saw.iter().filter(|s| **s).count() == 1,
        "the backends that saw {local}: {saw:?} (the greeting named {who})"
    );

    // The flood was real and went through the service path: tens of thousands of new
    // service flows on n1. And it filled HALF_OPEN, where half-open flows wait: one table
    // of this size would have evicted the idle connection many times over.
    ensure!(
        report.sent >= 50_000,
        "only {} SYNs sent ({:.0}/s)",
        report.sent,
        report.rate()
    );
    ensure!(
        flows >= 20_000 && flows * 2 >= report.sent,
        "n1's underlay programs (XDP, from_netdev) started {flows} service flows for {} SYNs",
        report.sent
    );
    ensure!(
        max_half_open >= TABLE * 9 / 10,
        "HALF_OPEN held at most {max_half_open} of {TABLE} entries during the flood, and \
         {from_outside} of CONNTRACK's {ct_after} entries after it are of established flows \
         from outside: the flood's flows were moved to CONNTRACK (by the backends' SYN-ACKs, \
         though no handshake was completed)"
    );

    // New connections after the flood: from the pod through the ClusterIP, and from outside
    // through the node port.
    let who = echo_many(&client.ns, Connect::new(VIP, HTTP.0), 5)?;
    let outside = echo_many(&out_ns, Connect::new(n1, HTTP.2), 3)?;
    println!(
        "after the flood: new connections to {VIP}:{} served by {who:?}, to {n1}:{} by \
         {outside:?}; the test took {:.1?}",
        HTTP.0,
        HTTP.2,
        started.elapsed()
    );
    drop(servers);
    Ok(())
}
