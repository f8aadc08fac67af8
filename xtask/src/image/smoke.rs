//! The image loaded into podman and run (with runc): `--version`, `check` (the programs
//! for every backend through this kernel's verifier), `netdp-cni` answering VERSION, no
//! `/bin/sh`, and every flag the DaemonSet passes the agent one `netdp agent --help` lists.
use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::{NETDP_CNI, archive, work::Work};
use crate::{
    deploy::{Deployment, agent_container},
    setup::output,
};

impl Work {
    /// Loads the archive into the run's own store; returns the names it loaded.
    pub(super) fn podman_load(&self) -> Result<Vec<String>> {
        let out = output(self.podman().arg("load").arg("--input").arg(archive()))?;
        Ok(out
            .lines()
            .filter_map(|l| l.strip_prefix("Loaded image: "))
            .flat_map(|l| l.split(',').map(|s| s.trim().to_string()))
            .collect())
    }

    pub(super) fn smoke(&self, reference: &str, version: &str) -> Result<()> {
        let v = output(
            self.podman_run("version")
                .arg("--privileged")
                .arg(reference)
                .arg("--version"),
        )?;
        ensure!(
            v.trim() == format!("netdp {version}"),
            "`netdp --version` in the image printed {v:?}"
        );
        eprintln!("  --version: {}", v.trim());

        let checked = output(
            self.podman_run("check")
                .arg("--privileged")
                .arg(reference)
                .arg("check"),
        )
        .context("`netdp check` in the image")?;
        let ok = checked.lines().filter(|l| l.starts_with("ok ")).count();
        ensure!(
            ok == 8 && !checked.contains("FAIL"),
            "`netdp check` in the image did not verify all 4 backends with and without \
             masquerading:\n{checked}"
        );
        for backend in ["host-gw", "vxlan", "ipip", "udp"] {
            ensure!(
                checked.contains(&format!("ok    {backend} ")),
                "`netdp check` did not report {backend}:\n{checked}"
            );
        }
        eprintln!("  check: the programs load for every backend ({ok} variants verified)");

        let cni = output(
            self.podman_run("cni-version")
                .arg("--env=CNI_COMMAND=VERSION")
                .arg(format!("--entrypoint=/{NETDP_CNI}"))
                .arg(reference),
        )?;
        let cni: Value = serde_json::from_str(cni.trim())
            .with_context(|| format!("netdp-cni VERSION printed {cni:?}"))?;
        ensure!(
            cni["supportedVersions"].is_array(),
            "netdp-cni VERSION printed {cni}"
        );
        eprintln!("  netdp-cni VERSION: {}", cni["supportedVersions"]);

        let shell = self
            .podman_run("no-shell")
            .arg("--entrypoint=/bin/sh")
            .arg(reference)
            .args(["-c", "true"])
            .output()?;
        ensure!(
            !shell.status.success(),
            "/bin/sh runs in the image; it must have no shell"
        );
        eprintln!("  /bin/sh: absent");
        Ok(())
    }

    /// Every `--flag` the DaemonSet passes the agent is one this agent accepts.
    pub(super) fn agent_flags(&self, reference: &str, deployment: &Deployment) -> Result<()> {
        let help = output(
            self.podman_run("agent-help")
                .arg(reference)
                .args(["agent", "--help"]),
        )?;
        let containers = deployment.containers()?;
        let agent = agent_container(&containers).context("the DaemonSet has no agent container")?;
        let mut unknown = Vec::new();
        let mut flags = Vec::new();
        for arg in agent.argv().iter().filter(|a| a.starts_with("--")) {
            let flag = arg.split('=').next().unwrap_or(arg);
            let listed = help.match_indices(flag).any(|(i, _)| {
                !help[i + flag.len()..].starts_with(|c: char| c == '-' || c.is_alphanumeric())
            });
            if listed {
                flags.push(flag.to_string());
            } else {
                unknown.push(flag.to_string());
            }
        }
        ensure!(
            unknown.is_empty(),
            "the DaemonSet passes the agent {}, which `netdp agent --help` does not list",
            unknown.join(", ")
        );
        eprintln!(
            "  agent flags in the DaemonSet, all accepted: {}",
            flags.join(" ")
        );
        Ok(())
    }
}
