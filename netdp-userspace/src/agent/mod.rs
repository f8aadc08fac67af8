//! `netdp agent`: leases this node's subnet, keeps the dataplane's maps in step with the
//! other nodes' leases, and renews the lease until stopped.
//!
//! Stopping the agent leaves the dataplane running (programs, links and maps are pinned);
//! the next agent adopts them.
use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::{Context, Result, anyhow};
use ipnetwork::Ipv4Network;
use log::{error, info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, sleep_until},
};

use crate::{
    config::NetworkConfig,
    dataplane::{
        Dataplane, MapSizes, Pins,
        conntrack::ConntrackMap,
        node, node_name,
        peer::PeerMap,
        route::{RouteMap, Underlay},
    },
    etcd::EtcdArgs,
    lease::{Lease, LeaseAttrs, LeaseOptions, PeerLease, Registry},
    netlink::Netlink,
    subnet_file::SubnetFile,
    util::parse_duration,
};

pub mod conntrack;
mod gateway;
mod leases;
mod routes;
pub mod services;

use gateway::ensure_gateway;
pub use gateway::{GATEWAY_DEV, GATEWAY_PEER};
use leases::{check_config, renew, watch_leases, write_subnet_file};

#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Underlay interface (default: the one holding the default route).
    #[arg(long)]
    pub iface: Option<String>,
    /// Address other nodes reach this one at (default: the first IPv4 address of --iface).
    #[arg(long = "public-ip")]
    pub public_ip: Option<Ipv4Addr>,
    /// Where to write the node's lease for the CNI plugin.
    #[arg(long = "subnet-file", default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,
    /// Name of this node; its pins live under <bpf-root>/<node-name>.
    #[arg(long = "node-name", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// bpffs directory for netdp's pinned objects.
    #[arg(long = "bpf-root", default_value = netdp_common::BPF_ROOT)]
    pub bpf_root: PathBuf,
    /// Masquerade pod traffic leaving the cluster Network.
    #[arg(long = "ip-masq")]
    pub ip_masq: bool,
    /// Lifetime of the subnet lease.
    #[arg(long = "subnet-lease-ttl", value_parser = parse_duration, default_value = "24h")]
    pub lease_ttl: Duration,
    /// Renew the lease this long before it expires.
    #[arg(long = "subnet-lease-renew-margin", value_parser = parse_duration, default_value = "60m")]
    pub renew_margin: Duration,
    /// Pause between failed renewals.
    #[arg(long = "subnet-lease-retry", value_parser = parse_duration, default_value = "1m")]
    pub retry_interval: Duration,
    /// Capacity of the endpoint map.
    #[arg(long = "endpoint-map-size", default_value_t = netdp_common::capacity::ENDPOINTS)]
    pub endpoint_map_size: u32,
    /// Capacity of the route map.
    #[arg(long = "route-map-size", default_value_t = netdp_common::capacity::ROUTES)]
    pub route_map_size: u32,
    /// How often to re-check next-hop MACs and the network config.
    #[arg(long = "resync-interval", value_parser = parse_duration, default_value = "5s")]
    pub resync_interval: Duration,
    #[command(flatten)]
    pub services: services::ServiceArgs,
    #[command(flatten)]
    pub conntrack: conntrack::ConntrackArgs,
}

impl AgentArgs {
    fn lease_options(&self) -> LeaseOptions {
        LeaseOptions {
            ttl: self.lease_ttl,
            renew_margin: self.renew_margin,
            retry_interval: self.retry_interval,
        }
    }
}

/// What the agent keeps in step.
struct State {
    config: NetworkConfig,
    config_rev: i64,
    underlay: Underlay,
    lease: Lease,
    peers: HashMap<Ipv4Network, PeerLease>,
    routes: RouteMap,
    peer_map: PeerMap,
    nl: Netlink,
    /// Peers already reported as unreachable by the backend.
    reported_unreachable: std::collections::HashSet<Ipv4Addr>,
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(args: AgentArgs) -> Result<()> {
    let node = node_name(args.node_name.as_deref())?;
    let pins = Pins::new(&args.bpf_root, &node)?;
    // Before anything is leased: a bpffs the CNI plugin can't see is a setup error.
    pins.create_dirs()?;
    let nl = Netlink::connect()?;
    let link = match &args.iface {
        Some(name) => nl.require_link(name).await?,
        None => nl
            .default_route_link()
            .await?
            .ok_or_else(|| anyhow!("no --iface given and no default route to pick one from"))?,
    };
    let addrs = nl.ipv4_addrs(link.index).await?;
    // Tunnels start at (and masquerading uses) an address of the interface itself; the
    // public IP may be another node's view of it (a NAT gateway's address).
    let addr = args
        .public_ip
        .and_then(|ip| addrs.iter().find(|a| a.ip() == ip))
        .or(addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("interface {} has no IPv4 address", link.name))?;
    let public_ip = args.public_ip.unwrap_or(addr.ip());
    let underlay = Underlay {
        link: link.clone(),
        addr,
    };

    let client = args.etcd.connect().await?;
    let mut registry = Registry::new(client, args.etcd.prefix());
    let (config, config_rev) = registry.config().await?;
    let opts = args.lease_options();
    let vtep = node::vtep_mac(link.mac);
    let attrs = LeaseAttrs::new(
        public_ip,
        config.backend.type_name(),
        node::backend_data(&config.backend, vtep),
    );
    let hint = SubnetFile::read_subnet(&args.subnet_file);
    let lease = registry
        .acquire(&config, &attrs, hint, &opts)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    info!(
        "node {node}: leased {} for {public_ip} ({} backend, underlay {} {}, pod MTU {}{}{})",
        lease.subnet,
        config.backend.type_name(),
        link.name,
        addr,
        config.pod_mtu(link.mtu),
        match config.backend {
            crate::config::Backend::Vxlan { .. } =>
                format!(", VTEP MAC {}", crate::util::mac_string(&vtep)),
            _ => String::new(),
        },
        if args.ip_masq { ", masquerading" } else { "" },
    );
    write_subnet_file(&args, &config, &lease, link.mtu)?;

    let mut sizes = MapSizes {
        endpoints: args.endpoint_map_size,
        routes: args.route_map_size,
        ..Default::default()
    };
    args.services.map_sizes(&mut sizes);
    args.conntrack.map_sizes(&mut sizes);
    let node_config = node::node_config(&config, &underlay, vtep, args.ip_masq);
    let mut dp = Dataplane::load_for(crate::ebpf_object(), Some(&pins), &sizes, &node_config)?;
    let installed = dp.install(&pins, &link.name)?;
    info!(
        "dataplane at {}: underlay {} {}, {} pod links adopted, {} stale removed",
        pins.dir().display(),
        link.name,
        if installed.netdev_adopted {
            "adopted"
        } else {
            "attached"
        },
        installed.pod_links_adopted,
        installed.pod_links_removed
    );
    let routes = RouteMap::from_map(dp.take_map(netdp_common::map_names::ROUTES)?)?;
    let peer_map = PeerMap::from_map(dp.take_map(netdp_common::map_names::PEERS)?)?;
    let mut conntrack = ConntrackMap::from_map(dp.take_map(netdp_common::map_names::CONNTRACK)?)?;
    ensure_gateway(&nl, &lease).await?;

    let host = services::Host {
        nl: &nl,
        node: &node,
        underlay: &underlay,
        lease: &lease,
        network: config.network,
    };
    let (mut services, service_rev) = services::Services::start(
        &args.services,
        &mut dp,
        &pins,
        registry.client.clone(),
        host,
    )
    .await?;

    let (leases, revision) = registry.leases().await?;
    let mut state = State {
        config,
        config_rev,
        underlay,
        lease,
        peers: leases.into_iter().map(|l| (l.subnet, l)).collect(),
        routes,
        peer_map,
        nl,
        reported_unreachable: Default::default(),
    };
    state.sync_routes().await?;
    println!(
        "netdp agent ready: node {node} subnet {}",
        state.lease.subnet
    );

    let (tx, mut updates) = mpsc::channel(64);
    tokio::spawn(watch_leases(
        Registry::new(registry.client.clone(), registry.prefix()),
        revision,
        tx,
    ));
    let (tx, mut service_updates) = mpsc::channel(256);
    tokio::spawn(services::watch_services(
        registry.client.clone(),
        args.services.service_prefix.clone(),
        service_rev,
        tx,
    ));
    let mut gc = tokio::time::interval(args.conntrack.gc_interval);

    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut next_renew = Instant::now() + opts.renew_every();
    let mut resync = tokio::time::interval(args.resync_interval);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            Some(update) = updates.recv() => {
                update.apply_to(&mut state.peers);
                let own = state.peers.get(&state.lease.subnet);
                if own.is_none_or(|l| l.attrs.public_ip != state.lease.attrs.public_ip) {
                    warn!("this node's lease {} is gone; acquiring a new one", state.lease.subnet);
                    next_renew = Instant::now();
                }
                if let Err(e) = state.sync_routes().await {
                    error!("programming routes: {e:#}");
                }
            }
            _ = sleep_until(next_renew) => {
                next_renew = match renew(&mut registry, &mut state, &args, &attrs, &opts).await {
                    Ok(()) => Instant::now() + opts.renew_every(),
                    Err(e) => {
                        warn!("lease {}: {e:#}; retrying in {:?}", state.lease.subnet, opts.retry_interval);
                        Instant::now() + opts.retry_interval
                    }
                };
            }
            Some(update) = service_updates.recv() => {
                // Whatever else has arrived goes in the same batch.
                let mut batch = vec![update];
                while let Ok(u) = service_updates.try_recv() {
                    batch.push(u);
                }
                services.apply(batch, &mut conntrack);
            }
            _ = resync.tick() => {
                check_config(&mut registry, &mut state).await;
                if let Err(e) = state.sync_routes().await {
                    error!("programming routes: {e:#}");
                }
                services.resync(services::Host {
                    nl: &state.nl,
                    node: &node,
                    underlay: &state.underlay,
                    lease: &state.lease,
                    network: state.config.network,
                }).await;
            }
            _ = gc.tick() => conntrack::gc(&mut conntrack),
        }
    }
    info!("stopping; the dataplane stays in place for the next agent");
    Ok(())
}
