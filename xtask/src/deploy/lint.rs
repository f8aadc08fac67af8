//! checkov's Kubernetes checks on the manifests, and the skips annotated in them: each
//! with a reason, each still needed.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

use super::{deploy_dir, manifest::items, tools::Tools};
use crate::setup::output;

/// Copies manifests into a directory without their checkov skip annotations.
const STRIP_SKIPS: &str = r#"
import os, sys, yaml
dst = sys.argv[1]
for i, f in enumerate(sys.argv[2:]):
    with open(f) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    for d in docs:
        ann = (d.get("metadata") or {}).get("annotations") or {}
        for k in [k for k in ann if k.startswith("checkov.io/skip")]:
            del ann[k]
        if "metadata" in d and "annotations" in d["metadata"] and not ann:
            del d["metadata"]["annotations"]
    with open(os.path.join(dst, "%02d-%s" % (i, os.path.basename(f))), "w") as out:
        yaml.safe_dump_all(docs, out, sort_keys=False)
"#;

/// A check on a resource, as a skip and a failure both name it.
type CheckOn = (String, String);

fn check_on(c: &Value) -> CheckOn {
    (
        c["check_id"].as_str().unwrap_or("").to_string(),
        c["resource"].as_str().unwrap_or("").to_string(),
    )
}

/// "ID on resource, …" for an error message.
fn listed<'a>(checks: impl Iterator<Item = &'a CheckOn>) -> String {
    checks
        .map(|(id, res)| format!("{id} on {res}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "ID resource (file)" for the report.
fn id_at(c: &Value) -> String {
    format!(
        "{} {} ({})",
        c["check_id"].as_str().unwrap_or("?"),
        c["resource"].as_str().unwrap_or("?"),
        c["file_path"].as_str().unwrap_or("?")
    )
}

impl Tools {
    /// checkov's JSON report on a directory, offline.
    pub(super) fn checkov(&self, dir: &Path) -> Result<Value> {
        let out = Command::new(self.bin("checkov"))
            .arg("--directory")
            .arg(dir)
            .args([
                "--framework",
                "kubernetes",
                "--output",
                "json",
                "--skip-download",
            ])
            // Offline: no guideline or mapping downloads from checkov's platform.
            .env("BC_SKIP_MAPPING", "TRUE")
            .current_dir(Self::dir())
            .output()
            .context("running checkov")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json: Value = serde_json::from_str(&stdout).map_err(|e| {
            anyhow!(
                "checkov printed no JSON report ({e}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        // One framework gives one report; several give a list.
        Ok(match json {
            Value::Array(mut v) if v.len() == 1 => v.remove(0),
            other => other,
        })
    }

    /// checkov on the manifests: nothing fails, each skip has a reason, and without the
    /// skips exactly the skipped checks fail (no stale skip hides a check that passes).
    pub(super) fn lint(&self, files: &[PathBuf]) -> Result<()> {
        let report = self.checkov(&deploy_dir())?;
        let summary = &report["summary"];
        ensure!(
            summary["parsing_errors"].as_u64() == Some(0),
            "checkov could not parse manifests in deploy/: {summary}"
        );
        let failed = items(&report["results"]["failed_checks"]);
        if !failed.is_empty() {
            for c in failed {
                eprintln!(
                    "  FAILED {}: {}",
                    id_at(c),
                    c["check_name"].as_str().unwrap_or("")
                );
            }
            bail!(
                "checkov: {} check(s) fail on deploy/ (fix them, or skip one with a \
                 checkov.io/skipN: \"ID=reason\" annotation when it cannot fit a CNI DaemonSet)",
                failed.len()
            );
        }
        let skipped = items(&report["results"]["skipped_checks"]);
        let mut skipped_ids = BTreeSet::new();
        for c in skipped {
            let reason = c["check_result"]["suppress_comment"]
                .as_str()
                .unwrap_or("")
                .trim();
            ensure!(
                reason.len() >= 10,
                "checkov skip of {} has no reason; write one after the '='",
                id_at(c)
            );
            eprintln!("  skipped {}: {reason}", id_at(c));
            skipped_ids.insert(check_on(c));
        }
        eprintln!(
            "  checkov {}: {} passed, 0 failed, {} skipped with reasons",
            summary["checkov_version"].as_str().unwrap_or("?"),
            summary["passed"],
            skipped.len()
        );

        // The same manifests with the skip annotations removed.
        let bare = Self::dir().join("without-skips");
        let _ = std::fs::remove_dir_all(&bare);
        std::fs::create_dir_all(&bare)?;
        output(self.python(STRIP_SKIPS).arg(&bare).args(files))
            .context("copying the manifests without their checkov skips")?;
        let report = self.checkov(&bare)?;
        let failing: BTreeSet<CheckOn> = items(&report["results"]["failed_checks"])
            .iter()
            .map(check_on)
            .collect();
        let stale = listed(skipped_ids.difference(&failing));
        ensure!(
            stale.is_empty(),
            "checkov skips that are no longer needed (the check passes without them): {stale}; \
             remove their annotations"
        );
        let unexplained = listed(failing.difference(&skipped_ids));
        ensure!(
            unexplained.is_empty(),
            "checks fail without the skip annotations that are not skipped with them: {unexplained}"
        );
        Ok(())
    }
}
