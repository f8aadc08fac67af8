use super::*;

fn parse(json: &str) -> Result<NetworkConfig, ConfigError> {
    NetworkConfig::parse(json)
}

fn field_of(json: &str) -> String {
    parse(json).expect_err(json).field
}

#[test]
fn seed_defaults() {
    // (Network, SubnetLen, SubnetMin, SubnetMax) as the seed describes them.
    let table = [
        ("10.1.0.0/16", 24, "10.1.1.0", "10.1.255.0"),
        ("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0"),
        ("10.1.0.0/24", 25, "10.1.0.128", "10.1.0.128"),
        ("10.1.0.0/25", 26, "10.1.0.64", "10.1.0.64"),
        ("192.168.0.0/23", 24, "192.168.1.0", "192.168.1.0"),
    ];
    for (net, len, min, max) in table {
        let c = parse(&format!(r#"{{"Network": "{net}"}}"#)).unwrap();
        assert_eq!(c.subnet_len, len, "{net}");
        assert_eq!(c.subnet_min.to_string(), min, "{net}");
        assert_eq!(c.subnet_max.to_string(), max, "{net}");
        assert_eq!(
            c.backend,
            Backend::Udp { port: 8285 },
            "udp when Backend is absent"
        );
    }
    let c = parse(r#"{"Network": "10.1.0.0/16"}"#).unwrap();
    assert_eq!(c.subnet_count(), 255);
    assert_eq!(c.subnet(0).to_string(), "10.1.1.0/24");
    assert_eq!(c.subnet(254).to_string(), "10.1.255.0/24");
}

#[test]
fn backend_defaults() {
    let c = parse(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}"#).unwrap();
    assert_eq!(
        c.backend,
        Backend::Vxlan {
            vni: 1,
            port: 8472,
            direct_routing: false
        }
    );
    let c = parse(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "VNI": 42, "Port": 4789, "DirectRouting": true}}"#).unwrap();
    assert_eq!(
        c.backend,
        Backend::Vxlan {
            vni: 42,
            port: 4789,
            direct_routing: true
        }
    );
    let c = parse(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "ipip"}}"#).unwrap();
    assert_eq!(
        c.backend,
        Backend::Ipip {
            direct_routing: false
        }
    );
    let c = parse(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#).unwrap();
    assert_eq!(c.backend, Backend::HostGw);
}

#[test]
fn explicit_values_and_flannel_style_bounds() {
    let c = parse(
        r#"{"Network": "10.1.0.0/16", "SubnetLen": 26, "SubnetMin": "10.1.4.0", "SubnetMax": "10.1.4.192/26"}"#,
    )
    .unwrap();
    assert_eq!(c.subnet_len, 26);
    assert_eq!(c.subnet_count(), 4);
    assert!(c.fits(&"10.1.4.64/26".parse().unwrap()));
    assert!(!c.fits(&"10.1.5.0/26".parse().unwrap()));
    assert!(!c.fits(&"10.1.4.0/24".parse().unwrap()));
}

#[test]
fn invalid_values_name_the_field() {
    let cases = [
        (r#"{}"#, "Network"),
        (r#"{"Network": "banana"}"#, "Network"),
        (r#"{"Network": 10}"#, "Network"),
        (r#"{"Network": "10.1.0.1/16"}"#, "Network"),
        (
            r#"{"Network": "10.1.0.0/16", "SubnetLen": 16}"#,
            "SubnetLen",
        ),
        (r#"{"Network": "10.1.0.0/16", "SubnetLen": 8}"#, "SubnetLen"),
        (
            r#"{"Network": "10.1.0.0/16", "SubnetLen": "24"}"#,
            "SubnetLen",
        ),
        (
            r#"{"Network": "10.1.0.0/16", "SubnetMin": "10.1.1.5"}"#,
            "SubnetMin",
        ),
        (
            r#"{"Network": "10.1.0.0/16", "SubnetMin": "10.2.1.0"}"#,
            "SubnetMin",
        ),
        (
            r#"{"Network": "10.1.0.0/16", "SubnetMax": "10.1.300.0"}"#,
            "SubnetMax",
        ),
        (
            r#"{"Network": "10.1.0.0/16", "SubnetMax": "10.1.3.0/25"}"#,
            "SubnetMax",
        ),
        (
            r#"{"Network": "10.1.0.0/16", "SubnetMin": "10.1.9.0", "SubnetMax": "10.1.3.0"}"#,
            "SubnetMin",
        ),
        (
            r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "wireguard"}}"#,
            "Backend.Type",
        ),
        (
            r#"{"Network": "10.1.0.0/16", "Backend": "vxlan"}"#,
            "Backend",
        ),
        (
            r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "VNI": 0}}"#,
            "Backend.VNI",
        ),
        (
            r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "VNI": 16777216}}"#,
            "Backend.VNI",
        ),
        (
            r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "Port": 70000}}"#,
            "Backend.Port",
        ),
        (
            r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "udp", "Port": 0}}"#,
            "Backend.Port",
        ),
        (
            r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw", "VNI": 1}}"#,
            "Backend.VNI",
        ),
        (
            r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "ipip", "DirectRouting": "yes"}}"#,
            "Backend.DirectRouting",
        ),
        (r#"{"Network": "10.1.0.0/16", "MTU": 100}"#, "MTU"),
        (
            r#"{"Network": "10.1.0.0/16", "Subnetlen": 24}"#,
            "Subnetlen",
        ),
        (r#"{"Network": "10.1.0.0/16""#, "config"),
    ];
    for (json, field) in cases {
        assert_eq!(field_of(json), field, "{json}");
    }
    let e = parse(r#"{"Network": "10.1.0.0/16", "SubnetLen": 16}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "SubnetLen: /16 is not longer than the Network's /16"
    );
}

#[test]
fn mtu_follows_backend_overhead() {
    for (ty, mtu) in [
        ("host-gw", 1500),
        ("vxlan", 1450),
        ("udp", 1472),
        ("ipip", 1480),
    ] {
        let c = parse(&format!(
            r#"{{"Network": "10.1.0.0/16", "Backend": {{"Type": "{ty}"}}}}"#
        ))
        .unwrap();
        assert_eq!(c.pod_mtu(1500), mtu, "{ty}");
    }
    let c = parse(r#"{"Network": "10.1.0.0/16", "MTU": 1400}"#).unwrap();
    assert_eq!(c.pod_mtu(9000), 1400);
    // Flannel's vxlan option, unless the network-wide one says otherwise.
    let vxlan = |extra: &str| {
        parse(&format!(
            r#"{{"Network": "10.1.0.0/16", {extra} "Backend": {{"Type": "vxlan", "MTU": 1300}}}}"#
        ))
    };
    assert_eq!(vxlan("").unwrap().pod_mtu(1500), 1300);
    assert_eq!(vxlan(r#""MTU": 1350,"#).unwrap().pod_mtu(1500), 1350);
    let e = parse(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "MTU": 99}}"#)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Backend.MTU: 99 is below IPv4's minimum of 576"
    );
}

#[test]
fn service_network_is_optional_and_never_overlaps_the_network() {
    // kube-flannel.yml's net-conf.json, and Flannel's dual-stack keys: no ServiceNetwork.
    let flannel = parse(
        r#"{"Network": "10.244.0.0/16", "EnableNFTables": false, "EnableIPv4": true,
            "EnableIPv6": false, "IPv6Network": "2001:db8::/56", "Backend": {"Type": "vxlan"}}"#,
    )
    .unwrap();
    assert_eq!(flannel.service_network, None);
    assert!(
        !serde_json::to_string(&flannel)
            .unwrap()
            .contains("ServiceNetwork")
    );
    let c = parse(r#"{"Network": "10.244.0.0/16", "ServiceNetwork": "10.96.0.0/12"}"#).unwrap();
    assert_eq!(c.service_network, Some("10.96.0.0/12".parse().unwrap()));
    assert!(
        serde_json::to_string(&c)
            .unwrap()
            .contains(r#""ServiceNetwork":"10.96.0.0/12""#)
    );
    for (json, why) in [
        (
            r#"{"Network": "10.244.0.0/16", "ServiceNetwork": "10.0.0.0/8"}"#,
            "ServiceNetwork: 10.0.0.0/8 overlaps the Network 10.244.0.0/16",
        ),
        (
            r#"{"Network": "10.244.0.0/16", "ServiceNetwork": "10.244.128.0/20"}"#,
            "ServiceNetwork: 10.244.128.0/20 overlaps the Network 10.244.0.0/16",
        ),
        (
            r#"{"Network": "10.244.0.0/16", "ServiceNetwork": "10.96.0.1/12"}"#,
            "ServiceNetwork: 10.96.0.1/12 has host bits set; did you mean 10.96.0.0/12?",
        ),
        (
            r#"{"Network": "10.244.0.0/16", "ServiceNetwork": 12}"#,
            "ServiceNetwork: expected a string, got 12",
        ),
    ] {
        assert_eq!(parse(json).unwrap_err().to_string(), why, "{json}");
    }
}

#[test]
fn clusters_of_a_mesh() {
    let c = parse(
        r#"{"Network": "10.1.0.0/16", "ClusterName": "east", "ClusterID": 1,
            "Clusters": [{"Name": "west", "Endpoints": ["https://192.168.20.2:2379"],
                          "Prefix": "/west/network/", "CAFile": "/etc/w/ca.pem",
                          "CertFile": "/etc/w/c.pem", "KeyFile": "/etc/w/k.pem"},
                         {"Name": "north", "Mode": "gateway", "Endpoints": ["http://10.9.0.1:2379"]}]}"#,
    )
    .unwrap();
    let id = c.identity.as_ref().unwrap();
    assert_eq!((id.name.as_str(), id.id), ("east", 1));
    assert_eq!(c.clusters.len(), 2);
    assert_eq!(c.clusters[0].prefix, "/west/network");
    assert_eq!(c.clusters[0].key_file.as_deref(), Some("/etc/w/k.pem"));
    assert_eq!(c.clusters[1].prefix, clusters::DEFAULT_PREFIX);
    assert_eq!(c.clusters[1].ca_file, None);
    assert_eq!(c.clusters[0].mode, ClusterMode::Direct);
    assert_eq!(c.clusters[1].mode, ClusterMode::Gateway);
    // The keys come back as they were given (netdp network show).
    let shown = serde_json::to_value(&c).unwrap();
    assert_eq!(shown["ClusterName"], "east");
    assert_eq!(shown["ClusterID"], 1);
    assert_eq!(shown["Clusters"][1]["Name"], "north");
    // No mesh: no keys.
    let plain = serde_json::to_value(parse(r#"{"Network": "10.1.0.0/16"}"#).unwrap()).unwrap();
    assert!(plain.get("ClusterName").is_none() && plain.get("Clusters").is_none());
}

#[test]
fn bad_cluster_keys_name_the_field() {
    let net = r#""Network": "10.1.0.0/16""#;
    let own = r#""ClusterName": "east", "ClusterID": 1"#;
    let west = r#""Name": "west", "Endpoints": ["http://10.9.0.1:2379"]"#;
    for (json, field) in [
        (format!(r#"{{{net}, "ClusterName": "east"}}"#), "ClusterID"),
        (format!(r#"{{{net}, "ClusterID": 3}}"#), "ClusterName"),
        (
            format!(r#"{{{net}, "ClusterName": "East!", "ClusterID": 1}}"#),
            "ClusterName",
        ),
        (
            format!(r#"{{{net}, "ClusterName": "east", "ClusterID": 0}}"#),
            "ClusterID",
        ),
        (
            format!(r#"{{{net}, "ClusterName": "east", "ClusterID": 256}}"#),
            "ClusterID",
        ),
        (
            format!(r#"{{{net}, "Clusters": [{{{west}}}]}}"#),
            "Clusters",
        ),
        (format!(r#"{{{net}, {own}, "Clusters": {{}}}}"#), "Clusters"),
        (
            format!(r#"{{{net}, {own}, "Clusters": [{{{west}, "Mode": "x"}}]}}"#),
            "Clusters[0].Mode",
        ),
        (
            format!(r#"{{{net}, {own}, "Clusters": [{{{west}, "Tunnel": 1}}]}}"#),
            "Clusters[0].Tunnel",
        ),
        (
            format!(r#"{{{net}, {own}, "Clusters": [{{"Endpoints": ["http://a:1"]}}]}}"#),
            "Clusters[0].Name",
        ),
        (
            format!(
                r#"{{{net}, {own}, "Clusters": [{{"Name": "east", "Endpoints": ["http://a:1"]}}]}}"#
            ),
            "Clusters[0].Name",
        ),
        (
            format!(r#"{{{net}, {own}, "Clusters": [{{{west}}}, {{{west}}}]}}"#),
            "Clusters[1].Name",
        ),
        (
            format!(r#"{{{net}, {own}, "Clusters": [{{"Name": "west"}}]}}"#),
            "Clusters[0].Endpoints",
        ),
        (
            format!(r#"{{{net}, {own}, "Clusters": [{{"Name": "west", "Endpoints": []}}]}}"#),
            "Clusters[0].Endpoints",
        ),
        (
            format!(
                r#"{{{net}, {own}, "Clusters": [{{"Name": "west", "Endpoints": ["10.9.0.1:2379"]}}]}}"#
            ),
            "Clusters[0].Endpoints",
        ),
        (
            format!(r#"{{{net}, {own}, "Clusters": [{{{west}, "Prefix": "west"}}]}}"#),
            "Clusters[0].Prefix",
        ),
        (
            format!(r#"{{{net}, {own}, "Clusters": [{{{west}, "CertFile": "/c.pem"}}]}}"#),
            "Clusters[0].KeyFile",
        ),
    ] {
        assert_eq!(field_of(&json), field, "{json}");
    }
    // Clusters without identity is fine when empty.
    assert!(parse(&format!(r#"{{{net}, "Clusters": []}}"#)).is_ok());
}
