//! Control plane: how fast peer leases reach one agent's map, what the agent holds in
//! memory, and how long programming N services takes next to kube-proxy's rule loads.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::maps::{LpmTrie, Map, MapData};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use netdp_common::{Ipv4, map_names, route::Route};
use netdp_testbed::{Binaries, Spec, Testbed, netns};

use super::{
    kube_proxy, netfilter,
    report::{MEBIBYTES, Outcome, Row, SECONDS, Section},
    runner::{self, Stats},
    services::{IPTABLES, NETDP, NFTABLES, case},
};

const AGENT: &str = "netdp agent";
/// The agent leases from 10.200.0.0/16; peers come from 10.100.0.0/14, so one key range
/// holds exactly the peers.
const CONFIG: &str = r#"{"Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": "10.200.0.0", "SubnetMax": "10.200.255.0", "Backend": {"Type": "host-gw"}}"#;
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

fn peer_key(prefix: &str, i: usize) -> String {
    let net = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + ((i as u32) << 8));
    format!("{prefix}/subnets/{net}-24")
}

fn peer_value(i: usize) -> String {
    // Distinct public addresses off the node's underlay subnet.
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 31, 0, 1)) + i as u32);
    format!(r#"{{"PublicIP":"{ip}","BackendType":"host-gw"}}"#)
}

/// Puts `n` peer leases in transactions of TXN_OPS; returns how long the writes took.
fn put_peers(ctl_ns: &str, etcd: (Ipv4Addr, u16), prefix: &str, n: usize) -> Result<Duration> {
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
            etcd_post(
                etcd,
                "/v3/kv/txn",
                &format!(r#"{{"success":[{}]}}"#, ops.join(",")),
            )?;
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
fn routes_in_map(pin: &PathBuf) -> Result<usize> {
    let map = Map::from_map_data(
        MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?,
    )?;
    let trie: LpmTrie<_, Ipv4, Route> = LpmTrie::try_from(map)?;
    Ok(trie.keys().filter(|k| k.is_ok()).count())
}

fn wait_for_routes(pin: &PathBuf, want: usize, since: Instant) -> Result<Duration> {
    loop {
        let have = routes_in_map(pin)?;
        if have == want {
            return Ok(since.elapsed());
        }
        if since.elapsed() > CONVERGE_TIMEOUT {
            bail!("ROUTES holds {have} routes, not {want}, {CONVERGE_TIMEOUT:?} after the change");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn rss_mib(pid: u32) -> Result<f64> {
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
        super::report::human(peers as f64)
    );
    let vanish = format!(
        "{} peer leases deleted -> all gone from ROUTES",
        super::report::human(peers as f64)
    );
    let writes = format!(
        "writing {} leases to etcd ({TXN_OPS} per transaction)",
        super::report::human(peers as f64)
    );
    let rss_case = format!("after {} peer leases", super::report::human(peers as f64));
    let result = (|| -> Result<(Stats, Stats, Stats, Stats)> {
        let mut tb = Testbed::new(Spec::flat(1).network(CONFIG).binaries(bins.clone()))?;
        tb.start_agent("n1", &[])?;
        let pin = PathBuf::from("/sys/fs/bpf/netdp")
            .join(&tb.node("n1").ns)
            .join("maps")
            .join(map_names::ROUTES);
        let etcd = (Ipv4Addr::new(192, 168, 10, 2), 2379);
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
            let m = format!("{e:#}");
            let f = || Err(anyhow::anyhow!("{m}"));
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

/// Loading N services: kube-proxy's iptables-restore and nft transaction on a fresh node,
/// next to netdp programming its maps.
fn service_loads(bins: &Binaries, n: usize, repeats: usize) -> Vec<Row> {
    let c = format!("program {}", case(n));
    let ipt_subject = format!("{IPTABLES} (iptables-restore)");
    let nft_subject = format!("{NFTABLES} (nft -f)");
    let mut rows = vec![
        Row::new(
            Section::ControlPlane,
            NETDP,
            &c,
            SECONDS,
            Outcome::NotAvailable("needs services in eBPF (issue #5)".into()),
        )
        .compared_to(&[&ipt_subject]),
        Row::new(
            Section::ControlPlane,
            AGENT,
            &format!("resident memory with {}", case(n)),
            MEBIBYTES,
            Outcome::NotAvailable("needs services in eBPF (issue #5)".into()),
        ),
    ];
    let loaded = (|| -> Result<(Result<Stats>, Result<Stats>)> {
        let tb = Testbed::new(Spec::flat(1).binaries(bins.clone()))?;
        let ns = tb.node("n1").ns.clone();
        let real: Vec<_> = (2..5)
            .map(|h| (Ipv4Addr::new(10, 244, 2, h), 8080))
            .collect();
        let services = kube_proxy::bench_services(n, &real);
        let cfg = kube_proxy::bench_cluster(tb.node("n1").ip);
        let ipt = kube_proxy::iptables::restore_input(&services, &cfg);
        let iptables = runner::repeat("iptables-restore", repeats, |_| {
            let took = netfilter::restore_iptables(&ns, &ipt)?;
            netfilter::clear_iptables(&ns)?;
            Ok(took.as_secs_f64())
        });
        let nftables = runner::repeat("nft -f", repeats, |_| {
            let took = netfilter::load_nftables(&ns, &services, &cfg)?;
            netfilter::clear_nftables(&ns)?;
            Ok(took.as_secs_f64())
        });
        Ok((iptables, nftables))
    })();
    let (iptables, nftables) = match loaded {
        Ok(x) => x,
        Err(e) => {
            let m = format!("{e:#}");
            (Err(anyhow::anyhow!("{m}")), Err(anyhow::anyhow!("{m}")))
        }
    };
    rows.push(Row::from_result(
        Section::ControlPlane,
        &ipt_subject,
        &c,
        SECONDS,
        iptables,
    ));
    rows.push(
        Row::from_result(Section::ControlPlane, &nft_subject, &c, SECONDS, nftables)
            .compared_to(&[&ipt_subject]),
    );
    rows
}

pub fn run(bins: &Binaries, peers: usize, service_counts: &[usize], repeats: usize) -> Vec<Row> {
    let mut rows = leases(bins, peers, repeats);
    for &n in service_counts {
        eprintln!("bench: control plane: loading {}", case(n));
        rows.extend(service_loads(bins, n, repeats));
    }
    rows
}
