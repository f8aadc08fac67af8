//! Pinned objects' permissions: a real agent on real bpffs, under a bpf root of its own.
//! The agent keeps its pin directories 0700 and its pins 0600, all root's; it tightens
//! what it finds looser, saying so, and refuses pins or directories another user owns.
//! Other users cannot open the maps; root (bpftool) still can.
use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context, Result, bail};
use netdp::dataplane::Pins;
use netdp_common::map_names::ROUTES;
use netdp_testbed::{Spec, Testbed};

const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const NOBODY: u32 = 65534;
const ROOT_PREFIX: &str = "/sys/fs/bpf/netdp-pins-test-";

/// The test's bpf root, removed (pins and all) when it is dropped, after the testbed.
struct BpfRoot(PathBuf);

impl BpfRoot {
    /// A fresh root; roots of earlier runs whose process is gone are removed first.
    fn new() -> Result<Self> {
        for entry in std::fs::read_dir("/sys/fs/bpf")? {
            let path = entry?.path();
            let pid = path
                .to_string_lossy()
                .strip_prefix(ROOT_PREFIX)
                .map(String::from);
            if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        Ok(BpfRoot(PathBuf::from(format!(
            "{ROOT_PREFIX}{}",
            std::process::id()
        ))))
    }
}

impl Drop for BpfRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode_and_owner(path: &Path) -> Result<(u32, u32)> {
    let m = std::fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok((m.mode() & 0o7777, m.uid()))
}

/// Every directory and pin of the node, with the mode it must have.
fn expected_modes(root: &Path, pins: &Pins) -> Result<Vec<(PathBuf, u32)>> {
    let mut out = vec![
        (root.to_path_buf(), 0o700),
        (pins.dir().to_path_buf(), 0o700),
    ];
    for sub in ["maps", "progs", "links"] {
        let d = pins.dir().join(sub);
        out.push((d.clone(), 0o700));
        for e in std::fs::read_dir(&d)? {
            out.push((e?.path(), 0o600));
        }
    }
    Ok(out)
}

fn assert_locked_down(root: &Path, pins: &Pins) -> Result<()> {
    let all = expected_modes(root, pins)?;
    assert!(all.len() > 20, "too few pins: {all:?}");
    for (path, mode) in all {
        assert_eq!(
            mode_and_owner(&path)?,
            (mode, 0),
            "{} is not root's with mode {mode:04o}",
            path.display()
        );
    }
    Ok(())
}

/// `bpftool map dump pinned PIN` (as root). As another user bpftool fails whether or not
/// the pin opens (it needs CAP_SYS_ADMIN for the map's BTF), so that side is
/// [`open_as_nobody`]'s.
fn dump(pin: &Path) -> Result<Output> {
    Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(pin)
        .output()
        .context("running bpftool")
}

/// Opens the pin with BPF_OBJ_GET as uid/gid nobody with no groups and no capabilities,
/// from a thread of its own (Linux credentials are per thread; the raw syscalls change only
/// this one's, which ends with them). The errno, or `None` if the open worked.
fn open_as_nobody(pin: &Path) -> Result<Option<std::io::Error>> {
    use std::os::unix::ffi::OsStrExt;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        /// The kernel refuses nonzero bytes past the fields it knows.
        pad: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())?;
    let thread = std::thread::spawn(move || -> Result<Option<std::io::Error>> {
        let id = NOBODY as libc::c_long;
        // SAFETY: plain syscalls on integers and an empty group list; they change only this
        // thread's credentials.
        let dropped = unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setresgid, id, id, id) == 0
                && libc::syscall(libc::SYS_setresuid, id, id, id) == 0
        };
        if !dropped {
            bail!(
                "dropping to uid {NOBODY}: {}",
                std::io::Error::last_os_error()
            );
        }
        let attr = ObjGet {
            pathname: path.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
            path_fd: 0,
            pad: 0,
        };
        // SAFETY: `attr` is a valid bpf_attr for BPF_OBJ_GET and `path` outlives the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET,
                &attr as *const ObjGet,
                std::mem::size_of::<ObjGet>(),
            )
        };
        if fd < 0 {
            return Ok(Some(std::io::Error::last_os_error()));
        }
        // SAFETY: the fd was just returned to us and is closed once.
        unsafe { libc::close(fd as i32) };
        Ok(None)
    });
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the uid {NOBODY} thread panicked"))?
}

/// Asserts that uid nobody is refused opening `pin` by its permissions.
fn assert_nobody_refused(pin: &Path) -> Result<()> {
    let errno = open_as_nobody(pin)?.map(|e| e.kind());
    assert_eq!(
        errno,
        Some(std::io::ErrorKind::PermissionDenied),
        "uid {NOBODY} opening {}",
        pin.display()
    );
    Ok(())
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn chown(path: &Path, uid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), None)
        .with_context(|| format!("chown {}", path.display()))
}

/// The part of the node's agent log written since it was `skip` bytes long.
fn log_since(tb: &Testbed, node: &str, skip: usize) -> String {
    let text = std::fs::read(tb.node(node).agent_log()).unwrap_or_default();
    String::from_utf8_lossy(text.get(skip..).unwrap_or_default()).into_owned()
}

fn log_len(tb: &Testbed, node: &str) -> usize {
    std::fs::metadata(tb.node(node).agent_log()).map_or(0, |m| m.len() as usize)
}

#[test]
fn pins_are_roots_alone_loosened_ones_are_tightened_and_planted_ones_refused() -> Result<()> {
    let root = BpfRoot::new()?;
    let mut tb = Testbed::new(Spec::flat(1).network(HOST_GW))?;
    let flag = format!("--bpf-root={}", root.0.display());
    let pins = Pins::new(&root.0, &tb.node("n1").ns)?;
    let routes = pins.map(ROUTES);

    tb.start_agent("n1", &[&flag])?;
    assert_locked_down(&root.0, &pins)?;
    let by_root = dump(&routes)?;
    assert!(
        by_root.status.success(),
        "root cannot dump {}: {by_root:?}",
        routes.display()
    );
    assert_nobody_refused(&routes)?;
    assert_nobody_refused(&pins.program(netdp_common::program_names::FROM_POD))?;

    // Loosened while the agent is away: nobody can open the map then, which is what the
    // agent must undo when it starts.
    tb.stop_agent("n1")?;
    let loose = [
        (root.0.clone(), 0o755),
        (pins.dir().to_path_buf(), 0o755),
        (pins.dir().join("maps"), 0o777),
        (routes.clone(), 0o666),
    ];
    for (path, mode) in &loose {
        chmod(path, *mode)?;
    }
    assert!(
        open_as_nobody(&routes)?.is_none(),
        "the checks prove nothing: uid {NOBODY} cannot open a 0666 map either"
    );
    let skip = log_len(&tb, "n1");
    tb.start_agent("n1", &[&flag])?;
    assert_locked_down(&root.0, &pins)?;
    let log = log_since(&tb, "n1", skip);
    for (path, mode) in &loose {
        let line = format!(
            "{} had mode {mode:04o}, open to other users; restricted it to",
            path.display()
        );
        assert!(log.contains(&line), "no warning {line:?} in:\n{log}");
    }
    assert_nobody_refused(&routes)?;

    // Planted: a pin, then the node's directory, owned by somebody else.
    tb.stop_agent("n1")?;
    for planted in [routes.clone(), pins.dir().to_path_buf()] {
        chown(&planted, NOBODY)?;
        let refused = match tb.start_agent("n1", &[&flag]) {
            Ok(()) => bail!(
                "the agent started with {} owned by uid {NOBODY}",
                planted.display()
            ),
            Err(e) => format!("{e:#}"),
        };
        let says = format!(
            "{} is owned by uid {NOBODY}, not by this agent's user (uid 0)",
            planted.display()
        );
        assert!(refused.contains(&says), "{says:?} not in: {refused}");
        chown(&planted, 0)?;
    }
    tb.start_agent("n1", &[&flag])?;
    assert_locked_down(&root.0, &pins)?;
    Ok(())
}
