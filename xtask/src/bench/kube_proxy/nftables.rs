//! kube-proxy's nftables mode: the `nft -f` transaction of a full sync of table
//! `ip kube-proxy`: one `ip daddr . meta l4proto . th dport vmap @service-ips` lookup for
//! every ClusterIP, then `numgen random mod N` in the service's chain.
use std::fmt::Write;

use super::{Cluster, MASQ_MARK, PROTOCOL, ServicePort, hash_base32};

const T: &str = "ip kube-proxy";

/// `<8 chars of hash>-<name>` (never truncated at these lengths).
fn hash_and_truncate(name: &str) -> String {
    format!("{}-{name}", &hash_base32(name)[..8])
}

pub fn service_chain(svc: &ServicePort) -> String {
    let base = format!(
        "{}/{}/{PROTOCOL}/{}",
        svc.namespace, svc.name, svc.port_name
    );
    format!("service-{}", hash_and_truncate(&base))
}

pub fn endpoint_chain(svc: &ServicePort, ep: &(std::net::Ipv4Addr, u16)) -> String {
    let base = format!(
        "{}/{}/{PROTOCOL}/{}__{}/{}",
        svc.namespace, svc.name, svc.port_name, ep.0, ep.1
    );
    format!("endpoint-{}", hash_and_truncate(&base))
}

/// kube-proxy's base chains: (name, type, hook, priority).
const BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// Regular chains jumped to from the base chains: (to, from, match).
const JUMPS: [(&str, &str, &str); 11] = [
    ("nodeport-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-forward", "ct state new "),
    ("service-endpoints-check", "filter-output", "ct state new "),
    ("firewall-check", "filter-prerouting", "ct state new "),
    ("firewall-check", "filter-output", "ct state new "),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new "),
    (
        "cluster-ips-check",
        "filter-output-post-dnat",
        "ct state new ",
    ),
];

/// Adds and flushes a regular chain once, as kube-proxy's ensureChain does.
fn ensure_chain(out: &mut String, created: &mut Vec<String>, chain: &str) {
    if created.iter().any(|c| c == chain) {
        return;
    }
    created.push(chain.to_string());
    let _ = writeln!(out, "add chain {T} {chain}\nflush chain {T} {chain}");
}

/// The table's skeleton: base chains, dispatch chains, sets and maps (setupNFTables).
fn setup(out: &mut String, cluster: &Cluster) {
    let _ = writeln!(
        out,
        "add table {T} {{ comment \"rules for kube-proxy\" ; }}"
    );
    for (name, ty, hook, prio) in BASE_CHAINS {
        let _ = writeln!(
            out,
            "add chain {T} {name} {{ type {ty} hook {hook} priority {prio} ; }}\nflush chain {T} {name}"
        );
    }
    let mut created = Vec::new();
    for (to, from, m) in JUMPS {
        ensure_chain(out, &mut created, to);
        let _ = writeln!(out, "add rule {T} {from} {m}jump {to}");
    }
    for c in [
        "services",
        "cluster-ips-check",
        "masquerading",
        "mark-for-masquerade",
    ] {
        ensure_chain(out, &mut created, c);
    }
    let _ = writeln!(
        out,
        "add rule {T} mark-for-masquerade mark set mark or {MASQ_MARK}\n\
         add rule {T} masquerading mark and {MASQ_MARK} == 0 return\n\
         add rule {T} masquerading mark set mark xor {MASQ_MARK}\n\
         add rule {T} masquerading masquerade fully-random\n\
         add set {T} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}\n\
         add rule {T} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"\n\
         add rule {T} cluster-ips-check ip daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"\n\
         add set {T} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}\n\
         flush set {T} nodeport-ips\n\
         add element {T} nodeport-ips {{ {} }}\n\
         add map {T} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}\n\
         add map {T} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}\n\
         add chain {T} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}\n\
         flush chain {T} reject-chain\n\
         add rule {T} reject-chain reject\n\
         add rule {T} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n\
         add rule {T} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports\n\
         add map {T} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}\n\
         add rule {T} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n\
         add map {T} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add map {T} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}\n\
         add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule {T} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n\
         flush set {T} cluster-ips\n\
         flush map {T} service-ips\n\
         flush map {T} firewall-ips\n\
         flush map {T} no-endpoint-services\n\
         flush map {T} no-endpoint-nodeports\n\
         flush map {T} service-nodeports",
        cluster.service_cidr, cluster.node_ip
    );
}

/// The services' part of a full sync: chains, vmap elements, masquerade and DNAT rules.
fn services(out: &mut String, services: &[ServicePort], cluster: &Cluster) {
    for svc in services {
        let chain = service_chain(svc);
        let eps: Vec<String> = svc
            .endpoints
            .iter()
            .map(|e| endpoint_chain(svc, e))
            .collect();
        for c in &eps {
            let _ = writeln!(out, "add chain {T} {c}\nflush chain {T} {c}");
        }
        let _ = writeln!(out, "add chain {T} {chain}\nflush chain {T} {chain}");
        let _ = writeln!(
            out,
            "add element {T} cluster-ips {{ {ip} }}\n\
             add element {T} service-ips {{ {ip} . {PROTOCOL} . {port} : goto {chain} }}\n\
             add rule {T} {chain} ip daddr {ip} {PROTOCOL} dport {port} ip saddr != {cidr} jump mark-for-masquerade",
            ip = svc.cluster_ip,
            port = svc.port,
            cidr = cluster.cluster_cidr
        );
        let vmap: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i} : goto {c}"))
            .collect();
        let _ = writeln!(
            out,
            "add rule {T} {chain} numgen random mod {} vmap {{ {} }}",
            eps.len(),
            vmap.join(" , ")
        );
        for (ep, c) in svc.endpoints.iter().zip(&eps) {
            let _ = writeln!(
                out,
                "add rule {T} {c} ip saddr {} jump mark-for-masquerade\n\
                 add rule {T} {c} meta l4proto {PROTOCOL} dnat to {}:{}",
                ep.0, ep.0, ep.1
            );
        }
    }
}

/// What kube-proxy runs through `nft -f -` on a full sync with these services.
pub fn transaction(svcs: &[ServicePort], cluster: &Cluster) -> String {
    let mut out = String::with_capacity(svcs.len() * 1400 + 6000);
    setup(&mut out, cluster);
    services(&mut out, svcs, cluster);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::kube_proxy::tests::upstream_services;

    #[test]
    fn service_rules_for_two_services_are_what_kube_proxy_writes() {
        let (svcs, cluster) = upstream_services();
        let mut out = String::new();
        services(&mut out, &svcs, &cluster);
        let expected = "\
add chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
flush chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
flush chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80
add chain ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80
flush chain ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80
add chain ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80
flush chain ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80
add chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80
flush chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80
add element ip kube-proxy cluster-ips { 172.30.0.44 }
add element ip kube-proxy service-ips { 172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 ip daddr 172.30.0.44 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 , 1 : goto endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 }
add rule ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 ip saddr 10.180.0.4 jump mark-for-masquerade
add rule ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 meta l4proto tcp dnat to 10.180.0.4:80
add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 ip saddr 10.180.0.5 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 meta l4proto tcp dnat to 10.180.0.5:80
";
        assert_eq!(out, expected);
    }

    #[test]
    fn setup_dispatches_every_clusterip_through_one_vmap() {
        let (svcs, cluster) = upstream_services();
        let text = transaction(&svcs, &cluster);
        assert!(
            text.starts_with("add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n")
        );
        assert!(text.contains(
            "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n"
        ));
        assert!(text.contains("add rule ip kube-proxy nat-prerouting jump services\n"));
        assert!(text.contains("add rule ip kube-proxy nat-postrouting jump masquerading\n"));
        assert!(text.contains("add element ip kube-proxy nodeport-ips { 192.168.0.2 }\n"));
        // Every chain is created before a rule or element refers to it.
        let mut created = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(c) = line.strip_prefix("add chain ip kube-proxy ") {
                created.insert(c.split(' ').next().unwrap_or(c).to_string());
            }
            for word in line
                .split(' ')
                .filter(|w| w.starts_with("service-") || w.starts_with("endpoint-"))
            {
                if word.contains('/') {
                    assert!(
                        created.contains(word),
                        "{word} used before it exists: {line}"
                    );
                }
            }
        }
    }
}
