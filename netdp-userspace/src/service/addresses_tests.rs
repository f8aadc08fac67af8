use clap::Parser;

use super::*;
use crate::service::{parse_file, validate};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 11);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 12);

fn config(extra: &str) -> NetworkConfig {
    NetworkConfig::parse(&format!(r#"{{"Network": "10.244.0.0/16"{extra}}}"#))
        .expect("valid config")
}

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    addresses: AddressArgs,
}

fn flags(argv: &[&str]) -> Result<AddressArgs, String> {
    Flags::try_parse_from(std::iter::once("test").chain(argv.iter().copied()))
        .map(|f| f.addresses)
        .map_err(|e| e.to_string())
}

fn policy(argv: &[&str], config: &NetworkConfig) -> AddressPolicy {
    AddressPolicy::new(
        &flags(argv).expect("valid flags"),
        Some(config),
        [NODE, PEER],
    )
}

/// A LoadBalancer service with these address fields (YAML flow values).
fn service(cluster_ip: &str, external_ips: &str, lb_ip: &str, ingress: &str) -> ServiceDef {
    let yaml = format!(
        r#"
metadata: {{name: web}}
spec:
  type: LoadBalancer
  clusterIP: {cluster_ip}
  externalIPs: {external_ips}
  loadBalancerIP: "{lb_ip}"
  ports: [{{port: 80, nodePort: 30080}}]
status: {{loadBalancer: {{ingress: {ingress}}}}}
"#
    );
    let docs = parse_file(&yaml).expect("parses");
    validate(&docs[0]).expect("valid")
}

#[test]
fn without_a_service_range_a_cluster_ip_is_only_kept_off_pods_and_nodes() {
    let p = policy(&[], &config(""));
    assert_eq!(p.check(&service("10.96.0.10", "[]", "", "[]")), Ok(()));
    assert_eq!(p.check(&service("172.16.5.5", "[]", "", "[]")), Ok(()));
    assert_eq!(
        p.check(&service("10.244.1.5", "[]", "", "[]")),
        Err("spec.clusterIP: 10.244.1.5 is inside the pod Network 10.244.0.0/16".into())
    );
    assert_eq!(
        p.check(&service("192.168.10.12", "[]", "", "[]")),
        Err("spec.clusterIP: 192.168.10.12 is a node address".into())
    );
}

#[test]
fn the_flag_wins_over_the_network_configs_service_network() {
    let from_config = policy(&[], &config(r#", "ServiceNetwork": "10.96.0.0/16""#));
    assert_eq!(
        from_config.check(&service("10.96.3.4", "[]", "", "[]")),
        Ok(())
    );
    assert_eq!(
        from_config.check(&service("10.97.0.1", "[]", "", "[]")),
        Err(
            "spec.clusterIP: 10.97.0.1 is outside the service range 10.96.0.0/16 (ServiceNetwork)"
                .into()
        )
    );
    let flag = policy(
        &["--service-cluster-ip-range=10.97.0.0/16"],
        &config(r#", "ServiceNetwork": "10.96.0.0/16""#),
    );
    assert_eq!(flag.check(&service("10.97.0.1", "[]", "", "[]")), Ok(()));
    assert_eq!(
        flag.check(&service("10.96.3.4", "[]", "", "[]")),
        Err(
            "spec.clusterIP: 10.96.3.4 is outside the service range 10.97.0.0/16 (--service-cluster-ip-range)"
                .into()
        )
    );
}

#[test]
fn external_and_load_balancer_ips_stay_off_pods_services_and_nodes() {
    let p = policy(&["--service-cluster-ip-range=10.96.0.0/12"], &config(""));
    assert_eq!(
        p.check(&service(
            "10.96.0.10",
            "[203.0.113.7]",
            "198.51.100.1",
            "[{ip: 198.51.100.2}]"
        )),
        Ok(())
    );
    let bad = service(
        "10.96.0.10",
        "[203.0.113.7, 10.244.3.3, 10.100.0.1, 192.168.10.11]",
        "192.168.10.12",
        "[{ip: 198.51.100.2}, {ip: 10.244.9.9}]",
    );
    assert_eq!(
        p.check(&bad).unwrap_err().split("; ").collect::<Vec<_>>(),
        [
            "spec.externalIPs[1]: 10.244.3.3 is inside the pod Network 10.244.0.0/16",
            "spec.externalIPs[2]: 10.100.0.1 is inside the service range 10.96.0.0/12 (--service-cluster-ip-range)",
            "spec.externalIPs[3]: 192.168.10.11 is a node address",
            "spec.loadBalancerIP: 192.168.10.12 is a node address",
            "status.loadBalancer.ingress[1].ip: 10.244.9.9 is inside the pod Network 10.244.0.0/16",
        ]
    );
}

#[test]
fn an_allow_list_narrows_external_ips_only() {
    let p = policy(
        &["--external-ip-allow=203.0.113.0/24,198.51.100.128/25"],
        &config(""),
    );
    assert_eq!(
        p.check(&service(
            "10.96.0.10",
            "[203.0.113.7, 198.51.100.200]",
            "",
            "[]"
        )),
        Ok(())
    );
    // LoadBalancer addresses come from the load balancer, not from the allow list.
    assert_eq!(
        p.check(&service(
            "10.96.0.10",
            "[]",
            "192.0.2.1",
            "[{ip: 192.0.2.2}]"
        )),
        Ok(())
    );
    assert_eq!(
        p.check(&service("10.96.0.10", "[203.0.113.7, 8.8.8.8]", "", "[]")),
        Err(
            "spec.externalIPs[1]: 8.8.8.8 is not in --external-ip-allow (203.0.113.0/24,198.51.100.128/25)"
                .into()
        )
    );
    // Inside the allow list but a node's address: still refused.
    let p = policy(&["--external-ip-allow=192.168.10.0/24"], &config(""));
    assert_eq!(
        p.check(&service("10.96.0.10", "[192.168.10.12]", "", "[]")),
        Err("spec.externalIPs[0]: 192.168.10.12 is a node address".into())
    );
}

#[test]
fn a_headless_service_programs_nothing_and_passes() {
    let docs = parse_file("metadata: {name: db}\nspec: {clusterIP: None, ports: [{port: 5432}]}\n")
        .expect("parses");
    let def = validate(&docs[0]).expect("valid");
    assert_eq!(policy(&[], &config("")).check(&def), Ok(()));
}

#[test]
fn without_a_network_config_only_what_is_known_is_checked() {
    let args = flags(&["--service-cluster-ip-range=10.96.0.0/12"]).expect("valid flags");
    let p = AddressPolicy::new(&args, None, []);
    assert_eq!(
        p.check(&service("10.96.0.1", "[10.244.3.3]", "", "[]")),
        Ok(())
    );
    assert!(p.check(&service("10.244.0.5", "[]", "", "[]")).is_err());
}

#[test]
fn flags_take_cidrs_and_say_what_is_wrong() {
    let a = flags(&["--external-ip-allow=203.0.113.0/24,198.51.100.0/25"]).expect("valid");
    assert_eq!(a.external_ip_allow.len(), 2);
    assert_eq!(a.service_cluster_ip_range, None);
    for (argv, says) in [
        (
            "--service-cluster-ip-range=10.96.0.1/12",
            "10.96.0.1/12 has host bits set; did you mean 10.96.0.0/12?",
        ),
        (
            "--service-cluster-ip-range=fd00::/108",
            "\"fd00::/108\" is not an IPv4 CIDR",
        ),
        (
            "--external-ip-allow=203.0.113.0/24,nope",
            "\"nope\" is not an IPv4 CIDR",
        ),
    ] {
        let e = flags(&[argv]).expect_err(argv);
        assert!(e.contains(says), "{argv}: {e}");
    }
}

#[test]
fn endpoints_lie_in_the_pod_network_on_nodes_or_in_the_allowed_ranges() {
    let c = config("");
    let p = policy(&[], &c);
    let refused = |p: &AddressPolicy, ip: [u8; 4]| p.endpoint_refused(Ipv4Addr::from(ip));
    assert_eq!(refused(&p, [10, 244, 3, 7]), None, "a pod");
    assert_eq!(
        refused(&p, [192, 168, 10, 12]),
        None,
        "a node (host-network pod)"
    );
    let outside = refused(&p, [198, 51, 100, 7]).expect("refused");
    assert!(
        outside.contains("outside the pod Network 10.244.0.0/16 and not a node address"),
        "{outside}"
    );
    // Allowed by flag; never a loopback or link-local (metadata) address, whatever the flag.
    let p = policy(&["--endpoint-allow=198.51.100.0/24,0.0.0.0/0"], &c);
    assert_eq!(refused(&p, [198, 51, 100, 7]), None);
    for (ip, why) in [
        ([169, 254, 169, 254], "link-local"),
        ([127, 0, 0, 1], "loopback"),
        ([224, 0, 0, 1], "not a unicast"),
    ] {
        let said = refused(&p, ip).expect("never an endpoint");
        assert!(said.contains(why), "{said}");
    }
    // A service with one bad endpoint of three: that one's index.
    let def = validate(
        &parse_file(
            "metadata: {name: web}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}]\n\
             endpoints:\n- {ip: 10.244.1.5}\n- {ip: 169.254.169.254}\n- {ip: 10.244.2.5}\n",
        )
        .unwrap()[0],
    )
    .unwrap();
    let bad = policy(&[], &c).refused_endpoints(&def);
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].0, 1);
    assert!(
        flags(&["--endpoint-allow=10.0.0.1/8"])
            .unwrap_err()
            .contains("host bits")
    );
}

#[test]
fn a_change_of_lease_addresses_alone_touches_only_services_naming_them() {
    let cfg = config("");
    let before = policy(&[], &cfg);
    let moved = Ipv4Addr::new(192, 168, 10, 99);
    let after = AddressPolicy::new(&flags(&[]).expect("valid flags"), Some(&cfg), [NODE, moved]);
    let changed = after
        .node_ips_changed(&before)
        .expect("only node addresses changed");
    assert_eq!(changed, [PEER, moved].into_iter().collect());
    // Anything else changing as well: everything is to be re-checked.
    let other = AddressPolicy::new(
        &flags(&["--external-ip-allow", "198.51.100.0/24"]).expect("valid flags"),
        Some(&cfg),
        [NODE, moved],
    );
    assert_eq!(other.node_ips_changed(&before), None);

    let untouched = service("10.96.0.10", "[198.51.100.7]", "", "[]");
    assert!(!AddressPolicy::touches(&untouched, &changed));
    let named = service("10.96.0.10", &format!("[{moved}]"), "", "[]");
    assert!(AddressPolicy::touches(&named, &changed));
    let docs = parse_file(&format!(
        "metadata: {{name: host}}\nspec: {{clusterIP: 10.96.0.11, ports: [{{port: 80}}]}}\nendpoints: [{{ip: {PEER}}}]\n"
    ))
    .expect("parses");
    let endpoint = validate(&docs[0]).expect("valid");
    assert!(
        AddressPolicy::touches(&endpoint, &changed),
        "a node address as endpoint"
    );
}
