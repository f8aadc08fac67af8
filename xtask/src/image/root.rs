//! The image's root, assembled from scratch: `netdp`, `netdp-cni`, the eBPF object and
//! exactly the shared libraries `ldd` names for the two binaries (with the dynamic
//! loader); no shell, nothing else.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail, ensure};

use super::{NETDP, NETDP_CNI, OBJECT, work::Work};
use crate::setup::{cmd, output};

impl Work {
    /// The image's root: path inside the image -> mode.
    pub(super) fn assemble(
        &self,
        netdp: &Path,
        cni: &Path,
        object: &Path,
    ) -> Result<BTreeMap<String, u32>> {
        let root = self.path("rootfs");
        let mut files = BTreeMap::new();
        let mut put = |src: &Path, dst: &str, mode: u32| -> Result<()> {
            let to = root.join(dst);
            std::fs::create_dir_all(to.parent().unwrap_or(&root))?;
            // Follows symlinks: the library's content lands under the name ldd gives.
            std::fs::copy(src, &to)
                .with_context(|| format!("copying {} into the image", src.display()))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
            files.insert(dst.to_string(), mode);
            Ok(())
        };
        put(netdp, NETDP, 0o755)?;
        put(cni, NETDP_CNI, 0o755)?;
        put(object, OBJECT, 0o644)?;
        let mut libs = BTreeSet::new();
        for bin in [netdp, cni] {
            libs.extend(ldd(bin)?);
        }
        for lib in &libs {
            let rel = lib
                .strip_prefix("/")
                .unwrap_or(lib)
                .to_string_lossy()
                .into_owned();
            put(lib, &rel, 0o755)?;
        }
        Ok(files)
    }
}

/// The shared libraries `ldd` names for `bin`, the dynamic loader included.
fn ldd(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = output(cmd("ldd").arg(bin))?;
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("ldd {}: {line}", bin.display());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2
        // (0x...)"; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    ensure!(
        libs.iter()
            .any(|l| l.to_string_lossy().contains("ld-linux")),
        "ldd {} names no dynamic loader:\n{out}",
        bin.display()
    );
    Ok(libs)
}
