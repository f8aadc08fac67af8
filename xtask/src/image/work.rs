//! Where a run works: a scratch directory and buildah's and podman's private stores, one
//! per run, so a run never touches the machine's images or another run's; the tools
//! probed before the build; all of it removed afterwards, also when a step fails (and at
//! the next run when one was killed).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};

use super::archive;
use crate::{
    build::workspace,
    setup::{cmd, output},
};

/// One run's scratch space: the root, buildah's and podman's private stores, the scratch
/// host directories. Removed (containers and images first) when dropped.
pub(super) struct Work {
    dir: PathBuf,
    pub(super) id: String,
}

impl Work {
    fn base() -> PathBuf {
        workspace().join("target/image")
    }

    /// podman refuses a runroot longer than 50 characters, so runroots live here.
    fn run_base() -> PathBuf {
        PathBuf::from("/run/netdp-image")
    }

    fn runroot(&self, tool: &str) -> PathBuf {
        Self::run_base().join(&self.id).join(tool)
    }

    pub(super) fn new() -> Result<Work> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let id = format!("{}-{nanos:08x}", std::process::id());
        let dir = Self::base().join(format!("run-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Work { dir, id })
    }

    /// Runs whose process is gone (killed before their cleanup ran).
    pub(super) fn remove_stale() {
        let Ok(entries) = std::fs::read_dir(Self::base()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("run-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let stale = Work {
                    dir: e.path(),
                    id: name.trim_start_matches("run-").to_string(),
                };
                eprintln!("image: removing a killed run's {}", stale.dir.display());
                drop(stale);
            }
        }
    }

    /// The archive being written, renamed to `archive()` once complete.
    pub(super) fn archive_tmp(&self) -> PathBuf {
        archive().with_extension(format!("tar.{}.tmp", self.id))
    }

    pub(super) fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn store_args(&self, tool: &str) -> Vec<String> {
        let mut a = vec![
            format!("--root={}", self.path(&format!("{tool}/root")).display()),
            format!("--runroot={}", self.runroot(tool).display()),
            // vfs: plain directories, no overlay mounts that could outlive a failed run.
            "--storage-driver=vfs".to_string(),
        ];
        if tool == "podman" {
            a.extend([
                format!("--tmpdir={}", self.runroot("podman-tmp").display()),
                "--events-backend=file".to_string(),
                "--cgroup-manager=cgroupfs".to_string(),
            ]);
        }
        a
    }

    /// `tool` (buildah or podman) on the run's own store.
    fn with_store(&self, tool: &str) -> Command {
        let mut c = cmd(tool);
        c.args(self.store_args(tool));
        c
    }

    pub(super) fn buildah(&self) -> Command {
        self.with_store("buildah")
    }

    pub(super) fn podman(&self) -> Command {
        self.with_store("podman")
    }

    /// `podman run` as the README's and the toolchain's facts say works here: runc (crun
    /// refuses the hybrid cgroup layout), host network, and rlimits within this machine's.
    pub(super) fn podman_run(&self, step: &str) -> Command {
        let mut c = self.podman();
        c.args([
            "run",
            "--rm",
            "--runtime=runc",
            "--network=host",
            "--ulimit=nofile=1024:1024",
            "--ulimit=nproc=1024:1024",
        ])
        .arg(format!("--name=netdp-image-{}-{step}", self.id));
        c
    }

    /// Each tool used once on something whose result is known, before the build.
    pub(super) fn probe_tools(&self) -> Result<()> {
        let ok = |what: &str, c: &mut Command, package: &str| -> Result<String> {
            output(c).with_context(|| format!("{what} does not work (Debian package {package})"))
        };
        ok("buildah images", self.buildah().arg("images"), "buildah")?;
        ok("podman images", self.podman().arg("images"), "podman")?;
        let runc_root = self.path("runc-probe");
        ok(
            "runc list",
            cmd("runc").arg("--root").arg(&runc_root).arg("list"),
            "runc",
        )?;
        let layout = self.path("probe-layout");
        ok(
            "umoci init",
            cmd("umoci").arg("init").arg("--layout").arg(&layout),
            "umoci",
        )?;
        ok(
            "umoci new",
            cmd("umoci")
                .arg("new")
                .arg("--image")
                .arg(format!("{}:probe", layout.display())),
            "umoci",
        )?;
        let inspected = ok(
            "skopeo inspect",
            cmd("skopeo")
                .args(["inspect", "--config"])
                .arg(format!("oci:{}:probe", layout.display())),
            "skopeo",
        )?;
        ensure!(
            inspected.contains("rootfs"),
            "skopeo inspect of an empty image umoci made printed no config: {inspected}"
        );
        Ok(())
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        // Containers first (a failed step may leave one), then images, then the stores.
        let quiet = |c: &mut Command| {
            let _ = c
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        if self.path("podman").exists() {
            quiet(self.podman().args(["rm", "--all", "--force"]));
            quiet(self.podman().args(["rmi", "--all", "--force"]));
        }
        if self.path("buildah").exists() {
            quiet(self.buildah().args(["rm", "--all"]));
        }
        let _ = std::fs::remove_file(self.archive_tmp());
        let _ = std::fs::remove_dir_all(Self::run_base().join(&self.id));
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("image: could not remove {}: {e}", self.dir.display());
        }
    }
}
