//! Flannel's network config (`<prefix>/config`, net-conf.json).
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use netdp::config::{Backend, NetworkConfig, default_subnet_len};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::inputs::*;

const KEYS: &[&str] = &[
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "Backend",
    "MTU",
    "EnableIPv4",
    "EnableIPv6",
];

/// A valid config as written, and what it must parse to.
#[derive(Debug, Clone)]
struct Valid {
    doc: Map<String, Value>,
    expect: Expect,
}

/// The fields of [`NetworkConfig`] the generated documents set.
#[derive(Debug, Clone, PartialEq)]
struct Expect {
    network: Ipv4Network,
    subnet_len: u8,
    subnet_min: Ipv4Addr,
    subnet_max: Ipv4Addr,
    backend: Backend,
    mtu: Option<u32>,
}

impl Expect {
    fn of(c: &NetworkConfig) -> Self {
        Expect {
            network: c.network,
            subnet_len: c.subnet_len,
            subnet_min: c.subnet_min,
            subnet_max: c.subnet_max,
            backend: c.backend.clone(),
            mtu: c.mtu,
        }
    }
}

fn backend() -> impl Strategy<Value = (Option<Value>, Backend, Option<u32>)> {
    let opt_port = proptest::option::of(1u16..=65535);
    let opt_bool = proptest::option::of(any::<bool>());
    prop_oneof![
        Just((None, Backend::Udp { port: 8285 }, None)),
        Just((Some(json!({})), Backend::Udp { port: 8285 }, None)),
        Just((Some(json!({"Type": "host-gw"})), Backend::HostGw, None)),
        opt_port.clone().prop_map(|p| {
            let mut b = json!({"Type": "udp"});
            if let Some(p) = p {
                b["Port"] = json!(p);
            }
            (
                Some(b),
                Backend::Udp {
                    port: p.unwrap_or(8285),
                },
                None,
            )
        }),
        opt_bool.clone().prop_map(|d| {
            let mut b = json!({"Type": "ipip"});
            if let Some(d) = d {
                b["DirectRouting"] = json!(d);
            }
            let direct_routing = d.unwrap_or(false);
            (Some(b), Backend::Ipip { direct_routing }, None)
        }),
        (
            proptest::option::of(1u32..(1 << 24)),
            opt_port,
            opt_bool,
            proptest::option::of(576u32..=65535),
            any::<bool>()
        )
            .prop_map(|(vni, port, dr, mtu, flags)| {
                let mut b = json!({"Type": "vxlan"});
                if let Some(v) = vni {
                    b["VNI"] = json!(v);
                }
                if let Some(p) = port {
                    b["Port"] = json!(p);
                }
                if let Some(d) = dr {
                    b["DirectRouting"] = json!(d);
                }
                if let Some(m) = mtu {
                    b["MTU"] = json!(m);
                }
                if flags {
                    b["GBP"] = json!(false);
                    b["Learning"] = json!(false);
                }
                let backend = Backend::Vxlan {
                    vni: vni.unwrap_or(1),
                    port: port.unwrap_or(8472),
                    direct_routing: dr.unwrap_or(false),
                };
                (Some(b), backend, mtu)
            }),
    ]
}

fn valid() -> impl Strategy<Value = Valid> {
    (0u8..=29, any::<u32>())
        .prop_flat_map(|(prefix, addr)| {
            let net = Ipv4Network::new(Ipv4Addr::from(addr), prefix).expect("prefix <= 32");
            let net = Ipv4Network::new(net.network(), prefix).expect("prefix <= 32");
            (Just(net), proptest::option::of(prefix + 1..=30))
        })
        .prop_flat_map(|(net, len)| {
            let eff = len.unwrap_or(default_subnet_len(net.prefix()));
            let count = 1u64 << (eff - net.prefix());
            (
                Just(net),
                Just(len),
                (1..count, 1..count),
                (any::<bool>(), any::<bool>(), any::<bool>()),
                backend(),
                proptest::option::of(576u32..=65535),
            )
        })
        .prop_filter_map(
            "default SubnetLen must fit",
            |(net, len, (a, b), (min_given, max_given, with_len), backend, mtu)| {
                let eff = len.unwrap_or(default_subnet_len(net.prefix()));
                if eff > 30 {
                    return None;
                }
                let size = 1u64 << (32 - eff);
                let first = u64::from(u32::from(net.network()));
                let count = 1u64 << (eff - net.prefix());
                let (lo, hi) = (a.min(b), a.max(b));
                let addr = |i: u64| Ipv4Addr::from((first + i * size) as u32);
                let bound = |i: u64| {
                    if with_len {
                        format!("{}/{eff}", addr(i))
                    } else {
                        addr(i).to_string()
                    }
                };
                let mut doc = Map::new();
                doc.insert("Network".into(), json!(net.to_string()));
                if let Some(l) = len {
                    doc.insert("SubnetLen".into(), json!(l));
                }
                if min_given {
                    doc.insert("SubnetMin".into(), json!(bound(lo)));
                }
                if max_given {
                    doc.insert("SubnetMax".into(), json!(bound(hi)));
                }
                let (bdoc, backend, backend_mtu) = backend;
                if let Some(b) = bdoc {
                    doc.insert("Backend".into(), b);
                }
                if let Some(m) = mtu {
                    doc.insert("MTU".into(), json!(m));
                }
                let expect = Expect {
                    network: net,
                    subnet_len: eff,
                    subnet_min: addr(if min_given { lo } else { 1 }),
                    subnet_max: addr(if max_given { hi } else { count - 1 }),
                    backend,
                    mtu: mtu.or(backend_mtu),
                };
                Some(Valid { doc, expect })
            },
        )
}

/// What can be wrong with a field, by its kind.
fn wrong_value(field: &str, subnet_len: u8) -> BoxedStrategy<Value> {
    match field {
        "Network" => prop_oneof![
            not_a_string(),
            "x[0-9./]{0,18}".prop_map(Value::String),
            Just(json!("10.0.0.1/8")),
            Just(json!("10.0.0.0/33")),
        ]
        .boxed(),
        "SubnetLen" => not_a_uint(32).boxed(),
        "SubnetMin" | "SubnetMax" => prop_oneof![
            not_a_string(),
            "x.{0,10}".prop_map(Value::String),
            Just(json!(format!("10.0.0.0/{}", subnet_len % 32 + 1))),
            Just(json!("10.0.0.0/99")),
        ]
        .boxed(),
        "MTU" | "Backend.MTU" => {
            prop_oneof![not_a_uint(65535), (0u64..576).prop_map(Value::from)].boxed()
        }
        "Backend" => prop_oneof![not_a_string(), weird_string().prop_map(Value::String)]
            .prop_filter("objects are backends", |v| !v.is_object())
            .boxed(),
        "Backend.Type" => prop_oneof![
            not_a_string(),
            "x.{0,10}".prop_map(Value::String),
            Just(json!("VXLAN")),
        ]
        .boxed(),
        "Backend.VNI" => prop_oneof![not_a_uint((1 << 24) - 1), Just(json!(0))].boxed(),
        "Backend.Port" => prop_oneof![not_a_uint(65535), Just(json!(0))].boxed(),
        "Backend.GBP" | "Backend.Learning" => prop_oneof![not_a_bool(), Just(json!(true))].boxed(),
        "Backend.DirectRouting" => not_a_bool().boxed(),
        // Keys nobody knows: anything there is refused.
        _ => any_json()
            .prop_filter("null is absent", |v| !v.is_null())
            .boxed(),
    }
}

const MUTABLE: &[&str] = &[
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "MTU",
    "Backend",
    "Backend.Type",
    "Backend.VNI",
    "Backend.Port",
    "Backend.DirectRouting",
    "Backend.GBP",
    "Backend.Learning",
    "Backend.MTU",
    "Backend.Bogus",
    "Networks",
];

fn mutated() -> impl Strategy<Value = (Value, &'static str)> {
    (valid(), prop::sample::select(MUTABLE)).prop_flat_map(|(v, field)| {
        let len = v.expect.subnet_len;
        (Just(v.doc), Just(field), wrong_value(field, len)).prop_map(|(mut doc, field, bad)| {
            match field.strip_prefix("Backend.") {
                Some(key) => {
                    let b = doc.entry("Backend").or_insert_with(|| json!({}));
                    b[key] = bad;
                }
                None => {
                    doc.insert(field.to_string(), bad);
                }
            }
            (Value::Object(doc), field)
        })
    })
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn random_bytes_never_panic(b in bytes()) {
        if let Ok(text) = std::str::from_utf8(&b)
            && let Err(e) = NetworkConfig::parse(text) {
                prop_assert!(!e.field.is_empty() && !e.reason.is_empty());
            }
    }

    #[test]
    fn right_keys_wrong_values_never_panic(
        mut doc in object_with_keys(KEYS),
        backend in object_with_keys(&["Type", "VNI", "Port", "DirectRouting", "MTU", "GBP"]),
        with_backend in any::<bool>(),
    ) {
        if with_backend {
            doc["Backend"] = backend;
        }
        if let Err(e) = NetworkConfig::parse(&doc.to_string()) {
            prop_assert!(
                KEYS.contains(&e.field.as_str()) || e.field.starts_with("Backend"),
                "{e} names no field of the config"
            );
        }
    }

    #[test]
    fn valid_configs_parse_as_written_and_round_trip(v in valid()) {
        let text = Value::Object(v.doc.clone()).to_string();
        let cfg = NetworkConfig::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(Expect::of(&cfg), v.expect);
        let printed = serde_json::to_string(&cfg).expect("a config serializes");
        prop_assert_eq!(NetworkConfig::parse(&printed), Ok(cfg.clone()), "{}", printed);
        prop_assert!(cfg.subnet_count() >= 1);
        prop_assert!(cfg.fits(&cfg.subnet(cfg.subnet_count() - 1)));
    }

    #[test]
    fn one_wrong_field_is_named((doc, field) in mutated()) {
        let text = doc.to_string();
        match NetworkConfig::parse(&text) {
            Ok(cfg) => prop_assert!(false, "{text} accepted as {cfg:?}"),
            Err(e) => prop_assert_eq!(e.field.as_str(), field, "{}: {}", text, e),
        }
    }
}

#[test]
fn a_network_of_everything_does_not_overflow() {
    // A /0 Network's size overflowed u32 computing the last subnet.
    let cfg = NetworkConfig::parse(r#"{"Network": "0.0.0.0/0"}"#).expect("a /0 parses");
    assert_eq!(cfg.subnet_max, Ipv4Addr::new(255, 255, 255, 0));
    assert_eq!(cfg.subnet_count(), (1 << 24) - 1);
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    for inner in ["1", "{}"] {
        let text = format!(r#"{{"Network": {}}}"#, nested(100_000, inner));
        let e = NetworkConfig::parse(&text).expect_err("deep nesting refused");
        assert!(e.to_string().contains("recursion limit"), "{e}");
    }
}
