//! Child processes of a testbed: spawned in their own process group, stopped for sure, and
//! telling how they stopped.
use std::{
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, ExitStatus},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::wait::wait_until;

/// How long [`terminate`] lets a process exit on its own after SIGTERM before it kills it.
pub const GRACE: Duration = Duration::from_secs(5);

/// Spawns `cmd` in a new process group, so stopping it also stops what it started.
pub fn spawn(mut cmd: Command) -> Result<Child> {
    cmd.process_group(0);
    Ok(cmd.spawn()?)
}

/// How a process stopped when [`terminate`] asked it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Its exit status (a signal, for one that had to be killed).
    pub status: ExitStatus,
    /// It had not exited within the grace period after SIGTERM, so it was sent SIGKILL.
    pub killed: bool,
    /// From SIGTERM to its exit.
    pub took: Duration,
}

impl Stopped {
    /// It exited on its own within the grace period, with status 0.
    pub fn clean(&self) -> bool {
        !self.killed && self.status.success()
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.killed {
            write!(
                f,
                "did not exit within {:?} of SIGTERM and was killed ({})",
                self.took, self.status
            )
        } else {
            write!(f, "exited {:?} after SIGTERM ({})", self.took, self.status)
        }
    }
}

/// SIGTERM to the process group, then SIGKILL if the process has not exited after
/// [`GRACE`]; always reaps, and says which of the two it was.
pub fn terminate(child: Child) -> Result<Stopped> {
    terminate_within(child, GRACE)
}

/// [`terminate`] with a grace period of `grace`.
pub fn terminate_within(mut child: Child, grace: Duration) -> Result<Stopped> {
    let pid = child.id() as i32;
    let start = Instant::now();
    // SAFETY: signalling a process group we created.
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    let mut status = None;
    let exited = wait_until(
        &format!("process {pid} to exit after SIGTERM"),
        grace,
        || {
            status = child.try_wait()?;
            Ok(status.is_some())
        },
    );
    // One last look, so a process that exited just at the deadline is not taken for killed.
    if exited.is_err() {
        status = child.try_wait()?;
    }
    if let Some(status) = status {
        return Ok(Stopped {
            status,
            killed: false,
            took: start.elapsed(),
        });
    }
    // SAFETY: as above.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let status = child
        .wait()
        .with_context(|| format!("reaping process {pid}"))?;
    Ok(Stopped {
        status,
        killed: true,
        took: start.elapsed(),
    })
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

/// What a finished command said: its stdout, then its stderr.
pub fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sh -c script`, once it has printed its first line (its traps are set by then).
    fn sh(script: &str) -> Child {
        use std::io::BufRead;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script])
            .stdout(std::process::Stdio::piped());
        let mut child = spawn(cmd).expect("spawning sh");
        let out = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("reading the script's first line");
        assert_eq!(line, "ready\n");
        child
    }

    #[test]
    fn a_process_that_exits_on_sigterm_is_not_killed() -> Result<()> {
        // `exec sleep`: the shell becomes sleep, whose default SIGTERM action ends it.
        let s = terminate(sh("echo ready; exec sleep 30"))?;
        assert!(!s.killed && s.took < GRACE, "{s}");
        // Ended by the signal it was asked with: not a clean exit.
        assert!(!s.clean());
        let s = terminate(sh(
            "trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done",
        ))?;
        assert!(s.clean(), "{s}");
        let s = terminate(sh(
            "trap 'exit 3' TERM; echo ready; while :; do sleep 0.05; done",
        ))?;
        assert!(!s.killed && s.status.code() == Some(3), "{s}");
        Ok(())
    }

    #[test]
    fn a_process_that_ignores_sigterm_is_killed_after_the_grace_period() -> Result<()> {
        let grace = Duration::from_millis(300);
        let s = terminate_within(
            sh("trap '' TERM; echo ready; while :; do sleep 0.05; done"),
            grace,
        )?;
        assert!(s.killed && !s.clean(), "{s}");
        assert!(s.took >= grace, "{s}");
        Ok(())
    }
}
