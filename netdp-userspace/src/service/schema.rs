//! What users write and etcd stores: a Kubernetes Service (the fields the dataplane uses;
//! others, like `selector`, are accepted and dropped) plus its endpoints.
//!
//! Types here are loose on purpose (strings, 64-bit integers) so that [`super::validate`]
//! can say exactly which field is wrong and why, rather than a parser's generic message.
use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::slices::Slice;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Spec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The service's endpoints (what an EndpointSlice would list).
    #[serde(default)]
    pub endpoints: Vec<EndpointDoc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(rename = "clusterIP", default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "externalIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<String>,
    #[serde(
        rename = "loadBalancerIP",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer_ip: Option<String>,
    #[serde(default)]
    pub ports: Vec<PortDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<String>,
    /// What topology hints the EndpointSlice controller computes (PreferClose,
    /// PreferSameZone, PreferSameNode). Not checked: the dataplane follows the hints
    /// themselves, so a value a newer API server adds does not stop the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i64>,
}

/// Kubernetes' IntOrString.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinityConfig {
    #[serde(rename = "clientIP", default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerStatus {
    #[serde(default)]
    pub ingress: Vec<Ingress>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ingress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointDoc {
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Unready endpoints are kept but get no traffic (default: ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// EndpointSlice's other two conditions (defaults: as ready, and not terminating): a
    /// terminating endpoint that serves gets traffic only when none is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
    /// Topology hints, as an EndpointSlice's endpoint carries them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints: Option<HintsDoc>,
}

/// `hints` of an endpoint: the zones and nodes it should be used from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HintsDoc {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub for_zones: Vec<NameDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub for_nodes: Vec<NameDoc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NameDoc {
    pub name: String,
}

/// Parses one service from a JSON value, naming the field on error.
pub fn from_value(v: Value) -> Result<ServiceDoc> {
    // Fast path first; the path-tracking parse only runs to explain an error.
    if let Ok(doc) = ServiceDoc::deserialize(&v) {
        return Ok(doc);
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            anyhow!("{inner}")
        } else {
            anyhow!("{path}: {inner}")
        }
    })
}

/// Parses one stored service (JSON). The fast parser goes first; only a value it refuses
/// is parsed again while tracking the path, so the error can name the field.
pub fn from_json(bytes: &[u8]) -> Result<ServiceDoc> {
    if let Ok(doc) = serde_json::from_slice(bytes) {
        return Ok(doc);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let doc = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json calls some errors of valid JSON syntax errors too ("trailing
        // characters" for an array with more items than a struct has fields).
        let invalid = || serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err();
        if (inner.is_syntax() || inner.is_eof()) && invalid() {
            anyhow!("not valid JSON: {inner}")
        } else if path == "." {
            anyhow!("{inner}")
        } else {
            anyhow!("{path}: {inner}")
        }
    })?;
    de.end().map_err(|e| anyhow!("not valid JSON: {e}"))?;
    Ok(doc)
}

/// What a file holds: its services, with the endpoints and target ports their
/// EndpointSlices give them, and a line for each thing skipped.
#[derive(Debug, Default)]
pub struct Manifests {
    pub services: Vec<ServiceDoc>,
    pub skipped: Vec<String>,
}

/// Splits a file's text into service objects: JSON (one object, an array, or a
/// `kind: List`), or YAML (any number of `---` separated documents, each a service or a
/// List). Errors name the document (1-based) and the field.
pub fn parse_file(text: &str) -> Result<Vec<ServiceDoc>> {
    Ok(parse_manifests(text)?.services)
}

/// [`parse_file`], and Kubernetes manifests as `kubectl get -o yaml` prints them: Services
/// and the EndpointSlices of their endpoints (merged by [`super::slices`]); other kinds
/// are skipped with a line each, as unknown fields are ignored. A wrong value of a Service
/// or an EndpointSlice is an error naming its document and path.
pub fn parse_manifests(text: &str) -> Result<Manifests> {
    let trimmed = text.trim_start();
    let values: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut out = Vec::new();
        for (i, v) in serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .enumerate()
        {
            out.push(v.map_err(|e| anyhow!("document {}: not valid JSON: {e}", i + 1))?);
        }
        out
    } else {
        let mut out = Vec::new();
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let v = Value::deserialize(doc)
                .map_err(|e| anyhow!("document {}: not valid YAML: {e}", i + 1))?;
            if !v.is_null() {
                out.push(v);
            }
        }
        out
    };
    let mut out = Manifests::default();
    let mut slices = Vec::new();
    for (i, v) in values.into_iter().enumerate() {
        let (items, list) = match v {
            Value::Array(items) => (items, true),
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                match o.get("items") {
                    Some(Value::Array(items)) => (items.clone(), true),
                    _ => bail!("document {}: a List needs an items array", i + 1),
                }
            }
            other => (vec![other], false),
        };
        for (j, item) in items.into_iter().enumerate() {
            let at = if list {
                format!("document {}, item {}", i + 1, j + 1)
            } else {
                format!("document {}", i + 1)
            };
            let kind = item.get("kind").and_then(Value::as_str).map(String::from);
            match kind.as_deref() {
                None | Some("Service") => {
                    out.services
                        .push(from_value(item).map_err(|e| anyhow!("{at}: {e:#}"))?);
                }
                Some("EndpointSlice") => {
                    let slice = slice_from_value(item).map_err(|e| anyhow!("{at}: {e:#}"))?;
                    slices.push(Slice::new(at, slice));
                }
                Some(other) => out.skipped.push(format!(
                    "{at}: kind {other} is not a Service or an EndpointSlice; skipped"
                )),
            }
        }
    }
    if out.services.is_empty() {
        match out.skipped.is_empty() {
            true => bail!("no service in the file"),
            false => bail!("no service in the file: {}", out.skipped.join("; ")),
        }
    }
    out.skipped
        .extend(super::slices::merge(&mut out.services, &slices));
    Ok(out)
}

/// Parses one EndpointSlice, naming the field on error.
fn slice_from_value(v: Value) -> Result<EndpointSlice> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        anyhow!("EndpointSlice {path}: {}", e.into_inner())
    })
}
