//! Network namespaces: creating them, and running processes and threads inside them.
use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::base::Count;

/// Path of a named namespace, as `ip netns` creates it.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Runs a command and fails with its stderr if it fails.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>` in the root namespace.
pub fn ip(args: &[&str]) -> Result<String> {
    sh(Command::new("ip").args(args))
}

pub fn create(name: &str) -> Result<()> {
    ip(&["netns", "add", name])?;
    // Loopback up; the kernel leaves it down in a new namespace.
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

pub fn delete(name: &str) {
    let _ = ip(&["netns", "del", name]);
}

/// A command that will run inside namespace `name` (entered with setns before exec, so the
/// mount namespace, and with it /sys/fs/bpf, stays the caller's).
pub fn command(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    let ns = File::open(path(name)).with_context(|| format!("opening namespace {name}"))?;
    let mut cmd = Command::new(program);
    let fd = ns.as_raw_fd();
    // SAFETY: setns is async-signal-safe; the file stays open until the Command is dropped
    // because the closure owns it.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &ns;
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Runs a command in namespace `name` and returns its output (whatever its status).
pub fn run(name: &str, args: &[&str]) -> Result<Output> {
    let (prog, rest) = args.split_first().ok_or_else(|| anyhow!("empty command"))?;
    command(name, prog)?
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {args:?} in {name}"))
}

/// Runs a command in namespace `name` and fails with its stderr if it fails.
pub fn exec(name: &str, args: &[&str]) -> Result<String> {
    let out = run(name, args)?;
    if !out.status.success() {
        bail!(
            "{args:?} in {name} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes a sysctl inside a namespace.
pub fn sysctl(name: &str, key: &str, value: &str) -> Result<()> {
    exec(name, &["sysctl", "-qw", &format!("{key}={value}")]).map(|_| ())
}

pub fn read_sysctl(name: &str, key: &str) -> Result<String> {
    Ok(exec(name, &["sysctl", "-n", key])?.trim().to_string())
}

/// What an interface has received and sent, as its kernel counters say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx: Count,
    pub tx: Count,
}

/// The counters of interface `dev` in namespace `name`.
pub fn link_stats(name: &str, dev: &str) -> Result<LinkStats> {
    let out = ip(&["-n", name, "-s", "-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("`ip -j` said {out:?}"))?;
    let count = |dir: &str| -> Result<Count> {
        let s = &v[0]["stats64"][dir];
        match (s["packets"].as_u64(), s["bytes"].as_u64()) {
            (Some(packets), Some(bytes)) => Ok(Count { packets, bytes }),
            _ => bail!("no {dir} counters for {dev} in {name}: {out}"),
        }
    };
    Ok(LinkStats {
        rx: count("rx")?,
        tx: count("tx")?,
    })
}

/// Runs `f` on a thread that has entered namespace `name` (sockets it opens live there).
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let ns = File::open(path(name)).with_context(|| format!("opening namespace {name}"))?;
    let label = name.to_string();
    Ok(std::thread::spawn(move || {
        // SAFETY: plain syscall on an fd we own; affects only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("entering {label}: {}", std::io::Error::last_os_error());
        }
        f()
    }))
}

/// Turns transmit checksum offload off for `dev` of namespace `ns` (ethtool's
/// ETHTOOL_STXCSUM; the ethtool tool is not installed here, and this one ioctl is all that
/// is needed of it): the kernel then completes every checksum before the frame leaves, as
/// a physical wire carries them. A node's XDP program sees frames before any skb exists,
/// so a veth that hands it a locally sent packet's partial checksum (CHECKSUM_PARTIAL, the
/// pseudo-header sum only) would have it forward an invalid one.
pub fn tx_checksum_off(ns: &str, dev: &str) -> Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let dev = dev.to_string();
    if dev.len() >= libc::IFNAMSIZ {
        bail!("interface name {dev:?} too long");
    }
    join(in_netns(ns, move || {
        let mut value = EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: 0,
        };
        // SAFETY: all-zero is a valid ifreq.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(dev.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = &mut value as *mut EthtoolValue as *mut libc::c_char;
        // SAFETY: plain syscalls; the ifreq and the value outlive the ioctl.
        let rc = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            if fd < 0 {
                bail!("socket: {}", std::io::Error::last_os_error());
            }
            let rc = libc::ioctl(fd, SIOCETHTOOL, &mut ifr);
            libc::close(fd);
            rc
        };
        if rc != 0 {
            bail!(
                "turning checksum offload off for {dev}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    })?)
}

/// Joins a thread started by [`in_netns`].
pub fn join<T>(h: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join().map_err(|_| anyhow!("thread panicked"))?
}
