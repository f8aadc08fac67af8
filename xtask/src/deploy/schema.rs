//! The manifests against the Kubernetes schema, with kubernetes-validate.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail, ensure};

use super::{KUBERNETES_VERSION, tools::Tools};

impl Tools {
    /// kubernetes-validate, strict (unknown fields are errors), against
    /// [`KUBERNETES_VERSION`]; the files to validate follow.
    pub(super) fn kubernetes_validate(&self) -> Command {
        let mut c = Command::new(self.bin("kubernetes-validate"));
        c.args(["--strict", "--kubernetes-version", KUBERNETES_VERSION]);
        c
    }

    /// Every manifest against the schema, strictly.
    pub(super) fn validate(&self, files: &[PathBuf]) -> Result<()> {
        let out = self
            .kubernetes_validate()
            .args(files)
            .output()
            .context("running kubernetes-validate")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            eprintln!("  {line}");
        }
        if !out.status.success() {
            bail!("kubernetes-validate rejects manifests in deploy/ (above)");
        }
        let passed = text.matches(" passed for resource ").count();
        ensure!(
            passed > 0,
            "kubernetes-validate reported no resource as passed"
        );
        Ok(())
    }
}
