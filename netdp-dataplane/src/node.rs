//! This node's settings as the programs see them (baked in at load time), and the VTEP
//! MAC it publishes for the vxlan backend.
use netdp_common::{
    nat,
    node::{NodeConfig, decap, flags},
};
use serde_json::{Value, json};

use crate::{
    config::{Backend, NetworkConfig},
    route::Underlay,
    util::mac_string,
};

/// The VTEP MAC: the underlay MAC with the locally administered bit set. Stable across
/// restarts without any state, and unique as long as underlay MACs are.
pub fn vtep_mac(underlay_mac: [u8; 6]) -> [u8; 6] {
    let mut mac = underlay_mac;
    mac[0] = (mac[0] | 0x02) & !0x01;
    mac
}

/// The lease's BackendData, exactly as Flannel writes it.
pub fn backend_data(backend: &Backend, vtep: [u8; 6]) -> Option<Value> {
    match backend {
        Backend::Vxlan { vni, .. } => Some(json!({"VNI": vni, "VtepMAC": mac_string(&vtep)})),
        _ => None,
    }
}

pub fn node_config(
    config: &NetworkConfig,
    underlay: &Underlay,
    vtep: [u8; 6],
    ip_masq: bool,
) -> NodeConfig {
    let (decap, port, vni) = match &config.backend {
        Backend::HostGw => (decap::NONE, 0, 0),
        Backend::Vxlan { vni, port, .. } => (decap::VXLAN, *port, *vni),
        Backend::Ipip { .. } => (decap::IPIP, 0, 0),
        Backend::Udp { port } => (decap::UDP, *port, 0),
    };
    NodeConfig {
        node_ip: underlay.addr.ip().octets(),
        cluster: config.network.network().octets(),
        cluster_mask: config.network.mask().octets(),
        underlay_ifindex: underlay.link.index,
        decap,
        flags: if ip_masq { flags::MASQUERADE } else { 0 }
            | if config.clusters.is_empty() {
                0
            } else {
                flags::MESH
            },
        vni,
        port,
        // The agent picks the range against the node's ephemeral ports (`--masquerade-ports`).
        nat_port_min: nat::PORT_MIN,
        nat_port_max: nat::PORT_MAX,
        vtep_mac: vtep,
        // A gateway's port is the agent's to set (`--gateway`).
        gateway_port: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_mac_is_a_stable_local_unicast_mac() {
        assert_eq!(
            vtep_mac([0x52, 0x54, 0, 1, 2, 3]),
            [0x52 | 0x02, 0x54, 0, 1, 2, 3]
        );
        // Multicast bit cleared, locally administered set; already local stays as is.
        assert_eq!(vtep_mac([0x01, 0, 0, 0, 0, 9])[0], 0x02);
        assert_eq!(vtep_mac([0x0e, 1, 2, 3, 4, 5]), [0x0e, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn backend_data_is_flannels() {
        let vxlan = Backend::Vxlan {
            vni: 1,
            port: 8472,
            direct_routing: false,
        };
        let data = backend_data(&vxlan, [0x0e, 0xaa, 0xbb, 0xcc, 0xdd, 0x01]).unwrap();
        assert_eq!(
            serde_json::to_string(&data).unwrap(),
            r#"{"VNI":1,"VtepMAC":"0e:aa:bb:cc:dd:01"}"#
        );
        assert_eq!(backend_data(&Backend::HostGw, [0; 6]), None);
        assert_eq!(backend_data(&Backend::Udp { port: 8285 }, [0; 6]), None);
    }
}
