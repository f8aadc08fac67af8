//! The other clusters of a mesh (`Clusters` in the network config), as ClusterMesh's
//! direct mode has them: each is followed through its own etcd, read only; its network
//! config is checked against this cluster's and the other clusters' (a Network of its own,
//! the same backend on the wire, an identity of its own), and its leases, validated
//! against its own config, become routes and peers here exactly as local leases do.
//! An etcd that goes away leaves what was learned from it in place until it answers again.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use ipnetwork::Ipv4Network;
use log::{error, info, warn};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use etcd_client::Client;

use super::gateways::{self, Gateway};
use crate::{
    config::{Backend, ClusterMode, NetworkConfig, RemoteCluster},
    dataplane::networks::NetworkSet,
    etcd::{
        EtcdArgs,
        decode::{Decoded, Event as DecodedEvent, decode, decode_all},
        watch::{PrefixWatch, list_pages},
    },
    lease::{LeaseSet, LeaseWatch, PeerLease, Registry, WatchUpdate},
    service::{self, ServiceDef, store::ServiceDecoder},
};

/// What a follower says about its cluster.
pub(super) enum Event {
    /// Its network config, read at each (re)connection.
    Config(NetworkConfig),
    Leases(WatchUpdate),
    /// Its global services changed (`None`: gone, or no longer global), or were all
    /// listed (`resync`).
    Services {
        changes: Vec<(String, Option<ServiceDef>)>,
        resync: bool,
    },
    /// Its active gateway (gateway mode), as its `<prefix>/gateway` has it.
    Gateway(Option<Gateway>),
    /// Its etcd stopped answering (what was learned stays).
    Down(String),
}

pub(super) struct ClusterUpdate {
    pub(super) cluster: String,
    pub(super) event: Event,
}

/// Where a cluster stands.
#[derive(Debug, Clone, PartialEq)]
enum Standing {
    Connecting,
    Connected,
    /// Its etcd is gone; its routes stay as last learned.
    Down(String),
    /// Its config conflicts with this mesh: nothing of it is routed.
    Refused(String),
}

impl Standing {
    fn name(&self) -> &'static str {
        match self {
            Standing::Connecting => "connecting",
            Standing::Connected => "connected",
            Standing::Down(_) => "down",
            Standing::Refused(_) => "refused",
        }
    }
}

/// One other cluster: its declaration, its accepted config and leases.
struct Remote {
    decl: RemoteCluster,
    standing: Standing,
    since: SystemTime,
    /// Its config, once accepted; its leases are routed only then.
    config: Option<NetworkConfig>,
    leases: HashMap<Ipv4Network, PeerLease>,
    admission: LeaseSet,
    /// Leases routed at the last sync.
    routed: usize,
    /// Its active gateway, as last read.
    gateway: Option<Gateway>,
}

/// The other clusters this node routes to.
pub(super) struct Mesh {
    remotes: BTreeMap<String, Remote>,
    /// CLUSTER_NETWORKS: the accepted clusters' Networks, which the programs count as the
    /// cluster's own.
    networks: NetworkSet,
    /// Remote leases already reported for a PublicIP another lease has.
    clashes: HashSet<Ipv4Network>,
}

impl Mesh {
    /// Starts following every cluster `config` declares; their updates arrive on the
    /// receiver. `networks` is the CLUSTER_NETWORKS map.
    pub(super) fn start(
        config: &NetworkConfig,
        mut networks: NetworkSet,
        timeout: Duration,
    ) -> Result<(Mesh, mpsc::Receiver<ClusterUpdate>)> {
        let (tx, rx) = mpsc::channel(64);
        if config.clusters.is_empty() {
            // A node that left its mesh: nothing counts as another cluster's any more.
            networks.set(&Default::default())?;
        }
        let mut remotes = BTreeMap::new();
        for decl in &config.clusters {
            info!(
                "cluster {}: following its leases at {} (prefix {})",
                decl.name,
                decl.endpoints.join(","),
                decl.prefix
            );
            tokio::spawn(follow(decl.clone(), timeout, tx.clone()));
            remotes.insert(
                decl.name.clone(),
                Remote {
                    admission: LeaseSet::new(&format!("{}:{}", decl.name, decl.prefix)),
                    decl: decl.clone(),
                    standing: Standing::Connecting,
                    since: SystemTime::now(),
                    config: None,
                    leases: HashMap::new(),
                    routed: 0,
                    gateway: None,
                },
            );
        }
        let mesh = Mesh {
            remotes,
            networks,
            clashes: HashSet::new(),
        };
        Ok((mesh, rx))
    }

    /// Applies one update. Returns the Network of a cluster just accepted (the node
    /// routes its own traffic there too), and whether routes may have changed.
    pub(super) fn apply(
        &mut self,
        local: &NetworkConfig,
        update: ClusterUpdate,
    ) -> (Option<Ipv4Network>, bool) {
        let others: Vec<(String, NetworkConfig)> = self
            .remotes
            .iter()
            .filter(|(n, _)| **n != update.cluster)
            .filter_map(|(n, r)| r.config.clone().map(|c| (n.clone(), c)))
            .collect();
        let Some(remote) = self.remotes.get_mut(&update.cluster) else {
            return (None, false);
        };
        let name = update.cluster;
        match update.event {
            Event::Config(config) => match check(local, &name, &config, &others) {
                Ok(()) => {
                    let network = config.network;
                    if remote.config.as_ref().map(|c| c.network) != Some(network) {
                        info!(
                            "cluster {name} (id {}): Network {network}, {} backend",
                            config.identity.as_ref().map_or(0, |i| i.id),
                            config.backend.type_name()
                        );
                    }
                    remote.config = Some(config);
                    remote.set(Standing::Connected);
                    self.sync_networks();
                    (Some(network), true)
                }
                Err(why) => {
                    if remote.standing != Standing::Refused(why.clone()) {
                        error!("cluster {name} refused: {why}; none of its leases are routed");
                    }
                    remote.set(Standing::Refused(why));
                    let had = remote.config.take().is_some();
                    if had {
                        self.sync_networks();
                    }
                    (None, had)
                }
            },
            Event::Leases(update) => {
                update.apply_to(&mut remote.leases);
                (None, remote.config.is_some())
            }
            // The agent hands these to its services (`agent/global.rs`).
            Event::Services { .. } => (None, false),
            Event::Gateway(g) => {
                let changed = remote.gateway != g;
                if changed {
                    match &g {
                        Some(g) => info!(
                            "cluster {name}: active gateway {} at {}",
                            g.node, g.endpoint
                        ),
                        None => warn!("cluster {name} has no active gateway"),
                    }
                }
                remote.gateway = g;
                (None, changed && remote.decl.mode == ClusterMode::Gateway)
            }
            Event::Down(why) => {
                if !matches!(remote.standing, Standing::Down(_) | Standing::Refused(_)) {
                    warn!(
                        "cluster {name}: {why}; keeping its {} routes as last learned",
                        remote.routed
                    );
                }
                if !matches!(remote.standing, Standing::Refused(_)) {
                    remote.set(Standing::Down(why));
                }
                (None, false)
            }
        }
    }

    /// The Network of cluster `name`, while it is accepted.
    pub(super) fn network_of(&self, name: &str) -> Option<Ipv4Network> {
        Some(self.remotes.get(name)?.config.as_ref()?.network)
    }

    /// Makes CLUSTER_NETWORKS hold exactly the accepted clusters' Networks, each labelled
    /// with its cluster's id.
    fn sync_networks(&mut self) {
        let accepted: Vec<(Ipv4Network, u32)> = self
            .remotes
            .values()
            .filter_map(|r| r.config.as_ref())
            .map(|c| {
                (
                    c.network,
                    c.identity.as_ref().map_or(0, |i| u32::from(i.id)),
                )
            })
            .collect();
        let set = accepted.iter().map(|(n, _)| *n).collect();
        let written = self.networks.set(&set).and_then(|()| {
            accepted
                .iter()
                .try_for_each(|(n, id)| self.networks.insert(n, *id))
        });
        if let Err(e) = written {
            error!("programming the other clusters' networks: {e:#}");
        }
    }

    /// The leases of the other clusters to route: each validated against its own
    /// cluster's config, none with a PublicIP some node already has (`taken`).
    pub(super) fn routed(&mut self, taken: &HashSet<Ipv4Addr>) -> Vec<&PeerLease> {
        let mut out = Vec::new();
        let mut seen = taken.clone();
        for (name, remote) in self.remotes.iter_mut() {
            let Some(config) = remote
                .config
                .as_ref()
                .filter(|_| remote.decl.mode == ClusterMode::Direct)
            else {
                remote.routed = 0;
                continue;
            };
            let admitted = remote.admission.admit(config, None, remote.leases.values());
            remote.routed = 0;
            for lease in admitted {
                if !seen.insert(lease.attrs.public_ip) {
                    if self.clashes.insert(lease.subnet) {
                        warn!(
                            "cluster {name}: lease {} is not routed: PublicIP {} is another node's",
                            lease.subnet, lease.attrs.public_ip
                        );
                    }
                    continue;
                }
                remote.routed += 1;
                out.push(lease);
            }
        }
        out
    }

    /// The clusters reached through gateways: their Network and active gateway.
    pub(super) fn gateway_clusters(&self) -> Vec<(Ipv4Network, Option<Gateway>)> {
        (self.remotes.values())
            .filter(|r| r.decl.mode == ClusterMode::Gateway)
            .filter_map(|r| Some((r.config.as_ref()?.network, r.gateway.clone())))
            .collect()
    }

    /// Whether any cluster is reached through gateways.
    pub(super) fn has_gateway_clusters(&self) -> bool {
        self.remotes
            .values()
            .any(|r| r.decl.mode == ClusterMode::Gateway)
    }

    /// Every cluster, for `/status` and `netdp cluster list`.
    pub(super) fn status(&self, local: &NetworkConfig, gateway: Option<&Gateway>) -> Value {
        let own = local.identity.as_ref().map(|i| {
            json!({"name": i.name, "id": i.id, "network": local.network.to_string(),
                   "local": true, "state": "local",
                   "gateway": gateway.map(|g| json!({"node": g.node, "endpoint": g.endpoint.to_string()}))})
        });
        let remotes = self.remotes.values().map(|r| {
            let since = r
                .since
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            json!({
                "name": r.decl.name,
                "id": r.config.as_ref().and_then(|c| c.identity.as_ref()).map(|i| i.id),
                "network": r.config.as_ref().map(|c| c.network.to_string()),
                "endpoints": r.decl.endpoints,
                "local": false,
                "state": r.standing.name(),
                "since": since,
                "error": match &r.standing {
                    Standing::Down(e) | Standing::Refused(e) => Some(e.clone()),
                    _ => None,
                },
                "leases": r.leases.len(),
                "routes": r.routed,
                "mode": match r.decl.mode { ClusterMode::Direct => "direct", ClusterMode::Gateway => "gateway" },
                "gateway": r.gateway.as_ref().map(|g| json!({"node": g.node, "endpoint": g.endpoint.to_string()})),
            })
        });
        Value::Array(own.into_iter().chain(remotes).collect())
    }
}

impl Remote {
    fn set(&mut self, standing: Standing) {
        if std::mem::discriminant(&self.standing) != std::mem::discriminant(&standing) {
            self.since = SystemTime::now();
        }
        self.standing = standing;
    }
}

/// Whether two backends put the same packets on the wire (a node of one cluster must
/// decapsulate what a node of the other sends).
fn same_wire(a: &Backend, b: &Backend) -> bool {
    match (a, b) {
        (Backend::HostGw, Backend::HostGw) | (Backend::Ipip { .. }, Backend::Ipip { .. }) => true,
        (
            Backend::Vxlan { vni, port, .. },
            Backend::Vxlan {
                vni: v2, port: p2, ..
            },
        ) => vni == v2 && port == p2,
        (Backend::Udp { port }, Backend::Udp { port: p2 }) => port == p2,
        _ => false,
    }
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// Why cluster `name`'s `config` can't join this mesh, naming both sides of a conflict.
fn check(
    local: &NetworkConfig,
    name: &str,
    config: &NetworkConfig,
    others: &[(String, NetworkConfig)],
) -> Result<(), String> {
    let own = local.identity.as_ref().map_or("this cluster", |i| &i.name);
    let Some(id) = &config.identity else {
        return Err("its network config has no ClusterName and ClusterID".into());
    };
    if id.name != name {
        return Err(format!(
            "its etcd holds cluster {:?}, not {name:?} as declared",
            id.name
        ));
    }
    if local.identity.as_ref().is_some_and(|i| i.id == id.id) {
        return Err(format!("ClusterID {} is also cluster {own}'s", id.id));
    }
    let (net, svc) = (config.network, config.service_network);
    let mut mine = vec![(own.to_string(), "Network", local.network)];
    mine.extend(
        local
            .service_network
            .map(|s| (own.to_string(), "ServiceNetwork", s)),
    );
    for (other, c) in others {
        if c.identity.as_ref().is_some_and(|i| i.id == id.id) {
            return Err(format!("ClusterID {} is also cluster {other}'s", id.id));
        }
        mine.push((other.clone(), "Network", c.network));
    }
    for (other, what, theirs) in &mine {
        if overlaps(net, *theirs) {
            return Err(format!(
                "cluster {name}'s Network {net} overlaps cluster {other}'s {what} {theirs}"
            ));
        }
        if let Some(s) = svc.filter(|s| *what == "Network" && overlaps(*s, *theirs)) {
            return Err(format!(
                "cluster {name}'s ServiceNetwork {s} overlaps cluster {other}'s Network {theirs}"
            ));
        }
    }
    if !same_wire(&local.backend, &config.backend) {
        return Err(format!(
            "it uses the {} backend ({:?}) and cluster {own} {} ({:?}): direct routing needs \
             the same encapsulation on both sides",
            config.backend.type_name(),
            config.backend,
            local.backend.type_name(),
            local.backend
        ));
    }
    Ok(())
}

/// How often a followed cluster's network config is read again: a cluster refused for
/// its config joins once the config is put right.
const CONFIG_EVERY: Duration = Duration::from_secs(10);

/// Follows one cluster's config and leases, reconnecting with a backoff for as long as
/// the agent runs.
async fn follow(decl: RemoteCluster, timeout: Duration, tx: mpsc::Sender<ClusterUpdate>) {
    let args = EtcdArgs {
        endpoints: decl.endpoints.clone(),
        prefix: decl.prefix.clone(),
        cafile: decl.ca_file.as_ref().map(Into::into),
        certfile: decl.cert_file.as_ref().map(Into::into),
        keyfile: decl.key_file.as_ref().map(Into::into),
        username: None,
        password: None,
        timeout,
    };
    const FIRST: Duration = Duration::from_millis(200);
    let mut backoff = FIRST;
    let sender = Sender {
        tx,
        cluster: decl.name.clone(),
    };
    loop {
        let mut synced = false;
        let mut poller = None;
        let why = async {
            let client = args.connect().await?;
            let mut registry = Registry::new(client.clone(), &decl.prefix);
            let (config, config_rev) = registry.config().await?;
            if !sender.send(Event::Config(config)).await {
                return Ok(());
            }
            let (leases, revision) = registry.leases().await?;
            let all = leases.into_iter().map(|l| (l.subnet, l)).collect();
            if !sender.send(Event::Leases(WatchUpdate::Resync(all))).await {
                return Ok(());
            }
            synced = true;
            let configs = Registry::new(client.clone(), &decl.prefix);
            let prefix = decl
                .service_prefix
                .as_deref()
                .unwrap_or(service::DEFAULT_PREFIX);
            poller = Some((
                tokio::spawn(poll_config(configs, config_rev, sender.clone())),
                tokio::spawn(follow_services(client, prefix.to_string(), sender.clone())),
            ));
            let mut watch = LeaseWatch::new(revision);
            loop {
                let update = watch.next(&mut registry).await?;
                if !sender.send(Event::Leases(update)).await {
                    return Ok(());
                }
            }
        }
        .await;
        if let Some((config, services)) = poller {
            config.abort();
            services.abort();
        }
        let why: anyhow::Error = match why {
            Ok(()) => return, // the agent is stopping
            Err(e) => e,
        };
        if synced {
            backoff = FIRST;
        }
        if !sender.send(Event::Down(format!("{why:#}"))).await {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Follows the cluster's global services: listed, then watched (a broken watch starts
/// over with a listing; the lease watch reports the etcd's state).
async fn follow_services(mut client: Client, prefix: String, sender: Sender) {
    let mut decoder = ServiceDecoder::new(&prefix);
    let global = |(id, d): (String, ServiceDef)| -> (String, Option<ServiceDef>) {
        let d = Some(d).filter(|d| d.global.is_some());
        (id, d)
    };
    loop {
        let listed = async {
            let mut all = Vec::new();
            let prefix = decoder.prefix().to_string();
            let revision = list_pages(&mut client, &prefix, |kvs| {
                all.extend(
                    decode_all(&mut decoder, &kvs)
                        .into_iter()
                        .map(global)
                        .filter(|(_, d)| d.is_some()),
                );
            })
            .await?;
            if !sender
                .send(Event::Services {
                    changes: all,
                    resync: true,
                })
                .await
            {
                return Ok(());
            }
            let mut watch = PrefixWatch::new("service", revision);
            loop {
                let update = watch.next(&mut client, &prefix).await?;
                let (changes, resync) = match decode(&mut decoder, update) {
                    Decoded::Events(events) => (
                        events
                            .into_iter()
                            .map(|e| match e {
                                DecodedEvent::Upsert(id, d) => global((id, d)),
                                DecodedEvent::Removed(id) => (id, None),
                            })
                            .collect(),
                        false,
                    ),
                    Decoded::Resync(all) => (all.into_iter().map(global).collect(), true),
                };
                if !sender.send(Event::Services { changes, resync }).await {
                    return Ok::<_, anyhow::Error>(());
                }
            }
        }
        .await;
        match listed {
            Ok(()) => return,
            Err(e) => {
                log::debug!("global services of cluster {}: {e:#}", sender.cluster);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Sends a cluster's updates to the agent.
#[derive(Clone)]
struct Sender {
    tx: mpsc::Sender<ClusterUpdate>,
    cluster: String,
}

impl Sender {
    /// `false` once the agent has stopped listening.
    async fn send(&self, event: Event) -> bool {
        let cluster = self.cluster.clone();
        self.tx.send(ClusterUpdate { cluster, event }).await.is_ok()
    }
}

/// Reads the cluster's active gateway every [`gateways::POLL`] and its network config
/// every [`CONFIG_EVERY`], passing on what changed (errors are the lease watch's to
/// report).
async fn poll_config(mut registry: Registry, mut revision: i64, sender: Sender) {
    let prefix = registry.prefix().to_string();
    let mut gateway = None;
    let mut since_config = Duration::ZERO;
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(gateways::POLL).await;
            since_config += gateways::POLL;
        }
        first = false;
        if let Ok(g) = gateways::read(&mut registry.client, &prefix).await
            && g != gateway
        {
            gateway = g.clone();
            if !sender.send(Event::Gateway(g)).await {
                return;
            }
        }
        if since_config < CONFIG_EVERY {
            continue;
        }
        since_config = Duration::ZERO;
        match registry.config().await {
            Ok((config, rev)) if rev != revision => {
                revision = rev;
                if !sender.send(Event::Config(config)).await {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                revision = -1;
                if !sender.send(Event::Down(format!("{e:#}"))).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    fn east() -> NetworkConfig {
        config(
            r#"{"Network": "10.1.0.0/16", "ServiceNetwork": "10.96.0.0/16",
                "Backend": {"Type": "vxlan"}, "ClusterName": "east", "ClusterID": 1,
                "Clusters": [{"Name": "west", "Endpoints": ["http://192.168.20.2:2379"]}]}"#,
        )
    }

    fn remote(name: &str, id: u8, network: &str, backend: &str) -> NetworkConfig {
        config(&format!(
            r#"{{"Network": "{network}", "Backend": {backend}, "ClusterName": "{name}", "ClusterID": {id}}}"#
        ))
    }

    #[test]
    fn a_cluster_joins_with_a_network_identity_and_wire_of_its_own() {
        let vxlan = r#"{"Type": "vxlan"}"#;
        let west = remote("west", 2, "10.2.0.0/16", vxlan);
        assert_eq!(check(&east(), "west", &west, &[]), Ok(()));
        let refused = |c: &NetworkConfig, others: &[(String, NetworkConfig)]| {
            check(&east(), "west", c, others).expect_err("refused")
        };
        let e = refused(&remote("west", 2, "10.1.128.0/17", vxlan), &[]);
        assert!(
            e.contains("west's Network 10.1.128.0/17 overlaps cluster east's Network 10.1.0.0/16"),
            "{e}"
        );
        let e = refused(&remote("west", 2, "10.96.0.0/12", vxlan), &[]);
        assert!(e.contains("overlaps cluster east's ServiceNetwork"), "{e}");
        let north = (
            "north".to_string(),
            remote("north", 3, "10.2.0.0/20", vxlan),
        );
        let e = refused(&west, std::slice::from_ref(&north));
        assert!(
            e.contains("overlaps cluster north's Network 10.2.0.0/20"),
            "{e}"
        );
        let e = refused(&remote("west", 1, "10.2.0.0/16", vxlan), &[]);
        assert!(e.contains("ClusterID 1 is also cluster east's"), "{e}");
        let e = refused(&remote("west", 3, "10.2.0.0/16", vxlan), &[north]);
        assert!(e.contains("ClusterID 3 is also cluster north's"), "{e}");
        let e = refused(&remote("south", 2, "10.2.0.0/16", vxlan), &[]);
        assert!(e.contains(r#"holds cluster "south""#), "{e}");
        let e = refused(
            &remote("west", 2, "10.2.0.0/16", r#"{"Type": "ipip"}"#),
            &[],
        );
        assert!(e.contains("ipip backend"), "{e}");
        let e = refused(
            &remote("west", 2, "10.2.0.0/16", r#"{"Type": "vxlan", "VNI": 7}"#),
            &[],
        );
        assert!(e.contains("same encapsulation"), "{e}");
        let e = refused(&config(r#"{"Network": "10.2.0.0/16"}"#), &[]);
        assert!(e.contains("no ClusterName"), "{e}");
        // DirectRouting is a node's choice, not the wire's.
        let direct = remote(
            "west",
            2,
            "10.2.0.0/16",
            r#"{"Type": "vxlan", "DirectRouting": true}"#,
        );
        assert_eq!(check(&east(), "west", &direct, &[]), Ok(()));
    }
}
