//! Lease keys and values (Flannel's `LeaseAttrs`), and the watch decoding that turns etcd
//! changes under the prefix into the set of leases.
use std::{collections::HashMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use netdp::{
    etcd::{
        decode::{Decode, decode, decode_all},
        watch::{Change, Kv, Update},
    },
    lease::{LeaseAttrs, parse_subnet_key, subnet_key},
};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::inputs::*;

const PREFIX: &str = "/coreos.com/network";
const KEYS: &[&str] = &[
    "PublicIP",
    "PublicIPv6",
    "BackendType",
    "BackendData",
    "BackendV6Data",
];

fn mac() -> impl Strategy<Value = [u8; 6]> {
    any::<[u8; 6]>()
}

fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// A lease value as flanneld (or netdp) writes one: its JSON, the PublicIP, the backend type
/// and the VTEP MAC it carries.
fn valid() -> impl Strategy<Value = (Value, Ipv4Addr, String, Option<[u8; 6]>)> {
    (
        any::<u32>().prop_map(Ipv4Addr::from),
        prop_oneof![
            Just("vxlan"),
            Just("host-gw"),
            Just("ipip"),
            Just("udp"),
            Just("")
        ],
        proptest::option::of((1u32..(1 << 24), mac())),
        any::<bool>(),
    )
        .prop_map(|(ip, ty, data, extra)| {
            let mut v = json!({"PublicIP": ip.to_string()});
            if !ty.is_empty() {
                v["BackendType"] = json!(ty);
            }
            if let Some((vni, m)) = data {
                v["BackendData"] = json!({"VNI": vni, "VtepMAC": mac_text(m)});
            }
            if extra {
                // What newer flanneld and netdp add; unknown keys are for others.
                v["PublicIPv6"] = Value::Null;
                v["BackendV6Data"] = Value::Null;
                v["NetdpNode"] = json!("node-1");
                v["SomethingNew"] = json!([1, 2]);
            }
            (v, ip, ty.to_string(), data.map(|(_, m)| m))
        })
}

fn mutated() -> impl Strategy<Value = (Value, &'static str)> {
    let public_ip = prop_oneof![
        not_a_string(),
        "x.{0,12}".prop_map(Value::String),
        Just(json!("fe80::1")),
        Just(json!("10.0.0.256")),
        Just(json!("10.0.0.1/24")),
    ];
    (
        valid(),
        prop_oneof![
            public_ip.prop_map(|v| ("PublicIP", v)),
            not_a_string().prop_map(|v| ("BackendType", v)),
        ],
    )
        .prop_map(|((mut doc, ..), (field, bad))| {
            doc[field] = bad;
            (doc, field)
        })
}

/// Keys under the prefix, valid or nearly so.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..4).prop_map(|i| format!("{PREFIX}/subnets/10.1.{i}.0-24")),
        Just(format!("{PREFIX}/subnets/10.1.0.1-24")),
        Just(format!("{PREFIX}/subnets/10.1.0.0-33")),
        Just(format!("{PREFIX}/subnets/10.1.0.0")),
        Just(format!("{PREFIX}/config")),
        weird_string().prop_map(|s| format!("{PREFIX}/subnets/{s}")),
    ]
}

/// A lease value: valid, or anything.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        valid().prop_map(|(v, ..)| v.to_string().into_bytes()),
        mutated().prop_map(|(v, _)| v.to_string().into_bytes()),
        bytes(),
    ]
}

fn kv(key: String, value: Vec<u8>, rev: i64) -> Kv {
    Kv {
        key: key.into_bytes(),
        value,
        lease: 0,
        mod_revision: rev,
        create_revision: rev,
    }
}

fn change() -> impl Strategy<Value = Update> {
    let put = (key(), value()).prop_map(|(k, v)| Change::Put(kv(k, v, 1)));
    let delete = key().prop_map(|k| Change::Delete(k.into_bytes()));
    prop_oneof![
        3 => prop::collection::vec(prop_oneof![put, delete], 0..6).prop_map(Update::Changes),
        // A listing holds each key once.
        1 => prop::collection::btree_map(key(), value(), 0..6)
            .prop_map(|kvs| Update::Resync(kvs.into_iter().map(|(k, v)| kv(k, v, 1)).collect())),
    ]
}

/// Decodes lease keys and values as the registry does.
struct Leases;

impl Decode for Leases {
    type Id = Ipv4Network;
    type Item = LeaseAttrs;
    fn id(&self, key: &str) -> Option<Ipv4Network> {
        parse_subnet_key(PREFIX, key)
    }
    fn decode(&mut self, key: &str, kv: &Kv) -> Option<(Ipv4Network, LeaseAttrs)> {
        Some((self.id(key)?, LeaseAttrs::from_json(&kv.value).ok()?))
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn random_values_never_panic(b in bytes()) {
        if let Ok(attrs) = LeaseAttrs::from_json(&b) {
            let _ = attrs.vtep_mac();
        }
    }

    #[test]
    fn right_keys_wrong_values_never_panic(v in object_with_keys(KEYS)) {
        match LeaseAttrs::from_json(v.to_string().as_bytes()) {
            Ok(attrs) => { let _ = attrs.vtep_mac(); }
            Err(e) => prop_assert!(KEYS.iter().any(|k| e.contains(k)), "{e} names no field"),
        }
    }

    #[test]
    fn valid_values_parse_as_written_and_round_trip((doc, ip, ty, mac) in valid()) {
        let attrs = LeaseAttrs::from_json(doc.to_string().as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{doc}: {e}")))?;
        prop_assert_eq!(attrs.public_ip, ip);
        prop_assert_eq!(&attrs.backend_type, &ty);
        prop_assert_eq!(attrs.vtep_mac(), mac);
        let printed = serde_json::to_vec(&attrs).expect("a lease serializes");
        prop_assert_eq!(LeaseAttrs::from_json(&printed), Ok(attrs));
    }

    #[test]
    fn one_wrong_field_is_named((doc, field) in mutated()) {
        match LeaseAttrs::from_json(doc.to_string().as_bytes()) {
            Ok(a) => prop_assert!(false, "{doc} accepted as {a:?}"),
            Err(e) => prop_assert!(e.starts_with(&format!("{field}: ")), "{doc}: {e}"),
        }
    }

    #[test]
    fn vtep_macs_never_panic(data in any_json()) {
        let mut attrs = LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, 1), "vxlan", Some(data));
        let _ = attrs.vtep_mac();
        attrs.backend_data = Some(json!({"VtepMAC": "ﬀ:ff:ff:ff:ff:ff"}));
        prop_assert_eq!(attrs.vtep_mac(), None);
    }

    #[test]
    fn subnet_keys_round_trip(addr in any::<u32>(), len in 0u8..=32) {
        let net = Ipv4Network::new(Ipv4Addr::from(addr), len).expect("len <= 32");
        let net = Ipv4Network::new(net.network(), len).expect("len <= 32");
        prop_assert_eq!(parse_subnet_key(PREFIX, &subnet_key(PREFIX, &net)), Some(net));
    }

    #[test]
    fn random_keys_never_panic(k in key(), s in ".{0,40}") {
        for key in [k, s] {
            if let Some(net) = parse_subnet_key(PREFIX, &key) {
                prop_assert_eq!(net.ip(), net.network(), "{} has host bits", key);
            }
        }
    }

    /// The decoded set always equals the valid part of what etcd holds, whatever was put.
    #[test]
    fn watch_decoding_keeps_exactly_the_valid_leases(updates in prop::collection::vec(change(), 1..8)) {
        let mut set = HashMap::new();
        let mut etcd: HashMap<String, Vec<u8>> = HashMap::new();
        for update in updates {
            match &update {
                Update::Changes(changes) => for c in changes {
                    match c {
                        Change::Put(kv) => {
                            etcd.insert(String::from_utf8_lossy(&kv.key).into(), kv.value.clone());
                        }
                        Change::Delete(k) => { etcd.remove(&*String::from_utf8_lossy(k)); }
                    }
                },
                Update::Resync(kvs) => {
                    etcd = kvs.iter()
                        .map(|kv| (String::from_utf8_lossy(&kv.key).into(), kv.value.clone()))
                        .collect();
                }
            }
            decode(&mut Leases, update).apply_to(&mut set);
            let listed: Vec<Kv> = etcd.iter().map(|(k, v)| kv(k.clone(), v.clone(), 1)).collect();
            let expect: HashMap<_, _> = decode_all(&mut Leases, &listed).into_iter().collect();
            prop_assert_eq!(&set, &expect);
        }
    }
}
