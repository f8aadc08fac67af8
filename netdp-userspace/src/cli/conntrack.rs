//! `netdp conntrack` (every flow a node translates) and `netdp nat` (its masqueraded flows,
//! as pod, remote and node address).
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::{NodeArgs, Output, print_table, print_value};
use crate::dataplane::{
    conntrack::{ConntrackMap, Flow, now},
    lb::proto_name,
};

#[derive(Subcommand, Debug)]
pub enum ConntrackCmd {
    /// Flows this node translates.
    List(NodeArgs),
    /// Delete expired entries now (the agent does this periodically).
    Gc(NodeArgs),
}

#[derive(Subcommand, Debug)]
pub enum NatCmd {
    /// Masqueraded flows: pod, remote, and the node port each uses.
    List(NodeArgs),
}

pub fn conntrack(cmd: ConntrackCmd) -> Result<()> {
    match cmd {
        ConntrackCmd::Gc(args) => {
            let n = ConntrackMap::open(&args.pins()?)?.gc();
            println!("removed {n} expired entries");
            Ok(())
        }
        ConntrackCmd::List(args) => {
            let flows = ConntrackMap::open(&args.pins()?)?.list();
            let t = now();
            let row = |f: &Flow| {
                (
                    Flow::tuple(f.key.saddr, f.key.sport, f.key.daddr, f.key.dport),
                    Flow::tuple(
                        f.entry.nat_saddr,
                        f.entry.nat_sport,
                        f.entry.nat_daddr,
                        f.entry.nat_dport,
                    ),
                )
            };
            match args.output {
                Output::Json | Output::Yaml => print_value(
                    args.output,
                    &json!(flows.iter().map(|f| {
                        let (from, to) = row(f);
                        json!({
                            "protocol": proto_name(f.key.proto), "packet": from, "rewrittenTo": to,
                            "direction": if f.is_reply() { "reply" } else { "original" },
                            "kind": f.kind(),
                            "state": f.state_name(), "expiresIn": f.entry.expires.saturating_sub(t),
                            "serviceId": f.entry.service_id,
                            "snat": f.entry.flags & netdp_common::conntrack::flags::SNAT != 0,
                        })
                    }).collect::<Vec<_>>()),
                ),
                Output::Table => print_table(
                    &[
                        "PROTO",
                        "PACKET",
                        "REWRITTEN TO",
                        "DIR",
                        "KIND",
                        "STATE",
                        "EXPIRES",
                        "SERVICE",
                    ],
                    &flows
                        .iter()
                        .map(|f| {
                            let (from, to) = row(f);
                            vec![
                                proto_name(f.key.proto).into(),
                                from,
                                to,
                                if f.is_reply() { "reply" } else { "orig" }.into(),
                                f.kind().into(),
                                f.state_name().into(),
                                format!("{}s", f.entry.expires.saturating_sub(t)),
                                if f.is_masquerade() {
                                    "-".into()
                                } else {
                                    f.entry.service_id.to_string()
                                },
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            Ok(())
        }
    }
}

pub fn nat(cmd: NatCmd) -> Result<()> {
    let NatCmd::List(args) = cmd;
    let flows = ConntrackMap::open(&args.pins()?)?.masqueraded();
    match args.output {
        Output::Json | Output::Yaml => print_value(
            args.output,
            &json!(
                flows
                    .iter()
                    .map(|t| json!({
                        "protocol": proto_name(t.proto), "pod": t.pod.to_string(),
                        "remote": t.remote.to_string(), "nat": t.nat.to_string(),
                    }))
                    .collect::<Vec<_>>()
            ),
        ),
        Output::Table => print_table(
            &["PROTO", "POD", "REMOTE", "AS"],
            &flows
                .iter()
                .map(|t| {
                    vec![
                        proto_name(t.proto).into(),
                        t.pod.to_string(),
                        t.remote.to_string(),
                        t.nat.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}
