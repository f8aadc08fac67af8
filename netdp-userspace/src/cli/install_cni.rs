//! `netdp install-cni`: puts the CNI plugin and its network config on the host, each by
//! writing a temporary file in the target directory and renaming it, so the container
//! runtime never runs a half-copied plugin or reads a half-written config (what
//! kube-flannel's init container does with `cp`; the image has no shell).
use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::cni::types::NetConf;

#[derive(clap::Args, Debug)]
pub struct InstallCniArgs {
    /// The plugin to install (default: `netdp-cni` next to this binary).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// The host's CNI plugin directory.
    #[arg(long = "cni-bin-dir", default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// The network config to install (JSON, netdp-cni's format).
    #[arg(long = "conf-file")]
    conf_file: PathBuf,
    /// The host's CNI config directory.
    #[arg(long = "cni-conf-dir", default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The config's file name there (runtimes take the first in lexical order).
    #[arg(long = "conf-name", default_value = "10-netdp.conf")]
    conf_name: String,
    /// Written into the config as `nodeName`, so pods find this node's dataplane where the
    /// hostname is not the node's name (kubelet's --hostname-override).
    #[arg(long = "node-name", env = "NODE_NAME")]
    node_name: Option<String>,
}

pub fn run(args: InstallCniArgs) -> Result<()> {
    let plugin = match args.plugin {
        Some(p) => p,
        None => std::env::current_exe()
            .context("finding this binary")?
            .with_file_name("netdp-cni"),
    };
    let binary = fs::read(&plugin).with_context(|| format!("reading {}", plugin.display()))?;
    let mut conf = fs::read_to_string(&args.conf_file)
        .with_context(|| format!("reading {}", args.conf_file.display()))?;
    if let Some(node) = &args.node_name {
        let mut v: serde_json::Value = serde_json::from_str(&conf)
            .map_err(|e| anyhow!("{} is not JSON: {e}", args.conf_file.display()))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| anyhow!("{} is not a JSON object", args.conf_file.display()))?;
        obj.insert("nodeName".into(), node.clone().into());
        conf = serde_json::to_string_pretty(&v)?;
    }
    let parsed: NetConf = serde_json::from_str(&conf).map_err(|e| {
        anyhow!(
            "{} is not a netdp CNI config: {e}",
            args.conf_file.display()
        )
    })?;
    if parsed.plugin_type != "netdp-cni" {
        bail!(
            "{}: type is {:?}, the plugin installed is netdp-cni",
            args.conf_file.display(),
            parsed.plugin_type
        );
    }
    let bin = args.bin_dir.join("netdp-cni");
    replace(&bin, &binary, 0o755)?;
    println!("installed {}", bin.display());
    let conf_path = args.conf_dir.join(&args.conf_name);
    replace(&conf_path, conf.as_bytes(), 0o644)?;
    println!("installed {}", conf_path.display());
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}
