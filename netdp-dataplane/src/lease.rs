//! A subnet lease's value, in Flannel's JSON: what the route planner reads of a peer.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A lease's value, field for field as Flannel's `LeaseAttrs` marshals it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(
        rename = "PublicIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_ipv6: Option<Value>,
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub backend_type: String,
    #[serde(rename = "BackendData", default, skip_serializing_if = "is_null")]
    pub backend_data: Option<Value>,
    #[serde(rename = "BackendV6Data", default, skip_serializing_if = "is_null")]
    pub backend_v6_data: Option<Value>,
    /// The node that wrote the lease (netdp's addition; flanneld ignores unknown keys and
    /// never writes it). A node takes back only a lease that names it, so a lease someone
    /// else wrote with its PublicIP is never adopted (see `Registry::acquire`).
    #[serde(rename = "NetdpNode", default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

fn is_null(v: &Option<Value>) -> bool {
    matches!(v, None | Some(Value::Null))
}

impl LeaseAttrs {
    pub fn new(public_ip: Ipv4Addr, backend_type: &str, backend_data: Option<Value>) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: backend_type.to_string(),
            backend_data,
            backend_v6_data: None,
            node: None,
        }
    }

    /// The same attributes, naming `node` as the lease's owner.
    pub fn with_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }

    /// Parses a lease's value as stored in etcd. Errors name the field (`PublicIP: invalid
    /// type: ...`): the value may come from anyone with write access, and the log line
    /// about it should say what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let attrs: Self = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            match e.path().to_string().as_str() {
                "." => e.into_inner().to_string(),
                path => format!("{path}: {}", e.into_inner()),
            }
        })?;
        de.end().map_err(|e| e.to_string())?;
        Ok(attrs)
    }

    /// The peer's VTEP MAC for the vxlan backend (`BackendData.VtepMAC`).
    pub fn vtep_mac(&self) -> Option<[u8; 6]> {
        let s = self.backend_data.as_ref()?.get("VtepMAC")?.as_str()?;
        crate::util::parse_mac(s)
    }
}
