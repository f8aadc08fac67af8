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
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::{
    build::workspace,
    setup::{self, output},
};

/// The Kubernetes version the manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.37.0";
/// Pinned, so a new release of a linter cannot turn CI red overnight.
const KUBERNETES_VALIDATE: (&str, &str) = ("kubernetes-validate", "1.37.0");
const CHECKOV: (&str, &str) = ("checkov", "3.3.30");

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
    let summary = netdp_checks(&docs, &optional_docs)?;
    eprintln!("{summary}");

    eprintln!(
        "== deploy: best practices (checkov), skips each with a reason and each still needed"
    );
    tools.lint(&all)?;

    eprintln!("== deploy-check passed in {:.1?}", start.elapsed());
    Ok(())
}

/// One YAML document of a manifest file.
#[derive(Debug)]
pub struct Doc {
    pub file: PathBuf,
    pub value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// The documents of kind `kind` (and name `name`, when given).
fn find<'a>(docs: &'a [Doc], kind: &str, name: Option<&str>) -> Vec<&'a Doc> {
    docs.iter()
        .filter(|d| d.kind() == kind && name.is_none_or(|n| d.name() == n))
        .collect()
}

fn one<'a>(docs: &'a [Doc], kind: &str) -> Result<&'a Doc> {
    match find(docs, kind, None).as_slice() {
        [d] => Ok(d),
        other => bail!("expected one {kind} in deploy/, found {}", other.len()),
    }
}

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

impl Tools {
    fn dir() -> PathBuf {
        workspace().join("target/deploy-check")
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.venv.join("bin").join(name)
    }

    /// The venv with both tools at their pinned versions, installed if missing and checked
    /// by using them.
    pub fn ensure() -> Result<Tools> {
        let tools = Self::installed_or_install()?;
        tools.probe()?;
        Ok(tools)
    }

    /// The venv, installed if missing, without using the tools (for reading YAML).
    fn installed_or_install() -> Result<Tools> {
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
        let validate = |f: &Path| {
            Command::new(self.bin("kubernetes-validate"))
                .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
                .arg(f)
                .output()
        };
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

    /// Every manifest against the schema, strictly.
    fn validate(&self, files: &[PathBuf]) -> Result<()> {
        let out = Command::new(self.bin("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
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

    /// The manifests' YAML documents, as JSON values.
    pub fn documents(&self, files: &[PathBuf]) -> Result<Vec<Doc>> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let out = output(
            Command::new(self.bin("python"))
                .args(["-c", YAML_TO_JSON])
                .args(files),
        )
        .context("reading the manifests' YAML")?;
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

    /// checkov's JSON report on a directory, offline.
    fn checkov(&self, dir: &Path) -> Result<Value> {
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
    fn lint(&self, files: &[PathBuf]) -> Result<()> {
        let report = self.checkov(&deploy_dir())?;
        let summary = &report["summary"];
        ensure!(
            summary["parsing_errors"].as_u64() == Some(0),
            "checkov could not parse manifests in deploy/: {summary}"
        );
        let checks = |key: &str| -> Vec<Value> {
            report["results"][key]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let id_at = |c: &Value| {
            format!(
                "{} {} ({})",
                c["check_id"].as_str().unwrap_or("?"),
                c["resource"].as_str().unwrap_or("?"),
                c["file_path"].as_str().unwrap_or("?")
            )
        };
        let failed = checks("failed_checks");
        if !failed.is_empty() {
            for c in &failed {
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
        let skipped = checks("skipped_checks");
        let mut skipped_ids = BTreeSet::new();
        for c in &skipped {
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
            skipped_ids.insert((
                c["check_id"].as_str().unwrap_or("").to_string(),
                c["resource"].as_str().unwrap_or("").to_string(),
            ));
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
        output(
            Command::new(self.bin("python"))
                .args(["-c", STRIP_SKIPS])
                .arg(&bare)
                .args(files),
        )
        .context("copying the manifests without their checkov skips")?;
        let report = self.checkov(&bare)?;
        let failing: BTreeSet<(String, String)> = report["results"]["failed_checks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|c| {
                (
                    c["check_id"].as_str().unwrap_or("").to_string(),
                    c["resource"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let stale: Vec<String> = skipped_ids
            .difference(&failing)
            .map(|(id, res)| format!("{id} on {res}"))
            .collect();
        ensure!(
            stale.is_empty(),
            "checkov skips that are no longer needed (the check passes without them): {}; \
             remove their annotations",
            stale.join(", ")
        );
        let unexplained: Vec<String> = failing
            .difference(&skipped_ids)
            .map(|(id, res)| format!("{id} on {res}"))
            .collect();
        ensure!(
            unexplained.is_empty(),
            "checks fail without the skip annotations that are not skipped with them: {}",
            unexplained.join(", ")
        );
        Ok(())
    }
}

/// A container of the DaemonSet's pod: init containers first, in order.
pub struct Container<'a> {
    pub init: bool,
    pub value: &'a Value,
}

impl Container<'_> {
    pub fn name(&self) -> &str {
        self.value["name"].as_str().unwrap_or("")
    }

    /// `command` followed by `args`, as the runtime execs them.
    pub fn argv(&self) -> Vec<String> {
        ["command", "args"]
            .iter()
            .flat_map(|k| self.value[*k].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    }

    /// Environment variables with a literal value or one from the ConfigMap.
    pub fn env(&self, config: &BTreeMap<String, String>) -> Vec<(String, String)> {
        self.value["env"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|e| {
                let name = e["name"].as_str()?.to_string();
                if let Some(v) = e["value"].as_str() {
                    return Some((name, v.to_string()));
                }
                let key = e["valueFrom"]["configMapKeyRef"]["key"].as_str()?;
                Some((name, config.get(key)?.clone()))
            })
            .collect()
    }

    /// Mount path of each volume it mounts.
    pub fn mounts(&self) -> Vec<(String, String)> {
        self.value["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|m| {
                Some((
                    m["name"].as_str()?.to_string(),
                    m["mountPath"].as_str()?.to_string(),
                ))
            })
            .collect()
    }
}

/// The parts of the default manifests the image check runs.
pub struct Deployment {
    pub docs: Vec<Doc>,
}

impl Deployment {
    /// The default manifests, read with the venv's PyYAML.
    pub fn load() -> Result<Deployment> {
        let tools = Tools::installed_or_install()?;
        let (default, _) = manifests()?;
        Ok(Deployment {
            docs: tools.documents(&default)?,
        })
    }

    pub fn daemonset(&self) -> Result<&Value> {
        Ok(&one(&self.docs, "DaemonSet")?.value)
    }

    /// The ConfigMap's data.
    pub fn config(&self) -> Result<BTreeMap<String, String>> {
        config_data(&self.docs)
    }

    pub fn containers(&self) -> Result<Vec<Container<'_>>> {
        Ok(containers(self.daemonset()?))
    }

    /// The image every container runs.
    pub fn image(&self) -> Result<String> {
        let images: BTreeSet<String> = self
            .containers()?
            .iter()
            .filter_map(|c| c.value["image"].as_str().map(String::from))
            .collect();
        match images.len() {
            1 => Ok(images.into_iter().next().unwrap_or_default()),
            _ => bail!("the DaemonSet's containers run different images: {images:?}"),
        }
    }
}

fn containers(ds: &Value) -> Vec<Container<'_>> {
    let spec = &ds["spec"]["template"]["spec"];
    let list = |key: &str, init: bool| {
        spec[key]
            .as_array()
            .map(|v| v.iter().map(|value| Container { init, value }).collect())
            .unwrap_or_default()
    };
    let mut all: Vec<Container> = list("initContainers", true);
    all.extend(list("containers", false));
    all
}

fn config_data(docs: &[Doc]) -> Result<BTreeMap<String, String>> {
    let cm = one(docs, "ConfigMap")?;
    let data = cm.value["data"]
        .as_object()
        .with_context(|| format!("ConfigMap {} has no data", cm.name()))?;
    Ok(data
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect())
}

/// What netdp needs of the manifests; returns a summary of what was checked.
fn netdp_checks(docs: &[Doc], optional: &[Doc]) -> Result<String> {
    let mut checked = Vec::new();
    let namespace = "netdp-system";

    // Objects: the namespace, an account that gets no token, no role bound by default.
    let ns = one(docs, "Namespace")?;
    ensure!(
        ns.name() == namespace,
        "the namespace is {:?}, not {namespace}",
        ns.name()
    );
    ensure!(
        ns.value["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged",
        "namespace {namespace} must allow privileged pods (pod-security.kubernetes.io/enforce: privileged)"
    );
    for d in docs {
        let ns_of = d.value["metadata"]["namespace"].as_str();
        ensure!(
            matches!(d.kind(), "Namespace" | "ClusterRole" | "ClusterRoleBinding")
                || ns_of == Some(namespace),
            "{} {} ({}) is not in namespace {namespace}",
            d.kind(),
            d.name(),
            d.file.display()
        );
    }
    let bindings: Vec<String> = docs
        .iter()
        .filter(|d| d.kind().ends_with("RoleBinding") || d.kind().ends_with("Role"))
        .map(|d| format!("{} {}", d.kind(), d.name()))
        .collect();
    ensure!(
        bindings.is_empty(),
        "the default manifests must grant no API access (the etcd-mode agent needs none); \
         move {} to deploy/optional/",
        bindings.join(", ")
    );
    let sa = one(docs, "ServiceAccount")?;
    ensure!(
        sa.value["automountServiceAccountToken"] == false,
        "ServiceAccount {} must set automountServiceAccountToken: false",
        sa.name()
    );
    let optional_roles = find(optional, "ClusterRole", None);
    ensure!(
        optional_roles.iter().any(|r| r.value["rules"]
            .as_array()
            .is_some_and(|rules| !rules.is_empty())),
        "deploy/optional/ must hold the ClusterRole of the Kubernetes-API mode"
    );
    for b in find(optional, "ClusterRoleBinding", None) {
        let subject_ok = b.value["subjects"].as_array().is_some_and(|s| {
            s.iter().all(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == sa.name()
                    && s["namespace"] == namespace
            })
        });
        ensure!(
            subject_ok,
            "ClusterRoleBinding {} must bind only ServiceAccount {namespace}/{}",
            b.name(),
            sa.name()
        );
    }
    checked.push("namespace, service account without token, no role bound by default, optional API-mode role");

    // The configs, as netdp reads them.
    let config = config_data(docs)?;
    let get = |key: &str| {
        config
            .get(key)
            .with_context(|| format!("the ConfigMap has no {key}"))
    };
    netdp_dataplane::config::NetworkConfig::parse(get("net-conf.json")?)
        .map_err(|e| anyhow!("the ConfigMap's net-conf.json is not a valid network config: {e}"))?;
    let cni: Value = serde_json::from_str(get("cni-conf.json")?)
        .context("the ConfigMap's cni-conf.json is not JSON")?;
    ensure!(
        cni["type"] == "netdp-cni" && cni["name"].is_string() && cni["cniVersion"].is_string(),
        "cni-conf.json must be a CNI config of type netdp-cni with a name and cniVersion"
    );
    for e in get("etcd-endpoints")?.split(',') {
        ensure!(
            e.starts_with("http://") || e.starts_with("https://"),
            "etcd-endpoints: {e:?} must start with http:// or https://"
        );
    }
    ensure!(
        get("healthz-addr")?.ends_with(&format!(":{HEALTHZ_PORT}")),
        "healthz-addr must listen on port {HEALTHZ_PORT}, where the DaemonSet's probes look"
    );
    ensure!(
        get("metrics-addr")?.starts_with("127."),
        "metrics-addr must stay on loopback: the pod is on the host network"
    );
    checked.push(
        "net-conf.json parses as netdp's network config, cni-conf.json is netdp-cni's, \
         health on the probes' port, metrics on loopback",
    );

    // The DaemonSet.
    let ds = &one(docs, "DaemonSet")?.value;
    let spec = &ds["spec"]["template"]["spec"];
    let want = |ok: bool, what: &str| -> Result<()> {
        ensure!(ok, "the DaemonSet must have {what}");
        Ok(())
    };
    want(spec["hostNetwork"] == true, "hostNetwork: true")?;
    want(
        spec["priorityClassName"] == "system-node-critical",
        "priorityClassName: system-node-critical",
    )?;
    want(
        spec["tolerations"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["operator"] == "Exists" && t.get("key").is_none())
        }),
        "a toleration of every taint (operator: Exists, no key)",
    )?;
    want(
        spec["automountServiceAccountToken"] == false,
        "automountServiceAccountToken: false in the pod",
    )?;
    want(
        spec["serviceAccountName"] == sa.name(),
        "serviceAccountName of the ServiceAccount",
    )?;
    want(
        spec["terminationGracePeriodSeconds"].is_u64(),
        "terminationGracePeriodSeconds",
    )?;
    let strategy = &ds["spec"]["updateStrategy"];
    want(
        strategy["type"] == "RollingUpdate" && strategy["rollingUpdate"]["maxUnavailable"] == 1,
        "updateStrategy RollingUpdate with maxUnavailable: 1",
    )?;

    let volumes: BTreeMap<String, &Value> = spec["volumes"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|v| Some((v["name"].as_str()?.to_string(), v)))
                .collect()
        })
        .unwrap_or_default();
    let host_path = |name: &str| {
        volumes
            .get(name)
            .and_then(|v| v["hostPath"]["path"].as_str())
    };
    let cms: BTreeSet<&str> = find(docs, "ConfigMap", None)
        .iter()
        .map(|d| d.name())
        .collect();

    let all = containers(ds);
    let agent = all
        .iter()
        .find(|c| !c.init)
        .context("the DaemonSet has no container")?;
    let argv_has = |c: &Container, words: &[&str]| {
        let argv = c.argv();
        words.iter().all(|w| argv.iter().any(|a| a == w))
    };
    want(
        argv_has(agent, &["agent"]),
        "the agent container running `netdp agent`",
    )?;
    want(
        all.iter()
            .any(|c| c.init && argv_has(c, &["network", "apply"])),
        "an init container running `netdp network apply`",
    )?;
    want(
        all.iter().any(|c| c.init && argv_has(c, &["install-cni"])),
        "an init container running `netdp install-cni`",
    )?;
    want(
        agent.value["securityContext"]["privileged"] == true,
        "a privileged agent",
    )?;
    want(
        agent.value["resources"]["requests"].is_object(),
        "resource requests on the agent",
    )?;
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &agent.value[probe]["httpGet"];
        want(
            get["path"] == path && get["port"] == HEALTHZ_PORT,
            &format!("a {probe} on port {HEALTHZ_PORT} path {path}"),
        )?;
    }
    let bpffs = agent.value["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["mountPath"] == "/sys/fs/bpf"));
    want(
        bpffs.is_some_and(|m| {
            m["mountPropagation"] == "Bidirectional"
                && host_path(m["name"].as_str().unwrap_or("")) == Some("/sys/fs/bpf")
        }),
        "the host's /sys/fs/bpf mounted at /sys/fs/bpf with mountPropagation: Bidirectional",
    )?;
    for (host, who) in [
        ("/run/flannel", "the agent (subnet.env)"),
        ("/sys/fs/cgroup", "the agent (socket programs)"),
    ] {
        want(
            agent
                .mounts()
                .iter()
                .any(|(name, _)| host_path(name) == Some(host)),
            &format!("the host's {host} mounted into {who}"),
        )?;
    }
    for host in ["/opt/cni/bin", "/etc/cni/net.d"] {
        want(
            all.iter().any(|c| {
                c.init
                    && argv_has(c, &["install-cni"])
                    && c.mounts()
                        .iter()
                        .any(|(name, _)| host_path(name) == Some(host))
            }),
            &format!("the host's {host} mounted into install-cni"),
        )?;
    }

    // Every reference resolves: volumes, ConfigMap keys, $(VAR) in arguments.
    for c in &all {
        for (name, _) in c.mounts() {
            ensure!(
                volumes.contains_key(&name),
                "container {} mounts volume {name}, which the pod does not define",
                c.name()
            );
        }
        let mut defined = BTreeSet::new();
        for e in c.value["env"].as_array().cloned().unwrap_or_default() {
            defined.insert(e["name"].as_str().unwrap_or("").to_string());
            let r = &e["valueFrom"]["configMapKeyRef"];
            if let Some(key) = r["key"].as_str() {
                let cm = r["name"].as_str().unwrap_or("");
                ensure!(
                    cms.contains(cm) && (cm != "netdp-config" || config.contains_key(key)),
                    "container {} reads key {key} of ConfigMap {cm}, which does not exist",
                    c.name()
                );
            }
            let s = &e["valueFrom"]["secretKeyRef"];
            if s.is_object() {
                ensure!(
                    s["optional"] == true,
                    "container {} reads Secret {}, which the manifests do not create: it must be optional",
                    c.name(),
                    s["name"]
                );
            }
        }
        for arg in c.argv() {
            let mut rest = arg.as_str();
            while let Some(start) = rest.find("$(") {
                let end = rest[start..]
                    .find(')')
                    .with_context(|| format!("unclosed $( in {arg:?}"))?;
                let var = &rest[start + 2..start + end];
                ensure!(
                    defined.contains(var),
                    "container {} passes {arg:?}, but {var} is not in its env (Kubernetes would \
                     pass it literally)",
                    c.name()
                );
                rest = &rest[start + end..];
            }
        }
    }
    for (name, v) in &volumes {
        if let Some(cm) = v["configMap"]["name"].as_str() {
            ensure!(
                cms.contains(cm),
                "volume {name} mounts ConfigMap {cm}, which does not exist"
            );
        }
        if v["secret"].is_object() {
            ensure!(
                v["secret"]["optional"] == true,
                "volume {name} mounts a Secret the manifests do not create: it must be optional"
            );
        }
    }
    checked.push("DaemonSet: host network, system-node-critical, tolerates every taint, rolling one node at a time, no token, privileged agent with requests and probes on :9876 /healthz /readyz, bpffs Bidirectional, cgroup2, /run/flannel, CNI dirs for install-cni, the two init steps, every volume, ConfigMap key and $(VAR) resolved, Secrets optional");

    Ok(checked
        .iter()
        .map(|c| format!("  ok: {c}"))
        .collect::<Vec<_>>()
        .join("\n"))
}
