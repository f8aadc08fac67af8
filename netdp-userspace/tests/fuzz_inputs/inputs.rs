//! Shared generators: random JSON, hostile strings, and values of the wrong kind for a
//! field of a given kind.
use proptest::prelude::*;
use serde_json::{Value, json};

/// `default` cases, or `PROPTEST_CASES` when set (for longer local runs). Failures are not
/// persisted to files: a case worth keeping becomes a named regression test.
pub fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings a parser may trip over: anything unicode, near-misses of addresses and numbers,
/// huge numbers, control characters.
pub fn weird_string() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,24}",
        "[0-9./:-]{0,24}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(/[0-9]{1,3})?",
        Just(String::new()),
        Just("99999999999999999999999999".to_string()),
        Just("1e400".to_string()),
        Just("-0".to_string()),
        Just("１０.０.０.０/８".to_string()),
        Just("\u{0}\u{202e}\u{feff}".to_string()),
        Just("a".repeat(10_000)),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1e300)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(0.5)),
    ]
}

/// Any JSON value, nested a few levels.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        weird_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(weird_string(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object whose keys are drawn from `keys` (the ones a parser knows), holding
/// anything.
pub fn object_with_keys(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(keys), any_json(), 0..keys.len() + 1)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

/// Containers, never null (null reads as "absent" for optional fields).
fn container() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!([])),
        Just(json!({})),
        Just(json!([1, "a"])),
        Just(json!({"a": 1})),
    ]
}

/// Values no string field accepts.
pub fn not_a_string() -> impl Strategy<Value = Value> {
    prop_oneof![any::<bool>().prop_map(Value::Bool), number(), container()]
}

/// Values no integer field with at most `max` accepts.
pub fn not_a_uint(max: u64) -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        weird_string().prop_map(Value::String),
        container(),
        (i64::MIN..0).prop_map(Value::from),
        (max.saturating_add(1)..=u64::MAX).prop_map(Value::from),
        Just(json!(0.5)),
        Just(json!(1e300)),
    ]
    .prop_filter("in range", move |v| v.as_u64().is_none_or(|n| n > max))
}

/// Values no boolean field accepts.
pub fn not_a_bool() -> impl Strategy<Value = Value> {
    prop_oneof![
        number(),
        weird_string().prop_map(Value::String),
        Just(json!("true")),
        container()
    ]
}

/// Random bytes, often almost JSON.
pub fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        any_json().prop_map(|v| {
            let mut b = serde_json::to_vec(&v).unwrap_or_default();
            b.truncate(b.len() / 2 + 1);
            b
        }),
    ]
}

/// `depth` nested arrays around `inner` (parsers must refuse, not overflow the stack).
pub fn nested(depth: usize, inner: &str) -> String {
    format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
}
