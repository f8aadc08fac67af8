//! Child processes of a testbed: spawned in their own process group, stopped for sure.
use std::{
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::Result;

/// Spawns `cmd` in a new process group, so stopping it also stops what it started.
pub fn spawn(mut cmd: Command) -> Result<Child> {
    cmd.process_group(0);
    Ok(cmd.spawn()?)
}

/// SIGTERM, then SIGKILL after a grace period; always reaps.
pub fn terminate(mut child: Child) {
    let pid = child.id() as i32;
    // SAFETY: signalling a process group we created.
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.wait();
}

/// SIGKILL at once (a crash, as far as the process is concerned).
pub fn kill(mut child: Child) {
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
