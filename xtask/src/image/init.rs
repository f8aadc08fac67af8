//! The DaemonSet's two init containers run in the image exactly as the manifest writes
//! them (command, environment from the ConfigMap, mounts, unprivileged and read-only):
//! `install-cni` into a scratch host root, `network apply` against a real etcd, plain and
//! with the TLS flags the manifest documents.
use std::{collections::BTreeMap, os::unix::fs::PermissionsExt, path::Path, process::Command};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::work::Work;
use crate::{
    deploy::{self, Container, Deployment, items},
    setup::output,
};

/// The TLS flags the DaemonSet documents (commented out) for etcd with client certificates.
const TLS_ARGS: [&str; 3] = [
    "--etcd-cafile=/etc/netdp-etcd/ca.crt",
    "--etcd-certfile=/etc/netdp-etcd/tls.crt",
    "--etcd-keyfile=/etc/netdp-etcd/tls.key",
];

impl Work {
    /// Runs init container `c` of the DaemonSet in the image as the kubelet would: its
    /// command, its environment (ConfigMap keys resolved, `env` overriding), its mounts
    /// (each volume a directory under `host`), unprivileged with a read-only root.
    fn run_init(
        &self,
        reference: &str,
        deployment: &Deployment,
        c: &Container,
        host: &Path,
        env: &[(&str, &str)],
        extra_args: &[&str],
    ) -> Result<String> {
        let config = deployment.config()?;
        let spec = &deployment.daemonset()?["spec"]["template"]["spec"];
        let argv = c.argv();
        let (entry, args) = argv
            .split_first()
            .with_context(|| format!("init container {} has no command", c.name()))?;
        let mut run = self.podman_run(c.name());
        run.arg(format!("--entrypoint={entry}"));
        let sc = &c.value["securityContext"];
        if sc["privileged"] == true {
            run.arg("--privileged");
        }
        if sc["readOnlyRootFilesystem"] == true {
            run.arg("--read-only");
        }
        if sc["allowPrivilegeEscalation"] == false {
            run.arg("--security-opt=no-new-privileges");
        }
        if let Some(drop) = sc["capabilities"]["drop"].as_array() {
            for cap in drop.iter().filter_map(|v| v.as_str()) {
                run.arg(format!("--cap-drop={cap}"));
            }
        }
        let mut vars: BTreeMap<String, String> = c.env(&config).into_iter().collect();
        for (k, v) in env {
            vars.insert(k.to_string(), v.to_string());
        }
        for (k, v) in &vars {
            run.arg(format!("--env={k}={v}"));
        }
        let volumes = items(&spec["volumes"]);
        for m in items(&c.value["volumeMounts"]) {
            let name = m["name"].as_str().unwrap_or("");
            let path = m["mountPath"].as_str().unwrap_or("");
            let vol = volumes
                .iter()
                .find(|v| v["name"] == name)
                .with_context(|| format!("volume {name} is not defined"))?;
            let dir = host.join(format!("volume-{name}"));
            if vol["configMap"].is_object() {
                // A configMap volume: one file per key.
                std::fs::create_dir_all(&dir)?;
                for (k, v) in &config {
                    std::fs::write(dir.join(k), v)?;
                }
            } else if let Some(p) = vol["hostPath"]["path"].as_str() {
                let dir = host.join("root").join(p.trim_start_matches('/'));
                std::fs::create_dir_all(&dir)?;
                run.arg(format!(
                    "--volume={}:{path}{}",
                    dir.display(),
                    if m["readOnly"] == true { ":ro" } else { "" }
                ));
                continue;
            } else {
                std::fs::create_dir_all(&dir)?;
            }
            run.arg(format!("--volume={}:{path}:ro", dir.display()));
        }
        run.arg(reference).args(args).args(extra_args);
        output(&mut run).with_context(|| format!("init container {}", c.name()))
    }

    /// The DaemonSet's init containers, each as the manifest runs it.
    pub(super) fn init_containers(
        &self,
        reference: &str,
        deployment: &Deployment,
        cni: &Path,
    ) -> Result<()> {
        let config = deployment.config()?;
        let containers = deployment.containers()?;
        let init = |word: &str| {
            containers
                .iter()
                .find(|c| c.init && c.argv().iter().any(|a| a == word))
                .with_context(|| format!("the DaemonSet has no init container running {word}"))
        };
        self.install_cni(reference, deployment, init("install-cni")?, cni, &config)?;
        self.network_apply(reference, deployment, init("apply")?, &config)
    }

    /// install-cni into a scratch host root, unprivileged: the plugin byte for byte and
    /// executable, the config as the ConfigMap has it, no temporary file left behind.
    fn install_cni(
        &self,
        reference: &str,
        deployment: &Deployment,
        install: &Container,
        cni: &Path,
        config: &BTreeMap<String, String>,
    ) -> Result<()> {
        let host = self.path("host-install");
        self.run_init(reference, deployment, install, &host, &[], &[])?;
        let root = host.join("root");
        let plugin = root.join("opt/cni/bin/netdp-cni");
        ensure!(
            std::fs::read(&plugin).ok() == Some(std::fs::read(cni)?),
            "install-cni did not put netdp-cni into the host's /opt/cni/bin"
        );
        let mode = std::fs::metadata(&plugin)?.permissions().mode() & 0o777;
        ensure!(
            mode == 0o755,
            "install-cni left netdp-cni with mode {mode:o}"
        );
        let conf = std::fs::read_to_string(root.join("etc/cni/net.d/10-netdp.conf"))
            .context("install-cni did not write /etc/cni/net.d/10-netdp.conf")?;
        ensure!(
            Some(&conf) == config.get("cni-conf.json"),
            "the installed 10-netdp.conf differs from the ConfigMap's cni-conf.json"
        );
        for dir in ["opt/cni/bin", "etc/cni/net.d"] {
            let names: Vec<String> = std::fs::read_dir(root.join(dir))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            ensure!(
                names.len() == 1,
                "install-cni left more than its file in /{dir}: {names:?}"
            );
        }
        let version = output(Command::new(&plugin).env("CNI_COMMAND", "VERSION"))?;
        let wanted = serde_json::from_str::<Value>(&conf)?["cniVersion"].clone();
        ensure!(
            serde_json::from_str::<Value>(version.trim())?["supportedVersions"]
                .as_array()
                .is_some_and(|v| v.contains(&wanted)),
            "the installed plugin does not support the config's cniVersion {wanted}: {version}"
        );
        eprintln!(
            "  install-cni (no capabilities, read-only root): netdp-cni and 10-netdp.conf \
             installed, the plugin runs on the host and speaks cniVersion {wanted}"
        );
        Ok(())
    }

    /// network apply against a real etcd, plain and with TLS: written once, left alone the
    /// second time.
    fn network_apply(
        &self,
        reference: &str,
        deployment: &Deployment,
        apply: &Container,
        config: &BTreeMap<String, String>,
    ) -> Result<()> {
        let prefix = config
            .get("etcd-prefix")
            .context("the ConfigMap has no etcd-prefix")?;
        let want: Value = serde_json::from_str(
            config
                .get("net-conf.json")
                .context("the ConfigMap has no net-conf.json")?,
        )?;
        for tls in [false, true] {
            let etcd = netdp_testbed::etcd::LocalEtcd::start_with(tls)?;
            let host = self.path(if tls { "host-apply-tls" } else { "host-apply" });
            let mut extra: Vec<&str> = Vec::new();
            if let Some(files) = &etcd.tls {
                // The files as the netdp-etcd-tls Secret holds them (see 30-daemonset.yaml).
                let secret = host.join("volume-etcd-tls");
                std::fs::create_dir_all(&secret)?;
                for (src, name) in [
                    (&files.ca, "ca.crt"),
                    (&files.client_cert, "tls.crt"),
                    (&files.client_key, "tls.key"),
                ] {
                    std::fs::copy(src, secret.join(name))?;
                }
                let manifest =
                    std::fs::read_to_string(deploy::deploy_dir().join("30-daemonset.yaml"))?;
                for a in TLS_ARGS {
                    ensure!(
                        manifest.contains(a),
                        "30-daemonset.yaml no longer documents {a}; update TLS_ARGS in image/init.rs"
                    );
                }
                extra.extend(TLS_ARGS);
            }
            let endpoint = etcd.endpoint.clone();
            let env = [("NETDP_ETCD_ENDPOINTS", endpoint.as_str())];
            for round in ["creates", "leaves"] {
                let out = self.run_init(reference, deployment, apply, &host, &env, &extra)?;
                let stored = etcd
                    .get(&format!("{}/config", prefix.trim_end_matches('/')))?
                    .with_context(|| format!("network apply wrote no {prefix}/config"))?;
                ensure!(
                    serde_json::from_str::<Value>(&stored)? == want,
                    "etcd holds {stored} after network apply, not the ConfigMap's net-conf.json"
                );
                eprintln!(
                    "  network apply ({}, {round} the config): {}",
                    if tls {
                        "https, client certificate"
                    } else {
                        "http"
                    },
                    out.lines().last().unwrap_or("").trim()
                );
            }
        }
        Ok(())
    }
}
