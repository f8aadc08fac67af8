//! `netdp agent`: leases this node's subnet, keeps the dataplane's maps in step with the
//! other nodes' leases, and renews the lease until stopped.
//!
//! Stopping the agent leaves the dataplane running (programs, links and maps are pinned);
//! the next agent adopts them.
//!
//! [`run`] starts up in phases: the underlay (`find_underlay`), the node's lease
//! (`lease_subnet`), the programs (`load_dataplane`), services, and routes to everybody
//! else's leases; then `Agent::serve` follows the watches (`Watches`) until stopped.
use std::{collections::HashMap, net::Ipv4Addr, sync::Arc, time::SystemTime};

use anyhow::{Context, Result, anyhow, bail};
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
        counters::CounterMap,
        networks::NetworkSet,
        node, node_name,
        peer::PeerMap,
        route::{RouteMap, Underlay},
    },
    lease::{Lease, LeaseAttrs, LeaseOptions, LeaseSet, PeerLease, Registry, WatchUpdate},
    netlink::Netlink,
    observe::{self, Health, Metrics},
    subnet_file::SubnetFile,
};

mod args;
pub mod conntrack;
mod gateway;
mod gateways;
mod global;
mod keepalive;
mod leases;
mod mesh;
mod routes;
pub mod services;
mod subnets;
pub mod underlay;
pub mod xdp;

pub use args::{AgentArgs, Listen};
use gateway::ensure_gateway;
pub use gateway::{GATEWAY_DEV, GATEWAY_PEER};
use leases::{check_config, renew, write_subnet_file};
pub use subnets::KubeSubnetArgs;
use subnets::Subnets;

/// What the agent keeps in step.
struct State {
    config: NetworkConfig,
    config_rev: i64,
    underlay: Underlay,
    lease: Lease,
    peers: HashMap<Ipv4Network, PeerLease>,
    /// Which of `peers` are routed (`lease/validate.rs`).
    admission: LeaseSet,
    routes: RouteMap,
    peer_map: PeerMap,
    nl: Netlink,
    /// The underlay next hop of each peer reached through a router, as the kernel's
    /// routes had it at the last resync.
    nexthops: HashMap<Ipv4Addr, Ipv4Addr>,
    /// Peers already reported as unreachable by the backend.
    reported_unreachable: std::collections::HashSet<Ipv4Addr>,
    /// The node's topology zone (--node-zone, else its Node's label).
    zone: Option<String>,
    /// The other clusters whose leases are routed here too.
    mesh: mesh::Mesh,
    /// This node's PublicIP is not its own: its tunnels' source ports must be fixed.
    behind_nat: bool,
    /// Peers behind a NAT, as their keepalives arrive, and the ports learned from them.
    nat_peers: keepalive::NatPeers,
    nat_ports: keepalive::NatPorts,
    /// The peers this node's keepalives go to (PublicIP, tunnel port), when behind a NAT.
    keepalive_to: tokio::sync::watch::Sender<Vec<(Ipv4Addr, u16)>>,
    /// This node's name, and its cluster's active gateway (gateway mode).
    node: String,
    local_gateway: Option<gateways::Gateway>,
    /// The other clusters' gateways this node's gateway keepalives go to, when active.
    gateway_keepalive_to: tokio::sync::watch::Sender<Vec<(Ipv4Addr, u16)>>,
}

impl State {
    /// What the service loop needs to know about the node.
    fn host<'a>(&'a self, node: &'a str) -> services::Host<'a> {
        services::Host {
            nl: &self.nl,
            node,
            underlay: &self.underlay,
            lease: &self.lease,
            network: self.config.network,
            service_network: self.config.service_network,
            lease_ips: self.admission.public_ips(),
            zone: self.zone.as_deref(),
        }
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(args: AgentArgs) -> Result<()> {
    let node = node_name(args.node_name.as_deref())?;
    let pins = Pins::new(&args.bpf_root, &node)?;
    // Before anything is leased: a bpffs the CNI plugin can't see is a setup error.
    pins.create_dirs()?;
    // Probes get answers from the start: live, not ready until the first sync.
    let health = Arc::new(Health::new());
    observe::server::spawn(args.healthz_addr.0, None, health.clone(), None).await?;
    let nl = Netlink::connect()?;
    let (underlay, public_ip) = find_underlay(&nl, &args).await?;

    let (etcd, kube) = connect(&args).await?;
    let mut subnets = match (&etcd, &kube) {
        (_, Some(kube)) if args.kube.enabled => Subnets::kube(kube.clone(), &node, &args.kube),
        (Some(etcd), _) => Subnets::Etcd(Registry::new(etcd.clone(), args.etcd.prefix())),
        _ => bail!("no source of leases: neither etcd nor --kube-subnet-mgr"),
    };
    let (mut config, config_rev) = subnets.config().await?;
    let vtep = node::vtep_mac(underlay.link.mac);
    let (lease, attrs) = lease_subnet(
        &mut subnets,
        &args,
        &mut config,
        &underlay,
        public_ip,
        vtep,
        &node,
    )
    .await?;

    health.set_lease(Some(SystemTime::now() + args.lease_ttl));
    let mut dp = load_dataplane(&args, &pins, &config, &underlay, vtep)?;
    health.set_attached();
    // A monitor that died without saying so would leave drop events on for good.
    crate::dataplane::monitor::reset(&pins)?;
    let metrics = Arc::new(Metrics::new(
        CounterMap::from_map(dp.take_map(netdp_common::map_names::COUNTERS)?)?,
        health.clone(),
    ));
    observe::server::spawn(
        None,
        args.metrics_addr.0,
        health.clone(),
        Some(metrics.clone()),
    )
    .await?;
    let routes = RouteMap::from_map(dp.take_map(netdp_common::map_names::ROUTES)?)?;
    let peer_map = PeerMap::from_map(dp.take_map(netdp_common::map_names::PEERS)?)?;
    let conntrack = ConntrackMap::take(&mut dp)?;
    let cluster_networks = {
        let name = netdp_common::map_names::CLUSTER_NETWORKS;
        NetworkSet::from_map(dp.take_map(name)?, name)?
    };
    let (mesh, cluster_updates) = mesh::Mesh::start(&config, cluster_networks, args.etcd.timeout)?;
    let nat_peers =
        keepalive::NatPeers::from_map(dp.take_map(netdp_common::map_names::NAT_PEERS)?)?;
    let behind_nat = lease.attrs.public_ip != underlay.addr.ip();
    let (keepalive_to, keepalive_peers) = tokio::sync::watch::channel(Vec::new());
    let (gateway_keepalive_to, gateway_peers) = tokio::sync::watch::channel(Vec::new());
    let local_gateway = follow_gateway(&args, &subnets, &mesh, &lease, &node, gateway_peers);
    if behind_nat
        && config.backend != crate::config::Backend::HostGw
        && !args.nat_keepalive.is_zero()
    {
        tokio::spawn(keepalive::send(
            config.backend.clone(),
            underlay.addr.ip(),
            args.nat_keepalive,
            keepalive_peers,
        ));
    }
    ensure_gateway(&nl, &lease).await?;
    let mut state = State {
        config,
        config_rev,
        underlay,
        lease,
        peers: HashMap::new(),
        admission: subnets.lease_set(),
        routes,
        peer_map,
        nl,
        nexthops: Default::default(),
        reported_unreachable: Default::default(),
        zone: node_zone(&args, kube.as_ref(), &node).await,
        mesh,
        behind_nat,
        nat_peers,
        nat_ports: Default::default(),
        keepalive_to,
        node: node.clone(),
        local_gateway: None,
        gateway_keepalive_to,
    };
    // Leases first: services are checked against the node addresses they name.
    let (leases, lease_updates, zone_updates) = subnets.follow(&state.lease).await?;
    state.peers = leases.into_iter().map(|l| (l.subnet, l)).collect();
    state.sync_routes().await?;
    health.set_leases_synced();

    let (services, service_updates) = services::Services::start(
        &args.services,
        &mut dp,
        &pins,
        etcd,
        kube,
        state.host(&node),
    )
    .await?;
    health.set_services_synced();
    println!(
        "netdp agent ready: node {node} subnet {}",
        state.lease.subnet
    );

    let watches = Watches {
        leases: lease_updates,
        services: service_updates,
        zone: zone_updates,
        clusters: cluster_updates,
        gateway: local_gateway,
    };
    let agent = Agent {
        opts: args.lease_options(),
        args: &args,
        node: &node,
        subnets,
        state,
        services,
        conntrack,
        attrs,
        health,
        metrics,
    };
    agent.publish();
    agent.serve(watches).await?;
    info!("stopping; the dataplane stays in place for the next agent");
    // The programs and maps loaded above stay loaded until here.
    drop(dp);
    Ok(())
}

/// The API clients the flags need: etcd for leases (unless --kube-subnet-mgr) and for
/// services from etcd; the Kubernetes API for either from there.
async fn connect(args: &AgentArgs) -> Result<(Option<etcd_client::Client>, Option<kube::Client>)> {
    let from_api = args.services.source == services::ServiceSource::Kubernetes;
    let etcd = if !args.kube.enabled || !from_api {
        Some(args.etcd.connect().await?)
    } else {
        None
    };
    let kube = if args.kube.enabled || from_api {
        Some(crate::k8s::client(args.kubeconfig.as_deref()).await?)
    } else {
        None
    };
    Ok((etcd, kube))
}

/// The node's zone: --node-zone, else its Node's `topology.kubernetes.io/zone` label when
/// the Kubernetes API is at hand.
async fn node_zone(args: &AgentArgs, kube: Option<&kube::Client>, node: &str) -> Option<String> {
    if let Some(zone) = &args.node_zone {
        return Some(zone.clone());
    }
    let zone = crate::k8s::nodes::zone(kube?.clone(), node).await;
    match &zone {
        Some(z) => info!("node {node} is in zone {z}"),
        None => info!("node {node} has no zone label: topology hints are not used"),
    }
    zone
}

/// Follows this cluster's active gateway, when a cluster is reached through gateways, and
/// stands for it with `--gateway` (sending the other clusters' gateways keepalives from
/// the gateway port, to `gateway_peers`, while active). Gateways live in etcd: with
/// `--kube-subnet-mgr` there are none.
fn follow_gateway(
    args: &AgentArgs,
    subnets: &Subnets,
    mesh: &mesh::Mesh,
    lease: &Lease,
    node: &str,
    gateway_peers: tokio::sync::watch::Receiver<Vec<(Ipv4Addr, u16)>>,
) -> Option<tokio::sync::watch::Receiver<Option<gateways::Gateway>>> {
    if !mesh.has_gateway_clusters() && !args.gateway.candidate {
        return None;
    }
    let Subnets::Etcd(registry) = subnets else {
        warn!("gateway mode needs the leases in etcd: no gateway is followed");
        return None;
    };
    let me = args.gateway.candidate.then(|| {
        let endpoint = args
            .gateway
            .gateway_endpoint
            .unwrap_or(std::net::SocketAddrV4::new(
                lease.attrs.public_ip,
                args.gateway.gateway_port,
            ));
        let me = gateways::Gateway {
            node: node.to_string(),
            public_ip: lease.attrs.public_ip,
            subnet: lease.subnet,
            endpoint,
        };
        (me, args.gateway.gateway_ttl)
    });
    if me.is_some() {
        tokio::spawn(keepalive::send(
            crate::config::Backend::Udp {
                port: args.gateway.gateway_port,
            },
            std::net::Ipv4Addr::UNSPECIFIED,
            // Gateways are few: keepalives every 2 s let the other side learn a NAT's
            // port within seconds of a gateway becoming active (or of a failover).
            args.nat_keepalive
                .min(std::time::Duration::from_secs(2))
                .max(std::time::Duration::from_millis(200)),
            gateway_peers,
        ));
    }
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(gateways::follow(
        registry.client.clone(),
        registry.prefix().to_string(),
        me,
        tx,
    ));
    Some(rx)
}

/// The underlay interface (--iface, else the one holding the default route), this node's
/// address on it, and the address other nodes reach it at.
async fn find_underlay(nl: &Netlink, args: &AgentArgs) -> Result<(Underlay, Ipv4Addr)> {
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
    Ok((Underlay { link, addr }, public_ip))
}

/// Leases this node's subnet for `public_ip` and publishes it in the subnet file. Returns
/// the lease and the attributes it was taken with (renewals use them again).
async fn lease_subnet(
    subnets: &mut Subnets,
    args: &AgentArgs,
    config: &mut NetworkConfig,
    underlay: &Underlay,
    public_ip: Ipv4Addr,
    vtep: [u8; 6],
    node: &str,
) -> Result<(Lease, LeaseAttrs)> {
    let link = &underlay.link;
    // Naming the node lets it tell its own lease from one merely claiming its PublicIP.
    let attrs = LeaseAttrs::new(
        public_ip,
        config.backend.type_name(),
        node::backend_data(&config.backend, vtep),
    )
    .with_node(node);
    let hint = SubnetFile::read_subnet(&args.subnet_file);
    let lease = subnets
        .acquire(config, &attrs, hint, &args.lease_options())
        .await?;
    info!(
        "node {node}: leased {} for {} ({} backend, underlay {} {}, pod MTU {}{}{})",
        lease.subnet,
        lease.attrs.public_ip,
        config.backend.type_name(),
        link.name,
        underlay.addr,
        config.pod_mtu(link.mtu),
        match config.backend {
            crate::config::Backend::Vxlan { .. } =>
                format!(", VTEP MAC {}", crate::util::mac_string(&vtep)),
            _ => String::new(),
        },
        if args.ip_masq { ", masquerading" } else { "" },
    );
    warn_dsr_limits(args, &config.backend);
    write_subnet_file(args, config, &lease, link.mtu)?;
    Ok((lease, attrs))
}

/// Direct server return needs a tunnel to the backend's node to carry its option: says
/// where `--lb-mode=dsr` falls back to source NAT.
fn warn_dsr_limits(args: &AgentArgs, backend: &crate::config::Backend) {
    use crate::{config::Backend, service::validate::Forwarding};
    if args.services.lb_mode != Forwarding::Dsr {
        return;
    }
    match backend {
        Backend::HostGw => warn!(
            "--lb-mode=dsr: the host-gw backend has no tunnel to carry the backend to its \
             node, so node ports source-NAT to remote endpoints as with snat"
        ),
        Backend::Vxlan {
            direct_routing: true,
            ..
        }
        | Backend::Ipip {
            direct_routing: true,
        } => info!(
            "--lb-mode=dsr: peers on this node's subnet are routed directly \
             (DirectRouting) and get source NAT; the others direct server return"
        ),
        _ => {}
    }
}

/// Loads the programs with the agent's map sizes and this node's settings, and installs
/// them on the underlay (adopting what a previous agent left).
fn load_dataplane(
    args: &AgentArgs,
    pins: &Pins,
    config: &NetworkConfig,
    underlay: &Underlay,
    vtep: [u8; 6],
) -> Result<Dataplane> {
    let link = &underlay.link;
    let mut sizes = MapSizes {
        endpoints: args.endpoint_map_size,
        routes: args.route_map_size,
        ..Default::default()
    };
    args.services.map_sizes(&mut sizes);
    args.conntrack.map_sizes(&mut sizes);
    let mut node_config = node::node_config(config, underlay, vtep, args.ip_masq);
    if args.ip_masq {
        args.underlay.masquerade_ports(&mut node_config)?;
    }
    args.underlay.node_flags(&mut node_config);
    args.underlay.check(config)?;
    args.xdp.node_flags(&mut node_config);
    if args.gateway.candidate {
        node_config.flags |= netdp_common::node::flags::GATEWAY;
        node_config.gateway_port = args.gateway.gateway_port;
    }
    args.xdp.check(config)?;
    let mut dp = Dataplane::load_for(crate::ebpf_object(), Some(pins), &sizes, &node_config)?;
    args.underlay.program(&mut dp)?;
    let installed = dp.install(pins, &link.name)?;
    args.xdp.install(&mut dp, pins, &link.name)?;
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
    Ok(dp)
}

/// The watches of leases and services, each a task of its own streaming into its channel.
struct Watches {
    leases: mpsc::Receiver<WatchUpdate>,
    services: mpsc::Receiver<services::ServiceUpdate>,
    /// This node's zone label, when its Node is followed (--kube-subnet-mgr).
    zone: Option<tokio::sync::watch::Receiver<Option<String>>>,
    /// The other clusters' configs and leases (`mesh`).
    clusters: mpsc::Receiver<mesh::ClusterUpdate>,
    /// This cluster's active gateway, when a cluster is reached through gateways.
    gateway: Option<tokio::sync::watch::Receiver<Option<gateways::Gateway>>>,
}

/// The running agent: what it follows and keeps in step.
struct Agent<'a> {
    args: &'a AgentArgs,
    node: &'a str,
    subnets: Subnets,
    state: State,
    services: services::Services,
    conntrack: ConntrackMap,
    /// This node's lease attributes.
    attrs: LeaseAttrs,
    opts: LeaseOptions,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl Agent<'_> {
    /// Follows leases and services, renews the lease, resyncs and collects conntrack
    /// garbage, until SIGINT or SIGTERM.
    async fn serve(mut self, mut watches: Watches) -> Result<()> {
        let mut gc = tokio::time::interval(self.args.conntrack.gc_interval);
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let mut next_renew = Instant::now() + self.opts.renew_every();
        let mut resync = tokio::time::interval(self.args.resync_interval);
        // Peers behind a NAT announce themselves by keepalive: a second at most before
        // this node sends to where their NAT maps.
        let mut nat = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            self.health.beat();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = sigterm.recv() => break,
                Some(update) = watches.leases.recv() => {
                    // Whatever else has arrived goes in the same batch: at thousands of
                    // nodes, leases change faster than routes could be recomputed once per
                    // change.
                    let mut batch = vec![update];
                    while let Ok(u) = watches.leases.try_recv() {
                        batch.push(u);
                    }
                    let started = Instant::now();
                    if self.follow_leases(batch).await {
                        next_renew = Instant::now();
                    }
                    self.applied("leases", started);
                }
                _ = sleep_until(next_renew) => next_renew = self.renew_lease().await,
                Some(update) = watches.clusters.recv() => {
                    let mut batch = vec![update];
                    while let Ok(u) = watches.clusters.try_recv() {
                        batch.push(u);
                    }
                    let started = Instant::now();
                    self.follow_clusters(batch).await;
                    self.applied("clusters", started);
                }
                Some(update) = watches.services.recv() => {
                    // Whatever else has arrived goes in the same batch.
                    let mut batch = vec![update];
                    while let Ok(u) = watches.services.try_recv() {
                        batch.push(u);
                    }
                    let started = Instant::now();
                    self.services.apply(batch, &mut self.conntrack);
                    self.applied("services", started);
                }
                _ = resync.tick() => {
                    if let Some(zone) = watches.zone.as_mut().filter(|z| z.has_changed().unwrap_or(false)) {
                        let now = zone.borrow_and_update().clone();
                        // --node-zone wins over the label.
                        if self.args.node_zone.is_none() {
                            self.state.zone = now;
                        }
                    }
                    self.resync().await
                }
                Ok(()) = async {
                    match watches.gateway.as_mut() {
                        Some(g) => g.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = watches.gateway.as_mut().and_then(|g| g.borrow_and_update().clone());
                    self.state.local_gateway = now;
                    let started = Instant::now();
                    if let Err(e) = self.state.sync_routes().await {
                        error!("programming routes: {e:#}");
                    }
                    self.applied("gateway", started);
                }
                _ = nat.tick() => {
                    let ports = self.state.nat_peers.ports();
                    if ports != self.state.nat_ports {
                        info!("peers behind a NAT (address: port it maps): {ports:?}");
                        self.state.nat_ports = ports;
                        if let Err(e) = self.state.sync_routes().await {
                            error!("programming routes: {e:#}");
                        }
                    }
                }
                _ = gc.tick() => {
                    conntrack::gc(&mut self.conntrack);
                    self.metrics.conntrack_entries.set(self.conntrack.len() as i64);
                    self.metrics.conntrack_half_open.set(self.conntrack.half_open() as i64);
                    self.metrics.masquerade_flows.set(self.conntrack.masqueraded().len() as i64);
                }
            }
        }
        if self.args.gateway.candidate
            && let Subnets::Etcd(registry) = &self.subnets
        {
            gateways::resign(&mut registry.client.clone(), registry.prefix(), self.node).await;
        }
        Ok(())
    }

    /// A change of `what` is in the maps: its latency and what is programmed now.
    fn applied(&self, what: &'static str, started: Instant) {
        self.metrics
            .apply_duration
            .get_or_create(&[("change", what)])
            .observe(started.elapsed().as_secs_f64());
        self.publish();
    }

    /// What is programmed, for the metrics.
    fn publish(&self) {
        let (services, backends) = self.services.programmed();
        self.metrics.services.set(services as i64);
        self.metrics.service_backends.set(backends as i64);
        self.metrics.routes.set(self.state.routes.count() as i64);
        self.health.set_clusters(
            self.state
                .mesh
                .status(&self.state.config, self.state.local_gateway.as_ref()),
        );
    }

    /// Applies a batch of the other clusters' updates and reroutes once if any of their
    /// routes may have changed.
    async fn follow_clusters(&mut self, batch: Vec<mesh::ClusterUpdate>) {
        let state = &mut self.state;
        let mut changed = false;
        for update in batch {
            if let mesh::Event::Services { changes, resync } = update.event {
                let network = state.mesh.network_of(&update.cluster);
                self.services
                    .apply_remote(&update.cluster, network, changes, resync);
                continue;
            }
            let cluster = update.cluster.clone();
            let (joined, routes) = state.mesh.apply(&state.config, update);
            if state.mesh.network_of(&cluster).is_none() {
                // Refused: none of its endpoints either.
                self.services.apply_remote(&cluster, None, Vec::new(), true);
            }
            changed |= routes;
            // The node's own traffic to the cluster's pods goes through the gateway
            // device as to this cluster's.
            if let Some(network) = joined
                && let Err(e) = gateway::ensure_host_route(&state.nl, network, &state.lease).await
            {
                warn!("routing the node's traffic to {network}: {e:#}");
            }
        }
        if changed && let Err(e) = state.sync_routes().await {
            error!("programming routes: {e:#}");
        }
    }

    /// Applies a batch of lease changes and reroutes once. `true` when this node's own
    /// lease is gone (to be re-acquired at once).
    async fn follow_leases(&mut self, batch: Vec<WatchUpdate>) -> bool {
        let state = &mut self.state;
        for update in batch {
            update.apply_to(&mut state.peers);
        }
        let own = state.peers.get(&state.lease.subnet);
        let gone = own.is_none_or(|l| l.attrs.public_ip != state.lease.attrs.public_ip);
        if gone {
            warn!(
                "this node's lease {} is gone; acquiring a new one",
                state.lease.subnet
            );
        }
        if let Err(e) = state.sync_routes().await {
            error!("programming routes: {e:#}");
        }
        // The node addresses services are checked against come and go with the leases.
        self.services.resync(self.state.host(self.node)).await;
        gone
    }

    /// Renews the lease (or re-acquires it); returns when to do so next.
    async fn renew_lease(&mut self) -> Instant {
        let renewed = renew(
            &mut self.subnets,
            &mut self.state,
            self.args,
            &self.attrs,
            &self.opts,
        )
        .await;
        match renewed {
            Ok(()) => {
                self.health
                    .set_lease(Some(SystemTime::now() + self.args.lease_ttl));
                Instant::now() + self.opts.renew_every()
            }
            Err(e) => {
                warn!(
                    "lease {}: {e:#}; retrying in {:?}",
                    self.state.lease.subnet, self.opts.retry_interval
                );
                Instant::now() + self.opts.retry_interval
            }
        }
    }

    /// Re-checks the network config, the routes (next-hop MACs) and the node's side of
    /// services.
    async fn resync(&mut self) {
        check_config(&mut self.subnets, &mut self.state).await;
        // Against the maps as they are, so what anyone else changed there is put right,
        // and with next hops looked up anew.
        self.state.routes.forget();
        self.state.peer_map.forget();
        self.state.nexthops.clear();
        if let Err(e) = self.state.sync_routes().await {
            error!("programming routes: {e:#}");
        }
        self.services.resync(self.state.host(self.node)).await;
    }
}
