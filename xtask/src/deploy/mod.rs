//! `cargo xtask deploy-check`: the Kubernetes manifests in `deploy/`, checked offline.
//!
//! - every manifest (the default set in `deploy/` and `deploy/optional/`) against the
//!   Kubernetes 1.37 schema, strictly (unknown fields are errors), with PyPI's
//!   `kubernetes-validate`;
//! - checkov's Kubernetes checks, none failing; those that do not fit a privileged CNI
//!   DaemonSet are skipped in the manifest itself (`checkov.io/skipN` annotations, a reason
//!   each), and every skip must still be needed: without the annotations exactly the
//!   skipped checks fail;
//! - what netdp needs of them that no schema knows: the configs parse as netdp parses them,
//!   the DaemonSet has what a CNI dataplane must have (host network, node-critical
//!   priority, every taint tolerated, bpffs with Bidirectional propagation, probes on the
//!   health port, no API token), every ConfigMap key, volume and Secret it names exists,
//!   and the default set binds no role.
//!
//! The Python tools live in a venv under `target/deploy-check/`, pinned, installed on first
//! use and checked by using them (a manifest the schema must reject is rejected).
//!
//! - `tools`: the venv, installing the pinned tools, probing them, reading YAML with them;
//! - `schema`: kubernetes-validate;
//! - `lint`: checkov and its skips;
//! - `manifest`: the manifests' documents, the DaemonSet's containers (also for the image);
//! - `netdp`: netdp's own checks.
mod lint;
mod manifest;
mod netdp;
mod schema;
mod tools;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, ensure};

pub use manifest::{Container, Deployment, agent_container, items};
use tools::Tools;

use crate::build::workspace;

/// The Kubernetes version the manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.37.0";

/// The port the agent serves /healthz and /readyz on (its `--healthz-addr` default).
pub const HEALTHZ_PORT: u64 = 9876;

pub fn deploy_dir() -> PathBuf {
    workspace().join("deploy")
}

/// The manifests: `deploy/*.yaml` (what `kubectl apply -f deploy/` applies) and
/// `deploy/optional/*.yaml`.
pub fn manifests() -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let list = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        Ok(files)
    };
    let dir = deploy_dir();
    let default = list(&dir)?;
    let optional = list(&dir.join("optional"))?;
    ensure!(!default.is_empty(), "no manifests in {}", dir.display());
    Ok((default, optional))
}

pub fn run() -> Result<()> {
    let start = Instant::now();
    let tools = Tools::ensure()?;
    let (default, optional) = manifests()?;
    let all: Vec<PathBuf> = default.iter().chain(&optional).cloned().collect();

    eprintln!(
        "== deploy: the Kubernetes {KUBERNETES_VERSION} schema (kubernetes-validate --strict)"
    );
    tools.validate(&all)?;

    eprintln!("== deploy: what netdp needs of the manifests");
    let docs = tools.documents(&default)?;
    let optional_docs = tools.documents(&optional)?;
    let summary = netdp::checks(&docs, &optional_docs)?;
    eprintln!("{summary}");

    eprintln!(
        "== deploy: best practices (checkov), skips each with a reason and each still needed"
    );
    tools.lint(&all)?;

    eprintln!("== deploy-check passed in {:.1?}", start.elapsed());
    Ok(())
}
