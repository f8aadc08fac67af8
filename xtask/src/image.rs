//! `cargo xtask image`: the OCI image the DaemonSet in `deploy/` runs, built `FROM scratch`
//! without any registry, then run once.
//!
//! The root holds `netdp`, `netdp-cni`, the eBPF object and exactly the shared libraries
//! `ldd` names for the two binaries (with the dynamic loader): no shell, nothing else.
//! Debian's `buildah` builds it into `target/netdp-image.tar` (an OCI archive named as the
//! DaemonSet's `image:`); `skopeo` and `umoci` unpack it again to check its config and its
//! files; `podman` (with `runc`) loads and runs it: `--version`, `check` (the programs for
//! every backend through this kernel's verifier), `netdp-cni` answering VERSION, no
//! `/bin/sh`, and the DaemonSet's two init containers exactly as the manifest writes them
//! (command, environment from the ConfigMap, mounts, unprivileged and read-only):
//! `install-cni` into a scratch host root, `network apply` against a real etcd, plain and
//! with the TLS flags the manifest documents. Every flag the manifest passes the agent is
//! one `netdp agent --help` lists.
//!
//! buildah and podman use a store of their own under `target/image/`, one per run, so a
//! run never touches the machine's images or another run's, and everything is removed
//! afterwards, also when a step fails (and at the next run when one was killed).
use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::{
    build::{self, workspace},
    deploy::{Container, Deployment},
    setup::{self, cmd, exec, output},
};

#[derive(clap::Args, Default)]
pub struct Args {
    /// Take netdp and netdp-cni from this directory instead of building them in release
    /// (the eBPF object is taken from target/ebpf as built by `cargo xtask build-ebpf`).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

/// Where the image goes.
pub fn archive() -> PathBuf {
    workspace().join("target/netdp-image.tar")
}

fn ebpf_object() -> PathBuf {
    workspace().join("target/ebpf/bpfel-unknown-none/release/netdp")
}

/// Where the binaries live in the image; the DaemonSet's commands name them.
const NETDP: &str = "usr/bin/netdp";
const NETDP_CNI: &str = "usr/bin/netdp-cni";
const OBJECT: &str = "usr/lib/netdp/netdp.bpf.o";

/// The TLS flags the DaemonSet documents (commented out) for etcd with client certificates.
const TLS_ARGS: [&str; 3] = [
    "--etcd-cafile=/etc/netdp-etcd/ca.crt",
    "--etcd-certfile=/etc/netdp-etcd/tls.crt",
    "--etcd-keyfile=/etc/netdp-etcd/tls.key",
];

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    if !setup::is_root() {
        bail!(
            "building and running the image needs root (buildah, podman); run `sudo -E cargo xtask image`"
        );
    }
    setup::apt(setup::IMAGE_PACKAGES)?;
    Work::remove_stale();
    let work = Work::new()?;
    work.probe_tools()?;

    let deployment = Deployment::load()?;
    let reference = deployment.image()?;
    let version = env!("CARGO_PKG_VERSION");
    ensure!(
        reference.ends_with(&format!(":{version}")),
        "the DaemonSet runs {reference}, but this is netdp {version}: update the image tag in deploy/"
    );

    let (netdp, cni) = match &args.bin_dir {
        Some(dir) => (dir.join("netdp"), dir.join("netdp-cni")),
        None => {
            setup::ensure()?;
            let b = build::binaries()?;
            (b.netdp, b.cni)
        }
    };
    let built = Instant::now();

    eprintln!("== image: assembling a root from scratch (binaries, eBPF object, ldd's libraries)");
    let files = work.assemble(&netdp, &cni, &ebpf_object())?;
    for f in files.keys() {
        eprintln!("  /{f}");
    }

    eprintln!(
        "== image: buildah from scratch, commit oci-archive:{}",
        archive().display()
    );
    work.buildah_commit(&reference, version)?;

    eprintln!("== image: the archive's config and files (skopeo, umoci)");
    work.inspect(&reference, &files)?;

    eprintln!("== image: podman load and run (runc)");
    let loaded = work.podman_load()?;
    ensure!(
        loaded.iter().any(|l| l == &reference),
        "podman loaded {loaded:?} from the archive, not {reference} (the DaemonSet's image)"
    );
    work.smoke(&reference, version)?;
    work.agent_flags(&reference, &deployment)?;

    eprintln!("== image: the DaemonSet's init containers, as the manifest runs them");
    work.init_containers(&reference, &deployment, &cni)?;

    let size = std::fs::metadata(archive()).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "== image {reference} ({:.1} MiB) built and checked in {:.1?} ({:.1?} after the build)",
        size as f64 / (1024.0 * 1024.0),
        start.elapsed(),
        built.elapsed()
    );
    Ok(())
}

/// One run's scratch space: the root, buildah's and podman's private stores, the scratch
/// host directories. Removed (containers and images first) when dropped.
struct Work {
    dir: PathBuf,
    id: String,
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

    fn new() -> Result<Work> {
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
    fn remove_stale() {
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
    fn archive_tmp(&self) -> PathBuf {
        archive().with_extension(format!("tar.{}.tmp", self.id))
    }

    fn path(&self, rel: &str) -> PathBuf {
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

    fn buildah(&self) -> Command {
        let mut c = cmd("buildah");
        c.args(self.store_args("buildah"));
        c
    }

    fn podman(&self) -> Command {
        let mut c = cmd("podman");
        c.args(self.store_args("podman"));
        c
    }

    /// `podman run` as the README's and the toolchain's facts say works here: runc (crun
    /// refuses the hybrid cgroup layout), host network, and rlimits within this machine's.
    fn podman_run(&self, step: &str) -> Command {
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
    fn probe_tools(&self) -> Result<()> {
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

    /// The image's root: path inside the image -> mode.
    fn assemble(&self, netdp: &Path, cni: &Path, object: &Path) -> Result<BTreeMap<String, u32>> {
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

    fn buildah_commit(&self, reference: &str, version: &str) -> Result<()> {
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
    fn inspect(&self, reference: &str, files: &BTreeMap<String, u32>) -> Result<()> {
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

    /// Loads the archive into the run's own store; returns the names it loaded.
    fn podman_load(&self) -> Result<Vec<String>> {
        let out = output(self.podman().arg("load").arg("--input").arg(archive()))?;
        Ok(out
            .lines()
            .filter_map(|l| l.strip_prefix("Loaded image: "))
            .flat_map(|l| l.split(',').map(|s| s.trim().to_string()))
            .collect())
    }

    fn smoke(&self, reference: &str, version: &str) -> Result<()> {
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
    fn agent_flags(&self, reference: &str, deployment: &Deployment) -> Result<()> {
        let help = output(
            self.podman_run("agent-help")
                .arg(reference)
                .args(["agent", "--help"]),
        )?;
        let containers = deployment.containers()?;
        let agent = containers
            .iter()
            .find(|c| !c.init)
            .context("the DaemonSet has no agent container")?;
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
        let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
        for m in c.value["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
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

    fn init_containers(&self, reference: &str, deployment: &Deployment, cni: &Path) -> Result<()> {
        let config = deployment.config()?;
        let containers = deployment.containers()?;
        let init = |word: &str| {
            containers
                .iter()
                .find(|c| c.init && c.argv().iter().any(|a| a == word))
                .with_context(|| format!("the DaemonSet has no init container running {word}"))
        };

        // install-cni into a scratch host root, unprivileged: the plugin byte for byte and
        // executable, the config as the ConfigMap has it, no temporary file left behind.
        let install = init("install-cni")?;
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

        // network apply against a real etcd: written once, left alone the second time.
        let apply = init("apply")?;
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
                    std::fs::read_to_string(crate::deploy::deploy_dir().join("30-daemonset.yaml"))?;
                for a in TLS_ARGS {
                    ensure!(
                        manifest.contains(a),
                        "30-daemonset.yaml no longer documents {a}; update TLS_ARGS in image.rs"
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

impl Drop for Work {
    fn drop(&mut self) {
        // Containers first (a failed step may leave one), then images, then the stores.
        let quiet = |mut c: Command| {
            let _ = c
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        if self.path("podman").exists() {
            let mut c = self.podman();
            c.args(["rm", "--all", "--force"]);
            quiet(c);
            let mut c = self.podman();
            c.args(["rmi", "--all", "--force"]);
            quiet(c);
        }
        if self.path("buildah").exists() {
            let mut c = self.buildah();
            c.args(["rm", "--all"]);
            quiet(c);
        }
        let _ = std::fs::remove_file(self.archive_tmp());
        let _ = std::fs::remove_dir_all(Self::run_base().join(&self.id));
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("image: could not remove {}: {e}", self.dir.display());
        }
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
