//! Gateways between clusters (gateway mode, Submariner's model). Nodes started with
//! `--gateway` are candidates; exactly one of them is the cluster's active gateway: the one
//! holding `<prefix>/gateway`, a key attached to an etcd lease of `--gateway-lease-ttl`
//! that it keeps alive. When it stops renewing (the node is gone), the key expires and
//! another candidate takes it. Every node reads the key to route other clusters' Networks
//! to the active gateway; other clusters read it to send to the address and port it
//! advertises (`--gateway-endpoint`: a NAT's, or a NodePort-style port).
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Result, anyhow};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use ipnetwork::Ipv4Network;
use log::{info, warn};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::util::one_line;

/// How often the key is read (and, by the active gateway, renewed).
pub(super) const POLL: Duration = Duration::from_secs(1);

/// The gateway flags.
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// This node may be its cluster's gateway to the clusters the network config names
    /// in gateway mode (one candidate is active at a time).
    #[arg(long = "gateway", env = "NETDP_GATEWAY")]
    pub candidate: bool,
    /// UDP port of the tunnel between gateways.
    #[arg(
        long = "gateway-port",
        default_value_t = 4800,
        env = "NETDP_GATEWAY_PORT"
    )]
    pub gateway_port: u16,
    /// Address and port other clusters' gateways send to (default: the node's PublicIP and
    /// --gateway-port): a NAT's public address, or a port forwarded to this node.
    #[arg(long = "gateway-endpoint", env = "NETDP_GATEWAY_ENDPOINT")]
    pub gateway_endpoint: Option<SocketAddrV4>,
    /// How long the active gateway's key outlives it: failover takes at most this.
    #[arg(long = "gateway-lease-ttl", value_parser = crate::util::parse_duration, default_value = "10s")]
    pub gateway_ttl: Duration,
}

/// The active gateway of a cluster, as its key holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    /// Its node name.
    #[serde(rename = "Node")]
    pub node: String,
    /// Its lease's PublicIP and subnet: where this cluster's nodes send to it.
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "Subnet")]
    pub subnet: Ipv4Network,
    /// Where other clusters' gateways send to it.
    #[serde(rename = "Endpoint")]
    pub endpoint: SocketAddrV4,
}

/// `<prefix>/gateway`.
pub fn key(prefix: &str) -> String {
    format!("{}/gateway", prefix.trim_end_matches('/'))
}

/// The cluster's active gateway now (`None`: none, or a value that is no gateway, which
/// is logged).
pub async fn read(client: &mut Client, prefix: &str) -> Result<Option<Gateway>> {
    let key = key(prefix);
    let resp = client
        .get(key.as_str(), None)
        .await
        .map_err(|e| anyhow!("reading {key}: {}", one_line(&e)))?;
    let Some(kv) = resp.kvs().first() else {
        return Ok(None);
    };
    match serde_json::from_slice::<Gateway>(kv.value()) {
        Ok(g) => Ok(Some(g)),
        Err(e) => {
            warn!("{key} is not a gateway record ({e}); taken as no gateway");
            Ok(None)
        }
    }
}

/// Follows this cluster's active gateway into `tx` (every node), and with `candidate` set
/// (a `--gateway` node) stands for it: takes the key when it is free and keeps it alive.
pub(super) async fn follow(
    mut client: Client,
    prefix: String,
    candidate: Option<(Gateway, Duration)>,
    tx: watch::Sender<Option<Gateway>>,
) {
    let key = key(&prefix);
    let mut held: Option<i64> = None;
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        if let Some((me, ttl)) = &candidate {
            match stand(&mut client, &key, me, *ttl, held).await {
                Ok(h) => {
                    if h.is_some() && held.is_none() {
                        info!("this node is now its cluster's active gateway ({key})");
                    } else if h.is_none() && held.is_some() {
                        warn!("no longer the active gateway: {key} was taken");
                    }
                    held = h;
                }
                Err(e) => warn!("gateway {key}: {e:#}"),
            }
        }
        match read(&mut client, &prefix).await {
            Ok(g) => {
                tx.send_if_modified(|cur| {
                    let changed = *cur != g;
                    if changed {
                        match &g {
                            Some(g) => info!(
                                "active gateway: {} ({}, endpoint {})",
                                g.node, g.public_ip, g.endpoint
                            ),
                            None => warn!("this cluster has no active gateway"),
                        }
                    }
                    *cur = g;
                    changed
                });
            }
            Err(e) => log::debug!("{e:#}"),
        }
    }
}

/// One round of candidacy: renews the etcd lease `held` if it is ours, or takes the key if
/// it is free. Returns the etcd lease the key is held with, if it is ours.
async fn stand(
    client: &mut Client,
    key: &str,
    me: &Gateway,
    ttl: Duration,
    held: Option<i64>,
) -> Result<Option<i64>> {
    if let Some(lease) = held {
        let (mut keeper, mut stream) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| anyhow!("renewing: {}", one_line(&e)))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| anyhow!("renewing: {}", one_line(&e)))?;
        if let Ok(Some(r)) = stream.message().await
            && r.ttl() > 0
        {
            return Ok(Some(lease));
        }
        // Expired: stand again below.
    }
    let lease = client
        .lease_grant(ttl.as_secs().max(2) as i64, None)
        .await
        .map_err(|e| anyhow!("granting a lease: {}", one_line(&e)))?
        .id();
    let value = serde_json::to_string(me)?;
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let won = client
        .txn(txn)
        .await
        .map_err(|e| anyhow!("taking {key}: {}", one_line(&e)))?
        .succeeded();
    if won {
        Ok(Some(lease))
    } else {
        let _ = client.lease_revoke(lease).await;
        Ok(None)
    }
}

/// Gives the key back (a gateway that stops cleanly hands over at once).
pub(super) async fn resign(client: &mut Client, prefix: &str, node: &str) {
    let key = key(prefix);
    if let Ok(Some(g)) = read(client, prefix).await
        && g.node == node
    {
        let txn = Txn::new()
            .when([Compare::value(
                key.as_str(),
                CompareOp::Equal,
                serde_json::to_string(&g).unwrap_or_default(),
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        if client.txn(txn).await.is_ok() {
            info!("gave up {key}");
        }
    }
}
