//! `netdp cluster list`: the clusters of this node's mesh as its agent follows them (from
//! `/status`): where each stands, its Network, and how many of its leases are routed here.
use std::{
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use super::{Output, print_table, print_value, status::agent_status};

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// This cluster and every other one its network config names: state, Network, routes.
    List(ClusterListArgs),
}

#[derive(clap::Args, Debug)]
pub struct ClusterListArgs {
    /// The agent's --healthz-addr.
    #[arg(long = "healthz-addr", default_value = "127.0.0.1:9876")]
    healthz_addr: SocketAddr,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

/// `12s`, `5m03s`, `2h10m`: how long a cluster has been in its state.
fn age(since: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(since);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn run(cmd: ClusterCmd) -> Result<()> {
    let ClusterCmd::List(args) = cmd;
    let status = agent_status(args.healthz_addr)?;
    let clusters = match &status["clusters"] {
        Value::Array(a) => a.clone(),
        _ => Vec::new(),
    };
    match args.output {
        Output::Json | Output::Yaml => print_value(args.output, &Value::Array(clusters)),
        Output::Table => {
            if clusters.is_empty() {
                println!("this cluster has no ClusterName and names no other clusters");
                return Ok(());
            }
            let text = |v: &Value| match v {
                Value::Null => "-".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let rows: Vec<Vec<String>> = clusters
                .iter()
                .map(|c| {
                    let local = c["local"].as_bool().unwrap_or(false);
                    vec![
                        text(&c["name"]),
                        text(&c["id"]),
                        text(&c["network"]),
                        if local { "-".into() } else { text(&c["mode"]) },
                        text(&c["state"]),
                        c["since"].as_u64().map_or("-".into(), age),
                        if local {
                            "-".into()
                        } else {
                            text(&c["leases"])
                        },
                        if local {
                            "-".into()
                        } else {
                            text(&c["routes"])
                        },
                        text(&c["error"]),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME", "ID", "NETWORK", "STATE", "FOR", "LEASES", "ROUTES", "ERROR",
                ],
                &rows,
            );
        }
    }
    Ok(())
}
