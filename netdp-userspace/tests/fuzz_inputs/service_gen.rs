//! Valid service documents, and single-field mutations of them that no validator may
//! accept, each with the path its error must name.
use proptest::prelude::*;
use serde_json::{Value, json};

use super::inputs::*;

fn label() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,20}[a-z0-9])?"
}

/// Unicast addresses a service may use (not 0/8, 127/8, multicast or broadcast).
fn unicast() -> impl Strategy<Value = String> {
    (1u8..=223, any::<[u8; 3]>())
        .prop_filter("loopback", |(a, _)| *a != 127)
        .prop_map(|(a, [b, c, d])| format!("{a}.{b}.{c}.{d}"))
}

/// A service the validator accepts: its JSON.
pub fn valid_service() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        Just(None),
        Just(Some("ClusterIP")),
        Just(Some("NodePort")),
        Just(Some("LoadBalancer")),
    ];
    (
        (label(), proptest::option::of(label()), kind, any::<bool>()),
        (unicast(), 1usize..4, 1u16..60000, any::<u8>()),
        (
            prop::collection::vec(unicast(), 0..3),
            proptest::option::of(unicast()),
        ),
        (
            proptest::option::of(proptest::option::of(1i64..=86400)),
            any::<bool>(),
            prop_oneof![Just(None), Just(Some("random")), Just(Some("maglev"))],
            prop::collection::btree_map("[a-z./]{1,20}", ".{0,20}", 0..3),
        ),
        prop::collection::btree_set(unicast(), 0..8),
        prop::collection::vec(
            (
                proptest::option::of(label()),
                proptest::option::of(any::<bool>()),
            ),
            8,
        ),
    )
        .prop_map(|(meta, ports, external, options, eps, ep_opts)| {
            let (name, namespace, kind, typed) = meta;
            let (cluster_ip, nports, base, bits) = ports;
            let (external_ips, lb_ip) = external;
            let (affinity, local, algorithm, mut annotations) = options;
            let node_ports = matches!(kind, Some("NodePort" | "LoadBalancer"));
            let mut doc = json!({"metadata": {"name": name}, "spec": {"clusterIP": cluster_ip}});
            if typed {
                doc["apiVersion"] = json!("v1");
                doc["kind"] = json!("Service");
            }
            if let Some(ns) = namespace {
                doc["metadata"]["namespace"] = json!(ns);
            }
            annotations.retain(|k, _| k != "netdp.io/lb-algorithm");
            if let Some(a) = algorithm {
                annotations.insert("netdp.io/lb-algorithm".into(), a.into());
            }
            if !annotations.is_empty() {
                doc["metadata"]["annotations"] = json!(annotations);
            }
            let spec = &mut doc["spec"];
            if let Some(k) = kind {
                spec["type"] = json!(k);
            }
            let ports: Vec<Value> = (0..nports)
                .map(|i| {
                    let bit = |n: usize| bits >> ((i * 2 + n) % 8) & 1 == 1;
                    let mut p = json!({"port": base + i as u16});
                    if nports > 1 || bit(0) {
                        p["name"] = json!(format!("p{i}"));
                    }
                    if bit(1) {
                        p["protocol"] = json!(if bit(2) { "UDP" } else { "TCP" });
                    }
                    match i % 3 {
                        0 => {}
                        1 => p["targetPort"] = json!(8000 + i),
                        _ => p["targetPort"] = json!((9000 + i).to_string()),
                    }
                    if node_ports {
                        p["nodePort"] = json!(30000 + i);
                    }
                    p
                })
                .collect();
            spec["ports"] = json!(ports);
            let external = !external_ips.is_empty() || lb_ip.is_some();
            if !external_ips.is_empty() {
                spec["externalIPs"] = json!(external_ips);
            }
            if let Some(ip) = &lb_ip {
                spec["loadBalancerIP"] = json!(ip);
                doc["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
            }
            let spec = &mut doc["spec"];
            if let Some(timeout) = affinity {
                spec["sessionAffinity"] = json!("ClientIP");
                if let Some(t) = timeout {
                    spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": t}});
                }
            }
            if local && (node_ports || external) {
                spec["externalTrafficPolicy"] = json!("Local");
            }
            let endpoints: Vec<Value> = eps
                .into_iter()
                .zip(ep_opts)
                .map(|(ip, (node, ready))| {
                    let mut e = json!({"ip": ip});
                    if let Some(n) = node {
                        e["nodeName"] = json!(n);
                    }
                    if let Some(r) = ready {
                        e["ready"] = json!(r);
                    }
                    e
                })
                .collect();
            doc["endpoints"] = json!(endpoints);
            doc
        })
}

/// Sets `path` (`spec.ports[0].port`) in `doc`, creating objects on the way.
fn set(doc: &mut Value, path: &str, v: Value) {
    let mut at = doc;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let (key, index) = match part.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        at = &mut at[key];
        if let Some(i) = index {
            if !at.is_array() {
                *at = json!([]);
            }
            let items = at.as_array_mut().expect("an array");
            items.resize(items.len().max(i + 1), json!({}));
            at = &mut items[i];
        }
        if parts.peek().is_none() {
            *at = v;
            return;
        }
    }
}

fn bad_address() -> BoxedStrategy<Value> {
    prop_oneof![
        not_a_string(),
        "x.{0,12}".prop_map(Value::String),
        Just(json!("10.0.0.256")),
        Just(json!("10.0.0.1/32")),
        Just(json!("::1")),
    ]
    .boxed()
}

fn bad_port() -> BoxedStrategy<Value> {
    prop_oneof![
        not_a_uint(65535),
        Just(json!(0)),
        Just(json!(65536)),
        Just(json!(u64::MAX))
    ]
    .boxed()
}

fn bad_label() -> BoxedStrategy<Value> {
    prop_oneof![
        not_a_string(),
        Just(json!("")),
        Just(json!("Web")),
        Just(json!("-web")),
        Just(json!("wéb")),
        Just(json!("a".repeat(64))),
    ]
    .boxed()
}

fn bad_word() -> BoxedStrategy<Value> {
    prop_oneof![not_a_string(), "X[a-zA-Z]{0,10}".prop_map(Value::String)].boxed()
}

/// A valid service with one field made invalid, and the path the error must name.
pub fn mutated_service() -> impl Strategy<Value = (Value, String)> {
    (valid_service(), any::<prop::sample::Index>()).prop_flat_map(|(doc, pick)| {
        let nports = doc["spec"]["ports"].as_array().map_or(0, Vec::len);
        let neps = doc["endpoints"].as_array().map_or(0, Vec::len);
        let port = pick.index(nports.max(1));
        let ep = pick.index(neps.max(1));
        let mut fields: Vec<(String, BoxedStrategy<Value>)> = vec![
            ("metadata.name".into(), bad_label()),
            ("metadata.namespace".into(), bad_label()),
            ("kind".into(), bad_word()),
            ("spec.type".into(), bad_word()),
            (
                "spec.clusterIP".into(),
                prop_oneof![
                    bad_address(),
                    Just(json!("0.0.0.0")),
                    Just(json!("127.0.0.1")),
                    Just(json!("255.255.255.255"))
                ]
                .boxed(),
            ),
            (format!("spec.ports[{port}].port"), bad_port()),
            (
                format!("spec.ports[{port}].targetPort"),
                prop_oneof![
                    bad_port().prop_filter("strings may be numbers", |v| !v.is_string()),
                    Just(json!("http")),
                    Just(json!("0")),
                    Just(json!("99999"))
                ]
                .boxed(),
            ),
            (
                format!("spec.ports[{port}].protocol"),
                prop_oneof![not_a_string(), Just(json!("SCTP")), Just(json!("tcp"))].boxed(),
            ),
            ("spec.externalIPs[0]".into(), bad_address()),
            ("status.loadBalancer.ingress[0].ip".into(), bad_address()),
            ("spec.sessionAffinity".into(), bad_word()),
            ("spec.externalTrafficPolicy".into(), bad_word()),
            (
                "metadata.annotations".into(),
                prop_oneof![Just(json!("maglev")), Just(json!([]))].boxed(),
            ),
        ];
        if doc["spec"]["ports"][port].get("nodePort").is_some() {
            fields.push((format!("spec.ports[{port}].nodePort"), bad_port()));
        }
        if doc["spec"]["sessionAffinity"] == json!("ClientIP") {
            fields.push((
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds".into(),
                prop_oneof![not_a_uint(86400), Just(json!(0))].boxed(),
            ));
        }
        if neps > 0 {
            fields.push((
                format!("endpoints[{ep}].ip"),
                prop_oneof![
                    bad_address(),
                    Just(json!("0.0.0.0")),
                    Just(json!("224.0.0.1")),
                    Just(json!("255.255.255.255"))
                ]
                .boxed(),
            ));
            fields.push((
                format!("endpoints[{ep}].nodeName"),
                prop_oneof![
                    not_a_string(),
                    Just(json!("")),
                    Just(json!("n".repeat(254)))
                ]
                .boxed(),
            ));
            fields.push((format!("endpoints[{ep}].ready"), not_a_bool().boxed()));
        }
        let (path, bad) = fields.swap_remove(pick.index(fields.len()));
        (Just(doc), Just(path), bad).prop_map(|(mut doc, path, bad)| {
            set(&mut doc, &path, bad);
            (doc, path)
        })
    })
}

/// The lb-algorithm annotation set to `v`.
pub fn bad_algorithm() -> impl Strategy<Value = (Value, Value)> {
    (
        valid_service(),
        prop_oneof![not_a_string(), "X.{0,8}".prop_map(Value::String)],
    )
        .prop_map(|(mut doc, v)| {
            doc["metadata"]["annotations"]["netdp.io/lb-algorithm"] = v.clone();
            (doc, v)
        })
}
