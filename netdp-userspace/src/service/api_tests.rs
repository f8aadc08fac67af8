//! API objects into the model: real-shaped Services and EndpointSlices.
use std::net::Ipv4Addr;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{Value, json};

use super::*;

fn service(v: Value) -> Service {
    serde_json::from_value(v).expect("a Service")
}

fn slice(v: Value) -> EndpointSlice {
    serde_json::from_value(v).expect("an EndpointSlice")
}

fn web() -> Service {
    service(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "77",
            "uid": "0d2e7c1a-8e53-4f0b-a6a5-0c5b2b1d9e01"},
        "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
            "ipFamilies": ["IPv4"], "type": "ClusterIP", "sessionAffinity": "None",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web-http"}]},
        "status": {"loadBalancer": {}}
    }))
}

fn web_slice(name: &str, family: &str, endpoints: Value) -> EndpointSlice {
    slice(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
        "metadata": {"name": name, "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"}},
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
}

fn ep(ip: &str, conditions: Value) -> Value {
    json!({"addresses": [ip], "conditions": conditions, "nodeName": "n1"})
}

fn ips(def: &ServiceDef) -> Vec<Ipv4Addr> {
    def.ready_endpoints().map(|e| e.ip).collect()
}

#[test]
fn several_slices_merge_and_the_named_target_port_resolves() {
    let mut api = ApiServices::default();
    let id = api.apply_service(web());
    assert_eq!(id, "shop/web");
    api.apply_slice(web_slice(
        "web-a",
        "IPv4",
        json!([ep("10.244.1.5", json!({"ready": true}))]),
    ));
    api.apply_slice(web_slice(
        "web-b",
        "IPv4",
        json!([ep("10.244.2.7", json!({}))]),
    ));
    let def = api.def(&id).expect("programmable");
    assert_eq!(def.ports[0].target_port, 8080);
    assert_eq!(def.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 20)));
    let mut got = ips(&def);
    got.sort();
    assert_eq!(
        got,
        [Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 2, 7)]
    );
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    let mut api = ApiServices::default();
    let id = api.apply_service(web());
    let draining = json!({"ready": false, "serving": true, "terminating": true});
    api.apply_slice(web_slice(
        "web-a",
        "IPv4",
        json!([
            ep("10.244.1.5", draining.clone()),
            ep("10.244.1.6", json!({"ready": true}))
        ]),
    ));
    assert_eq!(ips(&api.def(&id).unwrap()), [Ipv4Addr::new(10, 244, 1, 6)]);
    api.apply_slice(web_slice(
        "web-a",
        "IPv4",
        json!([ep("10.244.1.5", draining)]),
    ));
    assert_eq!(ips(&api.def(&id).unwrap()), [Ipv4Addr::new(10, 244, 1, 5)]);
}

#[test]
fn an_ipv6_slice_is_skipped_and_the_ipv4_one_used() {
    let mut api = ApiServices::default();
    let _id = api.apply_service(web());
    api.apply_slice(web_slice(
        "web-v6",
        "IPv6",
        json!([ep("fd00::5", json!({}))]),
    ));
    api.apply_slice(web_slice(
        "web-v4",
        "IPv4",
        json!([ep("10.244.1.5", json!({}))]),
    ));
    let (def, lines) = translate(&web(), api.slices.values().filter(|s| s.id != "shop/x"));
    assert_eq!(ips(&def.unwrap()), [Ipv4Addr::new(10, 244, 1, 5)]);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("EndpointSlice shop/web-v6: addressType: IPv6")),
        "{lines:?}"
    );
}

#[test]
fn a_slice_before_its_service_waits_for_it_and_a_relabelled_slice_moves() {
    let mut api = ApiServices::default();
    let touched = api.apply_slice(web_slice(
        "web-a",
        "IPv4",
        json!([ep("10.244.1.5", json!({}))]),
    ));
    assert_eq!(touched, ["shop/web"]);
    assert!(api.def("shop/web").is_none(), "no Service yet");
    api.apply_service(web());
    assert_eq!(
        ips(&api.def("shop/web").unwrap()),
        [Ipv4Addr::new(10, 244, 1, 5)]
    );
    let mut moved = web_slice("web-a", "IPv4", json!([ep("10.244.1.5", json!({}))]));
    moved
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(SERVICE_NAME_LABEL.into(), "api".into());
    let mut touched = api.apply_slice(moved);
    touched.sort();
    assert_eq!(touched, ["shop/api", "shop/web"]);
    assert!(ips(&api.def("shop/web").unwrap()).is_empty());
    let gone = api.delete_slice(&web_slice("web-a", "IPv4", json!([])));
    assert_eq!(gone, ["shop/api"]);
}

#[test]
fn a_relist_touches_old_and_new_services() {
    let mut api = ApiServices::default();
    api.apply_service(web());
    let mut other = web();
    other.metadata.name = Some("cart".into());
    let mut touched = api.replace_services(vec![ApiServices::keep_service(&other)]);
    touched.sort();
    assert_eq!(touched, ["shop/cart", "shop/web"]);
    assert!(api.def("shop/web").is_none());
    assert!(api.def("shop/cart").is_some());
}

#[test]
fn objects_with_every_optional_field_missing_do_not_break_anything() {
    let bare = service(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bare"}}));
    let (def, lines) = translate(&bare, []);
    let e = def.unwrap_err();
    assert!(
        e.contains("Service default/bare: spec.clusterIP: required"),
        "{e}"
    );
    assert!(lines.is_empty());
    let bare = service(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bare"}, "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 53}]}}));
    let def = translate(&bare, [])
        .0
        .expect("a name, an address and a port are enough");
    assert_eq!((def.ports[0].target_port, def.ports[0].proto), (53, 6));
    assert!(def.endpoints.is_empty());
    let empty = slice(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "addressType": "IPv4", "endpoints": [], "metadata": {"name": "e"}}),
    );
    let mut api = ApiServices::default();
    assert!(
        api.apply_slice(empty).is_empty(),
        "a slice of no service touches none"
    );
}

#[test]
fn a_named_target_port_without_slices_is_a_service_without_endpoints() {
    let def = translate(&web(), []).0.expect("programmable");
    assert_eq!(def.ports[0].port, 80);
    assert!(def.endpoints.is_empty());
}

#[test]
fn headless_services_program_nothing() {
    let mut headless = web();
    headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    let (def, _) = translate(&headless, []);
    assert_eq!(def.unwrap().cluster_ip, None);
}

#[test]
fn a_wrong_value_names_the_object_and_the_field() {
    let mut bad = web();
    bad.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.300".into());
    let (def, _) = translate(&bad, []);
    let e = def.unwrap_err();
    assert!(
        e.contains("Service shop/web") && e.contains("spec.clusterIP"),
        "{e}"
    );
}

#[test]
fn topology_hints_and_traffic_policies_come_through() {
    let mut api = ApiServices::default();
    let mut svc = web();
    let spec = svc.spec.as_mut().unwrap();
    spec.internal_traffic_policy = Some("Local".into());
    spec.traffic_distribution = Some("PreferClose".into());
    let id = api.apply_service(svc);
    // As the EndpointSlice controller writes hints for PreferClose.
    let hinted = |ip: &str, zone: &str| {
        json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "n1",
            "zone": zone, "hints": {"forZones": [{"name": zone}]}})
    };
    api.apply_slice(web_slice(
        "web-a",
        "IPv4",
        json!([hinted("10.244.1.5", "z1"), hinted("10.244.2.7", "z2")]),
    ));
    let def = api.def(&id).expect("programmable");
    assert!(def.internal_local);
    let zones: Vec<&[String]> = def.endpoints.iter().map(|e| &e.zones[..]).collect();
    assert_eq!(zones, [&["z1".to_string()][..], &["z2".to_string()][..]]);
}
