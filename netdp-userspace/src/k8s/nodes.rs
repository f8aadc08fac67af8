//! Subnets from Node objects, flanneld's `--kube-subnet-mgr`: kube-controller-manager
//! assigns each node's `spec.podCIDR`; the node publishes what its peers need in Flannel's
//! annotations (`flannel.alpha.coreos.com/public-ip`, `backend-type`, `backend-data`,
//! `kube-subnet-manager: "true"`), written through `nodes/status` as flanneld does, so a
//! netdp node and a flanneld node in one cluster read each other. The other Nodes become
//! peer leases, in the same model as etcd's ([`PeerLease`]).
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::{Result, anyhow, bail};
use ipnetwork::{IpNetwork, Ipv4Network};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use log::{info, warn};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::next_batch;
use crate::{
    etcd::decode::{Decoded, Event},
    lease::{Lease, LeaseAttrs, PeerLease, WatchUpdate},
    util::one_line,
};

/// flanneld's `--kube-annotation-prefix` default.
pub const DEFAULT_ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";

/// The annotation keys under one prefix.
#[derive(Debug, Clone)]
pub struct Annotations {
    pub backend_data: String,
    pub backend_type: String,
    pub kube_managed: String,
    pub public_ip: String,
    pub public_ip_overwrite: String,
}

impl Annotations {
    pub fn new(prefix: &str) -> Self {
        let key = |k: &str| format!("{}/{k}", prefix.trim_end_matches('/'));
        Annotations {
            backend_data: key("backend-data"),
            backend_type: key("backend-type"),
            kube_managed: key("kube-subnet-manager"),
            public_ip: key("public-ip"),
            public_ip_overwrite: key("public-ip-overwrite"),
        }
    }

    /// What a node with `attrs` publishes, as flanneld writes it (backend data as JSON
    /// text, `null` for host-gw).
    pub fn published(&self, attrs: &LeaseAttrs) -> BTreeMap<String, String> {
        let data = attrs.backend_data.clone().unwrap_or(Value::Null);
        BTreeMap::from([
            (self.backend_data.clone(), data.to_string()),
            (self.backend_type.clone(), attrs.backend_type.clone()),
            (self.kube_managed.clone(), "true".to_string()),
            (self.public_ip.clone(), attrs.public_ip.to_string()),
        ])
    }
}

fn name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("")
}

fn annotations(node: &Node) -> Option<&BTreeMap<String, String>> {
    node.metadata.annotations.as_ref()
}

/// The node's IPv4 pod CIDR: the IPv4 one of `spec.podCIDRs` (dual-stack nodes carry one
/// of each family), else `spec.podCIDR`. `None` while none is assigned.
pub fn pod_cidr(node: &Node) -> Result<Option<Ipv4Network>, String> {
    let Some(spec) = &node.spec else {
        return Ok(None);
    };
    let cidrs: Vec<(&str, String)> = match &spec.pod_cidrs {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), format!("spec.podCIDRs[{i}]")))
            .collect(),
        _ => spec
            .pod_cidr
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| (c.as_str(), "spec.podCIDR".to_string()))
            .collect(),
    };
    for (text, field) in cidrs {
        match text.parse::<IpNetwork>() {
            Ok(IpNetwork::V4(net)) if net.network() == net.ip() => return Ok(Some(net)),
            Ok(IpNetwork::V4(_)) => return Err(format!("{field}: {text:?} has host bits set")),
            Ok(IpNetwork::V6(_)) => {}
            Err(_) => return Err(format!("{field}: {text:?} is not a CIDR")),
        }
    }
    Ok(None)
}

/// A Node as a peer lease. `Ok(None)`: not (yet) a Flannel-managed node (no podCIDR, or
/// no `kube-subnet-manager: "true"`), skipped silently as flanneld does. `Err`: a managed
/// node whose fields are wrong, naming the field.
pub fn node_lease(keys: &Annotations, node: &Node) -> Result<Option<PeerLease>, String> {
    let empty = BTreeMap::new();
    let a = annotations(node).unwrap_or(&empty);
    if a.get(&keys.kube_managed).map(String::as_str) != Some("true") {
        return Ok(None);
    }
    let Some(subnet) = pod_cidr(node)? else {
        return Ok(None);
    };
    let field = |k: &str| format!("metadata.annotations[{k}]");
    let ip = a
        .get(&keys.public_ip)
        .ok_or_else(|| format!("{}: missing", field(&keys.public_ip)))?;
    let public_ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{}: {ip:?} is not an IPv4 address", field(&keys.public_ip)))?;
    let backend_type = a.get(&keys.backend_type).cloned().unwrap_or_default();
    let backend_data = match a.get(&keys.backend_data).map(String::as_str) {
        None | Some("") | Some("null") => None,
        Some(text) => Some(
            serde_json::from_str::<Value>(text)
                .map_err(|e| format!("{}: not JSON ({e})", field(&keys.backend_data)))?,
        ),
    };
    let attrs = LeaseAttrs::new(public_ip, &backend_type, backend_data).with_node(name(node));
    let meta = &node.metadata;
    Ok(Some(PeerLease {
        subnet,
        attrs,
        etcd_lease: 0,
        // Not the resourceVersion: kubelet's heartbeats change that every few seconds, and
        // only what the lease says is a change of it (as flanneld compares).
        mod_revision: 0,
        // The older of two nodes claiming one subnet wins, as the older etcd lease does.
        create_revision: meta
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0),
    }))
}

/// The well-known label of a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Node `node`'s zone label, if it has one (and can be read: a failure is logged).
pub async fn zone(client: Client, node: &str) -> Option<String> {
    match Api::<Node>::all(client).get_opt(node).await {
        Ok(n) => n?.metadata.labels?.remove(ZONE_LABEL),
        Err(e) => {
            warn!("reading Node {node}'s zone: {}", one_line(&e));
            None
        }
    }
}

/// This node's side: its Node object, read and annotated.
pub struct NodeSubnets {
    api: Api<Node>,
    node: String,
    keys: Annotations,
}

/// How long to wait between looks at a Node without a podCIDR yet.
const POLL: Duration = Duration::from_secs(1);

impl NodeSubnets {
    pub fn new(client: Client, node: &str, annotation_prefix: &str) -> Self {
        NodeSubnets {
            api: Api::all(client),
            node: node.to_string(),
            keys: Annotations::new(annotation_prefix),
        }
    }

    /// The Node object and its pod CIDR, waiting (as flanneld does, if `wait`) while there
    /// is no such Node or it has no podCIDR yet; saying why once, and every 30 s after.
    async fn wait_for_cidr(&self, wait: bool) -> Result<(Node, Ipv4Network)> {
        let mut said = None;
        let mut last = std::time::Instant::now();
        loop {
            let why = match self.api.get_opt(&self.node).await {
                Ok(Some(node)) => match pod_cidr(&node) {
                    Ok(Some(cidr)) => return Ok((node, cidr)),
                    Ok(None) => format!(
                        "Node {} has no spec.podCIDR yet (kube-controller-manager assigns it with --allocate-node-cidrs)",
                        self.node
                    ),
                    Err(e) => bail!("Node {}: {e}", self.node),
                },
                Ok(None) => format!(
                    "no Node named {} (--node-name or NODE_NAME must be the Kubernetes node name)",
                    self.node
                ),
                Err(e) => format!("reading Node {}: {}", self.node, one_line(&e)),
            };
            if !wait {
                bail!("{why}");
            }
            if said.as_ref() != Some(&why) || last.elapsed() >= Duration::from_secs(30) {
                warn!("{why}; waiting");
                said = Some(why);
                last = std::time::Instant::now();
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// This node's lease: its podCIDR (which must lie in `network`), published with
    /// `attrs` in the node's annotations, and the node marked network-available. The
    /// public IP is the `public-ip-overwrite` annotation's where an operator set one.
    /// `wait`: at start, until the Node has a podCIDR; later (the agent is running) an
    /// error, retried by the caller.
    pub async fn acquire(
        &self,
        network: Ipv4Network,
        attrs: &LeaseAttrs,
        wait: bool,
    ) -> Result<Lease> {
        let (node, subnet) = self.wait_for_cidr(wait).await?;
        if subnet.prefix() < network.prefix() || !network.contains(subnet.network()) {
            bail!(
                "the Network {network} of the net config doesn't contain Node {}'s podCIDR {subnet}",
                self.node
            );
        }
        let mut attrs = attrs.clone();
        if let Some(ip) = annotations(&node).and_then(|a| a.get(&self.keys.public_ip_overwrite)) {
            attrs.public_ip = ip.parse().map_err(|_| {
                anyhow!(
                    "Node {}: metadata.annotations[{}]: {ip:?} is not an IPv4 address",
                    self.node,
                    self.keys.public_ip_overwrite
                )
            })?;
            info!(
                "public IP {ip} from the node's {} annotation",
                self.keys.public_ip_overwrite
            );
        }
        self.publish(&node, &attrs, true).await?;
        Ok(Lease {
            subnet,
            attrs,
            etcd_lease: 0,
        })
    }

    /// Writes the annotations if they differ from `attrs`'s (and, at start, the
    /// NetworkUnavailable condition) in one strategic merge patch of `nodes/status`.
    async fn publish(&self, node: &Node, attrs: &LeaseAttrs, start: bool) -> Result<()> {
        let want = self.keys.published(attrs);
        let empty = BTreeMap::new();
        let have = annotations(node).unwrap_or(&empty);
        let stale = want.iter().any(|(k, v)| have.get(k) != Some(v));
        if !stale && !start {
            return Ok(());
        }
        let mut patch = json!({});
        if stale {
            patch["metadata"] = json!({"annotations": want});
        }
        if start {
            let now = k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            patch["status"] = json!({"conditions": [{
                "type": "NetworkUnavailable", "status": "False", "reason": "NetdpIsUp",
                "message": "netdp is running on this node",
                "lastTransitionTime": now, "lastHeartbeatTime": now,
            }]});
        }
        self.api
            .patch_status(
                &self.node,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .map_err(|e| anyhow!("patching Node {}'s status: {}", self.node, one_line(&e)))?;
        if stale {
            info!(
                "published this node's lease in Node {}'s annotations",
                self.node
            );
        }
        Ok(())
    }

    /// The renewal of etcd leases, for Node objects: `Ok(false)` when the node's podCIDR
    /// is no longer the lease's (to be acquired again); annotations someone removed or
    /// changed are written back.
    pub async fn check(&self, lease: &Lease) -> Result<bool> {
        let node = self
            .api
            .get(&self.node)
            .await
            .map_err(|e| anyhow!("reading Node {}: {}", self.node, one_line(&e)))?;
        if pod_cidr(&node).ok().flatten() != Some(lease.subnet) {
            return Ok(false);
        }
        self.publish(&node, &lease.attrs, false).await?;
        Ok(true)
    }

    /// Follows every Node: the first message is the complete set of leases (once listed),
    /// then their changes; a re-list sends the complete set again. This node's annotations,
    /// if somebody changes them, are written back (`lease`: what it published).
    /// The receiver follows this node's zone label.
    pub fn watch(
        &self,
        lease: &Lease,
        tx: mpsc::Sender<WatchUpdate>,
    ) -> tokio::sync::watch::Receiver<Option<String>> {
        let events = watcher(self.api.clone(), watcher::Config::default()).default_backoff();
        let (zone, zone_rx) = tokio::sync::watch::channel(None);
        let own = Own {
            nodes: NodeSubnets {
                api: self.api.clone(),
                node: self.node.clone(),
                keys: self.keys.clone(),
            },
            lease: lease.clone(),
            zone,
        };
        tokio::spawn(follow(Box::pin(events), own, tx));
        zone_rx
    }
}

/// This node, as the watch keeps its annotations and follows its zone. The lease is the
/// one acquired at start: a Node's podCIDR does not change once set (a Node deleted and
/// made again with another one is not repaired here; the agent's renewal re-acquires it).
struct Own {
    nodes: NodeSubnets,
    lease: Lease,
    zone: tokio::sync::watch::Sender<Option<String>>,
}

impl Own {
    /// Follows its zone label, and writes back annotations that are not what this node
    /// published.
    async fn repair(&self, node: &Node) {
        if name(node) != self.nodes.node {
            return;
        }
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL));
        self.zone.send_if_modified(|z| {
            let changed = z.as_ref() != zone;
            if changed {
                *z = zone.cloned();
            }
            changed
        });
        if pod_cidr(node).ok().flatten() != Some(self.lease.subnet) {
            return;
        }
        if let Err(e) = self.nodes.publish(node, &self.lease.attrs, false).await {
            warn!("{e:#}");
        }
    }
}

/// Nodes as leases, by node name, and the reasons already logged.
#[derive(Default)]
struct Leases {
    by_node: HashMap<String, PeerLease>,
    reported: HashMap<String, String>,
}

impl Leases {
    /// The node's lease now. A managed node whose fields went wrong, or that is no longer
    /// managed or lost its podCIDR, keeps the lease it had (as flanneld keeps it): a bad
    /// edit of a Node must not cut its pods off. Why is logged once per reason.
    fn lease(&mut self, keys: &Annotations, node: &Node) -> Option<PeerLease> {
        let n = name(node);
        match node_lease(keys, node) {
            Ok(Some(lease)) => {
                if self.reported.remove(n).is_some() {
                    info!("kubernetes API: Node {n}: its lease is valid again");
                }
                Some(lease)
            }
            Ok(None) => self.by_node.get(n).cloned(),
            Err(why) => {
                if self.reported.get(n) != Some(&why) {
                    let keeping = match self.by_node.get(n) {
                        Some(l) => format!("keeping its lease {}", l.subnet),
                        None => "not routing it".to_string(),
                    };
                    warn!("kubernetes API: Node {n}: {why}; {keeping}");
                    self.reported.insert(n.to_string(), why);
                }
                self.by_node.get(n).cloned()
            }
        }
    }

    /// Node `name` has `lease` now: the events that make a set by subnet follow. A subnet
    /// another node still claims is given back to it.
    fn set(&mut self, name: &str, lease: Option<PeerLease>, events: &mut Vec<LeaseEvent>) {
        let old = match lease {
            Some(l) => {
                if self.by_node.get(name) == Some(&l) {
                    return;
                }
                events.push(Event::Upsert(l.subnet, l.clone()));
                self.by_node
                    .insert(name.to_string(), l.clone())
                    .filter(|o| o.subnet != l.subnet)
            }
            None => self.by_node.remove(name),
        };
        if let Some(old) = old {
            match self.by_node.values().find(|l| l.subnet == old.subnet) {
                Some(other) => events.push(Event::Upsert(other.subnet, other.clone())),
                None => events.push(Event::Removed(old.subnet)),
            }
        }
    }

    /// A re-list: every listed node's lease (what it had, where it is broken now).
    fn relist(&mut self, keys: &Annotations, nodes: &[Node]) -> Vec<(Ipv4Network, PeerLease)> {
        let by_node: HashMap<String, PeerLease> = nodes
            .iter()
            .filter_map(|n| Some((name(n).to_string(), self.lease(keys, n)?)))
            .collect();
        self.reported.retain(|n, _| by_node.contains_key(n));
        self.by_node = by_node;
        // Of two nodes claiming one subnet the set keeps the last: the older.
        let mut all: Vec<_> = self
            .by_node
            .values()
            .map(|l| (l.subnet, l.clone()))
            .collect();
        all.sort_by_key(|(_, l)| std::cmp::Reverse(l.create_revision));
        all
    }
}

type LeaseEvent = Event<Ipv4Network, PeerLease>;

async fn follow<S>(mut events: S, own: Own, tx: mpsc::Sender<WatchUpdate>)
where
    S: futures::Stream<Item = Result<watcher::Event<Node>, watcher::Error>> + Unpin,
{
    let keys = own.nodes.keys.clone();
    let mut leases = Leases::default();
    let mut relist: Option<Vec<Node>> = None;
    let mut listed = false;
    while let Some(batch) = next_batch(&mut events).await {
        let mut out = Vec::new();
        for event in batch {
            match event {
                Ok(watcher::Event::Apply(n)) => {
                    own.repair(&n).await;
                    let lease = leases.lease(&keys, &n);
                    leases.set(name(&n), lease, &mut out);
                }
                Ok(watcher::Event::Delete(n)) => leases.set(name(&n), None, &mut out),
                Ok(watcher::Event::Init) => relist = Some(Vec::new()),
                Ok(watcher::Event::InitApply(n)) => relist.get_or_insert_default().push(n),
                Ok(watcher::Event::InitDone) => {
                    let nodes = relist.take().unwrap_or_default();
                    info!("kubernetes API: listed {} nodes", nodes.len());
                    for n in &nodes {
                        own.repair(n).await;
                    }
                    // The complete set replaces whatever came before it; what follows
                    // in this batch goes out after it.
                    out.clear();
                    let all = leases.relist(&keys, &nodes);
                    if tx.send(Decoded::Resync(all)).await.is_err() {
                        return;
                    }
                    listed = true;
                }
                Err(e) => warn!("kubernetes API: {e} (retrying)"),
            }
        }
        if listed && !out.is_empty() && tx.send(Decoded::Events(out)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
#[path = "nodes_tests.rs"]
mod tests;
