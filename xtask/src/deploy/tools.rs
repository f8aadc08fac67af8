//! The venv under `target/deploy-check/` with the pinned Python tools: installed on first
//! use, checked by using them, and its PyYAML reading the manifests.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::{KUBERNETES_VERSION, manifest::Doc};
use crate::{
    build::workspace,
    setup::{self, output},
};

/// Pinned, so a new release of a linter cannot turn CI red overnight.
const KUBERNETES_VALIDATE: (&str, &str) = ("kubernetes-validate", "1.37.0");
const CHECKOV: (&str, &str) = ("checkov", "3.3.30");

/// The venv with the pinned Python tools.
pub struct Tools {
    venv: PathBuf,
}

/// PyYAML (a dependency of both tools) turns the manifests into JSON for the checks here.
const YAML_TO_JSON: &str = r#"
import json, sys, yaml
out = []
for f in sys.argv[1:]:
    with open(f) as fh:
        for d in yaml.safe_load_all(fh):
            if d is not None:
                out.append({"file": f, "doc": d})
json.dump(out, sys.stdout)
"#;

impl Tools {
    pub(super) fn dir() -> PathBuf {
        workspace().join("target/deploy-check")
    }

    pub(super) fn bin(&self, name: &str) -> PathBuf {
        self.venv.join("bin").join(name)
    }

    /// The venv's python running `script`.
    pub(super) fn python(&self, script: &str) -> Command {
        let mut c = Command::new(self.bin("python"));
        c.args(["-c", script]);
        c
    }

    /// The venv with both tools at their pinned versions, installed if missing and checked
    /// by using them.
    pub fn ensure() -> Result<Tools> {
        let tools = Self::installed_or_install()?;
        tools.probe()?;
        Ok(tools)
    }

    /// The venv, installed if missing, without using the tools (for reading YAML).
    pub(super) fn installed_or_install() -> Result<Tools> {
        let venv = Self::dir().join("venv");
        let tools = Tools { venv };
        if !tools.installed() {
            tools.install()?;
            ensure!(
                tools.installed(),
                "{} {} and {} {} were installed into {} but do not report those versions",
                KUBERNETES_VALIDATE.0,
                KUBERNETES_VALIDATE.1,
                CHECKOV.0,
                CHECKOV.1,
                tools.venv.display()
            );
        }
        Ok(tools)
    }

    fn version_of(&self, tool: &str) -> Option<String> {
        let out = Command::new(self.bin(tool))
            .arg("--version")
            .current_dir(Self::dir())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn installed(&self) -> bool {
        [KUBERNETES_VALIDATE, CHECKOV]
            .iter()
            .all(|(tool, v)| self.version_of(tool).as_deref() == Some(*v))
    }

    fn install(&self) -> Result<()> {
        setup::apt(setup::DEPLOY_PACKAGES)?;
        let python = setup::which("python3").context("python3 is missing")?;
        std::fs::create_dir_all(Self::dir())?;
        let make_venv = || {
            output(
                Command::new(&python)
                    .args(["-m", "venv", "--clear"])
                    .arg(&self.venv),
            )
        };
        if make_venv().is_err() {
            // Debian's python3 makes venvs only with python3-venv (ensurepip).
            setup::apt(setup::PYTHON_VENV_PACKAGES)?;
            make_venv().with_context(|| {
                format!(
                    "{} cannot create a venv (Debian: apt-get install python3-venv)",
                    python.display()
                )
            })?;
        }
        let pins: Vec<String> = [KUBERNETES_VALIDATE, CHECKOV]
            .iter()
            .map(|(tool, v)| format!("{tool}=={v}"))
            .collect();
        eprintln!(
            "setup: installing {} into {} (PyPI, about a minute)",
            pins.join(" "),
            self.venv.display()
        );
        setup::exec(
            Command::new(self.bin("pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .args(&pins),
        )
        .with_context(|| format!("installing {} from PyPI", pins.join(" ")))
    }

    /// Uses both tools on manifests whose verdict is known: kubernetes-validate must
    /// reject a Deployment with a string for `replicas` and accept a Namespace (so it
    /// really has the 1.37 schemas offline); checkov must flag a privileged Pod.
    fn probe(&self) -> Result<()> {
        let dir = Self::dir().join("probe");
        std::fs::create_dir_all(&dir)?;
        let good = dir.join("good.yaml");
        let bad = dir.join("bad.yaml");
        std::fs::write(
            &good,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: probe\n",
        )?;
        std::fs::write(
            &bad,
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: probe\nspec:\n  \
             replicas: three\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: \
             {labels: {a: b}}\n    spec:\n      containers: [{name: c, image: i}]\n",
        )?;
        let validate = |f: &Path| self.kubernetes_validate().arg(f).output();
        let ok = validate(&good).context("running kubernetes-validate")?;
        ensure!(
            ok.status.success(),
            "kubernetes-validate rejects a plain Namespace against Kubernetes {KUBERNETES_VERSION}: {}",
            String::from_utf8_lossy(&ok.stdout).trim()
        );
        let rejected = validate(&bad).context("running kubernetes-validate")?;
        ensure!(
            !rejected.status.success(),
            "kubernetes-validate accepts a Deployment with replicas: three; it is not validating"
        );
        let lint_dir = dir.join("checkov");
        std::fs::create_dir_all(&lint_dir)?;
        std::fs::write(
            lint_dir.join("privileged.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: probe\n  namespace: probe\nspec:\n  \
             containers:\n    - name: c\n      image: i:1\n      securityContext:\n        \
             privileged: true\n",
        )?;
        let json = self.checkov(&lint_dir)?;
        let found = json["results"]["failed_checks"]
            .as_array()
            .is_some_and(|f| f.iter().any(|c| c["check_id"] == "CKV_K8S_16"));
        ensure!(
            found,
            "checkov does not flag a privileged container (CKV_K8S_16); it is not checking: {}",
            json["summary"]
        );
        Ok(())
    }

    /// The manifests' YAML documents, as JSON values.
    pub fn documents(&self, files: &[PathBuf]) -> Result<Vec<Doc>> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let out =
            output(self.python(YAML_TO_JSON).args(files)).context("reading the manifests' YAML")?;
        let parsed: Value = serde_json::from_str(&out)?;
        Ok(parsed
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|mut d| Doc {
                file: PathBuf::from(d["file"].as_str().unwrap_or_default()),
                value: d["doc"].take(),
            })
            .collect())
    }
}
