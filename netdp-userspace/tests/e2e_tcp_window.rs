//! End to end, from the attacker's side: forged resets and closes do not end a connection
//! through a node port. The outside host holds a connection to a backend through n1's node
//! port; then it forges 1,000 RSTs and 200 FINs with the connection's own tuple (what an
//! off-path attacker who guessed it would send) and sequence numbers outside the window
//! (the test reads the connection's next sequence number from n1's CONNTRACK, which the
//! attacker would have to guess). n1 drops every one (`out_of_window`), both entries stay
//! established, and after the closing lifetime has passed the connection still carries
//! data. Had the forgeries moved the flow to closing, its entries would have expired in
//! those 2 s and the connection's next segment would have been dropped as not a SYN.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result, ensure};
use aya::maps::HashMap;
use netdp_common::conntrack::{CtEntry, CtKey, state};
use netdp_testbed::{
    Spec, Testbed,
    flood::send_forged,
    hold::{HoldServer, IdleConn},
    packet::{IPPROTO_TCP, PacketSpec},
    testbed::open_pinned_map,
    topology::OUTSIDE_IP,
};
use serde_json::json;

const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 20);
const NODE_PORT: u16 = 30091;
const CLOSING: Duration = Duration::from_secs(2);
/// The window's edges (README, "Conntrack under floods"): 8 MiB behind the next sequence
/// number, 65,535 ahead.
const IN_FLIGHT: u32 = 8 << 20;
const SLACK: u32 = 65_535;
const RSTS: u32 = 1000;
const FINS: u32 = 200;

#[test]
fn forged_resets_and_closes_do_not_end_a_connection_through_a_node_port() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(1).network(HOST_GW).outside())?;
    let closing = format!("--conntrack-timeout-tcp-closing={}s", CLOSING.as_secs());
    tb.start_agent("n1", &[closing.as_str()])?;
    let backend = tb.add_pod("n1", "backend")?;
    let _server = HoldServer::start(&backend.ns, 8081, "backend")?;
    let doc = json!([{
        "metadata": {"name": "hold"},
        "spec": {"type": "NodePort", "clusterIP": VIP.to_string(), "ports": [
            {"protocol": "TCP", "port": 81, "targetPort": 8081, "nodePort": NODE_PORT}]},
        "endpoints": [{"ip": backend.ip.to_string(), "nodeName": tb.node("n1").ns}],
    }]);
    tb.apply_services(&doc.to_string())?;
    tb.wait_services_programmed(Duration::from_secs(20))?;
    let out_ns = tb.outside_ns.clone().context("outside host")?;
    let n1 = tb.node("n1").ip;
    let mut conn = IdleConn::open(&out_ns, n1, NODE_PORT)?;
    let client = conn.local;
    ensure!(*client.ip() == OUTSIDE_IP, "the client is {client}");

    // The connection's entries in n1's CONNTRACK: the client's direction (its next
    // sequence number is what a forgery must miss) and the backend's.
    let table: HashMap<_, CtKey, CtEntry> =
        HashMap::try_from(open_pinned_map(&tb.node("n1").map_pin("CONNTRACK"))?)?;
    let ours = |table: &HashMap<_, CtKey, CtEntry>| -> Vec<(CtKey, CtEntry)> {
        table
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, _)| {
                k.proto == IPPROTO_TCP
                    && ((k.saddr == client.ip().octets() && k.sport == client.port())
                        || (k.daddr == client.ip().octets() && k.dport == client.port()))
            })
            .collect()
    };
    let entries = ours(&table);
    ensure!(entries.len() == 2, "the connection's entries: {entries:?}");
    let (_, from_client) = entries
        .iter()
        .find(|(k, _)| k.saddr == client.ip().octets())
        .context("the client's entry")?;
    let next = from_client.seq_next;
    ensure!(
        next != 0,
        "the client's next sequence number is not tracked"
    );
    println!("connection {client} -> {n1}:{NODE_PORT}, client's next sequence number {next}");

    // Forged with the connection's tuple, every sequence number outside the window: from
    // just past its front edge, 4 MiB apart, never reaching its back edge.
    let forged = |flags: u8, i: u32| {
        PacketSpec {
            src: OUTSIDE_IP,
            dst: n1,
            proto: IPPROTO_TCP,
            sport: client.port(),
            dport: NODE_PORT,
            tcp_flags: flags,
            seq: next.wrapping_add(SLACK + 1 + i * (4 << 20)),
            ack: 0,
            payload: Vec::new(),
            ..Default::default()
        }
        .build()
    };
    ensure!(SLACK + 1 + (RSTS - 1) * (4 << 20) < u32::MAX - IN_FLIGHT);
    let frames: Vec<Vec<u8>> = (0..RSTS)
        .map(|i| forged(0x04, i))
        .chain((0..FINS).map(|i| forged(0x11, i)))
        .collect();
    let before = tb.underlay_counter("n1", "out_of_window")?;
    let sent = send_forged(&out_ns, frames)?;
    let mut dropped = 0;
    tb.wait_for(
        "n1 to drop every forged segment",
        Duration::from_secs(10),
        || {
            dropped = tb.underlay_counter("n1", "out_of_window")? - before;
            Ok(dropped >= sent)
        },
    )?;
    println!(
        "forged {sent} RSTs and FINs from the outside host; n1's underlay programs out_of_window +{dropped}"
    );
    ensure!(
        dropped == u64::from(RSTS + FINS),
        "{dropped} dropped of {sent}"
    );
    let after = ours(&table);
    ensure!(
        after.len() == 2 && after.iter().all(|(_, e)| e.state == state::ESTABLISHED),
        "the forgeries changed the connection's entries: {after:?}"
    );

    // Past the closing lifetime, the connection still carries data both ways.
    std::thread::sleep(CLOSING + Duration::from_secs(1));
    conn.exchange()
        .context("the connection did not survive the forged resets")?;
    conn.finish()?;
    Ok(())
}
