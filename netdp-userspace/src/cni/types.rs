//! CNI spec 1.x wire types: the network config on stdin, results and errors on stdout.
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Error codes from the spec (and one of ours).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin specific: the address range of the node's subnet is used up.
    pub const NO_ADDRESSES: u32 = 100;
    /// Plugin specific: CHECK found the attachment differs from what ADD made.
    pub const CHECK_FAILED: u32 = 101;
    /// Plugin specific: a system call or netlink request failed.
    pub const INTERNAL: u32 = 999;
}

#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn internal(e: anyhow::Error) -> Self {
        CniError {
            code: code::INTERNAL,
            msg: crate::util::one_line(&format!("{e:#}")),
            details: String::new(),
        }
    }

    pub fn to_json(&self, version: &str) -> Value {
        json!({ "cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details })
    }
}

impl From<anyhow::Error> for CniError {
    fn from(e: anyhow::Error) -> Self {
        CniError::internal(e)
    }
}

fn default_bpf_root() -> String {
    netdp_common::BPF_ROOT.into()
}
fn default_subnet_file() -> String {
    "/run/flannel/subnet.env".into()
}
fn default_data_dir() -> String {
    "/var/lib/cni/networks".into()
}

/// The network configuration on stdin. Unknown fields are ignored, as the spec asks.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The node whose pinned maps and programs to use (default: the hostname).
    pub node_name: Option<String>,
    #[serde(default = "default_bpf_root")]
    pub bpf_root: String,
    #[serde(default = "default_subnet_file")]
    pub subnet_file: String,
    /// Where address allocations are recorded, one directory per network name.
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
    /// Pod MTU override; default: the subnet file's FLANNEL_MTU.
    pub mtu: Option<u32>,
    /// For GC: the attachments that must be kept.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Serialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct IpConfig {
    pub address: String,
    pub gateway: String,
    pub interface: usize,
}

#[derive(Debug, Serialize)]
pub struct Route {
    pub dst: String,
    pub gw: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Value,
}
