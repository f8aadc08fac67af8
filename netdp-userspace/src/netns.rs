//! Running code inside another network namespace, on a thread of its own so the caller's
//! namespace never changes.
use std::{fs::File, path::Path};

use anyhow::{Context, Result, anyhow};
use nix::sched::{CloneFlags, setns};

/// Runs `f` on a fresh thread that has entered the network namespace at `netns`. `f` gets a
/// current-thread tokio runtime, so netlink sockets it opens live in that namespace.
pub fn run_in<T, F>(netns: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: AsyncFnOnce() -> Result<T> + Send + 'static,
{
    let ns = File::open(netns)
        .with_context(|| format!("opening network namespace {}", netns.display()))?;
    let name = netns.display().to_string();
    std::thread::spawn(move || -> Result<T> {
        setns(&ns, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering network namespace {name}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime in the pod's namespace")?;
        rt.block_on(f())
    })
    .join()
    .map_err(|_| anyhow!("the thread working in {} panicked", netns.display()))?
}
