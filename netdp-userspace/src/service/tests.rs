use std::net::Ipv4Addr;

use super::{
    NodeInfo, decode, parse_file, plan,
    validate::{Algorithm, Forwarding, ServiceType, validate},
};

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations:
    netdp.io/lb-algorithm: maglev
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalIPs: [198.51.100.7]
  selector: {app: web}
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, protocol: UDP, port: 53, targetPort: "5353", nodePort: 30053}
  sessionAffinity: ClientIP
  externalTrafficPolicy: Local
endpoints:
- {ip: 10.244.1.5, nodeName: n1}
- {ip: 10.244.2.5, nodeName: n2}
- {ip: 10.244.2.6, nodeName: n2, ready: false}
"#;

#[test]
fn a_kubernetes_style_yaml_service_parses() {
    let docs = parse_file(WEB).unwrap();
    assert_eq!(docs.len(), 1);
    let def = validate(&docs[0]).unwrap();
    assert_eq!(def.id(), "shop/web");
    assert_eq!(def.kind, ServiceType::NodePort);
    assert_eq!(def.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
    assert_eq!(def.algorithm, Algorithm::Maglev);
    assert_eq!(def.affinity_timeout, Some(10800));
    assert!(def.local_policy);
    assert_eq!(def.ports[1].target_port, 5353);
    assert_eq!(def.ready_endpoints().count(), 2);
    // Stored as JSON, read back the same.
    let json = serde_json::to_vec(&docs[0]).unwrap();
    assert_eq!(decode(&json).unwrap(), def);
}

#[test]
fn multi_document_yaml_json_arrays_and_lists() {
    let two = format!("{WEB}\n---\n{}", WEB.replace("name: web", "name: api"));
    assert_eq!(parse_file(&two).unwrap().len(), 2);
    let arr = r#"[{"metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]}},
                  {"metadata":{"name":"b"},"spec":{"clusterIP":"10.96.0.2","ports":[{"port":80}]}}]"#;
    assert_eq!(parse_file(arr).unwrap().len(), 2);
    let list = r#"{"kind":"List","items":[{"metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]}}]}"#;
    assert_eq!(parse_file(list).unwrap().len(), 1);
}

#[test]
fn errors_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":"x"}]}}"#,
            "spec.ports[0].port: invalid type",
        ),
        (
            r#"{"metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":70000}]}}"#,
            "spec.ports[0].port: 70000 is not a port",
        ),
        (
            r#"{"metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.300","ports":[{"port":80}]}}"#,
            "spec.clusterIP: \"10.96.0.300\" is not an IPv4 address",
        ),
        (
            r#"{"metadata":{"name":"a"},"spec":{"type":"NodePort","clusterIP":"10.96.0.1","ports":[{"port":80}]}}"#,
            "spec.ports[0].nodePort: required for type NodePort",
        ),
        (
            r#"{"metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80,"protocol":"SCTP"}]}}"#,
            "spec.ports[0].protocol: \"SCTP\" is not supported",
        ),
        (
            r#"{"metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80,"targetPort":"http"}]}}"#,
            "spec.ports[0].targetPort: named ports",
        ),
        (
            r#"{"metadata":{"name":"A_b"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]}}"#,
            "metadata.name",
        ),
        (
            r#"{"metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]},"endpoints":[{"ip":"10.1.1.1"},{"ip":"10.1.1.1"}]}"#,
            "endpoints[1].ip: 10.1.1.1 is listed twice",
        ),
        (
            r#"{"metadata":{"name":"a","annotations":{"netdp.io/lb-algorithm":"rr"}},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]}}"#,
            "metadata.annotations[\"netdp.io/lb-algorithm\"]: \"rr\"",
        ),
        (
            r#"{"metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}],"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":0}}}}"#,
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0",
        ),
        (
            r#"{"metadata":{"name":"a","annotations":{"service.cilium.io/forwarding-mode":"direct"}},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]}}"#,
            "metadata.annotations[\"service.cilium.io/forwarding-mode\"]: \"direct\" is not one of snat, dsr",
        ),
        (r#"{"spec":{}}"#, "missing field `metadata`"),
        ("metadata: [", "document 1: not valid YAML"),
    ];
    for (text, want) in cases {
        let err = match parse_file(text) {
            Err(e) => format!("{e:#}"),
            Ok(docs) => validate(&docs[0]).expect_err(text),
        };
        assert!(err.contains(want), "{text}\n  gave: {err}\n  want: {want}");
    }
}

#[test]
fn plans_put_local_endpoints_first_and_node_ports_on_node_addresses() {
    let def = validate(&parse_file(WEB).unwrap()[0]).unwrap();
    let node = NodeInfo {
        name: "n2".into(),
        addresses: vec![
            Ipv4Addr::new(192, 168, 10, 12),
            Ipv4Addr::new(10, 244, 2, 1),
        ],
        subnet: "10.244.2.0/24".parse().unwrap(),
        zone: None,
        forwarding: Default::default(),
    };
    let p = plan(&def, &node).unwrap();
    // 2 ports x (cluster IP + external IP + 2 node addresses).
    assert_eq!(p.frontends.len(), 8);
    assert_eq!(p.local_count, 1);
    assert_eq!(p.backends[0].addr, [10, 244, 2, 5]);
    assert_eq!(p.backends[1].addr, [10, 244, 1, 5]);
    assert!(p.maglev);
    let external = p.frontends.values().filter(|f| f.external).count();
    assert_eq!(external, 6);
    assert!(p.frontends.values().all(|f| f.local_only == f.external));
    // Headless services need nothing.
    let headless = r#"{"metadata":{"name":"h"},"spec":{"clusterIP":"None","ports":[{"port":80}]}}"#;
    let def = validate(&parse_file(headless).unwrap()[0]).unwrap();
    assert!(plan(&def, &node).is_none());
}

/// kube-proxy's rule (KEP-1669): terminating endpoints that still serve take traffic only
/// when no endpoint is ready, so the last pods of a rolling update finish their work.
#[test]
fn terminating_serving_endpoints_are_used_only_when_none_is_ready() {
    let svc = |endpoints: &str| {
        let text = format!(
            r#"{{"metadata":{{"name":"w"}},"spec":{{"clusterIP":"10.96.0.9","ports":[{{"port":80}}]}},"endpoints":[{endpoints}]}}"#
        );
        let def = validate(&parse_file(&text).unwrap()[0]).unwrap();
        let mut ips: Vec<String> = def.ready_endpoints().map(|e| e.ip.to_string()).collect();
        ips.sort();
        ips
    };
    let ready = r#"{"ip":"10.244.1.1","ready":true}"#;
    let draining = r#"{"ip":"10.244.1.2","ready":false,"serving":true,"terminating":true}"#;
    let gone = r#"{"ip":"10.244.1.3","ready":false,"serving":false,"terminating":true}"#;
    let unready = r#"{"ip":"10.244.1.4","ready":false}"#;
    assert_eq!(
        svc(&format!("{ready},{draining},{gone},{unready}")),
        ["10.244.1.1"]
    );
    assert_eq!(svc(&format!("{draining},{gone},{unready}")), ["10.244.1.2"]);
    assert!(svc(&format!("{gone},{unready}")).is_empty());
    // Without conditions an endpoint is ready (the format netdp stores).
    assert_eq!(svc(r#"{"ip":"10.244.1.5"}"#), ["10.244.1.5"]);
}

#[test]
fn the_forwarding_mode_annotation_picks_dsr_for_external_frontends_only() {
    let doc = |annotations: &str| {
        let text = format!(
            r#"{{"metadata":{{"name":"a"{annotations}}},"spec":{{"type":"NodePort","clusterIP":"10.96.0.1","externalIPs":["192.0.2.7"],"ports":[{{"port":80,"nodePort":30080}}]}}}}"#
        );
        validate(&parse_file(&text).unwrap()[0]).unwrap()
    };
    let node = |forwarding| NodeInfo {
        name: "n1".into(),
        addresses: vec![Ipv4Addr::new(192, 168, 10, 11)],
        subnet: "10.244.1.0/24".parse().unwrap(),
        zone: None,
        forwarding,
    };
    // (annotations, the node's --lb-mode, whether external frontends are DSR)
    let cases = [
        ("", Forwarding::Snat, false),
        ("", Forwarding::Dsr, true),
        (
            r#","annotations":{"netdp.io/forwarding-mode":"dsr"}"#,
            Forwarding::Snat,
            true,
        ),
        (
            r#","annotations":{"netdp.io/forwarding-mode":"snat"}"#,
            Forwarding::Dsr,
            false,
        ),
        (
            r#","annotations":{"service.cilium.io/forwarding-mode":"dsr"}"#,
            Forwarding::Snat,
            true,
        ),
    ];
    for (annotations, mode, dsr) in cases {
        let p = plan(&doc(annotations), &node(mode)).unwrap();
        for (key, fp) in &p.frontends {
            let want = dsr && fp.external;
            assert_eq!(fp.dsr, want, "{annotations} {mode:?}: frontend {key:?}");
        }
        assert!(
            p.frontends.values().any(|f| !f.external),
            "the cluster IP is there"
        );
    }
}
