//! The agent's flags for what the node lets in and hands out: source verification of pods'
//! and the underlay's packets (`--source-verification`), which outside networks may send
//! straight to pods (`--routed-networks`), and the source ports masquerading hands out
//! (`--masquerade-ports`).
use std::collections::BTreeSet;

use anyhow::{Result, bail};
use ipnetwork::Ipv4Network;
use log::{info, warn};
use netdp_common::{
    nat,
    node::{NodeConfig, flags},
};

use crate::{
    config::NetworkConfig,
    dataplane::{Dataplane, networks::NetworkSet},
    service::addresses::parse_range,
};

#[derive(clap::Args, Debug, Clone)]
pub struct UnderlayArgs {
    /// Drop what pods send with an address or MAC not their own, plain packets from the
    /// underlay to pods from anyone but a directly routed peer's pods, and tunnelled
    /// packets whose inner source is outside the sending peer's subnet (Cilium's
    /// enable-source-ip-verification). Turn off only for pods that must send as other
    /// addresses.
    #[arg(
        long = "source-verification",
        env = "NETDP_SOURCE_VERIFICATION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub source_verification: bool,
    /// Networks outside the cluster whose hosts route to pod addresses themselves (a route
    /// to the pod subnets, no masquerading): their packets may reach pods straight from the
    /// underlay. Without it only peers' pods can (comma-separated CIDRs).
    #[arg(
        long = "routed-networks",
        env = "NETDP_ROUTED_NETWORKS",
        value_delimiter = ',',
        value_parser = parse_range
    )]
    pub routed_networks: Vec<Ipv4Network>,
    /// Source ports masquerading hands out, MIN-MAX. By default the ports above the
    /// kernel's ephemeral range (net.ipv4.ip_local_port_range) up to 65535; a range that
    /// overlaps it is reserved from the node's own sockets
    /// (net.ipv4.ip_local_reserved_ports), so replies to them are never taken for pods'.
    #[arg(
        long = "masquerade-ports",
        env = "NETDP_MASQUERADE_PORTS",
        value_parser = parse_port_range
    )]
    pub masquerade_ports: Option<(u16, u16)>,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?} is not a port range MIN-MAX (like 32768-65535)");
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let (lo, hi): (u16, u16) = (
        lo.trim().parse().map_err(|_| bad())?,
        hi.trim().parse().map_err(|_| bad())?,
    );
    if lo < 1024 || hi < lo {
        return Err(format!(
            "masquerade ports {s:?}: MIN must be at least 1024 and at most MAX"
        ));
    }
    Ok((lo, hi))
}

impl UnderlayArgs {
    /// The node flags these settings stand for.
    pub fn node_flags(&self, node: &mut NodeConfig) {
        if !self.source_verification {
            warn!("source verification is off: pods and the underlay can send as any address");
            node.flags |= flags::TRUST_SOURCES;
        }
    }

    /// Refuses routed networks that overlap the cluster Network (those are peers' pods,
    /// checked against their leases instead).
    pub fn check(&self, config: &NetworkConfig) -> Result<()> {
        for net in &self.routed_networks {
            if net.overlaps(config.network) {
                bail!(
                    "--routed-networks {net} overlaps the cluster Network {}: pod addresses \
                     are accepted only from the peers that lease them",
                    config.network
                );
            }
        }
        Ok(())
    }

    /// Writes the routed networks into the programs' map.
    pub fn program(&self, dp: &mut Dataplane) -> Result<()> {
        let name = netdp_common::map_names::ROUTED_NETWORKS;
        let mut map = NetworkSet::from_map(dp.take_map(name)?, name)?;
        let desired: BTreeSet<_> = self.routed_networks.iter().copied().collect();
        map.set(&desired)?;
        if !desired.is_empty() {
            info!(
                "pods accept packets straight from the underlay from peers' pods and {}",
                desired
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(())
    }

    /// Sets the masquerade port range in the node's settings, keeping it clear of the
    /// node's own sockets.
    pub fn masquerade_ports(&self, node: &mut NodeConfig) -> Result<()> {
        let ephemeral = read_pair("/proc/sys/net/ipv4/ip_local_port_range");
        let (lo, hi) = match (self.masquerade_ports, ephemeral) {
            (Some(range), _) => range,
            (None, Some((_, ehi))) if ehi < 65535 => ((ehi + 1).max(1024) as u16, 65535),
            (None, _) => (nat::PORT_MIN, nat::PORT_MAX),
        };
        if let Some((elo, ehi)) = ephemeral
            && u32::from(hi) >= elo
            && u32::from(lo) <= ehi
        {
            if self.masquerade_ports.is_none() {
                bail!(
                    "net.ipv4.ip_local_port_range {elo}-{ehi} leaves no ports for \
                     masquerading: give --masquerade-ports"
                );
            }
            reserve(lo, hi)?;
        }
        node.nat_port_min = lo;
        node.nat_port_max = hi;
        info!("masquerade ports {lo}-{hi}");
        Ok(())
    }
}

fn read_pair(path: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace().filter_map(|s| s.parse().ok());
    Some((it.next()?, it.next()?))
}

/// Adds `lo-hi` to net.ipv4.ip_local_reserved_ports, keeping what is there.
fn reserve(lo: u16, hi: u16) -> Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let current = std::fs::read_to_string(PATH).unwrap_or_default();
    let range = format!("{lo}-{hi}");
    if current.split(',').any(|r| r.trim() == range) {
        return Ok(());
    }
    let value = match current.trim() {
        "" => range.clone(),
        c => format!("{c},{range}"),
    };
    std::fs::write(PATH, &value)
        .map_err(|e| anyhow::anyhow!("reserving masquerade ports {range} in {PATH}: {e}"))?;
    warn!(
        "masquerade ports {range} overlap the ephemeral range: reserved them from the node's \
         own sockets (net.ipv4.ip_local_reserved_ports)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_are_checked() {
        assert_eq!(parse_port_range("32768-65535"), Ok((32768, 65535)));
        assert_eq!(parse_port_range(" 2000 - 2000 "), Ok((2000, 2000)));
        for bad in ["", "1-2", "65535-1024", "a-b", "40000", "40000-70000"] {
            let e = parse_port_range(bad).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn routed_networks_are_checked_and_kept_out_of_the_cluster() {
        let e = parse_range("203.0.113.7/24").expect_err("host bits");
        assert!(e.contains("203.0.113.0/24"), "{e}");
        assert!(parse_range("203.0.113.0/33").is_err());
        let config =
            NetworkConfig::parse(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#)
                .expect("a network config");
        let args = |n: &str| UnderlayArgs {
            source_verification: true,
            routed_networks: vec![parse_range(n).expect("a CIDR")],
            masquerade_ports: None,
        };
        assert!(args("203.0.113.0/24").check(&config).is_ok());
        let e = args("10.0.0.0/8").check(&config).expect_err("overlaps");
        assert!(e.to_string().contains("10.1.0.0/16"), "{e}");
    }
}
