//! Control plane: how fast peer leases reach one agent's map, what the agent holds in
//! memory, and how long programming N services takes next to kube-proxy's rule loads.
//!
//! netdp's figure is end to end (the CLI validating and writing the services to etcd,
//! the agent's watch, planning and map writes) and the agent's own part of it; kube-proxy's
//! are only the kernel's load of a ruleset kube-proxy has already computed.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::maps::LpmTrie;
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use netdp_common::{Ipv4, map_names, route::Route};
use netdp_testbed::{
    Binaries, Spec, Testbed, flannel::network_config, netns, testbed::open_pinned_map,
};

use super::{
    kube_proxy::{self, ServicePort},
    netdp_services,
    netfilter::{self, IptBackend, Load, LoadSizes},
    report::{MEBIBYTES, Outcome, Row, SECONDS, Section},
    runner::Stats,
    services::{IPTABLES_LOAD, NFTABLES_LOAD, case, load_case},
};

const IPT_NFT_LOAD: &str = "kube-proxy iptables (iptables-nft-restore, host default)";

const AGENT: &str = "netdp agent";
const NETDP_APPLY: &str = "netdp (service apply -> all in FRONTENDS)";
const NETDP_AGENT: &str = "netdp agent (its own programming time)";

/// The agent leases from 10.200.0.0/16; peers come from 10.100.0.0/14, so one key range
/// holds exactly the peers.
pub(super) const CONFIG: &str = r#"{"Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": "10.200.0.0", "SubnetMax": "10.200.255.0", "Backend": {"Type": "host-gw"}}"#;
/// etcd refuses transactions of more than 128 operations by default.
const TXN_OPS: usize = 100;
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);

/// etcd's JSON gateway (`/v3/...`), over one HTTP/1.1 request per call.
fn etcd_post(addr: (Ipv4Addr, u16), path: &str, body: &str) -> Result<String> {
    let mut c = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        addr.0,
        addr.1,
        body.len()
    )?;
    let mut resp = String::new();
    c.read_to_string(&mut resp)?;
    let status = resp.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        bail!(
            "etcd {path}: {}",
            resp.lines().next().unwrap_or("no answer")
        );
    }
    Ok(resp)
}

/// One etcd transaction of `ops` (JSON request ops), all of which must succeed.
pub(super) fn etcd_txn(etcd: (Ipv4Addr, u16), ops: &[String]) -> Result<()> {
    let body = format!(r#"{{"success":[{}]}}"#, ops.join(","));
    etcd_post(etcd, "/v3/kv/txn", &body).map(|_| ())
}

pub(super) fn peer_key(prefix: &str, i: usize) -> String {
    let net = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + ((i as u32) << 8));
    format!("{prefix}/subnets/{net}-24")
}

fn peer_value(i: usize) -> String {
    // Distinct public addresses off the node's underlay subnet.
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 31, 0, 1)) + i as u32);
    format!(r#"{{"PublicIP":"{ip}","BackendType":"host-gw"}}"#)
}

/// Puts `n` peer leases in transactions of TXN_OPS; returns how long the writes took.
pub(super) fn put_peers(
    ctl_ns: &str,
    etcd: (Ipv4Addr, u16),
    prefix: &str,
    n: usize,
) -> Result<Duration> {
    let prefix = prefix.to_string();
    netns::join(netns::in_netns(ctl_ns, move || {
        let start = Instant::now();
        let mut i = 0;
        while i < n {
            let ops: Vec<String> = (i..(i + TXN_OPS).min(n))
                .map(|k| {
                    format!(
                        r#"{{"requestPut":{{"key":"{}","value":"{}"}}}}"#,
                        B64.encode(peer_key(&prefix, k)),
                        B64.encode(peer_value(k))
                    )
                })
                .collect();
            etcd_txn(etcd, &ops)?;
            i += TXN_OPS;
        }
        Ok(start.elapsed())
    })?)
}

fn delete_peers(ctl_ns: &str, etcd: (Ipv4Addr, u16), prefix: &str) -> Result<()> {
    // Every peer key starts with <prefix>/subnets/10.10 and none of the agent's does.
    let (from, to) = (
        format!("{prefix}/subnets/10.10"),
        format!("{prefix}/subnets/10.11"),
    );
    let body = format!(
        r#"{{"key":"{}","range_end":"{}"}}"#,
        B64.encode(from),
        B64.encode(to)
    );
    netns::join(netns::in_netns(ctl_ns, move || {
        etcd_post(etcd, "/v3/kv/deleterange", &body).map(|_| ())
    })?)
}

/// Entries in a node's pinned ROUTES map.
fn routes_in_map(pin: &Path) -> Result<usize> {
    let trie: LpmTrie<_, Ipv4, Route> = LpmTrie::try_from(open_pinned_map(pin)?)?;
    Ok(trie.keys().filter(|k| k.is_ok()).count())
}

fn wait_for_routes(pin: &Path, want: usize, since: Instant) -> Result<Duration> {
    loop {
        let have = routes_in_map(pin)?;
        if have == want {
            return Ok(since.elapsed());
        }
        if since.elapsed() > CONVERGE_TIMEOUT {
            bail!(
                "ROUTES holds {have:?} routes, not {want}, {CONVERGE_TIMEOUT:?} after the change"
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    Ok(kb / 1024.0)
}

/// Leases appearing and disappearing in etcd, until the agent's map agrees.
fn leases(bins: &Binaries, peers: usize, repeats: usize) -> Vec<Row> {
    let appear = format!(
        "{} peer leases appear in etcd -> all in ROUTES",
        super::report::count(peers)
    );
    let vanish = format!(
        "{} peer leases deleted -> all gone from ROUTES",
        super::report::count(peers)
    );
    let writes = format!(
        "writing {} leases to etcd ({TXN_OPS} per transaction)",
        super::report::count(peers)
    );
    let rss_case = format!("after {} peer leases", super::report::count(peers));
    let result = (|| -> Result<(Stats, Stats, Stats, Stats)> {
        let mut tb = Testbed::new(Spec::flat(1).network(CONFIG).binaries(bins.clone()))?;
        tb.start_agent("n1", &[])?;
        let pin = tb.node("n1").map_pin(map_names::ROUTES);
        let etcd = tb.etcd().client_addr();
        let (ctl, prefix) = (tb.ctl_ns.clone(), tb.prefix.clone());
        let (mut up, mut down, mut write, mut rss) = (vec![], vec![], vec![], vec![]);
        for _ in 0..repeats {
            wait_for_routes(&pin, 0, Instant::now())?;
            let t0 = Instant::now();
            write.push(put_peers(&ctl, etcd, &prefix, peers)?.as_secs_f64());
            up.push(wait_for_routes(&pin, peers, t0)?.as_secs_f64());
            let pid = tb.node("n1").agent_pid().context("the agent is gone")?;
            rss.push(rss_mib(pid)?);
            let t1 = Instant::now();
            delete_peers(&ctl, etcd, &prefix)?;
            down.push(wait_for_routes(&pin, 0, t1)?.as_secs_f64());
        }
        if !tb.node("n1").agent_running() {
            bail!("the agent exited: {}", tb.agent_logs(20));
        }
        Ok((
            Stats::new(up)?,
            Stats::new(down)?,
            Stats::new(write)?,
            Stats::new(rss)?,
        ))
    })();
    let (up, down, write, rss) = match result {
        Ok((a, b, c, d)) => (Ok(a), Ok(b), Ok(c), Ok(d)),
        Err(e) => {
            let f = || Err(super::runner::same_error(&e));
            (f(), f(), f(), f())
        }
    };
    vec![
        Row::from_result(Section::ControlPlane, AGENT, &appear, SECONDS, up),
        Row::from_result(Section::ControlPlane, AGENT, &vanish, SECONDS, down),
        Row::from_result(
            Section::ControlPlane,
            "etcd (for scale)",
            &writes,
            SECONDS,
            write,
        ),
        Row::from_result(Section::ControlPlane, AGENT, &rss_case, MEBIBYTES, rss),
    ]
}

/// Deletes the benchmark's services from etcd, TXN_OPS per transaction (batched like
/// `netdp service apply`'s writes), so no single revision carries more than a batch of changes.
fn delete_services(ctl_ns: &str, etcd: (Ipv4Addr, u16), services: &[ServicePort]) -> Result<()> {
    let keys: Vec<String> = services
        .iter()
        .map(|s| format!("{}{}/{}", netdp_services::PREFIX, s.namespace, s.name))
        .collect();
    netns::join(netns::in_netns(ctl_ns, move || {
        for chunk in keys.chunks(TXN_OPS) {
            let ops: Vec<String> = chunk
                .iter()
                .map(|k| format!(r#"{{"requestDeleteRange":{{"key":"{}"}}}}"#, B64.encode(k)))
                .collect();
            etcd_txn(etcd, &ops)?;
        }
        Ok(())
    })?)
}

/// netdp programming N services into one node's maps, `repeats` times per size: from the
/// start of `netdp service apply` until every frontend is in FRONTENDS, and the agent's own
/// time for it; then the services are deleted again. The agent's resident memory is taken
/// with the largest size programmed.
fn netdp_programming(bins: &Binaries, counts: &[usize], repeats: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let compare = [IPTABLES_LOAD, IPT_NFT_LOAD, NFTABLES_LOAD];
    let result = (|| -> Result<()> {
        let mut tb = Testbed::new(
            Spec::flat(1)
                .network(&network_config("host-gw"))
                .binaries(bins.clone()),
        )?;
        tb.start_agent("n1", netdp_services::AGENT_FLAGS)?;
        let (ctl, etcd) = (tb.ctl_ns.clone(), tb.etcd().client_addr());
        let real: Vec<_> = (2..5)
            .map(|h| (Ipv4Addr::new(10, 244, 200, h), 8080))
            .collect();
        for (i, &n) in counts.iter().enumerate() {
            eprintln!("bench: control plane: netdp programming {}", case(n));
            let services = kube_proxy::bench_services(n, &real);
            let json = netdp_services::to_json(&services, &[]);
            let (mut wall, mut agent, mut rss) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..repeats {
                let p =
                    netdp_services::apply(&tb, &json, &["n1"], n, netdp_services::PROGRAM_TIMEOUT)?;
                wall.push(p.wall.as_secs_f64());
                agent.push(p.agent[0].as_secs_f64());
                let pid = tb.node("n1").agent_pid().context("the agent is gone")?;
                rss.push(rss_mib(pid)?);
                let marks = netdp_services::log_marks(&tb, &["n1"]);
                let t0 = Instant::now();
                delete_services(&ctl, etcd, &services)?;
                let gone = netdp_services::wait_programmed(
                    &tb,
                    &["n1"],
                    &marks,
                    0,
                    t0,
                    netdp_services::PROGRAM_TIMEOUT,
                )?;
                eprintln!(
                    "bench:   programmed in {:.1?} (agent {:.1?}); deleted in {:.1?}",
                    p.wall, p.agent[0], gone.wall
                );
            }
            for (subject, samples) in [(NETDP_APPLY, wall), (NETDP_AGENT, agent)] {
                rows.push(
                    Row::from_result(
                        Section::ControlPlane,
                        subject,
                        &load_case(n),
                        SECONDS,
                        Stats::new(samples),
                    )
                    .compared_to(&compare),
                );
            }
            if i + 1 == counts.len() {
                rows.push(Row::from_result(
                    Section::ControlPlane,
                    AGENT,
                    &format!("resident memory with {}", case(n)),
                    MEBIBYTES,
                    Stats::new(rss),
                ));
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        rows.push(Row::new(
            Section::ControlPlane,
            NETDP_APPLY,
            "programming services",
            SECONDS,
            Outcome::Failed(format!("{e:#}")),
        ));
    }
    rows
}

/// iptables-restore with the nf_tables backend (this host's default `iptables`) loading
/// kube-proxy's ruleset on a bare node, next to the legacy iptables and nftables loads the
/// services comparison times on its nodes; stops at the first size that runs out of budget
/// or is bound to. No connection depends on these rules, so a sixth of the load budget is
/// enough to show where it stands (a lower bound past that).
fn iptables_nft_loads(
    bins: &Binaries,
    counts: &[usize],
    repeats: usize,
    budget: Duration,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let tb = match Testbed::new(Spec::flat(1).binaries(bins.clone())) {
        Ok(tb) => tb,
        Err(e) => {
            rows.push(Row::new(
                Section::ControlPlane,
                IPT_NFT_LOAD,
                "all sizes",
                SECONDS,
                Outcome::Failed(format!("{e:#}")),
            ));
            return rows;
        }
    };
    let ns = tb.node("n1").ns.clone();
    let real: Vec<_> = (2..5)
        .map(|h| (Ipv4Addr::new(10, 244, 2, h), 8080))
        .collect();
    let cfg = kube_proxy::bench_cluster(tb.node("n1").ip);
    let budget = budget / 6;
    let mut sizes = LoadSizes::default();
    for &n in counts {
        let outcome = if let Some(why) = sizes.skip(n, budget) {
            Outcome::Skipped(why)
        } else {
            eprintln!("bench: control plane: iptables-nft-restore of {}", case(n));
            let text =
                kube_proxy::iptables::restore_input(&kube_proxy::bench_services(n, &real), &cfg);
            let mut samples = Vec::new();
            let mut outcome = None;
            for _ in 0..repeats {
                let load = netfilter::restore_iptables(&ns, IptBackend::Nft, &text, budget);
                if let Ok(l) = &load {
                    sizes.loaded(n, std::slice::from_ref(l));
                }
                match load {
                    Ok(Load::Done(d)) => samples.push(d.as_secs_f64()),
                    Ok(Load::OverBudget(b)) => outcome = Some(Outcome::OverBudget(b.as_secs_f64())),
                    Err(e) => outcome = Some(Outcome::Failed(format!("{e:#}"))),
                }
                if outcome.is_some() {
                    break;
                }
                if let Err(e) = netfilter::clear_iptables(&ns, IptBackend::Nft) {
                    outcome = Some(Outcome::Failed(format!("{e:#}")));
                    break;
                }
            }
            outcome.unwrap_or_else(|| match Stats::new(samples) {
                Ok(s) => Outcome::Measured(s),
                Err(e) => Outcome::Failed(format!("{e:#}")),
            })
        };
        rows.push(
            Row::new(
                Section::ControlPlane,
                IPT_NFT_LOAD,
                &load_case(n),
                SECONDS,
                outcome,
            )
            .compared_to(&[IPTABLES_LOAD]),
        );
    }
    rows
}

pub fn run(
    bins: &Binaries,
    peers: usize,
    service_counts: &[usize],
    repeats: usize,
    budget: Duration,
) -> Vec<Row> {
    let mut rows = leases(bins, peers, repeats);
    rows.extend(netdp_programming(bins, service_counts, repeats));
    rows.extend(iptables_nft_loads(bins, service_counts, repeats, budget));
    rows
}
