//! Installs what is missing, then checks each prerequisite by using it (`probe`), so a
//! missing piece is named before a long build starts.
mod probe;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Debian packages the tests and the demo use.
pub const PACKAGES: &[(&str, &str)] = &[
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("protoc", "protobuf-compiler"),
    // etcd-client's build imports google/protobuf/*.proto: protobuf-compiler lacks them.
    (probe::WELL_KNOWN_PROTO, "libprotobuf-dev"),
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("bpftool", "bpftool"),
    ("iptables", "iptables"),
    ("nft", "nftables"),
    ("openssl", "openssl"),
];

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|f| f.is_file())
        })
        .or_else(|| Some(cargo_home().join("bin").join(tool)).filter(|f| f.is_file()))
}

/// PATH with cargo's bin directory first, so a freshly installed bpf-linker is found.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut dirs = vec![cargo_home().join("bin")];
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn cmd(program: &str) -> Command {
    Command::new(program)
}

/// Runs a command, failing with what it printed.
pub fn exec(c: &mut Command) -> Result<()> {
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed ({status})");
    }
    Ok(())
}

pub fn output(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `cargo xtask deploy-check` needs: Python for the pinned linters' venv.
pub const DEPLOY_PACKAGES: &[(&str, &str)] = &[("python3", "python3")];

/// Debian's python3 makes venvs only with python3-venv installed.
pub const PYTHON_VENV_PACKAGES: &[(&str, &str)] =
    &[("/usr/share/doc/python3-venv", "python3-venv")];

/// What `cargo xtask image` needs: an OCI image built from scratch and run, no registry
/// (each checked by using it in `image.rs`).
pub const IMAGE_PACKAGES: &[(&str, &str)] = &[
    ("buildah", "buildah"),
    ("podman", "podman"),
    ("runc", "runc"),
    ("umoci", "umoci"),
    ("skopeo", "skopeo"),
];

/// Files (not tools) the benchmarks need, and their Debian packages.
pub const FILES: &[(&str, &str)] = &[(
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "fonts-dejavu-core",
)];

/// Installs Debian packages whose tools (or files, for absolute paths) are missing.
/// Presence is only the first test: `probe` then uses each one.
pub fn apt(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(tool, _)| {
            if tool.starts_with('/') {
                !Path::new(tool).exists()
            } else {
                which(tool).is_none()
            }
        })
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if which("apt-get").is_none() || !is_root() {
        bail!(
            "missing packages: {} (install them as root: apt-get install {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    let quiet = |c: &mut Command| {
        c.env("DEBIAN_FRONTEND", "noninteractive");
        exec(c)
    };
    quiet(cmd("apt-get").args(["update", "-qq"]))?;
    let mut install = cmd("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing);
    quiet(&mut install).with_context(|| format!("installing {}", missing.join(" ")))
}

fn llvm_major() -> Result<String> {
    let v = output(cmd("rustc").args(["+nightly", "-vV"])).context(
        "the nightly toolchain is needed for the eBPF programs (rustup toolchain install nightly)",
    )?;
    let line = v
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV does not say its LLVM version")?;
    Ok(line.split('.').next().unwrap_or(line).to_string())
}

pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

/// bpf-linker built against nightly's own LLVM (Debian has no matching LLVM).
fn bpf_linker() -> Result<()> {
    let major = llvm_major()?;
    let prefix = cargo_home().join(format!("netdp-llvm-{major}"));
    let marker = prefix.join("bpf-linker.ok");
    let sysroot = output(cmd("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let so = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("libLLVM.so.{major}"))
                    || n.starts_with(&format!("libLLVM-{major}"))
            })
        })
        .with_context(|| format!("nightly ships no libLLVM {major} in {}", lib.display()))?;
    // bpf-linker links against `libLLVM.so` and finds it at run time by its soname (the
    // file's own name) through its rpath, so both names live in the prefix.
    std::fs::create_dir_all(prefix.join("lib"))?;
    let soname = so.file_name().map(PathBuf::from).unwrap_or_default();
    for name in [PathBuf::from("libLLVM.so"), soname] {
        let link = prefix.join("lib").join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(so.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&so, &link)?;
        }
    }
    let works = which("bpf-linker")
        .map(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .unwrap_or(false);
    if works && marker.exists() {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker against nightly's LLVM {major} (about a minute)");
    exec(
        cmd("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "0.13.0",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .arg("--force")
            .env("LLVM_PREFIX", &prefix),
    )
    .context("installing bpf-linker")?;
    std::fs::write(marker, "")?;
    Ok(())
}

/// Nightly's components for the eBPF crate: rust-src to build core, and the lints CI runs
/// on it (clippy, rustfmt).
fn nightly_components() -> Result<()> {
    let installed =
        output(cmd("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .context("rustup with a nightly toolchain is needed for the eBPF programs")?;
    for component in ["rust-src", "clippy", "rustfmt"] {
        if !installed.lines().any(|l| l.starts_with(component)) {
            eprintln!("setup: adding {component} to nightly");
            exec(cmd("rustup").args(["component", "add", component, "--toolchain", "nightly"]))?;
        }
    }
    Ok(())
}

/// What building needs: packages, rust-src, bpf-linker, each checked by using it.
pub fn ensure() -> Result<()> {
    apt(PACKAGES)?;
    apt(FILES)?;
    nightly_components()?;
    bpf_linker()?;
    probe::build()
}

/// `ensure`, and what running the tests, the demo and the benchmarks needs on top (root,
/// the BPF syscall and bpffs, network namespaces, a real etcd), each checked by using it.
pub fn ensure_runtime() -> Result<()> {
    ensure()?;
    probe::runtime()
}
