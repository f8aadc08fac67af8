//! The agent's service loop: services in etcd, or from the Kubernetes API
//! (`--service-source=kubernetes`), become this node's load-balancing maps.
//!
//! At start every service is read (etcd: the whole prefix at one revision, page by page;
//! the API: Services and EndpointSlices listed) and programmed, taking over whatever a
//! previous agent left in the maps; then a watch streams changes, resuming after breaks
//! and re-listing after compaction (etcd) or 410 Gone (the API). Changes that arrive
//! together are programmed together, and only services that changed are reprogrammed. A service that does
//! not parse, or whose addresses the node's [`AddressPolicy`] refuses (CVE-2020-8554), is
//! skipped with one log line; the others are unaffected.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    time::Instant,
};

use std::path::PathBuf;

use anyhow::{Result, bail};
use etcd_client::Client;
use ipnetwork::Ipv4Network;
use log::{debug, error, info, warn};
use netdp_common::capacity;
use tokio::sync::mpsc;

use super::{GATEWAY_PEER, gateway::ensure_host_route};
use crate::{
    dataplane::{
        Dataplane, MapSizes, Pins,
        conntrack::ConntrackMap,
        lb::{Lb, LbMaps, ServicePlan},
        maglev::is_prime,
        route::Underlay,
    },
    etcd::{
        decode::{decode, decode_all},
        watch::{Follow, PrefixWatch, Update, forward, list_pages},
    },
    k8s::{self, Changes},
    lease::Lease,
    netlink::Netlink,
    service::{
        self, AddressArgs, AddressPolicy, NodeInfo, ServiceDef, global::RemoteEndpoints,
        store::ServiceDecoder, validate::Forwarding,
    },
};

fn parse_prime(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !is_prime(n) || n < 1021 {
        return Err(format!(
            "{n} is not a prime of at least 1021 (Maglev needs a prime table size, e.g. 16381 or 65537)"
        ));
    }
    Ok(n)
}

/// Where services come from.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceSource {
    /// netdp's service documents under --service-prefix in etcd.
    Etcd,
    /// Services and EndpointSlices from the Kubernetes API (as kube-proxy reads them).
    Kubernetes,
}

/// A batch of service changes from either source.
pub enum ServiceUpdate {
    Etcd(Update),
    Api(Changes),
}

/// The agent's service flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceArgs {
    /// Where services come from: etcd (netdp's documents) or kubernetes (the API's
    /// Services and EndpointSlices, replacing kube-proxy).
    #[arg(long = "service-source", value_enum, default_value_t = ServiceSource::Etcd, env = "NETDP_SERVICE_SOURCE")]
    pub source: ServiceSource,
    /// etcd prefix of the services (one key per service, `<prefix><namespace>/<name>`).
    #[arg(
        long = "service-prefix",
        default_value = service::DEFAULT_PREFIX,
        env = "NETDP_SERVICE_PREFIX"
    )]
    pub service_prefix: String,
    /// Capacity of the frontend map (service address, port, protocol combinations).
    #[arg(long = "lb-frontend-map-size", default_value_t = capacity::FRONTENDS)]
    pub frontends: u32,
    /// Capacity of the backend map (endpoint slots of all services together).
    #[arg(long = "lb-backend-map-size", default_value_t = capacity::BACKENDS)]
    pub backends: u32,
    /// Number of Maglev tables (services using Maglev, plus spares for updates).
    #[arg(long = "maglev-tables", default_value_t = capacity::MAGLEV_TABLES)]
    pub maglev_tables: u32,
    /// Entries per Maglev table (a prime).
    #[arg(long = "maglev-table-size", default_value_t = netdp_common::lb::MAGLEV_TABLE_SIZE, value_parser = parse_prime)]
    pub maglev_table_size: u32,
    /// Capacity of the session affinity map.
    #[arg(long = "affinity-map-size", default_value_t = capacity::AFFINITY)]
    pub affinity: u32,
    /// cgroup (v2) whose sockets get services translated at connect time; only sockets in
    /// the agent's network namespace are touched (default: the cgroup2 root, found at
    /// /sys/fs/cgroup or /sys/fs/cgroup/unified; "none" turns it off).
    #[arg(long = "cgroup-root", env = "NETDP_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// How node ports, external and load-balancer IPs reach backends on other nodes,
    /// unless a service's `netdp.io/forwarding-mode` annotation says: snat (replies come
    /// back through this node) or dsr (direct server return: the backend's node answers
    /// the client, over the tunnel's backends vxlan, ipip and udp).
    #[arg(long = "lb-mode", value_enum, default_value_t = Forwarding::Snat, env = "NETDP_LB_MODE")]
    pub lb_mode: Forwarding,
    #[command(flatten)]
    pub addresses: AddressArgs,
}

impl ServiceArgs {
    pub fn map_sizes(&self, sizes: &mut MapSizes) {
        sizes.frontends = self.frontends;
        sizes.backends = self.backends;
        sizes.maglev_tables = self.maglev_tables;
        sizes.maglev_table_size = self.maglev_table_size;
        sizes.affinity = self.affinity;
        sizes.affinity_backends = self.affinity;
    }
}

/// A batch this large (services changed at once) leaves the allocator's free memory to be
/// handed back: decoding and planning it held several times what stays.
const BULK: usize = 1000;

/// What the service loop needs to know about the node.
pub struct Host<'a> {
    pub nl: &'a Netlink,
    /// The node's name (as endpoints name it).
    pub node: &'a str,
    pub underlay: &'a Underlay,
    pub lease: &'a Lease,
    /// The cluster's pod network.
    pub network: Ipv4Network,
    /// The network config's ServiceNetwork.
    pub service_network: Option<Ipv4Network>,
    /// Node addresses the leases name: ours and every routed peer's PublicIP.
    pub lease_ips: &'a [Ipv4Addr],
    /// The node's zone, for endpoints' topology hints.
    pub zone: Option<&'a str>,
}

impl Host<'_> {
    /// The node's address in its own pod subnet (the pods' gateway): where flows that must
    /// return through this node are source-NATed to.
    fn gateway(&self) -> Ipv4Addr {
        self.lease.gateway()
    }

    /// Who this node is for services: its name, the addresses node ports listen on (its
    /// underlay addresses and its gateway address), its pod subnet.
    async fn info(&self) -> NodeInfo {
        let mut addresses: Vec<Ipv4Addr> = self
            .nl
            .ipv4_addrs(self.underlay.link.index)
            .await
            .unwrap_or_default()
            .iter()
            .map(|a| a.ip())
            .collect();
        addresses.push(self.underlay.addr.ip());
        addresses.push(self.gateway());
        addresses.sort();
        addresses.dedup();
        NodeInfo {
            name: self.node.to_string(),
            addresses,
            subnet: self.lease.subnet,
            zone: self.zone.map(String::from),
            forwarding: Forwarding::Snat,
        }
    }
}

impl Host<'_> {
    /// What this node holds service addresses to (`node`: its [`Host::info`]).
    fn policy(&self, args: &AddressArgs, node: &NodeInfo) -> AddressPolicy {
        let mut policy = AddressPolicy::new(args, None, node.addresses.iter().copied());
        policy.pod_network = Some(self.network);
        if policy.service_range.is_none() {
            policy.service_range = self.service_network.map(|r| (r, "ServiceNetwork"));
        }
        policy.node_ips.extend(self.lease_ips.iter().copied());
        policy
    }
}

/// The plan of one service, if its addresses pass `policy`; endpoints the policy refuses
/// are left out. What is refused is logged once (in `refused`, by service), naming the
/// service and the field.
pub(super) fn checked_plan(
    policy: &AddressPolicy,
    node: &NodeInfo,
    refused: &mut HashMap<String, String>,
    remote: &RemoteEndpoints,
    id: &str,
    def: &ServiceDef,
) -> Option<ServicePlan> {
    let mut say = |why: String| {
        if refused.get(id) != Some(&why) {
            warn!("{why}");
            refused.insert(id.to_string(), why);
        }
    };
    if let Err(why) = policy.check(def) {
        say(format!("service {id} not programmed: {why}"));
        return None;
    }
    let skipped = policy.refused_endpoints(def);
    if skipped.is_empty() {
        if refused.remove(id).is_some() {
            info!("service {id}: its addresses are allowed now; programming it");
        }
        return plan_with(remote, def, node);
    }
    // By address: slices' endpoints are merged, so an index would name no field.
    let lines: Vec<String> = (skipped.iter())
        .map(|(_, why)| format!("endpoint {why}"))
        .collect();
    say(format!(
        "service {id}: {}; those endpoints skipped, the rest programmed",
        lines.join("; ")
    ));
    let mut def = def.clone();
    def.endpoints = (def.endpoints.into_iter().enumerate())
        .filter(|(i, _)| !skipped.iter().any(|(s, _)| s == i))
        .map(|(_, e)| e)
        .collect();
    plan_with(remote, &def, node)
}

/// The plan of `def`, with the other clusters' endpoints if it is global (they were
/// checked against their own cluster's Network: [`RemoteEndpoints::set`]).
fn plan_with(remote: &RemoteEndpoints, def: &ServiceDef, node: &NodeInfo) -> Option<ServicePlan> {
    match remote.merged(def) {
        Some(merged) => service::plan(&merged, node),
        None => service::plan(def, node),
    }
}

/// The cgroup2 directory the socket programs attach to.
fn cgroup_root(args: &ServiceArgs) -> Result<Option<PathBuf>> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let is_cgroup2 = |p: &std::path::Path| {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
            .unwrap_or(false)
    };
    match &args.cgroup_root {
        Some(p) if p.as_os_str() == "none" => Ok(None),
        Some(p) => {
            if !is_cgroup2(p) {
                bail!("--cgroup-root {} is not a cgroup2 directory", p.display());
            }
            Ok(Some(p.clone()))
        }
        None => Ok(["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .map(PathBuf::from)
            .find(|p| is_cgroup2(p))),
    }
}

/// The services of the cluster as this node programs them.
pub struct Services {
    pub(super) lb: Lb,
    pub(super) node: NodeInfo,
    addresses: AddressArgs,
    pub(super) policy: AddressPolicy,
    /// Services the policy refused, with why (logged once each).
    pub(super) refused: HashMap<String, String>,
    decoder: ServiceDecoder,
    pub(super) defs: HashMap<String, ServiceDef>,
    /// The other clusters' endpoints of global services (`agent/global.rs`).
    pub(super) remote: RemoteEndpoints,
}

impl Services {
    /// Services programmed and the backend slots they use, for the metrics.
    pub fn programmed(&self) -> (usize, u64) {
        (self.lb.len(), self.lb.backend_slots().0)
    }

    /// Sets up the node's side (the path from the node into the pod network, the socket
    /// programs), reads every service from the source and programs them, adopting what is
    /// already in the maps. Returns the stream of changes that follow.
    pub async fn start(
        args: &ServiceArgs,
        dp: &mut Dataplane,
        pins: &Pins,
        etcd: Option<Client>,
        kube: Option<kube::Client>,
        host: Host<'_>,
    ) -> Result<(Self, mpsc::Receiver<ServiceUpdate>)> {
        ensure_host_route(host.nl, host.network, host.lease).await?;
        dp.attach_host(pins, GATEWAY_PEER)?;
        let mut lb = Lb::new(LbMaps::take(dp)?, args.maglev_table_size)?;
        lb.set_config(host.gateway(), netns_cookie())?;
        attach_sockets(args, dp, pins)?;
        let mut node = host.info().await;
        node.forwarding = args.lb_mode;
        let policy = host.policy(&args.addresses, &node);
        let mut refused = HashMap::new();
        let mut decoder = ServiceDecoder::new(&args.service_prefix);
        let remote = RemoteEndpoints::default();

        let started = Instant::now();
        let (defs, updates) = match (args.source, etcd, kube) {
            (ServiceSource::Etcd, Some(etcd), _) => list_etcd(etcd, &mut decoder).await?,
            (ServiceSource::Kubernetes, _, Some(kube)) => list_api(kube).await?,
            (source, ..) => bail!("no client for the service source {source:?}"),
        };
        let listed = started.elapsed();
        let plans: Vec<(String, ServicePlan)> = defs
            .iter()
            .filter_map(|(id, d)| {
                checked_plan(&policy, &node, &mut refused, &remote, id, d).map(|p| (id.clone(), p))
            })
            .collect();
        let stats = lb.adopt(plans);
        crate::util::release_free_memory();
        info!(
            "read {} services from {} in {listed:.1?}",
            defs.len(),
            match args.source {
                ServiceSource::Etcd => "etcd",
                ServiceSource::Kubernetes => "the Kubernetes API",
            }
        );
        lb.log_stats("programmed", &stats, started.elapsed());
        let s = Services {
            lb,
            node,
            addresses: args.addresses.clone(),
            policy,
            refused,
            decoder,
            defs,
            remote,
        };
        Ok((s, updates))
    }

    /// Keeps up with the node: the host route, its addresses and subnet (reprogramming
    /// node ports if they changed), the node addresses the leases name (re-checking every
    /// service if they changed), and the source-NAT address.
    pub async fn resync(&mut self, host: Host<'_>) {
        if let Err(e) = ensure_host_route(host.nl, host.network, host.lease).await {
            error!("{e:#}");
        }
        let mut node = host.info().await;
        node.forwarding = self.node.forwarding;
        let policy = host.policy(&self.addresses, &node);
        self.set_node(node, policy);
        if let Err(e) = self.lb.set_config(host.gateway(), netns_cookie()) {
            error!("{e:#}");
        }
    }

    /// Applies watch output, all of it in one batch. UDP flows to endpoints that are gone
    /// are dropped from `conntrack`.
    pub fn apply(&mut self, updates: Vec<ServiceUpdate>, conntrack: &mut ConntrackMap) {
        let started = Instant::now();
        let mut gone_udp = HashMap::new();
        let mut batch = Vec::new();
        for (id, def) in self.changes(updates) {
            // A re-list, or an event that changed nothing the dataplane uses.
            if self.defs.get(&id) == def.as_ref() {
                continue;
            }
            let old = match &def {
                Some(d) => self.defs.insert(id.clone(), d.clone()),
                None => self.defs.remove(&id),
            };
            if old.is_none() && def.is_none() {
                continue;
            }
            if let Some(gone) = old.and_then(|o| udp_endpoints_gone(&o, def.as_ref())) {
                gone_udp.insert(id.clone(), gone);
            }
            let plan = match &def {
                Some(d) => checked_plan(
                    &self.policy,
                    &self.node,
                    &mut self.refused,
                    &self.remote,
                    &id,
                    d,
                ),
                None => {
                    self.refused.remove(&id);
                    None
                }
            };
            batch.push((id, plan));
        }
        if batch.is_empty() {
            return;
        }
        // Service ids as they were before the batch (the flows carry those).
        let gone = GoneUdp::by_service_id(&self.lb, gone_udp);
        let bulk = batch.len() >= BULK;
        let stats = self.lb.apply(batch);
        self.lb.log_stats("updated", &stats, started.elapsed());
        gone.purge(conntrack);
        if bulk {
            crate::util::release_free_memory();
        }
    }

    /// What the updates change, service by service (`None`: no longer served).
    fn changes(&mut self, updates: Vec<ServiceUpdate>) -> Changes {
        let mut changed = HashMap::new();
        for update in updates {
            match update {
                ServiceUpdate::Etcd(u) => {
                    decode(&mut self.decoder, u).merge_into(&mut changed, self.defs.keys().cloned())
                }
                ServiceUpdate::Api(c) => changed.extend(c),
            }
        }
        changed
    }

    /// Reprograms every service if the node's addresses or subnet, or what its policy
    /// allows, changed.
    fn set_node(&mut self, node: NodeInfo, policy: AddressPolicy) {
        if node == self.node && policy == self.policy {
            return;
        }
        // Leases' addresses changing (nodes coming and going: at thousands of nodes, many a
        // second) matter only to services that name one of them.
        let changed = (node == self.node)
            .then(|| policy.node_ips_changed(&self.policy))
            .flatten();
        if node.zone != self.node.zone {
            info!(
                "node zone now {:?}: reprogramming services (topology hints)",
                node.zone
            );
        } else if node != self.node {
            info!(
                "node addresses now {:?} (subnet {}): reprogramming services",
                node.addresses, node.subnet
            );
        } else if changed.is_none() {
            info!("the service address policy changed: re-checking services");
        }
        self.node = node;
        self.policy = policy;
        let started = Instant::now();
        let batch: Vec<_> = self
            .defs
            .iter()
            .filter(|(_, d)| {
                changed
                    .as_ref()
                    .is_none_or(|ips| AddressPolicy::touches(d, ips))
            })
            .map(|(id, d)| {
                let plan = checked_plan(
                    &self.policy,
                    &self.node,
                    &mut self.refused,
                    &self.remote,
                    id,
                    d,
                );
                (id.clone(), plan)
            })
            .collect();
        if let Some(ips) = &changed {
            let (n, all) = (ips.len(), self.policy.node_ips.len());
            if batch.is_empty() {
                debug!(
                    "{n} node addresses of the leases changed ({all} now); no service names them"
                );
            } else {
                info!(
                    "{n} node addresses of the leases changed ({all} now): re-checking the {} \
                     services that name them",
                    batch.len()
                );
            }
        }
        if batch.is_empty() {
            return;
        }
        let stats = self.lb.apply(batch);
        self.lb.log_stats("reprogrammed", &stats, started.elapsed());
    }
}

/// The ready endpoints of a UDP service `old` that its new version `new` (`None`: the
/// service is gone) no longer has, if there are any.
fn udp_endpoints_gone(old: &ServiceDef, new: Option<&ServiceDef>) -> Option<HashSet<[u8; 4]>> {
    if !old
        .ports
        .iter()
        .any(|p| p.proto == service::validate::IPPROTO_UDP)
    {
        return None;
    }
    let keep: HashSet<Ipv4Addr> = new
        .iter()
        .flat_map(|d| d.ready_endpoints().map(|e| e.ip))
        .collect();
    let gone: HashSet<[u8; 4]> = old
        .ready_endpoints()
        .map(|e| e.ip)
        .filter(|ip| !keep.contains(ip))
        .map(|ip| ip.octets())
        .collect();
    (!gone.is_empty()).then_some(gone)
}

/// Endpoints whose UDP flows go, by the service id the flows carry.
struct GoneUdp {
    endpoints: HashMap<u32, HashSet<[u8; 4]>>,
    names: HashMap<u32, String>,
}

impl GoneUdp {
    /// `gone` (by service name) by the ids services have in `lb` now.
    fn by_service_id(lb: &Lb, gone: HashMap<String, HashSet<[u8; 4]>>) -> Self {
        let mut names = HashMap::new();
        let endpoints = gone
            .into_iter()
            .filter_map(|(id, gone)| {
                let sid = lb.service_id(&id)?;
                names.insert(sid, id);
                Some((sid, gone))
            })
            .collect();
        GoneUdp { endpoints, names }
    }

    /// Drops the flows from `conntrack`, in one pass for all services.
    fn purge(self, conntrack: &mut ConntrackMap) {
        for (sid, n) in conntrack.purge_udp_backends(&self.endpoints) {
            if let Some(id) = self.names.get(&sid).filter(|_| n > 0) {
                info!("service {id}: dropped {n} UDP conntrack entries of removed endpoints");
            }
        }
    }
}

/// Attaches the socket programs, so the node's own sockets reach services directly.
fn attach_sockets(args: &ServiceArgs, dp: &mut Dataplane, pins: &Pins) -> Result<()> {
    match cgroup_root(args)? {
        Some(cg) => {
            dp.attach_sockets(pins, &cg)?;
            info!(
                "node sockets reach services directly (socket programs on cgroup {})",
                cg.display()
            );
        }
        None => warn!(
            "no cgroup2 hierarchy for the socket programs: the node itself cannot reach services"
        ),
    }
    Ok(())
}

/// Service changes under the service prefix, on a connection of their own.
struct ServiceFollow {
    watch: PrefixWatch,
    client: Client,
    prefix: String,
}

impl Follow for ServiceFollow {
    type Update = ServiceUpdate;

    async fn next(&mut self) -> Result<ServiceUpdate> {
        let update = self.watch.next(&mut self.client, &self.prefix).await?;
        Ok(ServiceUpdate::Etcd(update))
    }

    fn revision(&self) -> i64 {
        self.watch.revision()
    }
}

/// Every service under the decoder's prefix, and the watch that follows from the
/// listing's revision (a broken watch resumes where it left off).
async fn list_etcd(
    mut client: Client,
    decoder: &mut ServiceDecoder,
) -> Result<(HashMap<String, ServiceDef>, mpsc::Receiver<ServiceUpdate>)> {
    let prefix = decoder.prefix().to_string();
    // Decoded page by page: 100,000 services' documents are never held at once.
    let mut defs = HashMap::new();
    let revision = list_pages(&mut client, &prefix, |kvs| {
        defs.extend(decode_all(decoder, &kvs));
    })
    .await?;
    let (tx, rx) = mpsc::channel(256);
    let watch = PrefixWatch::new("service", revision);
    tokio::spawn(forward(
        ServiceFollow {
            watch,
            client,
            prefix,
        },
        tx,
    ));
    Ok((defs, rx))
}

/// Every service the Kubernetes API lists, once Services and EndpointSlices are both
/// listed, and the watch that follows.
async fn list_api(
    client: kube::Client,
) -> Result<(HashMap<String, ServiceDef>, mpsc::Receiver<ServiceUpdate>)> {
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(k8s::watch_services(client, tx, ServiceUpdate::Api));
    let first = match rx.recv().await {
        Some(ServiceUpdate::Api(changes)) => changes,
        _ => anyhow::bail!("the Kubernetes API watch ended before listing"),
    };
    let defs = first
        .into_iter()
        .filter_map(|(id, d)| d.map(|d| (id, d)))
        .collect();
    Ok((defs, rx))
}

/// The cookie of the network namespace the agent runs in (SO_NETNS_COOKIE).
pub fn netns_cookie() -> u64 {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a plain socket we close below; getsockopt writes at most `len` bytes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return 0;
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let ret = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        );
        libc::close(fd);
        if ret == 0 { cookie } else { 0 }
    }
}
