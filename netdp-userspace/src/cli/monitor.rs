//! `netdp monitor`: the datapath's drop events as they happen, like `cilium-dbg monitor
//! --type drop`, filtered by reason, pod and program. Events flow only while a monitor
//! runs (it registers in the MONITOR map), so nobody pays for them otherwise.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use crate::cli::Classify;
use anyhow::{Result, anyhow};
use netdp_common::{
    counters::{Program, Reason},
    monitor::DropEvent,
};
use serde_json::json;

use super::{NodeArgs, Output, print_value};
use crate::{dataplane::monitor::Monitor, util::parse_duration};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum EventType {
    /// Dropped packets (the only events the programs emit).
    Drop,
}

#[derive(clap::Args, Debug)]
pub struct MonitorArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Which events.
    #[arg(long = "type", value_enum, default_value = "drop")]
    kind: EventType,
    /// Only this drop reason (as `netdp counters` names it, e.g. decap_unknown_peer).
    #[arg(long)]
    reason: Option<String>,
    /// Only packets from or to this address (a pod's, a node's).
    #[arg(long)]
    pod: Option<Ipv4Addr>,
    /// Only this program (from_pod, from_netdev, from_host, xdp).
    #[arg(long)]
    program: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long (a duration, like 30s).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
}

fn program_of(n: u32) -> Option<Program> {
    Program::ALL.into_iter().find(|p| *p as u32 == n)
}

fn reason_of(n: u32) -> Option<Reason> {
    Reason::ALL.into_iter().find(|r| *r as u32 == n)
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        4 => "ipip".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        0 => "-".into(),
        n => n.to_string(),
    }
}

fn endpoint(addr: [u8; 4], port: u16) -> String {
    match port {
        0 => Ipv4Addr::from(addr).to_string(),
        p => format!("{}:{p}", Ipv4Addr::from(addr)),
    }
}

pub async fn run(args: MonitorArgs) -> Result<()> {
    let EventType::Drop = args.kind;
    if let Some(r) = &args.reason
        && !Reason::ALL.iter().any(|x| x.name() == r)
    {
        let names: Vec<_> = Reason::ALL
            .iter()
            .filter(|x| x.verdict() == netdp_common::counters::Verdict::Dropped)
            .map(|x| x.name())
            .collect();
        return Err(anyhow!(
            "--reason {r:?} is no drop reason; one of: {}",
            names.join(", ")
        ))
        .classify(super::Failure::BadInput);
    }
    if let Some(p) = &args.program
        && !Program::ALL.iter().any(|x| x.name() == p)
    {
        let names: Vec<_> = Program::ALL.iter().map(|p| p.name()).collect();
        return Err(anyhow!("--program {p:?} is none of {}", names.join(", ")))
            .classify(super::Failure::BadInput);
    }
    let mut monitor = Monitor::open(&args.node.pins()?)?;
    let wanted = |ev: &DropEvent| {
        args.reason
            .as_deref()
            .is_none_or(|r| reason_of(ev.reason).is_some_and(|x| x.name() == r))
            && args
                .program
                .as_deref()
                .is_none_or(|p| program_of(ev.program).is_some_and(|x| x.name() == p))
            && args
                .pod
                .is_none_or(|a| ev.saddr == a.octets() || ev.daddr == a.octets())
    };
    eprintln!("listening for drop events (Ctrl-C to stop)");
    let started = Instant::now();
    let mut shown = 0u64;
    loop {
        while let Some(ev) = monitor.next_event() {
            if !wanted(&ev) {
                continue;
            }
            let program = program_of(ev.program).map_or("?", |p| p.name());
            let reason = reason_of(ev.reason).map_or("?", |r| r.name());
            match args.node.output {
                Output::Json | Output::Yaml => print_value(
                    args.node.output,
                    &json!({
                        "type": "drop", "program": program, "reason": reason,
                        "source": Ipv4Addr::from(ev.saddr).to_string(), "sourcePort": ev.sport,
                        "destination": Ipv4Addr::from(ev.daddr).to_string(),
                        "destinationPort": ev.dport, "protocol": proto_name(ev.proto),
                        "ifindex": ev.ifindex, "length": ev.len,
                    }),
                ),
                Output::Table => println!(
                    "DROP  {program:<11}  {reason:<24}  {} -> {}  {}  ifindex {}  {} bytes",
                    endpoint(ev.saddr, ev.sport),
                    endpoint(ev.daddr, ev.dport),
                    proto_name(ev.proto),
                    ev.ifindex,
                    ev.len
                ),
            }
            shown += 1;
            if args.count.is_some_and(|c| shown >= c) {
                return Ok(());
            }
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}
