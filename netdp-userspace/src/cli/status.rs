//! `netdp status`: the agent's own view (`/status` on its health address) and the node's
//! pinned dataplane, on one screen. The request is one plain HTTP/1.0 GET to the local
//! agent, so it is written here rather than pulling in an HTTP client.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::{NodeArgs, Output};
use crate::dataplane::{counters::CounterMap, route::RouteMap, xdp};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The agent's --healthz-addr.
    #[arg(long = "healthz-addr", default_value = "127.0.0.1:9876")]
    healthz_addr: SocketAddr,
}

pub(super) fn agent_status(addr: SocketAddr) -> Result<Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).with_context(|| {
        format!("no agent answers at {addr} (is it running, with --healthz-addr {addr}?)")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /status HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| anyhow!("the agent at {addr} sent no HTTP response"))?;
    serde_json::from_str(body).map_err(|e| anyhow!("the agent at {addr} sent bad JSON: {e}"))
}

pub fn run(args: StatusArgs) -> Result<()> {
    let status = agent_status(args.healthz_addr)?;
    let pins = args.node.pins()?;
    let routes = RouteMap::open(&pins).map(|r| r.list().len()).ok();
    let (xdp_mode, xdp_on) = xdp::attached(&pins);
    let dropped: Option<u64> = CounterMap::open(&pins).ok().and_then(|c| {
        c.all().ok().map(|all| {
            all.iter()
                .filter(|c| c.reason.verdict() == netdp_common::counters::Verdict::Dropped)
                .map(|c| c.packets)
                .sum()
        })
    });
    match args.node.output {
        Output::Json | Output::Yaml => {
            let mut out = status.clone();
            out["dataplane"] = serde_json::json!({
                "pins": pins.dir().display().to_string(),
                "routes": routes,
                "droppedPackets": dropped,
                "xdp": {"mode": xdp_mode.name(), "interface": xdp_on},
            });
            super::print_value(args.node.output, &out);
        }
        Output::Table => {
            let ready = status["ready"].as_bool().unwrap_or(false);
            println!("agent      {}", if ready { "ready" } else { "NOT READY" });
            for c in status["checks"].as_array().into_iter().flatten() {
                let ok = c["ok"].as_bool().unwrap_or(false);
                println!(
                    "  {} {}",
                    if ok { "ok  " } else { "FAIL" },
                    c["check"].as_str().unwrap_or("?")
                );
            }
            match status["leaseExpiresInSeconds"].as_i64() {
                Some(s) => println!("lease      expires in {}h{:02}m", s / 3600, (s % 3600) / 60),
                None => println!("lease      not held"),
            }
            println!("dataplane  {}", pins.dir().display());
            match routes {
                Some(n) => println!("  routes   {n} remote subnets"),
                None => println!("  routes   (not pinned)"),
            }
            match &xdp_on {
                Some(ifname) => println!("  xdp      {} on {ifname}", xdp_mode.name()),
                None => println!("  xdp      off"),
            }
            if let Some(d) = dropped {
                println!("  dropped  {d} packets (netdp counters for reasons)");
            }
        }
    }
    if status["ready"].as_bool() != Some(true) {
        bail!("the agent is not ready");
    }
    Ok(())
}
