//! The network config at `<prefix>/config`, in Flannel's format, with the seed's defaults.
use std::{fmt, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod clusters;
pub use clusters::{Identity, Mode as ClusterMode, RemoteCluster};

/// A config value that cannot be used, naming the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn err(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// The backend that carries pod traffic between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "Type")]
pub enum Backend {
    #[serde(rename = "host-gw")]
    HostGw,
    #[serde(rename = "vxlan")]
    Vxlan {
        #[serde(rename = "VNI")]
        vni: u32,
        #[serde(rename = "Port")]
        port: u16,
        #[serde(rename = "DirectRouting")]
        direct_routing: bool,
    },
    #[serde(rename = "ipip")]
    Ipip {
        #[serde(rename = "DirectRouting")]
        direct_routing: bool,
    },
    #[serde(rename = "udp")]
    Udp {
        #[serde(rename = "Port")]
        port: u16,
    },
}

impl Backend {
    /// The name used in `Backend.Type` and in a lease's `BackendType`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan { .. } => "vxlan",
            Backend::Ipip { .. } => "ipip",
            Backend::Udp { .. } => "udp",
        }
    }

    /// Bytes of encapsulation this backend adds to every packet.
    pub fn overhead(&self) -> u32 {
        match self {
            Backend::HostGw => 0,
            Backend::Vxlan { .. } => 50,
            Backend::Udp { .. } => 28,
            Backend::Ipip { .. } => 20,
        }
    }
}

/// The effective network config: every default filled in, every field validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkConfig {
    #[serde(rename = "Network")]
    pub network: Ipv4Network,
    #[serde(rename = "SubnetLen")]
    pub subnet_len: u8,
    #[serde(rename = "SubnetMin")]
    pub subnet_min: Ipv4Addr,
    #[serde(rename = "SubnetMax")]
    pub subnet_max: Ipv4Addr,
    #[serde(rename = "Backend")]
    pub backend: Backend,
    /// Pod MTU override (`MTU`); otherwise the underlay MTU minus the backend overhead.
    #[serde(rename = "MTU", skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The range cluster IPs are allocated from (`ServiceNetwork`, netdp's key: Flannel
    /// ignores keys it does not know), as kube-apiserver's `--service-cluster-ip-range`.
    /// Services whose clusterIP lies outside it are not programmed (CVE-2020-8554).
    #[serde(rename = "ServiceNetwork", skip_serializing_if = "Option::is_none")]
    pub service_network: Option<Ipv4Network>,
    /// This cluster's `ClusterName` and `ClusterID` (netdp's keys), for a mesh.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// The other clusters whose leases become routes here (`Clusters`).
    #[serde(rename = "Clusters", skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<RemoteCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(rename = "Network")]
    network: Option<Value>,
    #[serde(rename = "SubnetLen")]
    subnet_len: Option<Value>,
    #[serde(rename = "SubnetMin")]
    subnet_min: Option<Value>,
    #[serde(rename = "SubnetMax")]
    subnet_max: Option<Value>,
    #[serde(rename = "Backend")]
    backend: Option<Value>,
    #[serde(rename = "MTU")]
    mtu: Option<Value>,
    #[serde(rename = "ServiceNetwork")]
    service_network: Option<Value>,
    #[serde(rename = "ClusterName")]
    cluster_name: Option<Value>,
    #[serde(rename = "ClusterID")]
    cluster_id: Option<Value>,
    #[serde(rename = "Clusters")]
    clusters: Option<Value>,
    // Fields Flannel knows that netdp has nothing to do with; accepted and ignored.
    #[serde(rename = "EnableIPv4")]
    _enable_ipv4: Option<Value>,
    #[serde(rename = "EnableIPv6")]
    _enable_ipv6: Option<Value>,
    #[serde(rename = "IPv6Network")]
    _ipv6_network: Option<Value>,
    #[serde(rename = "EnableNFTables")]
    _enable_nftables: Option<Value>,
}

fn as_str<'a>(field: &str, v: &'a Value) -> Result<&'a str, ConfigError> {
    v.as_str()
        .ok_or_else(|| err(field, format!("expected a string, got {v}")))
}

fn as_uint(field: &str, v: &Value, max: u64) -> Result<u64, ConfigError> {
    match v.as_u64() {
        Some(n) if n <= max => Ok(n),
        _ => Err(err(
            field,
            format!("expected an integer between 0 and {max}, got {v}"),
        )),
    }
}

fn as_bool(field: &str, v: &Value) -> Result<bool, ConfigError> {
    v.as_bool()
        .ok_or_else(|| err(field, format!("expected true or false, got {v}")))
}

fn parse_cidr(field: &str, v: &Value) -> Result<Ipv4Network, ConfigError> {
    let s = as_str(field, v)?;
    let net: Ipv4Network = s.parse().map_err(|_| {
        err(
            field,
            format!("{s:?} is not an IPv4 CIDR (like 10.1.0.0/16)"),
        )
    })?;
    if net.network() != net.ip() {
        return Err(err(
            field,
            format!(
                "{s} has host bits set; did you mean {}/{}?",
                net.network(),
                net.prefix()
            ),
        ));
    }
    Ok(net)
}

/// Accepts `10.1.1.0` and, as Flannel's configs often carry, `10.1.1.0/24`.
fn parse_subnet_bound(field: &str, v: &Value, subnet_len: u8) -> Result<Ipv4Addr, ConfigError> {
    let s = as_str(field, v)?;
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| err(field, format!("{s:?} is not an IPv4 address")))?;
    if let Some(len) = len
        && len.parse::<u8>().ok() != Some(subnet_len)
    {
        return Err(err(
            field,
            format!("{s} does not have the subnet length /{subnet_len}"),
        ));
    }
    Ok(addr)
}

fn parse_mtu(field: &str, v: &Value) -> Result<u32, ConfigError> {
    match as_uint(field, v, 65535)? {
        m if m < 576 => Err(err(field, format!("{m} is below IPv4's minimum of 576"))),
        m => Ok(m as u32),
    }
}

fn parse_backend(v: Option<&Value>) -> Result<Backend, ConfigError> {
    let empty = serde_json::Map::new();
    let obj = match v {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(other) => return Err(err("Backend", format!("expected an object, got {other}"))),
    };
    let ty = match obj.get("Type") {
        None => "udp",
        Some(t) => as_str("Backend.Type", t)?,
    };
    let known: &[&str] = match ty {
        "host-gw" => &["Type"],
        "vxlan" => &[
            "Type",
            "VNI",
            "Port",
            "DirectRouting",
            "GBP",
            "Learning",
            "MTU",
            "MacPrefix",
        ],
        "ipip" => &["Type", "DirectRouting"],
        "udp" => &["Type", "Port"],
        other => {
            return Err(err(
                "Backend.Type",
                format!("unknown backend {other:?} (expected one of host-gw, vxlan, ipip, udp)"),
            ));
        }
    };
    if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(err(
            &format!("Backend.{k}"),
            format!("not an option of the {ty} backend"),
        ));
    }
    let port = |default: u16| -> Result<u16, ConfigError> {
        match obj.get("Port") {
            None => Ok(default),
            Some(p) => match as_uint("Backend.Port", p, 65535)? {
                0 => Err(err("Backend.Port", "port 0 is not a valid UDP port")),
                p => Ok(p as u16),
            },
        }
    };
    let direct_routing = || -> Result<bool, ConfigError> {
        obj.get("DirectRouting")
            .map(|v| as_bool("Backend.DirectRouting", v))
            .unwrap_or(Ok(false))
    };
    Ok(match ty {
        "host-gw" => Backend::HostGw,
        "vxlan" => {
            let vni = match obj.get("VNI") {
                None => 1,
                Some(v) => match as_uint("Backend.VNI", v, (1 << 24) - 1)? {
                    0 => return Err(err("Backend.VNI", "VNI 0 is not allowed (1 to 16777215)")),
                    n => n as u32,
                },
            };
            for flag in ["GBP", "Learning"] {
                if let Some(v) = obj.get(flag)
                    && as_bool(&format!("Backend.{flag}"), v)?
                {
                    return Err(err(
                        &format!("Backend.{flag}"),
                        "not supported by netdp's vxlan backend",
                    ));
                }
            }
            Backend::Vxlan {
                vni,
                port: port(8472)?,
                direct_routing: direct_routing()?,
            }
        }
        "ipip" => Backend::Ipip {
            direct_routing: direct_routing()?,
        },
        _ => Backend::Udp { port: port(8285)? },
    })
}

impl NetworkConfig {
    /// Parses and validates a config as stored in etcd.
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|e| {
            let msg = e.to_string();
            match msg.strip_prefix("unknown field `") {
                Some(rest) => {
                    let field = rest.split('`').next().unwrap_or(rest);
                    // An empty key still needs a name the message can show.
                    err(
                        if field.is_empty() { "\"\"" } else { field },
                        "unknown field",
                    )
                }
                None => err("config", format!("not valid JSON: {msg}")),
            }
        })?;
        let network = match &raw.network {
            Some(v) => parse_cidr("Network", v)?,
            None => {
                return Err(err(
                    "Network",
                    "missing (the cluster CIDR, like 10.1.0.0/16)",
                ));
            }
        };
        let subnet_len = match &raw.subnet_len {
            None => default_subnet_len(network.prefix()),
            Some(v) => as_uint("SubnetLen", v, 32)? as u8,
        };
        if subnet_len <= network.prefix() {
            return Err(err(
                "SubnetLen",
                format!(
                    "/{subnet_len} is not longer than the Network's /{}",
                    network.prefix()
                ),
            ));
        }
        if subnet_len > 30 {
            return Err(err(
                "SubnetLen",
                format!("/{subnet_len} leaves no room for pods (at most /30)"),
            ));
        }
        let size = 1u32 << (32 - subnet_len);
        let first = u32::from(network.network());
        // In u64: a /0 Network spans 2^32 addresses.
        let last = first + ((1u64 << (32 - network.prefix())) - u64::from(size)) as u32;
        let bound = |field: &str, v: &Option<Value>, default: u32| -> Result<u32, ConfigError> {
            let Some(v) = v else { return Ok(default) };
            let addr = u32::from(parse_subnet_bound(field, v, subnet_len)?);
            if !network.contains(Ipv4Addr::from(addr)) {
                return Err(err(
                    field,
                    format!("{} is outside Network {network}", Ipv4Addr::from(addr)),
                ));
            }
            if addr % size != 0 {
                return Err(err(
                    field,
                    format!(
                        "{} is not on a /{subnet_len} subnet boundary",
                        Ipv4Addr::from(addr)
                    ),
                ));
            }
            Ok(addr)
        };
        let subnet_min = bound("SubnetMin", &raw.subnet_min, first + size)?;
        let subnet_max = bound("SubnetMax", &raw.subnet_max, last)?;
        if subnet_min > subnet_max {
            return Err(err(
                "SubnetMin",
                format!(
                    "{} is above SubnetMax {}",
                    Ipv4Addr::from(subnet_min),
                    Ipv4Addr::from(subnet_max)
                ),
            ));
        }
        let backend = parse_backend(raw.backend.as_ref())?;
        // The vxlan backend's own `MTU` (Flannel's option) counts when there is no
        // network-wide one.
        let backend_mtu = match (&backend, raw.backend.as_ref().and_then(|b| b.get("MTU"))) {
            (Backend::Vxlan { .. }, Some(v)) => Some(parse_mtu("Backend.MTU", v)?),
            _ => None,
        };
        let mtu = match &raw.mtu {
            None => backend_mtu,
            Some(v) => Some(parse_mtu("MTU", v)?),
        };
        let service_network = match &raw.service_network {
            None => None,
            Some(v) => {
                let s = parse_cidr("ServiceNetwork", v)?;
                if s.contains(network.network()) || network.contains(s.network()) {
                    return Err(err(
                        "ServiceNetwork",
                        format!("{s} overlaps the Network {network}"),
                    ));
                }
                Some(s)
            }
        };
        let identity =
            clusters::parse_identity(raw.cluster_name.as_ref(), raw.cluster_id.as_ref())?;
        let clusters = clusters::parse_remotes(raw.clusters.as_ref(), identity.as_ref())?;
        Ok(NetworkConfig {
            identity,
            clusters,
            network,
            subnet_len,
            subnet_min: subnet_min.into(),
            subnet_max: subnet_max.into(),
            backend,
            mtu,
            service_network,
        })
    }

    /// Number of subnets between SubnetMin and SubnetMax.
    pub fn subnet_count(&self) -> u32 {
        (u32::from(self.subnet_max) - u32::from(self.subnet_min)) / self.subnet_size() + 1
    }

    pub fn subnet_size(&self) -> u32 {
        1 << (32 - self.subnet_len)
    }

    /// The `i`th leasable subnet, counting from SubnetMin.
    pub fn subnet(&self, i: u32) -> Ipv4Network {
        let addr = u32::from(self.subnet_min) + i * self.subnet_size();
        Ipv4Network::new(addr.into(), self.subnet_len).expect("prefix validated")
    }

    /// Whether `subnet` is one this config would hand out.
    pub fn fits(&self, subnet: &Ipv4Network) -> bool {
        let a = u32::from(subnet.network());
        subnet.prefix() == self.subnet_len
            && subnet.ip() == subnet.network()
            && a >= u32::from(self.subnet_min)
            && a <= u32::from(self.subnet_max)
    }

    /// The pod MTU for an underlay of `underlay_mtu`.
    pub fn pod_mtu(&self, underlay_mtu: u32) -> u32 {
        self.mtu
            .unwrap_or_else(|| underlay_mtu - self.backend.overhead())
    }
}

/// The seed's rule: /24 subnets in networks larger than /24, else one bit longer.
pub fn default_subnet_len(network_prefix: u8) -> u8 {
    if network_prefix < 24 {
        24
    } else {
        network_prefix + 1
    }
}

#[cfg(test)]
mod tests;
