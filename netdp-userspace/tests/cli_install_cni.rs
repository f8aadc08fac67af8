//! `netdp install-cni` puts the plugin and its config where the runtime looks, whole, and
//! refuses a config that is not netdp's, writing nothing.
use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use anyhow::Result;

fn install(root: &Path, conf: &Path) -> Result<std::process::Output> {
    install_as(root, conf, None)
}

/// `netdp install-cni` into `root`, with NODE_NAME set to `node` if given.
fn install_as(root: &Path, conf: &Path, node: Option<&str>) -> Result<std::process::Output> {
    let mut c = Command::new(env!("CARGO_BIN_EXE_netdp"));
    match node {
        Some(node) => c.env("NODE_NAME", node),
        None => c.env_remove("NODE_NAME"),
    };
    Ok(c.arg("install-cni")
        .arg("--plugin")
        .arg(env!("CARGO_BIN_EXE_netdp-cni"))
        .arg("--cni-bin-dir")
        .arg(root.join("opt/cni/bin"))
        .arg("--cni-conf-dir")
        .arg(root.join("etc/cni/net.d"))
        .arg("--conf-file")
        .arg(conf)
        .output()?)
}

#[test]
fn installs_plugin_and_config_whole_and_refuses_a_foreign_config() -> Result<()> {
    let root = std::env::temp_dir().join(format!("netdp-install-cni-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let result = (|| -> Result<()> {
        let (good, foreign) = (root.join("good.conf"), root.join("foreign.conf"));
        let conf = r#"{"cniVersion": "1.0.0", "name": "netdp", "type": "netdp-cni"}"#;
        std::fs::write(&good, conf)?;
        std::fs::write(
            &foreign,
            r#"{"cniVersion": "1.0.0", "name": "x", "type": "bridge"}"#,
        )?;

        let out = install(&root, &foreign)?;
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("bridge"));
        assert!(
            !root.join("opt/cni/bin/netdp-cni").exists(),
            "installed with a foreign config"
        );

        let out = install(&root, &good)?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plugin = root.join("opt/cni/bin/netdp-cni");
        assert_eq!(
            std::fs::read(&plugin)?,
            std::fs::read(env!("CARGO_BIN_EXE_netdp-cni"))?
        );
        assert_eq!(
            std::fs::metadata(&plugin)?.permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/cni/net.d/10-netdp.conf"))?,
            conf
        );
        // With the node's name (the DaemonSet passes spec.nodeName), the config carries it.
        let out = install_as(&root, &good, Some("node-7"))?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let installed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            root.join("etc/cni/net.d/10-netdp.conf"),
        )?)?;
        assert_eq!(installed["nodeName"], "node-7");
        assert_eq!(installed["type"], "netdp-cni");
        for dir in ["opt/cni/bin", "etc/cni/net.d"] {
            let left: Vec<_> = std::fs::read_dir(root.join(dir))?
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().starts_with('.'))
                .collect();
            assert!(left.is_empty(), "temporary files left in {dir}: {left:?}");
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&root);
    result
}
