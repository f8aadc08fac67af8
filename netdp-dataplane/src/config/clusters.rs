//! Cluster identity and the other clusters of a mesh (`ClusterName`, `ClusterID`,
//! `Clusters`: netdp's keys, which Flannel ignores). Each other cluster is declared by its
//! etcd, read only: its own network config says which Network it leases from, and its
//! leases become routes here (ClusterMesh's direct mode).
use serde::Serialize;
use serde_json::Value;

use super::{ConfigError, as_str, as_uint, err};

/// The default of `Clusters[].Prefix`: Flannel's.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// This cluster's name and id, as the other clusters of a mesh know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    #[serde(rename = "ClusterName")]
    pub name: String,
    /// 1-255 (Cilium's range): unique in the mesh.
    #[serde(rename = "ClusterID")]
    pub id: u8,
}

/// How pods reach another cluster's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum Mode {
    /// Every node of each reaches every node of the other (ClusterMesh's way): its leases
    /// are routed here as this cluster's are.
    #[default]
    #[serde(rename = "direct")]
    Direct,
    /// Only the clusters' gateways reach each other (Submariner's way): its Network is
    /// routed to this cluster's active gateway, and from there to its active gateway.
    #[serde(rename = "gateway")]
    Gateway,
}

/// Another cluster, reached through its etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteCluster {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Mode")]
    pub mode: Mode,
    #[serde(rename = "Endpoints")]
    pub endpoints: Vec<String>,
    #[serde(rename = "Prefix")]
    pub prefix: String,
    /// Where its global services are (`--service-prefix` of its agents; default theirs).
    #[serde(rename = "ServicePrefix", skip_serializing_if = "Option::is_none")]
    pub service_prefix: Option<String>,
    #[serde(rename = "CAFile", skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(rename = "CertFile", skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(rename = "KeyFile", skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// A cluster name: a DNS label, as Kubernetes and Cilium name clusters.
pub fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!("{name:?} is not a DNS label (lowercase letters, digits and '-', at most 63)"),
        ))
    }
}

/// `ClusterName` and `ClusterID`: both or neither.
pub(super) fn parse_identity(
    name: Option<&Value>,
    id: Option<&Value>,
) -> Result<Option<Identity>, ConfigError> {
    match (name, id) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(err("ClusterID", "missing (ClusterName needs an id, 1-255)")),
        (None, Some(_)) => Err(err("ClusterName", "missing (ClusterID needs a name)")),
        (Some(n), Some(i)) => {
            let name = as_str("ClusterName", n)?;
            check_name("ClusterName", name)?;
            let id = match as_uint("ClusterID", i, 255)? {
                0 => return Err(err("ClusterID", "0 is not a cluster id (1-255)")),
                id => id as u8,
            };
            Ok(Some(Identity {
                name: name.to_string(),
                id,
            }))
        }
    }
}

const KEYS: &[&str] = &[
    "Name",
    "Endpoints",
    "Prefix",
    "ServicePrefix",
    "Mode",
    "CAFile",
    "CertFile",
    "KeyFile",
];

/// `Clusters`: the other clusters, each named once and never this cluster's name.
pub(super) fn parse_remotes(
    v: Option<&Value>,
    own: Option<&Identity>,
) -> Result<Vec<RemoteCluster>, ConfigError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(err("Clusters", format!("expected a list, got {other}"))),
    };
    let Some(own) = own.filter(|_| !list.is_empty()) else {
        return match list.is_empty() {
            true => Ok(Vec::new()),
            false => Err(err(
                "Clusters",
                "needs this cluster's ClusterName and ClusterID",
            )),
        };
    };
    let mut remotes: Vec<RemoteCluster> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let field = |k: &str| format!("Clusters[{i}].{k}");
        let obj = item.as_object().ok_or_else(|| {
            err(
                &format!("Clusters[{i}]"),
                format!("expected an object, got {item}"),
            )
        })?;
        if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(err(&field(k), "unknown field"));
        }
        let name = match obj.get("Name") {
            Some(n) => as_str(&field("Name"), n)?.to_string(),
            None => return Err(err(&field("Name"), "missing")),
        };
        check_name(&field("Name"), &name)?;
        if name == own.name {
            return Err(err(
                &field("Name"),
                format!("{name:?} is this cluster's own ClusterName"),
            ));
        }
        if remotes.iter().any(|r| r.name == name) {
            return Err(err(&field("Name"), format!("{name:?} is declared twice")));
        }
        let endpoints = match obj.get("Endpoints") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|e| {
                    let s = as_str(&field("Endpoints"), e)?;
                    if s.starts_with("http://") || s.starts_with("https://") {
                        Ok(s.to_string())
                    } else {
                        Err(err(
                            &field("Endpoints"),
                            format!("{s:?} must start with http:// or https://"),
                        ))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => {
                return Err(err(
                    &field("Endpoints"),
                    format!("expected a non-empty list of etcd URLs, got {other}"),
                ));
            }
            None => {
                return Err(err(
                    &field("Endpoints"),
                    "missing (the cluster's etcd URLs)",
                ));
            }
        };
        let prefix = match obj.get("Prefix") {
            None => DEFAULT_PREFIX.to_string(),
            Some(p) => match as_str(&field("Prefix"), p)? {
                p if p.starts_with('/') => p.trim_end_matches('/').to_string(),
                p => return Err(err(&field("Prefix"), format!("{p:?} must start with '/'"))),
            },
        };
        let service_prefix = match obj.get("ServicePrefix") {
            None => None,
            Some(p) => match as_str(&field("ServicePrefix"), p)? {
                p if p.starts_with('/') => Some(p.to_string()),
                p => {
                    return Err(err(
                        &field("ServicePrefix"),
                        format!("{p:?} must start with '/'"),
                    ));
                }
            },
        };
        let mode = match obj.get("Mode") {
            None => Mode::Direct,
            Some(m) => match as_str(&field("Mode"), m)? {
                "direct" => Mode::Direct,
                "gateway" => Mode::Gateway,
                other => {
                    return Err(err(
                        &field("Mode"),
                        format!("{other:?} is not one of direct, gateway"),
                    ));
                }
            },
        };
        let file = |k: &str| -> Result<Option<String>, ConfigError> {
            obj.get(k)
                .map(|v| as_str(&field(k), v).map(String::from))
                .transpose()
        };
        let (ca_file, cert_file, key_file) = (file("CAFile")?, file("CertFile")?, file("KeyFile")?);
        if cert_file.is_some() != key_file.is_some() {
            return Err(err(
                &field(if cert_file.is_some() {
                    "KeyFile"
                } else {
                    "CertFile"
                }),
                "CertFile and KeyFile must be given together",
            ));
        }
        remotes.push(RemoteCluster {
            name,
            mode,
            endpoints,
            prefix,
            service_prefix,
            ca_file,
            cert_file,
            key_file,
        });
    }
    Ok(remotes)
}
