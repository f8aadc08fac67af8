//! Which leases are routed. etcd holds whatever anyone with write access put there, and a
//! lease is a claim on pod traffic: `0.0.0.0-0` would take every destination, a /25 inside
//! another node's /24 would take half of its pods (LPM prefers the longer prefix), and two
//! leases with one PublicIP would make that node answer for a subnet it never leased. So a
//! peer's lease is only routed when
//!
//! - its subnet lies in the Network and has the configured SubnetLen;
//! - its PublicIP is a unicast address outside the Network;
//! - it overlaps no other routed lease and no other routed lease has its PublicIP.
//!
//! Of two conflicting leases the older one wins (lower etcd create revision; on a tie, the
//! one already routed), and this node's own lease always does. The loser is logged once,
//! naming both keys, and is looked at again on every pass: when the winner goes, it is
//! routed.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::Ipv4Addr,
};

use ipnetwork::Ipv4Network;
use log::Level;

use super::{Lease, PeerLease, subnet_key};
use crate::config::NetworkConfig;

/// Why a lease is not routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    OutsideNetwork(Ipv4Network),
    WrongLength(u8),
    BadPublicIp(Ipv4Addr, &'static str),
    /// It overlaps the lease of `other` (`own`: this node's).
    Overlaps {
        other: String,
        own: bool,
    },
    /// Its PublicIP is already `other`'s.
    SamePublicIp {
        other: String,
        own: bool,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = |own: &bool| {
            if *own {
                "this node's lease"
            } else {
                "the older lease"
            }
        };
        match self {
            Rejection::OutsideNetwork(n) => write!(f, "it is not inside the Network {n}"),
            Rejection::WrongLength(len) => write!(f, "it is not a /{len} (SubnetLen)"),
            Rejection::BadPublicIp(ip, why) => write!(f, "its PublicIP {ip} is {why}"),
            Rejection::Overlaps { other, own } => write!(f, "it overlaps {} {other}", whose(own)),
            Rejection::SamePublicIp { other, own } => {
                write!(f, "its PublicIP is already that of {} {other}", whose(own))
            }
        }
    }
}

/// What one pass decided.
#[derive(Debug, Default)]
pub(crate) struct Pass<'a> {
    pub accepted: Vec<&'a PeerLease>,
    pub rejected: Vec<(&'a PeerLease, Rejection)>,
}

/// The routed leases, kept from pass to pass so that ties go to what is routed already
/// and every rejection is logged once.
#[derive(Debug)]
pub struct LeaseSet {
    /// How leases are named in log lines: by etcd key under this prefix, or (`None`, the
    /// Kubernetes subnet manager) by Node.
    prefix: Option<String>,
    /// Subnets routed at the last pass.
    routed: HashSet<Ipv4Network>,
    /// PublicIPs of the routed leases and this node's.
    public_ips: Vec<Ipv4Addr>,
    /// The rejection last logged per subnet.
    reported: HashMap<Ipv4Network, Rejection>,
}

/// A lease's own faults, whatever else is leased. `any_length`: Node podCIDRs, whose
/// length the controller chooses (and may vary), as flanneld routes them.
fn check_alone(
    config: &NetworkConfig,
    lease: &PeerLease,
    any_length: bool,
) -> Result<(), Rejection> {
    let (net, subnet) = (config.network, lease.subnet);
    if subnet.prefix() < net.prefix() || !net.contains(subnet.network()) {
        return Err(Rejection::OutsideNetwork(net));
    }
    if !any_length && subnet.prefix() != config.subnet_len {
        return Err(Rejection::WrongLength(config.subnet_len));
    }
    let ip = lease.attrs.public_ip;
    let why = if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_multicast() || ip.is_broadcast() {
        "not a unicast address"
    } else if net.contains(ip) {
        "inside the Network"
    } else {
        return Ok(());
    };
    Err(Rejection::BadPublicIp(ip, why))
}

/// Routed subnets by first address; they never overlap, so a neighbour on either side is
/// all that can.
#[derive(Default)]
struct Taken(BTreeMap<u32, (Ipv4Network, bool)>);

impl Taken {
    fn overlap(&self, s: Ipv4Network) -> Option<(Ipv4Network, bool)> {
        let (start, end) = (u32::from(s.network()), u32::from(s.broadcast()));
        let before = self.0.range(..=start).next_back();
        let before = before.filter(|(_, (n, _))| u32::from(n.broadcast()) >= start);
        let after = self.0.range(start..).next().filter(|(a, _)| **a <= end);
        before.or(after).map(|(_, v)| *v)
    }

    fn insert(&mut self, s: Ipv4Network, own: bool) {
        self.0.insert(u32::from(s.network()), (s, own));
    }
}

impl LeaseSet {
    pub fn new(prefix: &str) -> Self {
        LeaseSet {
            prefix: Some(prefix.trim_end_matches('/').to_string()),
            routed: HashSet::new(),
            public_ips: Vec::new(),
            reported: HashMap::new(),
        }
    }

    /// For leases that are Node objects' podCIDRs (`--kube-subnet-mgr`).
    pub fn for_nodes() -> Self {
        LeaseSet {
            prefix: None,
            ..LeaseSet::new("")
        }
    }

    fn key(&self, subnet: &Ipv4Network) -> String {
        match &self.prefix {
            Some(prefix) => subnet_key(prefix, subnet),
            None => format!("{subnet} (a Node's podCIDR)"),
        }
    }

    /// A lease as log lines name it.
    fn name(&self, lease: &PeerLease) -> String {
        match (&self.prefix, &lease.attrs.node) {
            (None, Some(node)) => format!("Node {node} (podCIDR {})", lease.subnet),
            _ => format!("lease {}", self.key(&lease.subnet)),
        }
    }

    /// Decides which of `leases` are routed (this node's own, `own`, is never among them:
    /// it comes first and wins every conflict). Does not log.
    pub(crate) fn pass<'a>(
        &self,
        config: &NetworkConfig,
        own: Option<&Lease>,
        leases: impl IntoIterator<Item = &'a PeerLease>,
    ) -> Pass<'a> {
        let mut taken = Taken::default();
        let mut ips: HashMap<Ipv4Addr, (Ipv4Network, bool)> = HashMap::new();
        if let Some(own) = own {
            taken.insert(own.subnet, true);
            ips.insert(own.attrs.public_ip, (own.subnet, true));
        }
        let mut candidates: Vec<&PeerLease> = leases
            .into_iter()
            .filter(|l| {
                own.is_none_or(|o| l.subnet != o.subnet || l.attrs.public_ip != o.attrs.public_ip)
            })
            .collect();
        // Oldest first (an unknown age counts as the youngest); ties to what is routed.
        candidates.sort_by_key(|l| {
            let age = if l.create_revision > 0 {
                l.create_revision
            } else {
                i64::MAX
            };
            let new = !self.routed.contains(&l.subnet);
            (age, new, u32::from(l.subnet.network()), l.subnet.prefix())
        });
        let mut pass = Pass::default();
        for lease in candidates {
            let verdict = check_alone(config, lease, self.prefix.is_none()).and_then(|()| {
                if let Some((other, own)) = taken.overlap(lease.subnet) {
                    let other = self.key(&other);
                    return Err(Rejection::Overlaps { other, own });
                }
                if let Some((other, own)) = ips.get(&lease.attrs.public_ip) {
                    let other = self.key(other);
                    return Err(Rejection::SamePublicIp { other, own: *own });
                }
                Ok(())
            });
            match verdict {
                Ok(()) => {
                    taken.insert(lease.subnet, false);
                    ips.insert(lease.attrs.public_ip, (lease.subnet, false));
                    pass.accepted.push(lease);
                }
                Err(why) => pass.rejected.push((lease, why)),
            }
        }
        pass
    }

    /// The leases to route, of `leases` (everybody's as read from etcd, this node's
    /// included). Each rejection is logged once, and a lease routed again after one too.
    pub fn admit<'a>(
        &mut self,
        config: &NetworkConfig,
        own: Option<&Lease>,
        leases: impl IntoIterator<Item = &'a PeerLease>,
    ) -> Vec<&'a PeerLease> {
        let pass = self.pass(config, own, leases);
        for (level, line) in self.record(own, &pass) {
            log::log!(level, "{line}");
        }
        pass.accepted
    }

    /// Remembers `pass`; returns what is news in it, to be logged: rejections not logged
    /// before (or for another reason), and rejected leases that are routed now.
    pub(crate) fn record(&mut self, own: Option<&Lease>, pass: &Pass) -> Vec<(Level, String)> {
        let mut news = Vec::new();
        let mut reported = HashMap::new();
        for (lease, why) in &pass.rejected {
            if self.reported.get(&lease.subnet) != Some(why) {
                news.push((
                    Level::Warn,
                    format!(
                        "not routing {} (PublicIP {}): {why}",
                        self.name(lease),
                        lease.attrs.public_ip
                    ),
                ));
            }
            reported.insert(lease.subnet, why.clone());
        }
        for lease in &pass.accepted {
            if let Some(why) = self.reported.get(&lease.subnet) {
                news.push((
                    Level::Info,
                    format!(
                        "routing {} (PublicIP {}) now: no longer true that {why}",
                        self.name(lease),
                        lease.attrs.public_ip
                    ),
                ));
            }
        }
        self.reported = reported;
        self.routed = pass.accepted.iter().map(|l| l.subnet).collect();
        self.public_ips = own
            .map(|o| o.attrs.public_ip)
            .into_iter()
            .chain(pass.accepted.iter().map(|l| l.attrs.public_ip))
            .collect();
        news
    }

    /// Node addresses as the leases tell them: this node's PublicIP and those of the
    /// routed leases (at the last [`LeaseSet::admit`]).
    pub fn public_ips(&self) -> &[Ipv4Addr] {
        &self.public_ips
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
