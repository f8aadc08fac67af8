//! The agent's XDP flags: which mode the XDP program runs in on the underlay (`--xdp`),
//! and the prefilter's deny list (`--deny-sources`).
use std::collections::BTreeSet;

use anyhow::{Result, bail};
use ipnetwork::Ipv4Network;
use log::{info, warn};
use netdp_common::{
    map_names,
    node::{NodeConfig, flags},
};

use crate::{
    config::NetworkConfig,
    dataplane::{Dataplane, Pins, networks::NetworkSet, xdp::XdpMode},
    service::addresses::parse_range,
};

#[derive(clap::Args, Debug, Clone)]
pub struct XdpArgs {
    /// XDP on the underlay interface: `native` runs the prefilter and node port, external
    /// and load-balancer IP traffic to remote backends in the driver, before the kernel
    /// allocates an skb (where the driver has no native XDP, XDP is off, with a warning);
    /// `generic` runs it after the skb is built (any driver); `off` leaves it all to tc.
    #[arg(long = "xdp", env = "NETDP_XDP", default_value = "native")]
    pub xdp: XdpMode,
    /// Source networks to drop before anything else looks at their packets
    /// (comma-separated CIDRs): at XDP, or at tc when XDP is off. Counted as
    /// denied_source.
    #[arg(
        long = "deny-sources",
        env = "NETDP_DENY_SOURCES",
        value_delimiter = ',',
        value_parser = parse_range
    )]
    pub deny_sources: Vec<Ipv4Network>,
}

impl XdpArgs {
    /// Refuses a deny list that would cut pods off from each other (peers' pods are
    /// checked against their leases instead).
    pub fn check(&self, config: &NetworkConfig) -> Result<()> {
        for net in &self.deny_sources {
            if net.overlaps(config.network) {
                bail!(
                    "--deny-sources {net} overlaps the cluster Network {}: pods would lose \
                     each other",
                    config.network
                );
            }
        }
        Ok(())
    }

    /// The node flags these settings stand for: tc checks the deny list too (it sees only
    /// what XDP passed, or everything when XDP is off), so it holds in every mode.
    pub fn node_flags(&self, node: &mut NodeConfig) {
        if !self.deny_sources.is_empty() {
            node.flags |= flags::DENY_SOURCES;
        }
    }

    /// Writes the deny list and attaches XDP; the mode XDP runs in.
    pub fn install(&self, dp: &mut Dataplane, pins: &Pins, netdev: &str) -> Result<XdpMode> {
        let name = map_names::DENIED_SOURCES;
        let mut map = NetworkSet::from_map(dp.take_map(name)?, name)?;
        let desired: BTreeSet<_> = self.deny_sources.iter().copied().collect();
        map.set(&desired)?;
        if !desired.is_empty() {
            info!(
                "dropping packets from {}",
                desired
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let mode = dp.attach_xdp(pins, netdev, self.xdp)?;
        info!("XDP on {netdev}: {}", mode.name());
        if mode != XdpMode::Off {
            forwarding_on(netdev)?;
            if driver(netdev).as_deref() == Some("veth") {
                warn!(
                    "XDP on {netdev}, a veth: the frames XDP sends back out reach the other \
                     end only while that end runs an XDP program of its own (any that passes \
                     everything will do) and, for XDP to translate them, arrive with \
                     complete checksums (no transmit checksum offload where they are sent \
                     from); otherwise run with --xdp=off"
                );
            }
        }
        Ok(mode)
    }
}

/// The driver of `netdev` (ethtool's ETHTOOL_GDRVINFO; no crate wraps this one ioctl).
fn driver(netdev: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    /// struct ethtool_drvinfo, up to the driver name and what follows it.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    if netdev.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    // SAFETY: all-zero is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(netdev.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = &mut info as *mut DrvInfo as *mut libc::c_char;
    // SAFETY: plain syscalls; `ifr` and `info` outlive the ioctl, which writes at most
    // struct ethtool_drvinfo (196 bytes) into `info`.
    let rc = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut ifr);
        libc::close(fd);
        rc
    };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Turns IPv4 forwarding on for `netdev`: XDP finds the next hop of a reply to a client
/// outside the cluster with bpf_fib_lookup, which answers only for an interface that
/// forwards (every Kubernetes node forwards; Cilium turns it on too). Only packets that
/// arrive on `netdev` may then be routed by the kernel.
fn forwarding_on(netdev: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{netdev}/forwarding");
    let now = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?;
    if now.trim() == "1" {
        return Ok(());
    }
    std::fs::write(&path, "1").map_err(|e| {
        anyhow::anyhow!(
            "turning on forwarding on {netdev} ({path}), which XDP's next-hop lookups need: {e}"
        )
    })?;
    info!("forwarding on for {netdev}: XDP's next-hop lookups need it");
    Ok(())
}
