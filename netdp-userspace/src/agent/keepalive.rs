//! NAT traversal (`netdp_common::keepalive`). A node behind a NAT (its PublicIP is not an
//! address of its own) sends every peer a keepalive from its tunnel's own address and port
//! every `--nat-keepalive`: the NAT's mapping stays open, so a peer can send first, and
//! the peer learns which port the NAT maps the node's to. Peers read what they learned
//! from NAT_PEERS and send there, from their own tunnel port (vxlan's flow-hash source
//! port would match no mapping).
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use log::{debug, info, warn};
use netdp_common::{
    keepalive::{self, NatPeer},
    peer::PeerKey,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::config::Backend;

/// Learned mappings older than this are a peer no longer behind that NAT (or gone).
const STALE: Duration = Duration::from_secs(300);

/// Where each peer behind a NAT is reached: its PublicIP to the port its NAT maps.
pub(super) type NatPorts = HashMap<Ipv4Addr, u16>;

/// NAT_PEERS, as the programs fill it.
pub(super) struct NatPeers(BpfHashMap<MapData, PeerKey, NatPeer>);

impl NatPeers {
    pub(super) fn from_map(map: Map) -> Result<Self> {
        Ok(NatPeers(
            BpfHashMap::try_from(map).context("NAT_PEERS has an unexpected type")?,
        ))
    }

    /// The peers heard from within [`STALE`]: their address to the port their
    /// keepalives came from.
    pub(super) fn ports(&self) -> NatPorts {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
            .unwrap_or_default();
        self.0
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, p)| now.saturating_sub(Duration::from_nanos(p.seen_ns)) < STALE)
            .map(|(k, p)| (Ipv4Addr::from(k.addr), p.port))
            .collect()
    }
}

/// The socket keepalives leave from: the tunnel's own (UDP from its port, or raw IP
/// protocol 4), so the NAT maps them as it maps the tunnel's packets.
fn socket(backend: &Backend, addr: Ipv4Addr) -> Result<Socket> {
    let (socket, port) = match backend {
        Backend::Vxlan { port, .. } | Backend::Udp { port } => (
            Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?,
            *port,
        ),
        Backend::Ipip { .. } => (
            Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(4)))?,
            0,
        ),
        Backend::HostGw => anyhow::bail!("host-gw has no tunnel to keep open"),
    };
    socket
        .bind(&SocketAddrV4::new(addr, port).into())
        .with_context(|| format!("binding the keepalive socket to {addr}:{port}"))?;
    Ok(socket)
}

/// Sends keepalives to every peer in `peers` (PublicIP, tunnel port) every `every`, and
/// at once when the peers change, from `addr` (the node's underlay address). Runs until
/// the agent stops.
pub(super) async fn send(
    backend: Backend,
    addr: Ipv4Addr,
    every: Duration,
    mut peers: watch::Receiver<Vec<(Ipv4Addr, u16)>>,
) {
    let socket = match socket(&backend, addr) {
        Ok(s) => s,
        Err(e) => {
            warn!("NAT keepalives: {e:#}; peers behind no NAT can't send to this node first");
            return;
        }
    };
    info!(
        "keepalives through NATs every {every:?} from {addr} ({} {})",
        backend.type_name(),
        match &backend {
            Backend::Vxlan { port, .. } | Backend::Udp { port } => format!("port {port}"),
            _ => "protocol 4".into(),
        }
    );
    // A peer that just appeared may not know this node yet (its agent still starting):
    // a change is followed by a keepalive a second for a few seconds, then every `every`.
    const BURST: u32 = 5;
    let step = every.min(Duration::from_secs(1));
    let mut tick = tokio::time::interval(step);
    let (mut burst, mut since) = (BURST, Duration::ZERO);
    loop {
        tokio::select! {
            _ = tick.tick() => since += step,
            changed = peers.changed() => {
                if changed.is_err() {
                    return;
                }
                burst = BURST;
            }
        }
        if burst == 0 && since < every {
            continue;
        }
        burst = burst.saturating_sub(1);
        since = Duration::ZERO;
        let list = peers.borrow_and_update().clone();
        let mut failed = 0;
        for (ip, port) in &list {
            if socket
                .send_to(&keepalive::MAGIC, &SocketAddrV4::new(*ip, *port).into())
                .is_err()
            {
                failed += 1;
            }
        }
        debug!(
            "NAT keepalives sent to {} peers ({failed} failed)",
            list.len()
        );
    }
}
