//! Loading kube-proxy's rulesets into a node's namespace the way kube-proxy does, timing the
//! load, and clearing them again between samples.
use std::{
    io::Write,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use netdp_testbed::netns;

use super::kube_proxy::{Cluster, ServicePort, iptables, nftables};

/// Runs `argv` in namespace `ns` with `input` on stdin; returns how long it took.
fn run_with_stdin(ns: &str, argv: &[&str], input: &str) -> Result<Duration> {
    let mut cmd = netns::command(ns, argv[0])?;
    cmd.args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", argv[0]))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    // Write from another thread: the tool may report an error before reading it all.
    let text = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "{} in {ns} failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// kube-proxy's iptables mode on a fresh node: the full-sync restore (timed), then the
/// jumps from the built-in chains.
pub fn load_iptables(ns: &str, services: &[ServicePort], cluster: &Cluster) -> Result<Duration> {
    let took = restore_iptables(ns, &iptables::restore_input(services, cluster))?;
    for jump in iptables::jump_rules() {
        let mut argv = vec!["iptables", "-w"];
        argv.extend(jump.iter().map(String::as_str));
        netns::exec(ns, &argv).context("inserting kube-proxy's jump rules")?;
    }
    Ok(took)
}

/// `iptables-restore --noflush --counters`, as kube-proxy calls it.
pub fn restore_iptables(ns: &str, text: &str) -> Result<Duration> {
    run_with_stdin(
        ns,
        &["iptables-restore", "-w", "--noflush", "--counters"],
        text,
    )
}

/// Removes kube-proxy's iptables chains from a node that has no jumps to them yet.
pub fn clear_iptables(ns: &str) -> Result<()> {
    for table in ["nat", "filter"] {
        netns::exec(ns, &["iptables", "-w", "-t", table, "-F"])?;
        netns::exec(ns, &["iptables", "-w", "-t", table, "-X"])?;
    }
    Ok(())
}

/// kube-proxy's nftables mode: one `nft -f` transaction (timed).
pub fn load_nftables(ns: &str, services: &[ServicePort], cluster: &Cluster) -> Result<Duration> {
    run_with_stdin(
        ns,
        &["nft", "-f", "-"],
        &nftables::transaction(services, cluster),
    )
}

pub fn clear_nftables(ns: &str) -> Result<()> {
    netns::exec(ns, &["nft", "delete", "table", "ip", "kube-proxy"]).map(|_| ())
}
