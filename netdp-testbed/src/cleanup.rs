//! Everything a testbed creates is recorded as it is created, so it can be removed when the
//! testbed is dropped (test passed or panicked), on Ctrl-C, or by the next run if this one
//! was killed outright.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

use serde_json::json;

use crate::netns;

/// Where runs keep their state; one directory per run id.
pub fn runs_dir() -> PathBuf {
    std::env::temp_dir().join("netdp-testbed")
}

#[derive(Debug, Default, Clone)]
pub struct Resources {
    pub dir: PathBuf,
    pub namespaces: Vec<String>,
    /// Process groups to kill.
    pub pgids: Vec<i32>,
    pub bpf_dirs: Vec<PathBuf>,
}

impl Resources {
    fn save(&self) {
        let v = json!({
            "owner": std::process::id(),
            "namespaces": self.namespaces,
            "pgids": self.pgids,
            "bpf_dirs": self.bpf_dirs,
        });
        let _ = std::fs::write(self.dir.join("resources.json"), v.to_string());
    }

    /// Kills, deletes and unpins everything recorded.
    pub fn remove(&self) {
        for pg in &self.pgids {
            // SAFETY: signalling process groups this run created.
            unsafe { libc::kill(-pg, libc::SIGKILL) };
        }
        for d in &self.bpf_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        for ns in self.namespaces.iter().rev() {
            netns::delete(ns);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn live() -> &'static Mutex<HashMap<String, Resources>> {
    static LIVE: OnceLock<Mutex<HashMap<String, Resources>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

pub fn register(id: &str, dir: &Path) {
    let r = Resources {
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    r.save();
    live()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.to_string(), r);
}

pub fn record(id: &str, f: impl FnOnce(&mut Resources)) {
    let mut map = live().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = map.get_mut(id) {
        f(r);
        r.save();
    }
}

/// Removes a run's resources and forgets it.
pub fn release(id: &str) {
    let r = live().lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    if let Some(r) = r {
        r.remove();
    }
}

/// Removes the leftovers of runs whose process is gone (killed before it could clean up).
pub fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(runs_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let Ok(text) = std::fs::read_to_string(dir.join("resources.json")) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let owner = v["owner"].as_u64().unwrap_or(0) as i32;
        // SAFETY: signal 0 only checks for existence.
        if owner > 0 && unsafe { libc::kill(owner, 0) } == 0 {
            continue;
        }
        let strings = |k: &str| -> Vec<String> {
            v[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        Resources {
            dir: dir.clone(),
            namespaces: strings("namespaces"),
            pgids: v["pgids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_i64())
                        .map(|p| p as i32)
                        .collect()
                })
                .unwrap_or_default(),
            bpf_dirs: strings("bpf_dirs").into_iter().map(PathBuf::from).collect(),
        }
        .remove();
    }
}

/// On SIGINT/SIGTERM, removes every live testbed of this process, then exits. Call it at
/// the start of main, before any other thread exists (it blocks the signals process-wide
/// and waits for them on a thread of its own).
pub fn install_signal_cleanup() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("\n{sig}: tearing down the testbed...");
            let all: Vec<String> = live()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned()
                .collect();
            for id in all {
                release(&id);
            }
            std::process::exit(130);
        }
    });
}
