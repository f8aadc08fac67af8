//! The CNI plugin's inputs: the network config on stdin and the subnet file the agent
//! writes for it.
use ipnetwork::Ipv4Network;
use netdp::{
    cni::{self, Env, parse_conf, types::SUPPORTED_VERSIONS},
    subnet_file::SubnetFile,
};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::inputs::*;

const KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "nodeName",
    "bpfRoot",
    "subnetFile",
    "dataDir",
    "mtu",
    "cni.dev/valid-attachments",
];

fn path() -> impl Strategy<Value = String> {
    "/[a-z0-9/._-]{0,30}"
}

/// A valid config with unknown keys sprinkled in (the spec says to ignore them).
fn valid() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(SUPPORTED_VERSIONS),
        (
            ".{1,20}",
            ".{1,20}",
            proptest::option::of("[a-z0-9.-]{1,30}"),
        ),
        (
            proptest::option::of(path()),
            proptest::option::of(path()),
            proptest::option::of(path()),
        ),
        proptest::option::of(576u32..=65535),
        proptest::option::of(prop::collection::vec(
            ("[0-9a-f]{1,64}", "[a-z0-9]{1,15}"),
            0..3,
        )),
        prop::collection::btree_map("x-.{0,10}", any_json(), 0..3),
    )
        .prop_map(
            |(version, (name, ty, node), (root, sf, data), mtu, valid, extra)| {
                let mut v = json!({"cniVersion": version, "name": name, "type": ty});
                let mut put = |k: &str, x: Option<Value>| {
                    if let Some(x) = x {
                        v[k] = x;
                    }
                };
                put("nodeName", node.map(Value::from));
                put("bpfRoot", root.map(Value::from));
                put("subnetFile", sf.map(Value::from));
                put("dataDir", data.map(Value::from));
                put("mtu", mtu.map(Value::from));
                put(
                    "cni.dev/valid-attachments",
                    valid.map(|a| {
                        a.into_iter()
                            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
                            .collect()
                    }),
                );
                for (k, x) in extra {
                    v[k] = x;
                }
                v
            },
        )
}

fn mutated() -> impl Strategy<Value = (Value, &'static str)> {
    let bad = |field: &'static str| -> BoxedStrategy<Value> {
        match field {
            "cniVersion" => {
                prop_oneof![not_a_string(), Just(json!("0.2.0")), Just(json!("9.9.9"))].boxed()
            }
            "mtu" => prop_oneof![
                not_a_uint(u32::MAX as u64),
                Just(json!(0)),
                Just(json!(100_000))
            ]
            .boxed(),
            "cni.dev/valid-attachments" => prop_oneof![
                not_a_string().prop_filter("lists are valid", |v| !v.is_array()),
                Just(json!([{"containerID": 5, "ifname": "eth0"}])),
                Just(json!([{"ifname": "eth0"}])),
                Just(json!(["eth0"])),
            ]
            .boxed(),
            _ => not_a_string().boxed(),
        }
    };
    (valid(), prop::sample::select(KEYS)).prop_flat_map(move |(doc, field)| {
        (Just(doc), Just(field), bad(field)).prop_map(|(mut doc, field, v)| {
            doc[field] = v;
            (doc, field)
        })
    })
}

fn subnet_file() -> impl Strategy<Value = SubnetFile> {
    (
        any::<u32>(),
        0u8..=30,
        0u8..=32,
        576u32..=65535,
        any::<bool>(),
    )
        .prop_map(|(addr, sublen, netlen, mtu, ipmasq)| {
            let net = |len| {
                let n = Ipv4Network::new(addr.into(), len).expect("len <= 32");
                Ipv4Network::new(n.network(), len).expect("len <= 32")
            };
            SubnetFile {
                network: net(netlen.min(sublen)),
                subnet: net(sublen),
                mtu,
                ipmasq,
            }
        })
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn random_stdin_never_panics(b in bytes()) {
        let text = String::from_utf8_lossy(&b);
        if let Err(e) = parse_conf(&text) {
            prop_assert!(e.msg.starts_with("network config on stdin") || e.msg.contains("cniVersion"));
        }
        // What a runtime sees: an error result in JSON, never a crash.
        let env = Env { command: "ADD".into(), ..Env::default() };
        let (out, ok) = cni::run(&env, &text);
        prop_assert!(!ok, "{text:?} was added");
        let v: Value = serde_json::from_str(&out).expect("error results are JSON");
        prop_assert!(v["code"].is_u64() && v["msg"].is_string(), "{out}");
    }

    #[test]
    fn right_keys_wrong_values_never_panic(doc in object_with_keys(KEYS)) {
        if let Err(e) = parse_conf(&doc.to_string()) {
            prop_assert!(KEYS.iter().any(|k| e.msg.contains(k)), "{} names no field", e.msg);
        }
    }

    #[test]
    fn valid_configs_parse_as_written(v in valid()) {
        let conf = parse_conf(&v.to_string()).map_err(|e| TestCaseError::fail(format!("{v}: {}", e.msg)))?;
        prop_assert_eq!(Some(conf.cni_version.as_str()), v["cniVersion"].as_str());
        prop_assert_eq!(Some(conf.name.as_str()), v["name"].as_str());
        prop_assert_eq!(Some(conf.plugin_type.as_str()), v["type"].as_str());
        prop_assert_eq!(conf.node_name.as_deref(), v["nodeName"].as_str());
        prop_assert_eq!(conf.bpf_root.as_str(), v["bpfRoot"].as_str().unwrap_or(netdp_common::BPF_ROOT));
        prop_assert_eq!(conf.mtu.map(u64::from), v["mtu"].as_u64());
        let kept = conf.valid_attachments.map(|a| a.len());
        prop_assert_eq!(kept, v["cni.dev/valid-attachments"].as_array().map(Vec::len));
    }

    #[test]
    fn one_wrong_field_is_named((doc, field) in mutated()) {
        match parse_conf(&doc.to_string()) {
            Ok(c) => prop_assert!(false, "{doc} accepted as {c:?}"),
            Err(e) => prop_assert!(e.msg.contains(field), "{doc}: {} does not name {field}", e.msg),
        }
    }

    #[test]
    fn subnet_files_round_trip(sf in subnet_file()) {
        let text = sf.render();
        prop_assert_eq!(SubnetFile::parse(&text).ok(), Some(sf.clone()), "{}", text);
        prop_assert!(sf.subnet.contains(sf.gateway()));
    }

    #[test]
    fn random_subnet_files_never_panic(
        lines in prop::collection::vec(
            (prop::sample::select(&["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ", "#", ""][..]), weird_string()),
            0..6,
        ),
    ) {
        let text: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        if let Ok(sf) = SubnetFile::parse(&text) {
            prop_assert!(sf.subnet.contains(sf.gateway()), "{}", text);
            let _ = sf.render();
        }
    }
}

#[test]
fn a_subnet_without_room_for_pods_is_refused() {
    // The gateway (network + 1) of 255.255.255.255/32 overflowed, and no /31 or /32 has
    // an address for a pod.
    for s in ["255.255.255.255/32", "10.0.0.0/31"] {
        let text = format!("FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET={s}\nFLANNEL_MTU=1500\n");
        let e = SubnetFile::parse(&text).expect_err("refused");
        assert!(e.to_string().contains("FLANNEL_SUBNET"), "{e}");
    }
}
