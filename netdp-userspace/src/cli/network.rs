//! `netdp network`: the network config in etcd, shown with its defaults filled in, or
//! applied from a file (what the DaemonSet's init container does with its ConfigMap).
use std::path::PathBuf;

use crate::cli::Classify;
use anyhow::{Context, Result, anyhow, bail};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use crate::{config::NetworkConfig, etcd::EtcdArgs, lease::Registry, util::one_line};

#[derive(clap::Subcommand, Debug)]
pub enum NetworkCmd {
    /// The effective config, with Flannel's defaults filled in.
    Show {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Output format (a document: table prints it as JSON).
        #[arg(short = 'o', long, value_enum, default_value = "json")]
        output: super::Output,
    },
    /// Write a config (Flannel's net-conf.json) to etcd after validating it: created if
    /// there is none, left alone if the same; a different one is only replaced with
    /// --overwrite, since a running cluster's Network must not change under it.
    Apply {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The config file, in Flannel's format.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Replace a config that differs.
        #[arg(long)]
        overwrite: bool,
        /// The agents take subnets from Node objects and read the config from the file
        /// (`netdp agent --kube-subnet-mgr`): validate it, write nothing to etcd.
        #[arg(long = "kube-subnet-mgr", env = "NETDP_KUBE_SUBNET_MGR")]
        kube_subnet_mgr: bool,
    },
}

pub async fn run(cmd: NetworkCmd) -> Result<()> {
    match cmd {
        NetworkCmd::Show { etcd, output } => {
            let mut registry = Registry::new(etcd.connect().await?, etcd.prefix());
            let (config, _) = registry.config().await?;
            super::print_document(
                output,
                &serde_json::to_value(&config).map_err(|e| anyhow!(e))?,
            );
            Ok(())
        }
        NetworkCmd::Apply {
            etcd,
            file,
            overwrite,
            kube_subnet_mgr,
        } => apply(&etcd, &file, overwrite, kube_subnet_mgr).await,
    }
}

async fn apply(
    etcd: &EtcdArgs,
    file: &PathBuf,
    overwrite: bool,
    kube_subnet_mgr: bool,
) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let wanted = NetworkConfig::parse(&text)
        .map_err(|e| anyhow!("invalid network config in {}: {e}", file.display()))
        .classify(super::Failure::BadInput)?;
    if kube_subnet_mgr {
        println!(
            "{} is a valid network config; nothing written to etcd (--kube-subnet-mgr: the agents read the file)",
            file.display()
        );
        return Ok(());
    }
    let key = format!("{}/config", etcd.prefix());
    let mut client = etcd.connect().await?;
    let etcd_err = |e: etcd_client::Error| anyhow!("writing {key} to etcd: {}", one_line(&e));
    // Create only if absent, atomically: two nodes starting at once write it once.
    let created = client
        .txn(
            Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), text.trim(), None)]),
        )
        .await
        .map_err(etcd_err)?
        .succeeded();
    if created {
        println!("created {key}");
        return Ok(());
    }
    let resp = client.get(key.as_str(), None).await.map_err(etcd_err)?;
    let current = resp
        .kvs()
        .first()
        .and_then(|kv| std::str::from_utf8(kv.value()).ok())
        .and_then(|t| NetworkConfig::parse(t).ok());
    if current.as_ref() == Some(&wanted) {
        println!("{key} unchanged");
        return Ok(());
    }
    if !overwrite {
        bail!(
            "{key} holds a different network config than {}; nothing written (a running \
             cluster's Network must not change under it: pass --overwrite to replace it)",
            file.display()
        );
    }
    client
        .put(key.as_str(), text.trim(), None)
        .await
        .map_err(etcd_err)?;
    println!("replaced {key}");
    Ok(())
}
