//! The OCI archive: buildah commits the root `FROM scratch` into `target/netdp-image.tar`
//! (named as the DaemonSet's `image:`); skopeo and umoci unpack it again to check its
//! config and its files.
use std::{collections::BTreeMap, os::unix::fs::PermissionsExt, path::Path};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::{NETDP, archive, work::Work};
use crate::{
    build::workspace,
    setup::{cmd, exec, output},
};

impl Work {
    pub(super) fn buildah_commit(&self, reference: &str, version: &str) -> Result<()> {
        let name = format!("netdp-image-{}", self.id);
        let container = output(self.buildah().args(["from", "--name", &name, "scratch"]))?
            .trim()
            .to_string();
        exec(
            self.buildah()
                .args(["copy", "--quiet", &container])
                .arg(format!("{}/", self.path("rootfs").display()))
                .arg("/"),
        )?;
        let revision = output(
            cmd("git")
                .current_dir(workspace())
                .args(["rev-parse", "HEAD"]),
        )
        .unwrap_or_default();
        exec(
            self.buildah()
                .arg("config")
                .arg(format!("--entrypoint=[\"/{NETDP}\"]"))
                .arg("--cmd=agent")
                .arg("--env=PATH=/usr/bin")
                .arg("--label=org.opencontainers.image.title=netdp")
                .arg(format!(
                    "--label=org.opencontainers.image.version={version}"
                ))
                .arg(format!(
                    "--label=org.opencontainers.image.revision={}",
                    revision.trim()
                ))
                .arg("--label=org.opencontainers.image.licenses=Apache-2.0")
                .arg(
                    "--label=org.opencontainers.image.description=netdp agent, CLI and CNI \
                     plugin (eBPF pod networking with Flannel-compatible leases)",
                )
                .arg(&container),
        )?;
        let tmp = self.archive_tmp();
        let _ = std::fs::remove_file(&tmp);
        exec(
            self.buildah()
                .args(["commit", "--quiet", "--rm", "--format=oci", &container])
                .arg(format!("oci-archive:{}:{reference}", tmp.display())),
        )
        .context("buildah commit")?;
        std::fs::rename(&tmp, archive())?;
        Ok(())
    }

    /// The archive, unpacked again: its entrypoint, and exactly the files assembled.
    pub(super) fn inspect(&self, reference: &str, files: &BTreeMap<String, u32>) -> Result<()> {
        let src = format!("oci-archive:{}", archive().display());
        let config: Value =
            serde_json::from_str(&output(cmd("skopeo").args(["inspect", "--config", &src]))?)?;
        let entrypoint = &config["config"]["Entrypoint"];
        ensure!(
            *entrypoint == serde_json::json!([format!("/{NETDP}")]),
            "the image's entrypoint is {entrypoint}, not /{NETDP}"
        );
        let index: Value = serde_json::from_str(&output(
            cmd("tar").arg("-xOf").arg(archive()).arg("index.json"),
        )?)?;
        let name = &index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"];
        ensure!(
            name == reference,
            "the archive names its image {name}, not {reference}"
        );
        let layout = self.path("layout");
        exec(
            cmd("skopeo")
                .arg("copy")
                .arg("--quiet")
                .arg(&src)
                .arg(format!("oci:{}:netdp", layout.display())),
        )?;
        let bundle = self.path("bundle");
        exec(
            cmd("umoci")
                .arg("unpack")
                .arg("--image")
                .arg(format!("{}:netdp", layout.display()))
                .arg(&bundle),
        )?;
        let rootfs = bundle.join("rootfs");
        let mut found = BTreeMap::new();
        walk(&rootfs, &rootfs, &mut found)?;
        ensure!(
            &found == files,
            "the image holds {found:?}, not exactly the files assembled {files:?}"
        );
        ensure!(
            !found
                .keys()
                .any(|f| f.ends_with("/sh") || f.ends_with("busybox")),
            "the image has a shell"
        );
        eprintln!(
            "  {} files, entrypoint /{NETDP}, named {reference}, no shell",
            found.len()
        );
        Ok(())
    }
}

/// Regular files under `dir`, relative to `root`, with their modes.
fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u32>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let meta = std::fs::symlink_metadata(e.path())?;
        if meta.is_dir() {
            walk(root, &e.path(), out)?;
        } else {
            let rel = e.path().strip_prefix(root)?.to_string_lossy().into_owned();
            out.insert(rel, meta.permissions().mode() & 0o7777);
        }
    }
    Ok(())
}
