//! The control plane at Kubernetes' documented limit: 5,000 nodes' leases in the real
//! etcd, written by a simulated lease writer (one thread in the testbed's control
//! namespace, through etcd's JSON gateway), and one real agent measured while leases
//! change at a steady rate (a node's address changing, which rewrites its route).
//!
//! Each change is timed from the moment its write is sent to etcd until the agent's pinned
//! ROUTES map has the new address for that subnet (the map polled every half
//! millisecond). Over the churn, the agent's and etcd's CPU (user and system time from
//! /proc, as a share of one core) and the agent's resident memory at the end.
use std::{
    net::Ipv4Addr,
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::maps::lpm_trie::{Key, LpmTrie};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use netdp_common::{Ipv4, map_names, route::Route};
use netdp_testbed::{Binaries, Spec, Testbed, netns, testbed::open_pinned_map};

use super::{
    control_plane::{CONFIG, etcd_txn, peer_key, put_peers, rss_mib},
    report::{MEBIBYTES, Metric, Row, SECONDS, Section},
    runner::Stats,
};

const AGENT: &str = "netdp agent";
/// Changes per second, and how long they go on per sample.
const RATE: u32 = 50;
const CHURN: Duration = Duration::from_secs(20);
/// How long one change may take to reach the map before the sample fails.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

const LATENCY_P50: Metric = Metric {
    name: "lease change -> ROUTES, p50",
    unit: "ms",
    higher_is_better: false,
};
const LATENCY_P99: Metric = Metric {
    name: "lease change -> ROUTES, p99",
    unit: "ms",
    higher_is_better: false,
};
const CPU: Metric = Metric {
    name: "CPU",
    unit: "% of a core",
    higher_is_better: false,
};

/// Lease `i`'s PublicIP in generation `g` (0: as first written): distinct across leases
/// within and across neighbouring generations, as lease validation wants one PublicIP each.
fn public_ip(i: usize, g: usize) -> Ipv4Addr {
    let base = if g == 0 {
        u32::from(Ipv4Addr::new(172, 31, 0, 1))
    } else {
        u32::from(Ipv4Addr::new(172, 16, 0, 1)) + ((g as u32 % 15) << 16)
    };
    Ipv4Addr::from(base + i as u32)
}

fn lease_value(ip: Ipv4Addr) -> String {
    format!(r#"{{"PublicIP":"{ip}","BackendType":"host-gw"}}"#)
}

/// Lease `i`'s subnet (as `control_plane::peer_key` names it).
fn subnet(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + ((i as u32) << 8))
}

/// CPU time (user + system) of process `pid` so far.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(") ")
        .context("malformed /proc/<pid>/stat")?
        .1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> { Ok(f.get(i).context("short stat")?.parse()?) };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
    // SAFETY: no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 1000 / hz))
}

/// One sample: `RATE` changes a second for `CHURN`, each timed until the map has it.
struct Sample {
    latencies_ms: Vec<f64>,
    agent_cpu: f64,
    etcd_cpu: f64,
}

fn churn(tb: &Testbed, pin: &Path, leases: usize, generation: &mut usize) -> Result<Sample> {
    let (ctl, etcd, prefix) = (
        tb.ctl_ns.clone(),
        tb.etcd().client_addr(),
        tb.prefix.clone(),
    );
    let agent = tb.node("n1").agent_pid().context("the agent is gone")?;
    let etcd_pid = tb.etcd().pid().context("etcd is gone")?;
    let total = (RATE as u64 * CHURN.as_secs()) as usize;
    let first = *generation * leases;
    *generation += total.div_ceil(leases);
    let (tx, rx) = mpsc::channel::<(Ipv4Addr, Ipv4Addr, Instant)>();
    let (agent0, etcd0, t0) = (cpu_time(agent)?, cpu_time(etcd_pid)?, Instant::now());
    let writer = netns::in_netns(&ctl, move || {
        let period = Duration::from_secs(1) / RATE;
        let start = Instant::now();
        for k in 0..total {
            let due = start + period * k as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let n = first + k;
            let (i, g) = (n % leases, n / leases + 1);
            let ip = public_ip(i, g);
            let op = format!(
                r#"{{"requestPut":{{"key":"{}","value":"{}"}}}}"#,
                B64.encode(peer_key(&prefix, i)),
                B64.encode(lease_value(ip))
            );
            let sent = Instant::now();
            etcd_txn(etcd, &[op])?;
            if tx.send((subnet(i), ip, sent)).is_err() {
                bail!("the observer stopped");
            }
        }
        Ok(())
    })?;
    let trie: LpmTrie<_, Ipv4, Route> = LpmTrie::try_from(open_pinned_map(pin)?)?;
    let mut pending: Vec<(Ipv4Addr, Ipv4Addr, Instant)> = Vec::new();
    let mut latencies_ms = Vec::with_capacity(total);
    while latencies_ms.len() < total {
        pending.extend(rx.try_iter());
        let now = Instant::now();
        let mut i = 0;
        while i < pending.len() {
            let (net, ip, sent) = pending[i];
            let route = trie.get(&Key::new(24, net.octets()), 0).ok();
            if route.is_some_and(|r| r.node_ip == ip.octets()) {
                latencies_ms.push(now.duration_since(sent).as_secs_f64() * 1e3);
                pending.swap_remove(i);
            } else if now.duration_since(sent) > CHANGE_TIMEOUT {
                bail!("{net}'s route did not get {ip} within {CHANGE_TIMEOUT:?}");
            } else {
                i += 1;
            }
        }
        if pending.is_empty() && writer.is_finished() && rx.try_recv().is_err() {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    netns::join(writer)?;
    if latencies_ms.len() < total {
        bail!("{} of {total} changes reached ROUTES", latencies_ms.len());
    }
    let wall = t0.elapsed().as_secs_f64();
    let share = |d: Duration| d.as_secs_f64() / wall * 100.0;
    Ok(Sample {
        latencies_ms,
        agent_cpu: share(cpu_time(agent)? - agent0),
        etcd_cpu: share(cpu_time(etcd_pid)? - etcd0),
    })
}

/// The `q` quantile of `v` (sorted here).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// `leases` leases written, then `repeats` samples of churn.
pub fn run(bins: &Binaries, leases: usize, repeats: usize) -> Vec<Row> {
    let n = super::report::count(leases);
    let case = format!("{n} peer leases, {RATE} lease changes/s");
    let result = (|| -> Result<[Stats; 6]> {
        let mut tb = Testbed::new(Spec::flat(1).network(CONFIG).binaries(bins.clone()))?;
        tb.start_agent("n1", &[])?;
        let pin = tb.node("n1").map_pin(map_names::ROUTES);
        let (ctl, etcd, prefix) = (
            tb.ctl_ns.clone(),
            tb.etcd().client_addr(),
            tb.prefix.clone(),
        );
        let t0 = Instant::now();
        put_peers(&ctl, etcd, &prefix, leases)?;
        let trie: LpmTrie<_, Ipv4, Route> = LpmTrie::try_from(open_pinned_map(&pin)?)?;
        while trie.keys().filter(|k| k.is_ok()).count() < leases {
            if t0.elapsed() > Duration::from_secs(180) {
                bail!("ROUTES did not reach {leases} routes in 180 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let converge = t0.elapsed().as_secs_f64();
        let mut generation = 0;
        let (mut p50, mut p99, mut agent_cpu, mut etcd_cpu) = (vec![], vec![], vec![], vec![]);
        for _ in 0..repeats {
            let mut s = churn(&tb, &pin, leases, &mut generation)?;
            p50.push(quantile(&mut s.latencies_ms, 0.5));
            p99.push(quantile(&mut s.latencies_ms, 0.99));
            agent_cpu.push(s.agent_cpu);
            etcd_cpu.push(s.etcd_cpu);
        }
        let pid = tb.node("n1").agent_pid().context("the agent is gone")?;
        let rss = rss_mib(pid)?;
        if !tb.node("n1").agent_running() {
            bail!("the agent exited: {}", tb.agent_logs(20));
        }
        Ok([
            Stats::new(vec![converge])?,
            Stats::new(p50)?,
            Stats::new(p99)?,
            Stats::new(agent_cpu)?,
            Stats::new(etcd_cpu)?,
            Stats::new(vec![rss])?,
        ])
    })();
    let rows = [
        (
            AGENT,
            format!("{n} peer leases appear in etcd -> all in ROUTES"),
            SECONDS,
        ),
        (AGENT, case.clone(), LATENCY_P50),
        (AGENT, case.clone(), LATENCY_P99),
        (AGENT, case.clone(), CPU),
        (
            "etcd (serving the writes and the agent's watch)",
            case.clone(),
            CPU,
        ),
        (AGENT, format!("after {case}"), MEBIBYTES),
    ];
    match result {
        Ok(stats) => rows
            .into_iter()
            .zip(stats)
            .map(|((subject, case, metric), s)| {
                Row::from_result(Section::ControlPlane, subject, &case, metric, Ok(s))
            })
            .collect(),
        Err(e) => rows
            .into_iter()
            .map(|(subject, case, metric)| {
                Row::from_result(
                    Section::ControlPlane,
                    subject,
                    &case,
                    metric,
                    Err(super::runner::same_error(&e)),
                )
            })
            .collect(),
    }
}
