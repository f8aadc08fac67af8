//! kube-proxy's iptables mode: the `iptables-restore --noflush` input of a full sync
//! (filter and nat tables) and the jump rules it inserts into the built-in chains.
use std::fmt::Write;

use super::{Cluster, MASQ_MARK, PROTOCOL, ServicePort, hash_base32};

/// Past this many endpoints kube-proxy drops per-endpoint comments ("large cluster mode").
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

pub fn svc_chain(svc: &ServicePort) -> String {
    let h = hash_base32(&format!("{}{PROTOCOL}", svc.port_name_string()));
    format!("KUBE-SVC-{}", &h[..16])
}

pub fn sep_chain(svc: &ServicePort, ep: &(std::net::Ipv4Addr, u16)) -> String {
    let h = hash_base32(&format!(
        "{}{PROTOCOL}{}:{}",
        svc.port_name_string(),
        ep.0,
        ep.1
    ));
    format!("KUBE-SEP-{}", &h[..16])
}

/// `fmt.Sprintf("%0.10f", 1.0/float64(n))`.
fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// What kube-proxy hands `iptables-restore --noflush --counters` on a full sync. Every
/// service must have endpoints (kube-proxy writes REJECT rules for the others instead).
pub fn restore_input(services: &[ServicePort], cluster: &Cluster) -> String {
    let total_endpoints: usize = services.iter().map(|s| s.endpoints.len()).sum();
    let large = total_endpoints > LARGE_CLUSTER_ENDPOINTS;
    let mut out = String::with_capacity(services.len() * 1200 + 2048);
    out.push_str("*filter\n");
    for c in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
        "KUBE-FIREWALL",
    ] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str(
        "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" \
         -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n",
    );
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" \
         -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    out.push_str(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" \
         -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
    );
    out.push_str("COMMIT\n*nat\n");

    let mut chains = String::new();
    let mut rules = String::new();
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    rules.push_str(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully\n",
    );
    let _ = writeln!(rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");

    for svc in services {
        let name = svc.port_name_string();
        let svc_chain = svc_chain(svc);
        let matches = format!(
            "-m comment --comment \"{name} cluster IP\" -m {PROTOCOL} -p {PROTOCOL} -d {} --dport {}",
            svc.cluster_ip, svc.port
        );
        let _ = writeln!(rules, "-A KUBE-SERVICES {matches} -j {svc_chain}");
        let _ = writeln!(chains, ":{svc_chain} - [0:0]");
        let _ = writeln!(
            rules,
            "-A {svc_chain} {matches} ! -s {} -j KUBE-MARK-MASQ",
            cluster.cluster_cidr
        );
        let n = svc.endpoints.len();
        for (i, ep) in svc.endpoints.iter().enumerate() {
            let _ = write!(rules, "-A {svc_chain}");
            if !large {
                let _ = write!(
                    rules,
                    " -m comment --comment \"{name} -> {}:{}\"",
                    ep.0, ep.1
                );
            }
            if i + 1 < n {
                let _ = write!(
                    rules,
                    " -m statistic --mode random --probability {}",
                    probability(n - i)
                );
            }
            let _ = writeln!(rules, " -j {}", sep_chain(svc, ep));
        }
        for ep in &svc.endpoints {
            let sep = sep_chain(svc, ep);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let comment = if large {
                String::new()
            } else {
                format!(" -m comment --comment {name}")
            };
            let _ = writeln!(rules, "-A {sep}{comment} -s {} -j KUBE-MARK-MASQ", ep.0);
            let _ = writeln!(
                rules,
                "-A {sep}{comment} -m {PROTOCOL} -p {PROTOCOL} -j DNAT --to-destination {}:{}",
                ep.0, ep.1
            );
        }
    }
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must \
         be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    out.push_str(&chains);
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// The jumps from built-in chains kube-proxy ensures (`iptables -t <table> -I <chain> ...`)
/// before its first restore, in its order. Each entry is an argument list for `iptables`.
pub fn jump_rules() -> Vec<Vec<String>> {
    const NEW: &[&str] = &["-m", "conntrack", "--ctstate", "NEW"];
    let jumps: [(&str, &str, &str, &str, &[&str]); 14] = [
        (
            "filter",
            "KUBE-EXTERNAL-SERVICES",
            "INPUT",
            "kubernetes externally-visible service portals",
            NEW,
        ),
        (
            "filter",
            "KUBE-EXTERNAL-SERVICES",
            "FORWARD",
            "kubernetes externally-visible service portals",
            NEW,
        ),
        (
            "filter",
            "KUBE-NODEPORTS",
            "INPUT",
            "kubernetes health check service ports",
            &[],
        ),
        (
            "filter",
            "KUBE-SERVICES",
            "FORWARD",
            "kubernetes service portals",
            NEW,
        ),
        (
            "filter",
            "KUBE-SERVICES",
            "OUTPUT",
            "kubernetes service portals",
            NEW,
        ),
        (
            "filter",
            "KUBE-FORWARD",
            "FORWARD",
            "kubernetes forwarding rules",
            &[],
        ),
        (
            "filter",
            "KUBE-PROXY-FIREWALL",
            "INPUT",
            "kubernetes load balancer firewall",
            NEW,
        ),
        (
            "filter",
            "KUBE-PROXY-FIREWALL",
            "OUTPUT",
            "kubernetes load balancer firewall",
            NEW,
        ),
        (
            "filter",
            "KUBE-PROXY-FIREWALL",
            "FORWARD",
            "kubernetes load balancer firewall",
            NEW,
        ),
        (
            "nat",
            "KUBE-SERVICES",
            "OUTPUT",
            "kubernetes service portals",
            &[],
        ),
        (
            "nat",
            "KUBE-SERVICES",
            "PREROUTING",
            "kubernetes service portals",
            &[],
        ),
        (
            "nat",
            "KUBE-POSTROUTING",
            "POSTROUTING",
            "kubernetes postrouting rules",
            &[],
        ),
        ("filter", "KUBE-FIREWALL", "INPUT", "", &[]),
        ("filter", "KUBE-FIREWALL", "OUTPUT", "", &[]),
    ];
    jumps
        .iter()
        .map(|(table, dst, src, comment, extra)| {
            let mut a: Vec<String> = ["-t", table, "-I", src]
                .iter()
                .map(|s| s.to_string())
                .collect();
            a.extend(extra.iter().map(|s| s.to_string()));
            if !comment.is_empty() {
                a.extend(
                    ["-m", "comment", "--comment", comment]
                        .iter()
                        .map(|s| s.to_string()),
                );
            }
            a.extend(["-j".to_string(), dst.to_string()]);
            a
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::kube_proxy::tests::upstream_services;

    #[test]
    fn restore_input_for_two_services_is_what_kube_proxy_writes() {
        let (services, cluster) = upstream_services();
        let expected = r#"*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-FIREWALL - [0:0]
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]
:KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]
:KUBE-SEP-C6EBXVWJJZMIWKLZ - [0:0]
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
"#;
        assert_eq!(restore_input(&services, &cluster), expected);
    }

    #[test]
    fn large_clusters_drop_per_endpoint_comments_and_split_probability() {
        use crate::bench::kube_proxy::{bench_cluster, bench_services};
        let real: Vec<_> = (2..5).map(|h| ([10, 244, 2, h].into(), 8080)).collect();
        let services = bench_services(400, &real);
        let text = restore_input(&services, &bench_cluster([192, 168, 10, 11].into()));
        // 1,200 endpoints > 1,000: SEP and SVC->SEP rules lose their comments.
        let svc = svc_chain(&services[0]);
        let rules: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc} ")))
            .collect();
        assert_eq!(rules.len(), 4, "masquerade rule + 3 endpoint rules");
        assert!(rules[1].contains("--probability 0.3333333333") && !rules[1].contains("comment"));
        assert!(rules[2].contains("--probability 0.5000000000"));
        assert!(!rules[3].contains("--probability"));
        assert_eq!(text.matches(" -j DNAT ").count(), 1200);
        // One rule per service, then the NodePort tail rule last.
        let kube_services: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES "))
            .collect();
        assert_eq!(kube_services.len(), 401);
        assert!(kube_services[399].contains("-d 10.96.1.153 --dport 80"));
        assert!(kube_services[400].ends_with("-j KUBE-NODEPORTS"));
    }

    #[test]
    fn jump_rules_hook_every_kube_chain() {
        let jumps = jump_rules();
        let has = |table: &str, src: &str, dst: &str| {
            jumps
                .iter()
                .any(|j| j[1] == table && j[3] == src && j.last().is_some_and(|d| d == dst))
        };
        assert!(has("nat", "PREROUTING", "KUBE-SERVICES"));
        assert!(has("nat", "OUTPUT", "KUBE-SERVICES"));
        assert!(has("nat", "POSTROUTING", "KUBE-POSTROUTING"));
        assert!(has("filter", "FORWARD", "KUBE-FORWARD"));
        assert!(has("filter", "FORWARD", "KUBE-SERVICES"));
    }
}
