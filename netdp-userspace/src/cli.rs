//! The `netdp` command line: the agent plus read-only views of etcd and the maps, and
//! the services in etcd.
mod check;
mod cluster;
mod conntrack;
mod install_cni;
mod maps;
mod monitor;
mod network;
mod service_apply;
mod services;
mod status;

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::{
    agent::AgentArgs,
    dataplane::{Pins, counters::CounterMap, endpoint::EndpointMap, node_name, route::RouteMap},
    etcd::EtcdArgs,
    lease::Registry,
    subnet_file::SubnetFile,
    util::mac_string,
};

#[derive(Parser, Debug)]
#[command(
    name = "netdp",
    version,
    about = "eBPF pod networking with Flannel-compatible subnet leases"
)]
pub struct Cli {
    /// Log lines as text, or as one JSON object per event (kube-proxy's --logging-format=json).
    #[arg(long = "log-format", global = true, value_enum, default_value_t)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node agent.
    Agent(Box<AgentArgs>),
    /// The agent's readiness, lease and dataplane on one screen (exit 1 when not ready).
    Status(status::StatusArgs),
    /// Show what the programs did with packets (per program and reason).
    Counters(NodeArgs),
    /// Stream the datapath's drop events as they happen, filtered by reason, pod, program.
    Monitor(monitor::MonitorArgs),
    /// Pods on this node, as the dataplane sees them.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Remote subnets, as the dataplane routes them.
    #[command(subcommand)]
    Route(RouteCmd),
    /// The clusters of this node's mesh, as its agent follows them.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Pod flows masqueraded to the outside (--ip-masq).
    #[command(subcommand)]
    Nat(conntrack::NatCmd),
    /// Subnet leases in etcd.
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// The network config in etcd: show it, or apply one from a file.
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// Kubernetes services in etcd: apply, list, get, delete.
    #[command(subcommand)]
    Service(services::ServiceCmd),
    /// Service frontends and backends, as the dataplane balances them.
    #[command(subcommand)]
    Lb(services::LbCmd),
    /// Translated flows, as the dataplane tracks them.
    #[command(subcommand)]
    Conntrack(conntrack::ConntrackCmd),
    /// The BPF maps: what each holds, its size, where it is pinned.
    #[command(subcommand)]
    Map(maps::MapCmd),
    /// Remove a node's dataplane: detach its programs and delete its pinned maps.
    Teardown(NodeArgs),
    /// Load the programs into this kernel for every backend (nothing attached): can it run netdp?
    Check,
    /// Install the CNI plugin and its config on the host, atomically (the DaemonSet's init step).
    InstallCni(install_cni::InstallCniArgs),
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Why a command failed, as its exit code, so scripts can tell these apart (1 is any
/// other failure; clap's own usage errors exit 2 too). Attached with [`Classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    BadInput = 2,
    NotFound = 3,
    Unreachable = 4,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Failure::BadInput => "bad input",
            Failure::NotFound => "not found",
            Failure::Unreachable => "unreachable",
        })
    }
}

/// An error that says which [`Failure`] it is; it reads exactly as the error it wraps.
#[derive(Debug)]
pub struct Classified {
    pub kind: Failure,
    error: anyhow::Error,
}

impl std::fmt::Display for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Classified {}

/// Marks a result's error as a [`Failure`] of some kind.
pub trait Classify<T> {
    fn classify(self, kind: Failure) -> anyhow::Result<T>;
}

impl<T> Classify<T> for anyhow::Result<T> {
    fn classify(self, kind: Failure) -> anyhow::Result<T> {
        self.map_err(|error| anyhow::Error::new(Classified { kind, error }))
    }
}

/// The exit code for a failed command.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.downcast_ref::<Classified>().map_or(1, |c| c.kind as i32)
}

/// Prints one document (a config, a service): indented JSON, or YAML.
pub(crate) fn print_document(output: Output, value: &serde_json::Value) {
    match output {
        Output::Yaml => print_value(output, value),
        _ => match serde_json::to_string_pretty(value) {
            Ok(text) => println!("{text}"),
            Err(_) => println!("{value}"),
        },
    }
}

/// Prints a value as JSON (one line) or YAML (one document); the same field names either way.
pub(crate) fn print_value(output: Output, value: &serde_json::Value) {
    match output {
        Output::Yaml => match serde_yaml_ng::to_string(value) {
            Ok(y) => print!("---\n{y}"),
            Err(_) => println!("{value}"),
        },
        _ => println!("{value}"),
    }
}

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// The node whose pinned dataplane to read (default: the hostname).
    #[arg(long = "node-name", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// bpffs directory the agent pins under.
    #[arg(long = "bpf-root", default_value = netdp_common::BPF_ROOT)]
    pub bpf_root: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

impl NodeArgs {
    fn pins(&self) -> Result<Pins> {
        Pins::new(&self.bpf_root, &node_name(self.node_name.as_deref())?)
    }
}

#[derive(Subcommand, Debug)]
pub enum EndpointCmd {
    /// Every pod on this node: address, veth, MACs.
    List(NodeArgs),
}

#[derive(Subcommand, Debug)]
pub enum RouteCmd {
    /// Every remote subnet: peer, next hop, mode, VTEP MAC, MTU.
    List(NodeArgs),
}

#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    List {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The subnet file of this node, to mark its own lease.
        #[arg(long = "subnet-file", default_value = "/run/flannel/subnet.env")]
        subnet_file: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
}

pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(header.iter().map(|s| s.to_string()).collect()));
    for r in rows {
        println!("{}", line(r.clone()));
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => crate::agent::run(*args).await,
        Command::Map(cmd) => maps::run(cmd),
        Command::Monitor(args) => monitor::run(args).await,
        Command::Status(args) => status::run(args),
        Command::Cluster(cmd) => cluster::run(cmd),
        Command::Check => check::run(),
        Command::InstallCni(args) => install_cni::run(args),
        Command::Counters(args) => {
            let map = CounterMap::open(&args.pins()?)?;
            let (counters, events) = (map.all()?, map.events()?);
            match args.output {
                Output::Json | Output::Yaml => {
                    let reasons = counters.iter().map(|c| {
                        json!({
                            "program": c.program.name(), "verdict": c.reason.verdict().name(),
                            "reason": c.reason.name(), "packets": c.packets, "bytes": c.bytes,
                        })
                    });
                    let events = events.iter().map(|e| {
                        json!({"program": e.program.name(), "event": e.event.name(), "count": e.count})
                    });
                    print_value(
                        args.output,
                        &json!(reasons.chain(events).collect::<Vec<_>>()),
                    )
                }
                Output::Table => {
                    print_table(
                        &["PROGRAM", "VERDICT", "REASON", "PACKETS", "BYTES"],
                        &counters
                            .iter()
                            .map(|c| {
                                vec![
                                    c.program.name().into(),
                                    c.reason.verdict().name().into(),
                                    c.reason.name().into(),
                                    c.packets.to_string(),
                                    c.bytes.to_string(),
                                ]
                            })
                            .collect::<Vec<_>>(),
                    );
                    if !events.is_empty() {
                        println!();
                        print_table(
                            &["PROGRAM", "EVENT", "COUNT"],
                            &events
                                .iter()
                                .map(|e| {
                                    vec![
                                        e.program.name().into(),
                                        e.event.name().into(),
                                        e.count.to_string(),
                                    ]
                                })
                                .collect::<Vec<_>>(),
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Endpoint(EndpointCmd::List(args)) => {
            let eps = EndpointMap::open(&args.pins()?)?.list();
            match args.output {
                Output::Json | Output::Yaml => print_value(
                    args.output,
                    &json!(
                        eps.iter()
                            .map(|(ip, e)| json!({
                                "ip": ip.to_string(), "ifindex": e.ifindex,
                                "mac": mac_string(&e.mac), "hostMac": mac_string(&e.host_mac),
                            }))
                            .collect::<Vec<_>>()
                    ),
                ),
                Output::Table => print_table(
                    &["POD IP", "IFINDEX", "POD MAC", "HOST MAC"],
                    &eps.iter()
                        .map(|(ip, e)| {
                            vec![
                                ip.to_string(),
                                e.ifindex.to_string(),
                                mac_string(&e.mac),
                                mac_string(&e.host_mac),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            Ok(())
        }
        Command::Route(RouteCmd::List(args)) => {
            let pins = args.pins()?;
            let routes = RouteMap::open(&pins)?.list();
            // Which cluster of the mesh leases each subnet: "local", or the other's id.
            let clusters = crate::dataplane::networks::NetworkSet::open(
                &pins,
                netdp_common::map_names::CLUSTER_NETWORKS,
            )
            .ok();
            let cluster = |n: &ipnetwork::Ipv4Network| match clusters
                .as_ref()
                .and_then(|c| c.lookup(n.network()))
            {
                Some(id) => id.to_string(),
                None => "local".to_string(),
            };
            let mode = netdp_common::route::mode::name;
            let vtep = |r: &netdp_common::route::Route| {
                if r.mode == netdp_common::route::mode::VXLAN {
                    mac_string(&r.vtep_mac)
                } else {
                    "-".to_string()
                }
            };
            let mac = |r: &netdp_common::route::Route| {
                if r.flags & netdp_common::route::flags::HAS_MAC != 0 {
                    mac_string(&r.dmac)
                } else {
                    "(kernel resolves)".to_string()
                }
            };
            match args.output {
                Output::Json | Output::Yaml => print_value(
                    args.output,
                    &json!(routes.iter().map(|(n, r)| json!({
                        "subnet": n.to_string(), "node": Ipv4Addr::from(r.node_ip).to_string(),
                        "nexthop": Ipv4Addr::from(r.nexthop).to_string(), "ifindex": r.ifindex,
                        "mode": mode(r.mode), "nexthopMac": mac(r), "vtepMac": vtep(r),
                        "mtu": r.mtu, "cluster": cluster(n), "port": r.port,
                        "fixedSourcePort": r.flags & netdp_common::route::flags::FIXED_SPORT != 0,
                    })).collect::<Vec<_>>()),
                ),
                Output::Table => print_table(
                    &[
                        "SUBNET",
                        "NODE",
                        "NEXTHOP",
                        "IFINDEX",
                        "MODE",
                        "NEXTHOP MAC",
                        "VTEP MAC",
                        "MTU",
                        "CLUSTER",
                    ],
                    &routes
                        .iter()
                        .map(|(n, r)| {
                            vec![
                                n.to_string(),
                                Ipv4Addr::from(r.node_ip).to_string(),
                                Ipv4Addr::from(r.nexthop).to_string(),
                                r.ifindex.to_string(),
                                mode(r.mode).into(),
                                mac(r),
                                vtep(r),
                                r.mtu.to_string(),
                                cluster(n),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            Ok(())
        }
        Command::Nat(cmd) => conntrack::nat(cmd),
        Command::Lease(LeaseCmd::List {
            etcd,
            subnet_file,
            output,
        }) => {
            let mut registry = Registry::new(etcd.connect().await?, etcd.prefix());
            let mine = SubnetFile::read_subnet(&subnet_file);
            let (leases, _) = registry.leases().await?;
            let mut rows = Vec::new();
            for l in &leases {
                let ttl = if l.etcd_lease == 0 {
                    None
                } else {
                    registry
                        .client
                        .lease_time_to_live(l.etcd_lease, None)
                        .await
                        .ok()
                        .map(|r| r.ttl())
                };
                rows.push((l, ttl));
            }
            match output {
                Output::Json | Output::Yaml => print_value(
                    output,
                    &json!(rows.iter().map(|(l, ttl)| json!({
                        "subnet": l.subnet.to_string(), "publicIP": l.attrs.public_ip.to_string(),
                        "backend": l.attrs.backend_type, "ttlSeconds": ttl,
                        "mine": mine == Some(l.subnet),
                    })).collect::<Vec<_>>()),
                ),
                Output::Table => print_table(
                    &["SUBNET", "PUBLIC IP", "BACKEND", "TTL", "THIS NODE"],
                    &rows
                        .iter()
                        .map(|(l, ttl)| {
                            vec![
                                l.subnet.to_string(),
                                l.attrs.public_ip.to_string(),
                                l.attrs.backend_type.clone(),
                                ttl.map(|t| format!("{t}s")).unwrap_or_else(|| "-".into()),
                                if mine == Some(l.subnet) {
                                    "*".into()
                                } else {
                                    String::new()
                                },
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            Ok(())
        }
        Command::Network(cmd) => network::run(cmd).await,
        Command::Service(cmd) => services::service(cmd).await,
        Command::Lb(cmd) => services::lb(cmd),
        Command::Conntrack(cmd) => conntrack::conntrack(cmd),
        Command::Teardown(args) => {
            let pins = args.pins()?;
            pins.remove_all()?;
            println!("removed {}", pins.dir().display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn flags_are_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    /// Every command and every flag says what it is for in `--help`.
    #[test]
    fn every_command_and_flag_has_a_help_line() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let here = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(here.clone());
                }
                for arg in sub.get_arguments() {
                    let id = arg.get_id().as_str();
                    if arg.get_help().is_none() && !["help", "version"].contains(&id) {
                        missing.push(format!("{here} --{id}"));
                    }
                }
                walk(sub, &here, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "netdp", &mut missing);
        assert!(missing.is_empty(), "no help line: {missing:#?}");
    }
}
