//! Loading kube-proxy's rulesets into a node's namespace the way kube-proxy does, timing the
//! load within a budget, and clearing them again.
//!
//! The iptables backend is explicit: kube-proxy's image picks legacy or nf_tables to match
//! the host, and the two load (and match) very differently at scale.
use std::{
    io::Write,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use netdp_testbed::netns;

use super::kube_proxy::{Cluster, ServicePort, iptables, nftables};

/// Which iptables kube-proxy drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptBackend {
    /// x_tables (`iptables-legacy`).
    Legacy,
    /// nf_tables through the xtables compatibility layer (`iptables-nft`, Debian's default).
    Nft,
}

impl IptBackend {
    fn tool(self, restore: bool) -> &'static str {
        match (self, restore) {
            (IptBackend::Legacy, false) => "iptables-legacy",
            (IptBackend::Legacy, true) => "iptables-legacy-restore",
            (IptBackend::Nft, false) => "iptables-nft",
            (IptBackend::Nft, true) => "iptables-nft-restore",
        }
    }
}

/// How a timed load ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    Done(Duration),
    /// Killed when the budget ran out.
    OverBudget(Duration),
}

/// Which sizes of one ruleset are still worth loading, as sizes grow: none after one ran
/// out of the budget, nor one bound to.
#[derive(Debug, Default)]
pub struct LoadSizes {
    over: bool,
    /// The slowest load at the last size loaded.
    last: Option<(usize, Duration)>,
}

impl LoadSizes {
    /// Why `n` services are not to be loaded, if they are not.
    pub fn skip(&mut self, n: usize, budget: Duration) -> Option<String> {
        if self.over {
            return Some("a smaller ruleset already ran out of the load budget".into());
        }
        let why = predicted_over(self.last, n, budget)?;
        self.over = true;
        Some(why)
    }

    /// Records how the loads of `n` services went.
    pub fn loaded(&mut self, n: usize, loads: &[Load]) {
        for l in loads {
            match *l {
                Load::Done(d) => {
                    if self.last.is_none_or(|(m, s)| m != n || d > s) {
                        self.last = Some((n, d));
                    }
                }
                Load::OverBudget(_) => self.over = true,
            }
        }
    }
}

/// Why a load of `n` services need not be tried: rule loads grow at least linearly with
/// the ruleset (kube-proxy's grow faster), so `prev` (the slowest load of `prev_n`
/// services) scaled up to `n` is a lower bound; `None` if that still fits the budget.
pub fn predicted_over(
    prev: Option<(usize, Duration)>,
    n: usize,
    budget: Duration,
) -> Option<String> {
    let (prev_n, took) = prev?;
    let at_least = took.as_secs_f64() * n as f64 / prev_n.max(1) as f64;
    (at_least > budget.as_secs_f64()).then(|| {
        format!(
            "would take at least {at_least:.0} s ({:.1} s for {prev_n} services, and loads \
             grow at least linearly), over the {} s budget",
            took.as_secs_f64(),
            budget.as_secs()
        )
    })
}

/// Runs `argv` in namespace `ns` with `input` on stdin, for at most `budget`.
fn run_with_stdin(ns: &str, argv: &[&str], input: &str, budget: Duration) -> Result<Load> {
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
    // Written from another thread: the tool may stop reading early (an error, or a kill).
    let text = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > budget {
            let _ = child.kill();
            let _ = child.wait();
            let _ = writer.join();
            return Ok(Load::OverBudget(budget));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "{} in {ns} failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Load::Done(took))
}

/// `iptables-restore --noflush --counters` of a full sync, as kube-proxy calls it.
pub fn restore_iptables(
    ns: &str,
    backend: IptBackend,
    text: &str,
    budget: Duration,
) -> Result<Load> {
    run_with_stdin(
        ns,
        &[backend.tool(true), "-w", "--noflush", "--counters"],
        text,
        budget,
    )
}

/// kube-proxy's iptables mode on a fresh node: the full-sync restore (timed), then the
/// jumps from the built-in chains.
pub fn load_iptables(
    ns: &str,
    backend: IptBackend,
    services: &[ServicePort],
    cluster: &Cluster,
    budget: Duration,
) -> Result<Load> {
    let load = restore_iptables(
        ns,
        backend,
        &iptables::restore_input(services, cluster),
        budget,
    )?;
    if let Load::Done(_) = load {
        for jump in iptables::jump_rules() {
            let mut argv = vec![backend.tool(false), "-w"];
            argv.extend(jump.iter().map(String::as_str));
            netns::exec(ns, &argv).context("inserting kube-proxy's jump rules")?;
        }
    }
    Ok(load)
}

/// Removes kube-proxy's iptables chains from a node that has no jumps to them yet.
pub fn clear_iptables(ns: &str, backend: IptBackend) -> Result<()> {
    for table in ["nat", "filter"] {
        netns::exec(ns, &[backend.tool(false), "-w", "-t", table, "-F"])?;
        netns::exec(ns, &[backend.tool(false), "-w", "-t", table, "-X"])?;
    }
    Ok(())
}

/// kube-proxy's nftables mode: one `nft -f` transaction (timed).
pub fn load_nftables(
    ns: &str,
    services: &[ServicePort],
    cluster: &Cluster,
    budget: Duration,
) -> Result<Load> {
    run_with_stdin(
        ns,
        &["nft", "-f", "-"],
        &nftables::transaction(services, cluster),
        budget,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_is_skipped_only_when_its_linear_lower_bound_exceeds_the_budget() {
        let budget = Duration::from_secs(180);
        let ten_k = Some((10_000, Duration::from_secs_f64(26.9)));
        let why = predicted_over(ten_k, 100_000, budget).expect("269 s > 180 s");
        assert!(why.contains("at least 269 s"), "{why}");
        assert_eq!(predicted_over(ten_k, 50_000, budget), None);
        assert_eq!(predicted_over(None, 100_000, budget), None);
    }

    #[test]
    fn sizes_stop_after_a_load_ran_out_or_is_bound_to() {
        let budget = Duration::from_secs(180);
        let mut s = LoadSizes::default();
        assert_eq!(s.skip(10_000, budget), None);
        s.loaded(
            10_000,
            &[
                Load::Done(Duration::from_secs(5)),
                Load::Done(Duration::from_secs(20)),
            ],
        );
        let why = s.skip(100_000, budget).expect("10 x 20 s > 180 s");
        assert!(why.contains("at least 200 s"), "{why}");
        assert!(s.skip(1_000_000, budget).is_some());

        let mut s = LoadSizes::default();
        s.loaded(10, &[Load::OverBudget(budget)]);
        assert!(s.skip(1_000, budget).unwrap().contains("ran out"));
    }
}
