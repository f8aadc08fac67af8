//! `cargo xtask bench`: netdp next to what users run today (kube-proxy's iptables and
//! nftables modes, Flannel's kernel routing and VXLAN, the bare underlay), on the same
//! machine and in the same run, reported as medians, spreads and ratios.
//!
//! One module per comparison: `services`, `pod_to_pod`, `per_packet`, `control_plane`.
mod control_plane;
mod kube_api;
mod kube_proxy;
mod lease_churn;
mod load;
mod netdp_services;
mod netfilter;
mod packet_rate;
mod per_packet;
mod plot;
mod pod_to_pod;
mod report;
mod runner;
mod services;

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};

use crate::{build, setup};
use report::{Header, Outcome, Pick, Row, Section};
use runner::Plan;

#[derive(clap::Args)]
pub struct Args {
    /// Smaller sizes and fewer, shorter samples: a few minutes instead of up to 20.
    #[arg(long)]
    quick: bool,
    /// Directory for results.md and the plots.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Only the comparisons whose name contains this: services, pod-to-pod, per-packet,
    /// control-plane, kube-api (control-plane includes it).
    #[arg(long)]
    only: Option<String>,
    /// Also put this run's headline rows and plots into README.md's Performance section.
    #[arg(long)]
    readme: bool,
}

/// Sizes and durations of one run.
struct Sizes {
    plan: Plan,
    service_counts: Vec<usize>,
    peers: usize,
    /// How long one ruleset load may take before it is stopped.
    load_budget: Duration,
    packets: u64,
    /// Packets per sample of the paths that run once per call (encapsulation,
    /// decapsulation): a system call each.
    single_runs: u64,
    cp_repeats: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                plan: Plan {
                    repeats: 3,
                    sample: Duration::from_millis(1000),
                },
                service_counts: vec![10, 1_000],
                peers: 1_000,
                load_budget: Duration::from_secs(60),
                packets: 1_000_000,
                single_runs: 100_000,
                cp_repeats: 3,
            }
        } else {
            Sizes {
                plan: Plan {
                    repeats: 5,
                    sample: Duration::from_secs(2),
                },
                service_counts: vec![10, 1_000, 10_000, 100_000],
                peers: 1_000,
                load_budget: Duration::from_secs(180),
                packets: 4_000_000,
                single_runs: 400_000,
                cp_repeats: 3,
            }
        }
    }
}

fn wanted(only: &Option<String>, name: &str) -> bool {
    only.as_ref().is_none_or(|o| name.contains(o.as_str()))
}

pub fn run(args: Args) -> Result<()> {
    if !setup::is_root() {
        bail!("the benchmarks build namespaced clusters and load BPF programs: run them as root");
    }
    let started = std::time::Instant::now();
    setup::ensure_runtime()?;
    let bins = build::binaries()?;
    plot::load_font()?;
    let sizes = Sizes::new(args.quick);
    let command = format!(
        "cargo xtask bench{}{}",
        if args.quick { " --quick" } else { "" },
        args.only
            .as_ref()
            .map(|o| format!(" --only {o}"))
            .unwrap_or_default()
    );
    let load_before = loadavg();

    let mut rows: Vec<Row> = Vec::new();
    if wanted(&args.only, "per-packet") {
        eprintln!("bench: per-packet program cost");
        rows.extend(per_packet::run(
            sizes.packets,
            sizes.single_runs,
            sizes.plan.repeats,
        ));
    }
    if wanted(&args.only, "packet-rate") {
        eprintln!("bench: packet rate through a node port (XDP, tc, iptables)");
        rows.extend(packet_rate::run(&[10, 10_000], sizes.plan.repeats));
    }
    if wanted(&args.only, "pod-to-pod") {
        eprintln!("bench: pod to pod");
        rows.extend(pod_to_pod::run(&bins, sizes.plan));
    }
    if wanted(&args.only, "services") {
        rows.extend(services::run(
            &bins,
            sizes.plan,
            &sizes.service_counts,
            sizes.load_budget,
        ));
    }
    if wanted(&args.only, "control-plane") {
        eprintln!("bench: control plane");
        rows.extend(control_plane::run(
            &bins,
            sizes.peers,
            &sizes.service_counts,
            sizes.cp_repeats,
            sizes.load_budget,
        ));
    }
    if wanted(&args.only, "control-plane lease-churn") {
        eprintln!("bench: control plane, 5,000 leases changing");
        rows.extend(lease_churn::run(&bins, 5_000, sizes.cp_repeats));
    }
    if wanted(&args.only, "control-plane kube-api") {
        eprintln!("bench: control plane, services from the Kubernetes API");
        rows.extend(kube_api::run(&bins, &sizes.service_counts));
    }
    // Control-plane rows group by service count, netdp's first (they come from two
    // comparisons: kube-proxy's loads are timed where its rules serve connections).
    rows.sort_by_key(|r| {
        let group = sizes
            .service_counts
            .iter()
            .position(|&n| r.case.ends_with(&format!(" {}", services::case(n))))
            .map_or(0, |i| i + 1);
        let theirs = r.section == Section::ControlPlane && !r.subject.starts_with("netdp");
        (
            r.section,
            if r.section == Section::ControlPlane {
                group
            } else {
                0
            },
            theirs,
        )
    });

    let samples = format!(
        "median of {} samples of {:?} each",
        sizes.plan.repeats, sizes.plan.sample
    );
    let header = Header {
        command: command.clone(),
        lines: machine(
            &load_before,
            &format!(
                "rates: {samples}; per-packet: {} samples of {} packets ({} for paths run once \
                 per call); control plane: {} samples",
                sizes.plan.repeats, sizes.packets, sizes.single_runs, sizes.cp_repeats
            ),
            started.elapsed(),
        ),
    };
    let mut plots = Vec::new();
    std::fs::create_dir_all(&args.out)?;
    if rows.iter().any(|r| r.section == Section::Services) {
        let no_service = rows
            .iter()
            .find(|r| r.subject == services::NO_SERVICE && r.metric == report::CONN_RATE)
            .and_then(Row::stats)
            .map(|s| (services::NO_SERVICE, s.median()));
        plot::services(
            &args.out.join("services.png"),
            &rows,
            &[services::NETDP, services::IPTABLES, services::NFTABLES],
            &sizes.service_counts,
            services::case,
            no_service,
            &samples,
        )?;
        plots.push((
            "services.png",
            "New TCP connections per second versus number of services",
        ));
    }
    if rows.iter().any(|r| r.section == Section::PodToPod) {
        let subjects = pod_to_pod::subjects();
        plot::bars(
            &args.out.join("pod_to_pod.png"),
            &format!("Pod to pod across nodes ({samples}; bars: median, lines: min-max)"),
            &rows,
            Section::PodToPod,
            &subjects,
            &[
                (
                    pod_to_pod::RR_CASE,
                    "request/response round trips per second (higher is better)",
                ),
                (pod_to_pod::STREAM_CASE, "Gbit/s (higher is better)"),
            ],
        )?;
        plots.push((
            "pod_to_pod.png",
            "Pod to pod across nodes: request/response rate and TCP stream throughput",
        ));
    }
    let text = report::markdown(&header, &rows, &plots);
    report::write(&args.out.join("results.md"), &text)?;
    println!("{text}");
    println!("bench: wrote {}", args.out.join("results.md").display());
    if args.readme {
        let dir = args
            .out
            .strip_prefix(build::workspace())
            .unwrap_or(&args.out);
        let dir = dir.display().to_string();
        readme(&report::headline(&header, &rows, HEADLINE, &plots, &dir))?;
    }
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Failed(why) => Some(format!(
                "{} / {} / {}: {why}",
                r.subject, r.case, r.metric.name
            )),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} measurements failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    setup::output(setup::cmd(cmd).args(args))
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// What the figures depend on: the machine, its load, the tools and the load generators.
fn machine(load_before: &str, samples: &str, took: Duration) -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let rev = first_line(
        "git",
        &[
            "-C",
            &build::workspace().display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    vec![
        (
            "CPU".into(),
            format!("{model}, {cores} cores, {mem} memory"),
        ),
        ("Kernel".into(), first_line("uname", &["-sr"])),
        (
            "Toolchain".into(),
            format!(
                "{}; {}",
                first_line("rustc", &["-V"]),
                first_line("rustc", &["+nightly", "-V"])
            ),
        ),
        ("netdp".into(), format!("commit {rev}, release build")),
        (
            "Tools".into(),
            format!(
                "{}; {}; {}",
                first_line("iptables", &["-V"]),
                first_line("nft", &["--version"]),
                first_line("etcd", &["--version"])
            ),
        ),
        ("Load generators".into(), load::DESCRIPTION.into()),
        ("Maps".into(), per_packet::MAPS_FILLED.into()),
        ("Samples".into(), samples.to_string()),
        (
            "Load average".into(),
            format!(
                "{load_before} at start, {} at end; run took {:.0?}",
                loadavg(),
                took
            ),
        ),
    ]
}

/// What README's Performance section shows of a run: per comparison with what clusters run
/// today, netdp's row for the question it answers, at the smallest and largest size.
const HEADLINE: &[Pick] = &[
    Pick {
        section: Section::Services,
        subject: services::NETDP,
        metric: report::CONN_RATE,
    },
    Pick {
        section: Section::PodToPod,
        subject: pod_to_pod::NETDP_HOST_GW,
        metric: report::RR_RATE,
    },
    Pick {
        section: Section::PodToPod,
        subject: pod_to_pod::NETDP_VXLAN,
        metric: report::RR_RATE,
    },
    Pick {
        section: Section::ControlPlane,
        // control_plane's NETDP_APPLY: service apply until every frontend is programmed.
        subject: "netdp (service apply -> all in FRONTENDS)",
        metric: report::SECONDS,
    },
];

/// Replaces README.md's Performance section body (between its markers) with `body`.
fn readme(body: &str) -> Result<()> {
    const BEGIN: &str = "<!-- bench:begin -->";
    const END: &str = "<!-- bench:end -->";
    let path = build::workspace().join("README.md");
    let text = std::fs::read_to_string(&path)?;
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        bail!("README.md has no {BEGIN} ... {END} markers");
    };
    let new = format!("{}{BEGIN}\n{}\n{}", &text[..b], body.trim(), &text[e..]);
    std::fs::write(&path, new)?;
    println!(
        "bench: updated the Performance section of {}",
        path.display()
    );
    Ok(())
}
