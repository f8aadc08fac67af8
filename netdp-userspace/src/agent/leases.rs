//! The node's own lease: renewing it, re-acquiring it when it is gone, publishing it in the
//! subnet file.

use anyhow::Result;
use log::{error, info, warn};

use super::{AgentArgs, State, gateway::ensure_gateway, subnets::Subnets};
use crate::{
    config::NetworkConfig,
    lease::{Lease, LeaseAttrs, LeaseOptions},
    subnet_file::SubnetFile,
};

/// Renews our lease, or re-acquires one if it is gone.
pub(super) async fn renew(
    subnets: &mut Subnets,
    state: &mut State,
    args: &AgentArgs,
    attrs: &LeaseAttrs,
    opts: &LeaseOptions,
) -> Result<()> {
    if subnets.renew(&state.lease).await? {
        return Ok(());
    }
    let hint = Some(state.lease.subnet);
    let lease = subnets
        .acquire(&mut state.config, attrs, hint, opts)
        .await?;
    if lease.subnet != state.lease.subnet {
        warn!(
            "lease moved from {} to {}: pods addressed from the old subnet lose connectivity",
            state.lease.subnet, lease.subnet
        );
    } else {
        info!("re-acquired lease {}", lease.subnet);
    }
    state.lease = lease;
    write_subnet_file(args, &state.config, &state.lease, state.underlay.link.mtu)?;
    ensure_gateway(&state.nl, &state.lease).await?;
    state.sync_routes().await
}

/// Reports a config that changed under us; the running state is kept either way.
pub(super) async fn check_config(subnets: &mut Subnets, state: &mut State) {
    match subnets.config().await {
        Ok((config, rev)) => {
            if rev != state.config_rev {
                state.config_rev = rev;
                if config != state.config {
                    warn!(
                        "the network config changed; restart the agent to apply it (keeping the running one)"
                    );
                }
            }
        }
        Err(e) => {
            // Only report each broken revision once.
            let msg = format!("{e:#}");
            if !msg.contains("cannot reach") && state.config_rev >= 0 {
                error!("{msg}; keeping the running config");
                state.config_rev = -1;
            }
        }
    }
}

pub(super) fn write_subnet_file(
    args: &AgentArgs,
    config: &NetworkConfig,
    lease: &Lease,
    underlay_mtu: u32,
) -> Result<()> {
    SubnetFile {
        network: config.network,
        subnet: lease.subnet,
        mtu: config.pod_mtu(underlay_mtu),
        ipmasq: args.ip_masq,
    }
    .write(&args.subnet_file)
}
