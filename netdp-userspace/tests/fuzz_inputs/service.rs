//! Service documents: the stored JSON (`service::decode`), files for `netdp service apply`
//! (`parse_file`: JSON, YAML, lists), and the validator.
use netdp::service::{self, ServiceDoc, parse_file, schema, validate};
use proptest::prelude::*;
use serde_json::Value;

use super::{inputs::*, service_gen::*};

const TOP: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "status",
    "endpoints",
];
const SPEC: &[&str] = &[
    "type",
    "clusterIP",
    "externalIPs",
    "loadBalancerIP",
    "ports",
    "sessionAffinity",
    "sessionAffinityConfig",
    "externalTrafficPolicy",
];

fn doc_of(v: &Value) -> ServiceDoc {
    schema::from_value(v.clone()).expect("a generated service parses")
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn random_bytes_never_panic(b in bytes()) {
        if let Err(e) = service::decode(&b) {
            prop_assert!(!e.is_empty());
        }
        if let Ok(text) = std::str::from_utf8(&b) {
            let _ = parse_file(text);
        }
    }

    #[test]
    fn right_keys_wrong_values_never_panic(
        mut doc in object_with_keys(TOP),
        spec in object_with_keys(SPEC),
        meta in object_with_keys(&["name", "namespace", "annotations"]),
    ) {
        if doc.get("spec").is_some_and(Value::is_object) {
            doc["spec"] = spec;
        }
        if doc.get("metadata").is_some_and(Value::is_object) {
            doc["metadata"] = meta;
        }
        let text = doc.to_string();
        if let Err(e) = service::decode(text.as_bytes()) {
            prop_assert!(
                TOP.iter().any(|k| e.contains(k)) || e.contains("invalid type: "),
                "{e} names no field"
            );
        }
        let _ = parse_file(&text);
        if let Ok(yaml) = serde_yaml_ng::to_string(&doc) {
            let _ = parse_file(&yaml);
        }
    }

    #[test]
    fn valid_services_are_accepted_and_round_trip(v in valid_service()) {
        let doc = doc_of(&v);
        let def = validate(&doc).map_err(|e| TestCaseError::fail(format!("{v}: {e}")))?;
        prop_assert_eq!(&def.name, v["metadata"]["name"].as_str().expect("a name"));
        prop_assert_eq!(def.ports.len(), v["spec"]["ports"].as_array().map_or(0, Vec::len));
        prop_assert_eq!(def.endpoints.len(), v["endpoints"].as_array().map_or(0, Vec::len));

        // As stored: what the CLI writes, the agent reads back.
        let stored = serde_json::to_vec(&doc).expect("a service serializes");
        prop_assert_eq!(&schema::from_json(&stored).expect("stored JSON parses"), &doc);
        prop_assert_eq!(service::decode(&stored), Ok(def));

        // As a file: YAML, pretty JSON, a list and a `kind: List`.
        let yaml = serde_yaml_ng::to_string(&doc).expect("a service is YAML");
        prop_assert_eq!(parse_file(&yaml).map_err(|e| format!("{e:#}")), Ok(vec![doc.clone()]), "{}", yaml);
        let two = format!("{yaml}---\n{yaml}");
        prop_assert_eq!(parse_file(&two).map(|d| d.len()).ok(), Some(2));
        let pretty = serde_json::to_string_pretty(&doc).expect("JSON");
        prop_assert_eq!(parse_file(&pretty).ok(), Some(vec![doc.clone()]));
        let list = serde_json::json!({"kind": "List", "items": [&doc, &doc]}).to_string();
        prop_assert_eq!(parse_file(&list).ok(), Some(vec![doc.clone(), doc]));
    }

    #[test]
    fn one_wrong_field_is_named((v, path) in mutated_service()) {
        let text = v.to_string();
        match service::decode(text.as_bytes()) {
            Ok(def) => prop_assert!(false, "{text} accepted as {def:?}"),
            Err(e) => prop_assert!(e.contains(&path), "{text}: {e} does not name {path}"),
        }
        // The same document in a file names it too, after the document.
        match parse_file(&text).map_err(|e| format!("{e:#}")).and_then(|docs| {
            docs.iter().map(validate).collect::<Result<Vec<_>, _>>()
        }) {
            Ok(_) => prop_assert!(false, "{text} accepted from a file"),
            Err(e) => prop_assert!(e.contains(&path), "{text}: {e} does not name {path}"),
        }
    }

    #[test]
    fn a_wrong_algorithm_is_named((v, bad) in bad_algorithm()) {
        let e = service::decode(v.to_string().as_bytes()).expect_err("a bad algorithm");
        prop_assert!(e.contains("metadata.annotations"), "{bad}: {e}");
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let json = format!(
        r#"{{"metadata": {{"name": "a"}}, "spec": {}}}"#,
        nested(100_000, "1")
    );
    // Stored values are read into the schema, where no field nests: refused at the top.
    let e = service::decode(json.as_bytes()).expect_err("deep JSON refused");
    assert!(e.starts_with("spec"), "{e}");
    // Files are read as any JSON or YAML value first.
    let e = parse_file(&json).expect_err("deep JSON refused");
    assert!(format!("{e:#}").contains("recursion limit"), "{e:#}");
    // Well past YAML's recursion limit (128); the YAML parser reads every event before
    // that limit applies, in time quadratic in the depth, so deeper would only be slow.
    let yaml = format!("metadata: {{name: a}}\nspec: {}\n", nested(2_000, "1"));
    let e = parse_file(&yaml).expect_err("deep YAML refused");
    assert!(format!("{e:#}").contains("recursion limit"), "{e:#}");
}

#[test]
fn yaml_alias_bombs_are_refused() {
    let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        yaml.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let started = std::time::Instant::now();
    assert!(parse_file(&yaml).is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
