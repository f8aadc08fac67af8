//! `netdp check`: loads the embedded programs into this kernel for every backend, with and
//! without masquerading, and reports what the verifier said. Nothing is attached or pinned:
//! it tells whether a node (or an image, before it is rolled out) can run netdp at all.
use std::time::Instant;

use anyhow::{Result, bail};
use netdp_common::{
    nat,
    node::{NodeConfig, decap, flags},
};

use crate::dataplane::{Dataplane, MapSizes};

/// Each backend's decapsulation mode and port, as the agent bakes them into the programs.
const BACKENDS: [(&str, u16, u16); 4] = [
    ("host-gw", decap::NONE, 0),
    ("vxlan", decap::VXLAN, 8472),
    ("ipip", decap::IPIP, 0),
    ("udp", decap::UDP, 8285),
];

pub fn run() -> Result<()> {
    let mut failed = Vec::new();
    for (name, mode, port) in BACKENDS {
        for masq in [false, true] {
            // Settings of a real node (every path enabled: masquerading, a mesh, a
            // gateway), so the verifier sees them all.
            let node = NodeConfig {
                node_ip: [192, 0, 2, 1],
                cluster: [10, 244, 0, 0],
                cluster_mask: [255, 255, 0, 0],
                underlay_ifindex: 1,
                decap: mode,
                flags: if masq {
                    flags::MASQUERADE | flags::MESH | flags::GATEWAY
                } else {
                    0
                },
                vni: if mode == decap::VXLAN { 1 } else { 0 },
                port,
                nat_port_min: nat::PORT_MIN,
                nat_port_max: nat::PORT_MAX,
                vtep_mac: [0x02, 0, 0, 0, 0, 1],
                gateway_port: if masq { 4800 } else { 0 },
            };
            let label = format!("{name}{}", if masq { " + ip-masq" } else { "" });
            let started = Instant::now();
            match Dataplane::load_for(crate::ebpf_object(), None, &MapSizes::default(), &node) {
                Ok(_) => println!(
                    "ok    {label:<18} programs verified in {:.0?}",
                    started.elapsed()
                ),
                Err(e) => {
                    println!(
                        "FAIL  {label:<18} {}",
                        crate::util::one_line(&format!("{e:#}"))
                    );
                    failed.push(label);
                }
            }
        }
    }
    if !failed.is_empty() {
        bail!("the kernel refused the programs for {}", failed.join(", "));
    }
    Ok(())
}
