//! Where the node's subnet and its peers' come from: leases in etcd (Flannel's default),
//! or Node objects (`--kube-subnet-mgr`, flanneld's flag of that name). Either way the
//! agent sees one model: a [`Lease`] of its own, [`PeerLease`]s of everybody, and a
//! stream of [`WatchUpdate`]s.
use std::{
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow};
use ipnetwork::Ipv4Network;
use log::warn;
use tokio::sync::mpsc;

use crate::{
    config::NetworkConfig,
    etcd::watch::{Follow, forward},
    k8s::nodes::{DEFAULT_ANNOTATION_PREFIX, NodeSubnets},
    lease::{
        Lease, LeaseAttrs, LeaseOptions, LeaseSet, LeaseWatch, PeerLease, Registry, WatchUpdate,
    },
};

/// The flags of the Kubernetes subnet manager (flanneld's names).
#[derive(clap::Args, Debug, Clone)]
pub struct KubeSubnetArgs {
    /// Take the node's subnet from its Node object's spec.podCIDR and the peers' from the
    /// other Nodes (Flannel's annotations), instead of leases in etcd.
    #[arg(long = "kube-subnet-mgr", env = "NETDP_KUBE_SUBNET_MGR")]
    pub enabled: bool,
    /// The network config for --kube-subnet-mgr (kube-flannel's ConfigMap, mounted).
    #[arg(
        long = "net-config-path",
        default_value = "/etc/kube-flannel/net-conf.json"
    )]
    pub net_config_path: PathBuf,
    /// Prefix of the node annotations peers read (flanneld's default, so netdp and
    /// flanneld nodes understand each other).
    #[arg(
        long = "kube-annotation-prefix",
        env = "NETDP_KUBE_ANNOTATION_PREFIX",
        default_value = DEFAULT_ANNOTATION_PREFIX
    )]
    pub annotation_prefix: String,
}

/// Everybody's leases, their changes, and (Node objects) this node's zone.
pub(super) type Followed = (
    Vec<PeerLease>,
    mpsc::Receiver<WatchUpdate>,
    Option<tokio::sync::watch::Receiver<Option<String>>>,
);

/// The source of leases. One per agent, made once and never moved: the variants' sizes
/// don't matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Subnets {
    Etcd(Registry),
    Kube {
        nodes: NodeSubnets,
        config_path: PathBuf,
        /// The length of this node's podCIDR: the controller's --node-cidr-mask-size,
        /// not the net config's SubnetLen, decides it.
        subnet_len: Option<u8>,
    },
}

/// A config file's revision: its text's hash (a change is all that is compared).
fn revision(text: &str) -> i64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    (h.finish() >> 1) as i64
}

fn read_config(path: &Path) -> Result<(NetworkConfig, i64)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the network config {}", path.display()))?;
    let config = NetworkConfig::parse(&text)
        .map_err(|e| anyhow!("invalid network config {}: {e}", path.display()))?;
    Ok((config, revision(&text)))
}

impl Subnets {
    pub(super) fn kube(client: kube::Client, node: &str, args: &KubeSubnetArgs) -> Self {
        Subnets::Kube {
            nodes: NodeSubnets::new(client, node, &args.annotation_prefix),
            config_path: args.net_config_path.clone(),
            subnet_len: None,
        }
    }

    /// The network config and its revision.
    pub(super) async fn config(&mut self) -> Result<(NetworkConfig, i64)> {
        match self {
            Subnets::Etcd(registry) => registry.config().await,
            Subnets::Kube {
                config_path,
                subnet_len,
                ..
            } => {
                let (mut config, rev) = read_config(config_path)?;
                if let Some(len) = subnet_len {
                    config.subnet_len = *len;
                }
                Ok((config, rev))
            }
        }
    }

    /// This node's lease: taken in etcd (`hint`: the subnet it had), or its Node's podCIDR.
    /// A Node's podCIDR length becomes `config`'s SubnetLen, which peers are checked with.
    pub(super) async fn acquire(
        &mut self,
        config: &mut NetworkConfig,
        attrs: &LeaseAttrs,
        hint: Option<Ipv4Network>,
        opts: &LeaseOptions,
    ) -> Result<Lease> {
        match self {
            Subnets::Etcd(registry) => registry
                .acquire(config, attrs, hint, opts)
                .await
                .map_err(|e| anyhow!("{e}")),
            Subnets::Kube {
                nodes, subnet_len, ..
            } => {
                // Only the first time may wait: later the agent's loop must go on.
                let lease = nodes
                    .acquire(config.network, attrs, subnet_len.is_none())
                    .await?;
                let len = lease.subnet.prefix();
                if config.subnet_len != len && subnet_len.is_none() {
                    warn!(
                        "Node podCIDRs are /{len}: the net config's SubnetLen {} does not apply (kube-controller-manager's --node-cidr-mask-size does)",
                        config.subnet_len
                    );
                }
                *subnet_len = Some(len);
                config.subnet_len = len;
                Ok(lease)
            }
        }
    }

    /// Renews the lease: `Ok(false)` when it is gone (to be acquired again).
    pub(super) async fn renew(&mut self, lease: &Lease) -> Result<bool> {
        match self {
            Subnets::Etcd(registry) => registry.renew(lease).await,
            Subnets::Kube { nodes, .. } => nodes.check(lease).await,
        }
    }

    /// Everybody's leases now, and a stream of their changes from then on (`own`: this
    /// node's, whose published form the Node watch keeps).
    /// With Node objects, the third is this node's zone label as it changes.
    pub(super) async fn follow(&mut self, own: &Lease) -> Result<Followed> {
        let (tx, mut rx) = mpsc::channel(64);
        match self {
            Subnets::Etcd(registry) => {
                let (leases, revision) = registry.leases().await?;
                let own = Registry::new(registry.client.clone(), registry.prefix());
                tokio::spawn(watch_leases(own, revision, tx));
                Ok((leases, rx, None))
            }
            Subnets::Kube { nodes, .. } => {
                let zone = nodes.watch(own, tx);
                let first = rx
                    .recv()
                    .await
                    .ok_or_else(|| anyhow!("the Node watch ended before listing"))?;
                let mut leases = std::collections::HashMap::new();
                first.apply_to(&mut leases);
                Ok((leases.into_values().collect(), rx, Some(zone)))
            }
        }
    }

    /// The admission of peers, naming leases the way this source does.
    pub(super) fn lease_set(&self) -> LeaseSet {
        match self {
            Subnets::Etcd(registry) => LeaseSet::new(registry.prefix()),
            Subnets::Kube { .. } => LeaseSet::for_nodes(),
        }
    }
}

/// Lease changes as the agent follows them, from the registry's own connection.
struct LeaseFollow {
    watch: LeaseWatch,
    registry: Registry,
}

impl Follow for LeaseFollow {
    type Update = WatchUpdate;

    async fn next(&mut self) -> Result<WatchUpdate> {
        self.watch.next(&mut self.registry).await
    }

    fn revision(&self) -> i64 {
        self.watch.revision()
    }
}

/// Streams lease changes to the agent; a broken watch resumes where it left off.
pub(super) async fn watch_leases(registry: Registry, revision: i64, tx: mpsc::Sender<WatchUpdate>) {
    let watch = LeaseWatch::new(revision);
    forward(LeaseFollow { watch, registry }, tx).await
}
