//! Each prerequisite checked by using it, not by finding its file: a `protoc` without the
//! well-known types, a kernel without BPF, or an etcd that does not start is named here, in
//! one line, before a build of several minutes or a test run fails on it.
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{cmd, output};

/// The file etcd-client's protos import; Debian ships it in libprotobuf-dev.
pub const WELL_KNOWN_PROTO: &str = "/usr/include/google/protobuf/descriptor.proto";

/// The kernel the programs need (TCX links).
const MIN_KERNEL: (u32, u32) = (6, 6);

/// What building needs: `protoc` compiling a proto that imports the well-known types, the
/// way etcd-client's build script does.
pub fn build() -> Result<()> {
    let dir = tempdir("protoc")?;
    let proto = dir.join("probe.proto");
    std::fs::write(
        &proto,
        "syntax = \"proto3\";\npackage probe;\nimport \"google/protobuf/descriptor.proto\";\n\
         extend google.protobuf.FieldOptions { string probe = 50000; }\n",
    )?;
    let res = output(
        cmd("protoc")
            .arg("-I")
            .arg(&dir)
            .arg("--descriptor_set_out")
            .arg(dir.join("probe.pb"))
            .arg(&proto),
    );
    let _ = std::fs::remove_dir_all(&dir);
    res.map(drop).context(
        "protoc cannot compile a proto importing google/protobuf/descriptor.proto, which \
         etcd-client's build needs (Debian: apt-get install protobuf-compiler libprotobuf-dev)",
    )
}

/// What the tests, the demo and the benchmarks need at run time.
pub fn runtime() -> Result<()> {
    kernel()?;
    bpf()?;
    netns()?;
    etcd()?;
    tool("bpftool", &["version"], "bpftool")?;
    tool("iptables", &["-L", "-n"], "iptables")?;
    tool("nft", &["list", "tables"], "nftables")?;
    Ok(())
}

fn kernel() -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?;
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version < MIN_KERNEL {
        bail!(
            "kernel {} is older than {}.{}, which the TCX links need",
            release.trim(),
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("the kernel has no BTF (/sys/kernel/btf/vmlinux is missing): CONFIG_DEBUG_INFO_BTF");
    }
    Ok(())
}

/// Loads the smallest tc program there is (`r0 = 0; exit`) with the raw BPF syscall: it
/// proves the syscall, the privileges and the verifier before anything is built. The raw
/// syscall because aya loads only from an ELF object, which does not exist yet here.
fn bpf() -> Result<()> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    // mov64 r0, 0 ; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, the rest zero.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: attr is a valid bpf_attr prefix of the size passed; the pointers outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "the kernel refused to load a trivial BPF program ({err}): BPF needs root with \
             CAP_BPF and CAP_NET_ADMIN and a kernel with CONFIG_BPF_SYSCALL"
        );
    }
    // SAFETY: fd is the program's descriptor, owned here.
    unsafe { libc::close(fd as i32) };
    // bpffs, where the agents pin: mounted here if missing, as the agent would.
    if !is_bpffs() {
        eprintln!("setup: mounting bpffs at /sys/fs/bpf");
        let _ = output(cmd("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]));
    }
    if !is_bpffs() {
        bail!(
            "/sys/fs/bpf is not a bpffs mount and mounting one there failed; the agents pin there"
        );
    }
    Ok(())
}

fn is_bpffs() -> bool {
    const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
    // SAFETY: statfs is plain old data.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and st is a valid out-pointer.
    let rc = unsafe { libc::statfs(c"/sys/fs/bpf".as_ptr(), &mut st) };
    rc == 0 && st.f_type as u64 == BPF_FS_MAGIC
}

/// Creates and removes a network namespace, as every testbed node does.
fn netns() -> Result<()> {
    let name = format!("netdp-probe-{}", std::process::id());
    let made = output(cmd("ip").args(["netns", "add", &name]));
    let used = made.and_then(|_| output(cmd("ip").args(["-n", &name, "link", "set", "lo", "up"])));
    let _ = Command::new("ip").args(["netns", "del", &name]).output();
    used.map(drop).context(
        "cannot create a network namespace with `ip netns add` (root with CAP_SYS_ADMIN and \
         iproute2 are needed)",
    )
}

/// Starts the testbed's etcd on loopback, writes and reads a key, stops it.
fn etcd() -> Result<()> {
    let etcd = netdp_testbed::etcd::LocalEtcd::start()
        .context("etcd (Debian's etcd-server) does not start")?;
    etcd.put("/netdp-probe", "ok")
        .context("etcdctl cannot write to a local etcd")?;
    match etcd.get("/netdp-probe")? {
        Some(v) if v == "ok" => Ok(()),
        other => bail!("etcd read back {other:?} for a key written as \"ok\""),
    }
}

fn tool(program: &str, args: &[&str], package: &str) -> Result<()> {
    output(cmd(program).args(args))
        .map(drop)
        .with_context(|| format!("{program} does not work (Debian package {package})"))
}

fn tempdir(what: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("netdp-probe-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
