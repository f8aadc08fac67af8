//! The rules kube-proxy writes for ClusterIP services, in its iptables mode and its nftables
//! mode, rule for rule and with its own chain names, so the benchmark loads what a real node
//! with N services carries.
//!
//! Shapes follow kube-proxy's proxiers (pkg/proxy/iptables and pkg/proxy/nftables, v1.31)
//! for ClusterIP services with `Cluster` traffic policy, no session affinity, a
//! `--cluster-cidr` local-traffic detector, default `--masquerade-bit` (0x4000), default
//! `--nodeport-addresses` and iptables with `--random-fully`.
pub mod iptables;
pub mod nftables;

use std::net::Ipv4Addr;

/// One port of one Service with its ready endpoints, as kube-proxy's ServicePortMap and
/// EndpointsMap hold it.
#[derive(Debug, Clone)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name in the Service spec (`http`); part of every chain name.
    pub port_name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

impl ServicePort {
    /// `namespace/name:port`, kube-proxy's ServicePortName string.
    pub fn port_name_string(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }
}

/// Node-wide settings the rules depend on.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// `--cluster-cidr`: traffic from outside it to a ClusterIP is masqueraded.
    pub cluster_cidr: String,
    /// The ServiceCIDR (nftables mode drops traffic to unallocated ClusterIPs in it).
    pub service_cidr: String,
    /// This node's address (nftables mode's default `--nodeport-addresses` is "primary").
    pub node_ip: Ipv4Addr,
}

/// The only protocol the benchmark uses; kube-proxy lowercases it into chain names.
pub const PROTOCOL: &str = "tcp";
/// `--masquerade-bit=14`.
pub const MASQ_MARK: &str = "0x4000";

/// SHA-256 of `input`, base32 (RFC 4648 alphabet), as kube-proxy names its chains.
pub fn hash_base32(input: &str) -> String {
    use sha2::{Digest, Sha256};
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(input.as_bytes());
    let mut out = String::with_capacity(56);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in digest.iter() {
        buf = (buf << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The benchmark's cluster: `n` services of 3 endpoints each. Every service but the last
/// points at addresses nobody answers on; the last one (programmed last, so iptables
/// mode matches it only after every other service's rule) points at `real` endpoints.
pub fn bench_services(n: usize, real: &[(Ipv4Addr, u16)]) -> Vec<ServicePort> {
    // Fake endpoints cycle through 10.246.0.0/15, inside the cluster CIDR but outside
    // every node's pod subnet; they are never contacted.
    let fake = |k: usize| {
        let off = (k % 131_070) as u32 + 1;
        (
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 246, 0, 0)) + off),
            8080,
        )
    };
    (0..n)
        .map(|i| ServicePort {
            namespace: "bench".into(),
            name: format!("svc-{i}"),
            port_name: "http".into(),
            cluster_ip: cluster_ip(i),
            port: 80,
            endpoints: if i + 1 == n {
                real.to_vec()
            } else {
                (0..3).map(|j| fake(i * 3 + j)).collect()
            },
        })
        .collect()
}

/// ClusterIP of the benchmark's `i`th service, from 10.96.0.0/12.
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i as u32)
}

/// The benchmark's node-wide settings.
pub fn bench_cluster(node_ip: Ipv4Addr) -> Cluster {
    Cluster {
        cluster_cidr: "10.244.0.0/14".into(),
        service_cidr: "10.96.0.0/12".into(),
        node_ip,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two services of kube-proxy's own unit tests (ns1/svc1:p80 with one endpoint,
    /// ns4/svc4:p80 with two), so chain names can be checked against upstream's.
    pub fn upstream_services() -> (Vec<ServicePort>, Cluster) {
        let svc = |ns: &str, name: &str, ip: [u8; 4], eps: &[[u8; 4]]| ServicePort {
            namespace: ns.into(),
            name: name.into(),
            port_name: "p80".into(),
            cluster_ip: ip.into(),
            port: 80,
            endpoints: eps.iter().map(|e| (Ipv4Addr::from(*e), 80)).collect(),
        };
        (
            vec![
                svc("ns1", "svc1", [172, 30, 0, 41], &[[10, 180, 0, 1]]),
                svc(
                    "ns4",
                    "svc4",
                    [172, 30, 0, 44],
                    &[[10, 180, 0, 4], [10, 180, 0, 5]],
                ),
            ],
            Cluster {
                cluster_cidr: "10.0.0.0/8".into(),
                service_cidr: "172.30.0.0/16".into(),
                node_ip: Ipv4Addr::new(192, 168, 0, 2),
            },
        )
    }

    #[test]
    fn base32_sha256_matches_go() {
        // base32.StdEncoding.EncodeToString(sha256.Sum256([]byte(""))) in Go.
        assert_eq!(
            hash_base32(""),
            "4OYMIQUY7QOBJGX36TEJS35ZEQT24QPEMSNZGTFESWMRW6CSXBKQ"
        );
    }

    #[test]
    fn bench_services_put_the_real_endpoints_on_the_last_service() {
        let real = [(Ipv4Addr::new(10, 244, 2, 2), 8080)];
        let s = bench_services(1000, &real);
        assert_eq!(s.len(), 1000);
        assert_eq!(s[999].endpoints, real);
        assert!(s[..999].iter().all(|s| s.endpoints.len() == 3));
        assert_eq!(s[0].cluster_ip, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(s[999].cluster_ip, Ipv4Addr::new(10, 96, 3, 241));
    }
}
