//! Subnet leases in etcd, in Flannel's layout: `<prefix>/subnets/<a.b.c.d>-<len>` holding
//! Flannel's `LeaseAttrs` JSON, attached to an etcd lease so it expires unless renewed.
//!
//! [`Registry`] reads the network config and the leases ([`registry`]), takes and keeps this
//! node's lease ([`acquire`]: transactions that never take a live lease from someone else),
//! and [`LeaseWatch`] follows everybody's ([`watch`]).
use std::{net::Ipv4Addr, time::Duration};

use ipnetwork::Ipv4Network;

pub mod acquire;
pub mod registry;
pub mod validate;
pub mod watch;

pub use acquire::AcquireError;
pub use netdp_dataplane::lease::LeaseAttrs;
pub use registry::Registry;
pub use validate::LeaseSet;
pub use watch::{LeaseEvent, LeaseWatch, WatchUpdate};

/// `10.1.15.0/24` -> `<prefix>/subnets/10.1.15.0-24`.
pub fn subnet_key(prefix: &str, subnet: &Ipv4Network) -> String {
    format!("{prefix}/subnets/{}-{}", subnet.network(), subnet.prefix())
}

/// The inverse of [`subnet_key`]; `None` for keys that are not a subnet lease.
pub fn parse_subnet_key(prefix: &str, key: &str) -> Option<Ipv4Network> {
    let rest = key.strip_prefix(prefix)?.strip_prefix("/subnets/")?;
    let (ip, len) = rest.split_once('-')?;
    let net = Ipv4Network::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    (net.network() == net.ip()).then_some(net)
}

/// Somebody's lease as read from etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerLease {
    pub subnet: Ipv4Network,
    pub attrs: LeaseAttrs,
    /// The etcd lease the key is attached to (0: none).
    pub etcd_lease: i64,
    pub mod_revision: i64,
    /// When the key was created (0: unknown); the older of two conflicting leases wins.
    pub create_revision: i64,
}

/// How long leases live and when they are renewed.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    pub ttl: Duration,
    pub renew_margin: Duration,
    pub retry_interval: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            ttl: Duration::from_secs(24 * 3600),
            renew_margin: Duration::from_secs(3600),
            retry_interval: Duration::from_secs(60),
        }
    }
}

impl LeaseOptions {
    /// Time between renewals: a margin before the TTL runs out (at least a second).
    pub fn renew_every(&self) -> Duration {
        self.ttl
            .checked_sub(self.renew_margin)
            .filter(|d| !d.is_zero())
            .unwrap_or(self.ttl / 2)
            .max(Duration::from_secs(1))
    }
}

/// This node's lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub subnet: Ipv4Network,
    pub attrs: LeaseAttrs,
    pub etcd_lease: i64,
}

/// The node's address in a pod subnet it leases (its first host address, as Flannel's
/// FLANNEL_SUBNET): the pods' gateway, and where flows that must come back through the
/// node are source-NATed to.
pub fn gateway(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

impl Lease {
    pub fn gateway(&self) -> Ipv4Addr {
        gateway(self.subnet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let net: Ipv4Network = "10.1.15.0/24".parse().unwrap();
        let key = subnet_key("/coreos.com/network", &net);
        assert_eq!(key, "/coreos.com/network/subnets/10.1.15.0-24");
        assert_eq!(parse_subnet_key("/coreos.com/network", &key), Some(net));
        assert_eq!(
            parse_subnet_key(
                "/coreos.com/network",
                "/coreos.com/network/subnets/10.1.15.1-24"
            ),
            None
        );
        assert_eq!(
            parse_subnet_key("/coreos.com/network", "/coreos.com/network/subnets/garbage"),
            None
        );
        assert_eq!(
            parse_subnet_key("/coreos.com/network", "/other/subnets/10.1.15.0-24"),
            None
        );
    }

    #[test]
    fn flannel_lease_json() {
        // As flanneld's vxlan backend writes it.
        let flannel = r#"{"PublicIP":"192.168.0.100","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}"#;
        let attrs: LeaseAttrs = serde_json::from_str(flannel).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(192, 168, 0, 100));
        assert_eq!(attrs.backend_type, "vxlan");
        assert_eq!(attrs.vtep_mac(), Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01]));
        // host-gw: no BackendData at all.
        let hostgw: LeaseAttrs =
            serde_json::from_str(r#"{"PublicIP":"10.0.0.1","BackendType":"host-gw"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&hostgw).unwrap(),
            r#"{"PublicIP":"10.0.0.1","BackendType":"host-gw"}"#
        );
        // Ours parse with the same schema.
        let ours = LeaseAttrs::new(
            Ipv4Addr::new(192, 168, 0, 200),
            "vxlan",
            Some(serde_json::json!({"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"})),
        );
        let text = serde_json::to_string(&ours).unwrap();
        assert_eq!(
            text,
            r#"{"PublicIP":"192.168.0.200","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}"#
        );
        assert_eq!(serde_json::from_str::<LeaseAttrs>(&text).unwrap(), ours);
    }

    #[test]
    fn renew_schedule() {
        let o = LeaseOptions::default();
        assert_eq!(o.renew_every(), Duration::from_secs(23 * 3600));
        let short = LeaseOptions {
            ttl: Duration::from_secs(4),
            renew_margin: Duration::from_secs(60),
            retry_interval: Duration::from_secs(1),
        };
        assert_eq!(short.renew_every(), Duration::from_secs(2));
    }
}
