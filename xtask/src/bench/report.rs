//! The results table: every figure with its median, spread and ratio to the row it is
//! compared with, under a description of the machine and the run.
//! (Over 500 lines: the results table, its ratios and the README headline are one format;
//! its unit tests are the last 160 lines.)
use std::{fmt::Write, path::Path};

use anyhow::{Context, Result};

use super::runner::Stats;

/// The four comparisons, in the order the table shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Services,
    PodToPod,
    PerPacket,
    ControlPlane,
    PacketRate,
}

impl Section {
    pub fn title(self) -> &'static str {
        match self {
            Section::Services => {
                "1. Service connection cost vs number of services (pod -> ClusterIP, across nodes)"
            }
            Section::PodToPod => "2. Pod to pod across nodes",
            Section::PerPacket => "3. Per-packet program cost (BPF_PROG_TEST_RUN)",
            Section::ControlPlane => "4. Control plane",
            Section::PacketRate => {
                "5. Packet rate through a node port to a remote endpoint (live-frames generator)"
            }
        }
    }
}

/// What a figure measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

pub const CONN_RATE: Metric = Metric {
    name: "new TCP connections/s",
    unit: "conn/s",
    higher_is_better: true,
};
pub const LATENCY_P50: Metric = Metric {
    name: "connect() to reply, p50",
    unit: "µs",
    higher_is_better: false,
};
pub const LATENCY_P99: Metric = Metric {
    name: "connect() to reply, p99",
    unit: "µs",
    higher_is_better: false,
};
pub const RR_RATE: Metric = Metric {
    name: "request/response/s",
    unit: "trans/s",
    higher_is_better: true,
};
pub const THROUGHPUT: Metric = Metric {
    name: "TCP stream",
    unit: "Gbit/s",
    higher_is_better: true,
};
pub const NS_PER_PACKET: Metric = Metric {
    name: "program run time",
    unit: "ns/packet",
    higher_is_better: false,
};
pub const SECONDS: Metric = Metric {
    name: "time",
    unit: "s",
    higher_is_better: false,
};
pub const MEBIBYTES: Metric = Metric {
    name: "resident memory",
    unit: "MiB",
    higher_is_better: false,
};

#[derive(Debug, Clone)]
pub enum Outcome {
    Measured(Stats),
    /// Not measured in this run; says why (a smaller size already ran out of budget...).
    Skipped(String),
    /// Did not finish within this many seconds and was stopped: a lower bound.
    OverBudget(f64),
    /// The measurement ran and failed; the run exits non-zero.
    Failed(String),
}

/// One figure of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub section: Section,
    /// Who: "netdp host-gw", "kube-proxy iptables", ...
    pub subject: String,
    /// Under which conditions: "1,000 services", "local delivery", ...
    pub case: String,
    pub metric: Metric,
    pub outcome: Outcome,
    /// Rows this one is compared with, most relevant first, as (subject, case); no case
    /// means this row's case. Each one measured with the same metric gets a ratio.
    pub compare_to: Vec<(String, Option<String>)>,
}

impl Row {
    pub fn new(
        section: Section,
        subject: &str,
        case: &str,
        metric: Metric,
        outcome: Outcome,
    ) -> Self {
        Row {
            section,
            subject: subject.into(),
            case: case.into(),
            metric,
            outcome,
            compare_to: Vec::new(),
        }
    }

    /// Compared with these subjects under the same case.
    pub fn compared_to(mut self, subjects: &[&str]) -> Self {
        self.compare_to = subjects.iter().map(|s| (s.to_string(), None)).collect();
        self
    }

    /// Compared with one row of another case (a floor, say).
    pub fn compared_to_case(mut self, subject: &str, case: &str) -> Self {
        self.compare_to = vec![(subject.to_string(), Some(case.to_string()))];
        self
    }

    pub fn stats(&self) -> Option<&Stats> {
        match &self.outcome {
            Outcome::Measured(s) => Some(s),
            _ => None,
        }
    }

    /// Measured or failed, from a result.
    pub fn from_result(
        section: Section,
        subject: &str,
        case: &str,
        metric: Metric,
        r: Result<Stats>,
    ) -> Self {
        let outcome = match r {
            Ok(s) => Outcome::Measured(s),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        };
        Row::new(section, subject, case, metric, outcome)
    }
}

/// `100000` -> `100,000`.
pub fn count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `12345.6` -> `12,346`; small values keep significant digits.
pub fn human(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        let out = count(a.round() as usize);
        if v < 0.0 { format!("-{out}") } else { out }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        // Three significant digits, however small (a sub-millisecond time in seconds).
        let digits = (2 - a.log10().floor() as i32).max(3) as usize;
        format!("{v:.digits$}")
    }
}

/// The ratio of `row` to the row it is compared with.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio<'a> {
    pub value: f64,
    pub to: &'a str,
    /// The compared row's case, when it is not this row's.
    pub to_case: Option<&'a str>,
    /// The compared row ran out of budget, so the true ratio is at least `value`.
    pub at_least: bool,
}

/// The ratios of `row` to each row it is compared with that was measured (or ran out of
/// budget), in `compare_to` order. `>1` means better than the comparison for every metric
/// (rates are divided, times inverted), so ratios read the same way across the table.
pub fn ratios<'a>(row: &Row, all: &'a [Row]) -> Vec<Ratio<'a>> {
    let Some(mine) = row.stats().map(Stats::median) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (subject, case) in &row.compare_to {
        let case = case.as_ref().unwrap_or(&row.case);
        let other = all.iter().find(|r| {
            &r.subject == subject
                && &r.case == case
                && r.metric == row.metric
                && matches!(r.outcome, Outcome::Measured(_) | Outcome::OverBudget(_))
        });
        let Some(o) = other else { continue };
        let (theirs, at_least) = match &o.outcome {
            Outcome::Measured(st) => (st.median(), false),
            // A bound only says something for times: the other took longer than this.
            Outcome::OverBudget(b) if !row.metric.higher_is_better => (*b, true),
            _ => continue,
        };
        if theirs == 0.0 || mine == 0.0 {
            continue;
        }
        let value = if row.metric.higher_is_better {
            mine / theirs
        } else {
            theirs / mine
        };
        out.push(Ratio {
            value,
            to: o.subject.as_str(),
            to_case: (o.case != row.case).then_some(o.case.as_str()),
            at_least,
        });
    }
    out
}

/// Facts about the machine and the run, shown above the table.
pub struct Header {
    pub command: String,
    pub lines: Vec<(String, String)>,
}

pub fn markdown(header: &Header, rows: &[Row], plots: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# netdp benchmarks\n");
    let _ = writeln!(out, "Reproduce with `{}` (as root).\n", header.command);
    for (k, v) in &header.lines {
        let _ = writeln!(out, "- **{k}:** {v}");
    }
    let _ = writeln!(
        out,
        "\nEvery figure is the median of its samples; spread is half the range of the samples \
         relative to the median. The ratio compares the median with the named row, measured in \
         the same run: above 1.00x is better than that row (more per second, or less time)."
    );
    let mut sections: Vec<Section> = rows.iter().map(|r| r.section).collect();
    sections.sort();
    sections.dedup();
    for s in sections {
        let _ = writeln!(out, "\n## {}\n", s.title());
        let _ = writeln!(out, "{TABLE_HEAD}");
        for r in rows.iter().filter(|r| r.section == s) {
            let _ = writeln!(out, "{}", table_row(r, rows));
        }
    }
    if !plots.is_empty() {
        let _ = writeln!(out);
        for (file, alt) in plots {
            let _ = writeln!(out, "![{alt}]({file})\n");
        }
    }
    out
}

const TABLE_HEAD: &str =
    "| subject | case | metric | median | spread | n | ratio |\n|---|---|---|---:|---:|---:|---|";

/// One row of a table; `rows` are the ones its ratios are taken against.
fn table_row(r: &Row, rows: &[Row]) -> String {
    let metric = format!("{} ({})", r.metric.name, r.metric.unit);
    let (median, spread, n, ratio_cell) = match &r.outcome {
        Outcome::Measured(st) => (
            human(st.median()),
            format!("±{:.1}%", st.spread_pct()),
            st.samples.len().to_string(),
            ratio_cell(r, rows),
        ),
        Outcome::Skipped(why) => (
            "–".into(),
            String::new(),
            String::new(),
            format!("not measured: {why}"),
        ),
        Outcome::OverBudget(b) => (
            format!("> {}", human(*b)),
            String::new(),
            "1".into(),
            format!("stopped after {} {}", human(*b), r.metric.unit),
        ),
        Outcome::Failed(why) => ("FAILED".into(), String::new(), String::new(), one_line(why)),
    };
    format!(
        "| {} | {} | {metric} | {median} | {spread} | {n} | {ratio_cell} |",
        r.subject, r.case
    )
}

/// A headline figure: `subject`'s rows with `metric` in `section`.
pub struct Pick {
    pub section: Section,
    pub subject: &'static str,
    pub metric: Metric,
}

/// The rows of each pick that were measured, first and last case only (the smallest and
/// largest size; one row when there is one case), in pick order.
pub fn headline_rows<'a>(rows: &'a [Row], picks: &[Pick]) -> Vec<&'a Row> {
    let mut out = Vec::new();
    for p in picks {
        let mut measured = rows.iter().filter(|r| {
            r.section == p.section
                && r.subject == p.subject
                && r.metric == p.metric
                && r.stats().is_some()
        });
        let first = measured.next();
        let last = measured.next_back();
        out.extend(first.into_iter().chain(last));
    }
    out
}

/// README's Performance section: where it was measured, the headline rows with their
/// ratios (taken against every row), and the plots, linked from `dir` (the results
/// directory, relative to README), with a link to the full table there.
pub fn headline(
    header: &Header,
    rows: &[Row],
    picks: &[Pick],
    plots: &[(&str, &str)],
    dir: &str,
) -> String {
    let mut out = String::new();
    let machine: Vec<String> = header
        .lines
        .iter()
        .filter(|(k, _)| ["CPU", "Kernel", "netdp"].contains(&k.as_str()))
        .map(|(k, v)| {
            if k == "netdp" {
                format!("netdp {v}")
            } else {
                v.clone()
            }
        })
        .collect();
    let _ = writeln!(
        out,
        "Reproduce with `{}` (as root). Measured on {}. Medians of one run; a ratio above \
         1.00x is better than the row named (more per second, or less time). Every row, its \
         spread, the tools and the machine's load: [{dir}/results.md]({dir}/results.md).\n",
        header.command,
        machine.join("; ")
    );
    let _ = writeln!(out, "{TABLE_HEAD}");
    for r in headline_rows(rows, picks) {
        let _ = writeln!(out, "{}", table_row(r, rows));
    }
    for (file, alt) in plots {
        let _ = writeln!(out, "\n![{alt}]({dir}/{file})");
    }
    out
}

/// Every ratio of a measured row, or whether it is what others are compared with.
fn ratio_cell(r: &Row, rows: &[Row]) -> String {
    let all = ratios(r, rows);
    if all.is_empty() {
        return if is_reference(r, rows) {
            "reference".into()
        } else {
            "–".into()
        };
    }
    all.iter()
        .map(|q| {
            let bound = if q.at_least { "> " } else { "" };
            let case = q.to_case.map(|c| format!(" ({c})")).unwrap_or_default();
            format!("{bound}{:.2}x vs {}{case}", q.value, q.to)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether another row of the section is compared with this one.
fn is_reference(row: &Row, all: &[Row]) -> bool {
    all.iter().any(|r| {
        r.section == row.section
            && r.compare_to.iter().any(|(subject, case)| {
                *subject == row.subject && case.as_ref().unwrap_or(&r.case) == &row.case
            })
    })
}

fn one_line(s: &str) -> String {
    let s = s.replace(['\n', '|'], " ");
    match s.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s,
    }
}

pub fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(subject: &str, case: &str, metric: Metric, v: &[f64]) -> Row {
        Row::new(
            Section::Services,
            subject,
            case,
            metric,
            Outcome::Measured(Stats::new(v.to_vec()).unwrap()),
        )
    }

    #[test]
    fn ratios_read_higher_is_better_for_rates_and_times() {
        let rows = vec![
            measured("iptables", "10", CONN_RATE, &[100.0, 100.0]),
            measured("netdp", "10", CONN_RATE, &[150.0]).compared_to(&["iptables"]),
            measured("iptables", "10", SECONDS, &[2.0]),
            measured("netdp", "10", SECONDS, &[0.5]).compared_to(&["missing", "iptables"]),
            measured("netdp", "1000", CONN_RATE, &[1.0]).compared_to(&["iptables"]),
            measured("netdp", "other", CONN_RATE, &[50.0]).compared_to_case("iptables", "10"),
            Row::new(
                Section::Services,
                "slow",
                "big",
                SECONDS,
                Outcome::OverBudget(120.0),
            ),
            measured("fast", "big", SECONDS, &[2.0]).compared_to(&["slow"]),
            measured("netdp", "10", RR_RATE, &[150.0]).compared_to(&["iptables", "nftables"]),
            measured("iptables", "10", RR_RATE, &[100.0]),
            measured("nftables", "10", RR_RATE, &[50.0]),
        ];
        let r = |i: usize| {
            ratios(&rows[i], &rows)
                .into_iter()
                .map(|r| (r.value, r.to, r.at_least))
                .collect::<Vec<_>>()
        };
        assert_eq!(r(1), vec![(1.5, "iptables", false)]);
        assert_eq!(r(3), vec![(4.0, "iptables", false)]);
        // No row with the same case: no ratio.
        assert_eq!(r(4), vec![]);
        assert_eq!(r(5), vec![(0.5, "iptables", false)]);
        assert_eq!(r(7), vec![(60.0, "slow", true)]);
        assert_eq!(
            r(8),
            vec![(1.5, "iptables", false), (3.0, "nftables", false)],
            "one ratio per compared row, in order"
        );
        let md = markdown(
            &Header {
                command: "cargo xtask bench".into(),
                lines: vec![],
            },
            &rows,
            &[],
        );
        assert!(md.contains("| netdp | 10 | new TCP connections/s (conn/s) | 150 | ±0.0% | 1 | 1.50x vs iptables |"), "{md}");
        assert!(md.contains(
            "| iptables | 10 | new TCP connections/s (conn/s) | 100 | ±0.0% | 2 | reference |"
        ));
        assert!(
            md.contains("| 1.50x vs iptables; 3.00x vs nftables |"),
            "{md}"
        );
        // A row of another case is named with its case.
        assert!(md.contains("| 0.50x vs iptables (10) |"), "{md}");
    }

    #[test]
    fn headline_is_each_picks_smallest_and_largest_measured_case() {
        let rows = vec![
            measured("iptables", "10", CONN_RATE, &[100.0]),
            measured("netdp", "10", CONN_RATE, &[150.0]).compared_to(&["iptables"]),
            measured("netdp", "10", RR_RATE, &[1.0]),
            measured("netdp", "1,000", CONN_RATE, &[140.0]).compared_to(&["iptables"]),
            measured("iptables", "10,000", CONN_RATE, &[10.0]),
            measured("netdp", "10,000", CONN_RATE, &[130.0]).compared_to(&["iptables"]),
            Row::new(
                Section::Services,
                "netdp",
                "100,000",
                CONN_RATE,
                Outcome::Skipped("budget".into()),
            ),
            Row {
                section: Section::PodToPod,
                ..measured("netdp vxlan", "rr", RR_RATE, &[5.0])
            },
        ];
        let picks = [
            Pick {
                section: Section::Services,
                subject: "netdp",
                metric: CONN_RATE,
            },
            Pick {
                section: Section::PodToPod,
                subject: "netdp vxlan",
                metric: RR_RATE,
            },
            Pick {
                section: Section::ControlPlane,
                subject: "netdp",
                metric: SECONDS,
            },
        ];
        let picked: Vec<(&str, &str)> = headline_rows(&rows, &picks)
            .iter()
            .map(|r| (r.subject.as_str(), r.case.as_str()))
            .collect();
        // Not the middle size, not the unmeasured largest one; one row for one case; none
        // for a section that did not run.
        assert_eq!(
            picked,
            vec![("netdp", "10"), ("netdp", "10,000"), ("netdp vxlan", "rr")]
        );
        let md = headline(
            &Header {
                command: "cargo xtask bench".into(),
                lines: vec![
                    ("CPU".into(), "a CPU".into()),
                    ("Tools".into(), "many".into()),
                    ("netdp".into(), "commit abc".into()),
                ],
            },
            &rows,
            &picks,
            &[("services.png", "Services")],
            "bench/results",
        );
        assert!(md.contains("Measured on a CPU; netdp commit abc."), "{md}");
        assert!(
            md.contains("[bench/results/results.md](bench/results/results.md)"),
            "{md}"
        );
        // Ratios are taken against every row, not only the headline's.
        assert!(md.contains("| netdp | 10,000 | new TCP connections/s (conn/s) | 130 | ±0.0% | 1 | 13.00x vs iptables |"), "{md}");
        assert!(!md.contains("| 1,000 |"), "{md}");
        assert!(
            md.contains("![Services](bench/results/services.png)"),
            "{md}"
        );
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(1234567.8), "1,234,568");
        assert_eq!(human(999.4), "999");
        assert_eq!(human(0.5), "0.500");
        assert_eq!(human(0.000_123_4), "0.000123");
        assert_eq!(human(12.345), "12.3");
        assert_eq!(human(0.01234), "0.0123");
        assert_eq!(human(0.0), "0");
        assert_eq!(count(10), "10");
        assert_eq!(count(100_000), "100,000");
    }
}
