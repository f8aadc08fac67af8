//! etcd as users run it: three members, every agent given all three endpoints. The leader
//! is killed while leases renew and services churn, then a second member is cut off (quorum
//! gone), then it comes back. Throughout, every node keeps its lease (same subnet, same etcd
//! lease), no route leaves a ROUTES map, and pod traffic flows; services written during the
//! failover and after the outage end up programmed, and renewals resume.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use netdp::dataplane::{Pins, route::RouteMap};
use netdp_testbed::{
    BPF_ROOT, Spec, Testbed, netns,
    services::{Connect, EchoServer, echo_many},
    traffic, wait,
};
use serde_json::{Value, json};

const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;
/// Leases of 12 s renewed every 3 s: renewals run through every phase, and an outage of
/// more than one TTL would lose them if anything expired them.
const TTL_SECS: u64 = 12;
const AGENT: &[&str] = &[
    "--subnet-lease-ttl=12s",
    "--subnet-lease-renew-margin=9s",
    "--subnet-lease-retry=1s",
];
const WAIT: Duration = Duration::from_secs(30);
const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// A service on port 80 to the backends' 8080.
fn service(name: &str, ip: Ipv4Addr, endpoints: &[(Ipv4Addr, String)]) -> String {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip.to_string(),
                 "ports": [{"protocol": "TCP", "port": 80, "targetPort": 8080}]},
        "endpoints": endpoints.iter()
            .map(|(ip, node)| json!({"ip": ip.to_string(), "nodeName": node}))
            .collect::<Vec<_>>(),
    })
    .to_string()
}

/// `netdp service apply` from the etcd host, as an operator's client given every endpoint;
/// cloneable into a thread while the test holds the testbed.
#[derive(Clone)]
struct Applier {
    ns: String,
    netdp: PathBuf,
    dir: PathBuf,
    endpoints: String,
}

impl Applier {
    fn new(tb: &Testbed) -> Self {
        Applier {
            ns: tb.ctl_ns.clone(),
            netdp: tb.bins.netdp.clone(),
            dir: tb.dir.clone(),
            endpoints: tb.etcd_endpoint(),
        }
    }

    fn apply(&self, name: &str, doc: &str) -> Result<()> {
        let file = self.dir.join(format!("{name}.json"));
        std::fs::write(&file, doc)?;
        let out = netns::command(&self.ns, &self.netdp)?
            .args(["service", "apply", "-f"])
            .arg(&file)
            .arg(format!("--etcd-endpoints={}", self.endpoints))
            .output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Applies until etcd takes it: (when the try that took started, when it was written,
    /// failed tries before it).
    fn apply_until_written(&self, name: &str, doc: &str) -> Result<(Instant, Instant, u32)> {
        let (start, mut failed) = (Instant::now(), 0);
        loop {
            let tried = Instant::now();
            match self.apply(name, doc) {
                Ok(()) => return Ok((tried, Instant::now(), failed)),
                Err(e) if start.elapsed() > WAIT => {
                    bail!("{name} not written in {WAIT:?} ({failed} tries): {e:#}")
                }
                Err(_) => failed += 1,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Something sampled in a thread until stopped.
struct Sampler<T> {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<T>>,
}

impl<T: Send + 'static> Sampler<T> {
    fn start(mut f: impl FnMut(bool) -> Result<Option<T>> + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            loop {
                if let Some(done) = f(s.load(Ordering::Relaxed))? {
                    return Ok(done);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Result<T> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow!("sampler panicked"))?
    }
}

/// Reads every node's ROUTES map until stopped: (samples, every sample that differed from
/// the expected routes, the first few of them described).
fn sample_routes(
    expected: BTreeMap<String, Vec<(String, Ipv4Addr)>>,
) -> Sampler<(u64, Vec<String>)> {
    let (mut samples, mut wrong) = (0u64, Vec::new());
    Sampler::start(move |stop| {
        for (ns, want) in &expected {
            let pins = Pins::new(std::path::Path::new(BPF_ROOT), ns)?;
            let mut got: Vec<(String, Ipv4Addr)> = RouteMap::open(&pins)?
                .list()
                .into_iter()
                .map(|(net, r)| (net.to_string(), Ipv4Addr::from(r.node_ip)))
                .collect();
            got.sort();
            samples += 1;
            if &got != want && wrong.len() < 5 {
                wrong.push(format!("{ns}: {got:?}, expected {want:?}"));
            }
        }
        Ok(stop.then(|| (samples, std::mem::take(&mut wrong))))
    })
}

/// Pings `dst` from `ns` one echo at a time until stopped: (answered, unanswered).
fn sample_pings(ns: String, dst: Ipv4Addr) -> Sampler<(u64, u64)> {
    let (mut ok, mut lost) = (0, 0);
    Sampler::start(move |stop| {
        if traffic::reachable(&ns, dst) {
            ok += 1;
        } else {
            lost += 1;
        }
        Ok(stop.then_some((ok, lost)))
    })
}

/// Services applied one after another, each retried until written, until stopped; every
/// write's (start of the try that took, written, failed tries before it).
fn churn(a: Applier, endpoints: Vec<(Ipv4Addr, String)>) -> Sampler<Vec<(Instant, Instant, u32)>> {
    let mut writes = Vec::new();
    Sampler::start(move |stop| {
        let i = writes.len();
        let ip = Ipv4Addr::new(10, 96, 1 + (i / 250) as u8, (i % 250) as u8 + 1);
        let name = format!("churn-{i}");
        writes.push(a.apply_until_written(&name, &service(&name, ip, &endpoints))?);
        Ok(stop.then(|| std::mem::take(&mut writes)))
    })
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// When the node's agent last renewed its lease (unix seconds, to a second), from its
/// `/status`: it sets the expiry to renewal + TTL.
fn last_renewal(tb: &Testbed, node: &str) -> Result<f64> {
    let (_, body) = tb.agent_http(node, "/status")?;
    let v: Value = serde_json::from_str(&body).with_context(|| format!("/status: {body}"))?;
    let left = v["leaseExpiresInSeconds"]
        .as_i64()
        .ok_or_else(|| anyhow!("{node} holds no lease: {body}"))?;
    Ok(unix_now() + left as f64 - TTL_SECS as f64)
}

/// Waits until every node's agent has renewed its lease after `since` (unix seconds).
fn wait_renewed(tb: &Testbed, nodes: &[&str], since: f64) -> Result<Duration> {
    tb.wait_for("every agent to renew its lease", WAIT, || {
        for n in nodes {
            // Whole seconds on both sides: a renewal 1.5 s after `since` may read as 1 s.
            if last_renewal(tb, n)? < since + 1.0 {
                return Ok(false);
            }
        }
        Ok(true)
    })
}

/// Subnet keys with the etcd lease and PublicIP each is held by.
fn leases(tb: &mut Testbed) -> Result<BTreeMap<String, (i64, String)>> {
    let prefix = format!("{}/subnets/", tb.prefix);
    let kvs = tb.etcd_cluster().get_prefix_leases(&prefix)?;
    kvs.into_iter()
        .map(|(k, v, lease)| {
            let attrs: Value = serde_json::from_str(&v)?;
            let ip = attrs["PublicIP"].as_str().unwrap_or_default().to_string();
            Ok((k, (lease, ip)))
        })
        .collect()
}

/// Each node's /readyz status code (0: no answer) and whether its agent still runs.
fn health(tb: &mut Testbed, nodes: &[&str]) -> Vec<(u16, bool)> {
    let mut out = Vec::new();
    for n in nodes {
        let alive = tb.agent_alive(n);
        let code = tb.agent_http(n, "/readyz").map(|(c, _)| c).unwrap_or(0);
        out.push((code, alive));
    }
    out
}

#[test]
fn agents_ride_out_a_killed_leader_and_a_lost_quorum() -> Result<()> {
    let nodes = ["n1", "n2", "n3"];
    let mut tb = Testbed::new(Spec::flat(3).network(HOST_GW).etcd_cluster(3))?;
    println!("etcd members: {}", tb.etcd_endpoint());
    tb.start_all_agents(AGENT)?;
    let client = tb.add_pod("n1", "client")?;
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    for n in ["n2", "n3"] {
        let pod = tb.add_pod(n, "backend")?;
        servers.push(EchoServer::start(&pod.ns, 8080, n)?);
        backends.push((pod.ip, tb.node(n).ns.clone()));
    }
    tb.apply_services(&service("web", WEB, &backends))?;
    tb.wait_services_programmed(WAIT)?;
    let subnets: Vec<String> = nodes
        .iter()
        .map(|n| tb.subnet_of(n))
        .collect::<Result<_>>()?;
    let held = leases(&mut tb)?;
    ensure!(held.len() == 3, "three leases, one per node: {held:?}");

    let expected = nodes
        .iter()
        .map(|n| {
            let others = tb.nodes.iter().filter(|o| o.name != *n);
            let want = others
                .map(|o| Ok((tb.subnet_of(&o.name)?, o.ip)))
                .collect::<Result<Vec<_>>>();
            want.map(|mut w| {
                w.sort();
                (tb.node(n).ns.clone(), w)
            })
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    let routes = sample_routes(expected);
    let pings = sample_pings(client.ns.clone(), tb.pod("n3", "backend").ip);
    let b2 = tb.pod("n2", "backend").clone();
    let stream = traffic::Background::start(
        &client.ns,
        &b2.ns,
        b2.ip,
        5001,
        16 << 20,
        Duration::from_millis(40),
    );
    stream.wait_received(1 << 20, WAIT)?;

    // 1. The leader dies while services churn and leases renew.
    let (leader, _) = tb.etcd_cluster().wait_leader(WAIT)?;
    let applier = Applier::new(&tb);
    let churner = churn(applier.clone(), backends.clone());
    tb.wait_for("service churn to be under way", WAIT, || {
        Ok(tb.service_status("n1")?.len() >= 3)
    })?;
    let killed_at = (Instant::now(), unix_now());
    tb.etcd_cluster().kill(leader);
    let (second, elected) = tb.etcd_cluster().wait_leader(WAIT)?;
    println!("killed leader m{leader}; m{second} leads {elected:?} later");
    wait_renewed(&tb, &nodes, killed_at.1)?;
    let renewed = killed_at.0.elapsed();
    let before_kill = stream.received();
    stream.wait_received(before_kill + (2 << 20), WAIT)?;
    let writes = churner.finish()?;
    let after: Vec<_> = writes.iter().filter(|w| w.0 > killed_at.0).collect();
    let first = after
        .first()
        .ok_or_else(|| anyhow!("no service written after the kill"))?;
    let failed: u32 = writes.iter().map(|w| w.2).sum();
    println!(
        "after the kill: first service write {:?} later, {} writes in all, {failed} tries failed; \
         every agent renewed {renewed:?} after it",
        first.1 - killed_at.0,
        writes.len()
    );
    let programmed = tb.wait_for("churned services programmed", WAIT, || {
        Ok(tb.wait_services_programmed(Duration::ZERO).is_ok())
    })?;
    println!("every service written during the failover programmed {programmed:?} later");
    stream
        .join()
        .context("the TCP stream across the leader's death")?;

    // 2. The new leader is cut off: one of three left, no quorum.
    tb.etcd_cluster().partition(second)?;
    let cut_at = Instant::now();
    ensure!(
        tb.etcd_cluster().put("/netdp-test/probe", "x").is_err(),
        "a write succeeded with one member of three"
    );
    println!("partitioned m{second}: writes fail");
    let b3 = tb.pod("n3", "backend").clone();
    let t = traffic::tcp_transfer(&client.ns, &b3.ns, b3.ip, 5002, 4 << 20)?;
    let who = echo_many(&client.ns, Connect::new(WEB, 80), 20)?;
    ensure!(
        who.contains(&"n2".to_string()) && who.contains(&"n3".to_string()),
        "{who:?}"
    );
    println!(
        "without quorum: new TCP {:.0} Mbit/s, service answered by {who:?}",
        t.mbit_per_s()
    );
    // Hold the outage until every agent's own view of its lease has run out (more than a
    // TTL without a renewal), recording what the agents report meanwhile.
    let mut seen = BTreeMap::new();
    let held_for = wait::wait_until(
        "every agent's lease clock to run out",
        Duration::from_secs(40),
        || {
            let h = health(&mut tb, &nodes);
            for (n, (code, alive)) in nodes.iter().zip(&h) {
                ensure!(*alive, "the agent on {n} exited without quorum");
                *seen.entry((n.to_string(), *code)).or_insert(0u32) += 1;
            }
            Ok(nodes
                .iter()
                .all(|n| last_renewal(&tb, n).is_ok_and(|r| r + (TTL_SECS as f64) < unix_now())))
        },
    )?;
    println!("quorum gone for {held_for:?}: agents alive, /readyz codes seen {seen:?}");
    let who = echo_many(&client.ns, Connect::new(WEB, 80), 10)?;
    ensure!(who.len() == 10, "the service after a TTL without quorum");

    // 3. The member comes back: a quorum of two.
    tb.etcd_cluster().heal(second)?;
    println!("quorum was gone for {:?} in all", cut_at.elapsed());
    let healed_at = (Instant::now(), unix_now());
    let (_, elected) = tb.etcd_cluster().wait_leader(WAIT)?;
    let doc = service("after", Ipv4Addr::new(10, 96, 200, 1), &backends);
    let (_, written, tries) = applier.apply_until_written("after", &doc)?;
    wait_renewed(&tb, &nodes, healed_at.1)?;
    let renewed = healed_at.0.elapsed();
    tb.wait_services_programmed(WAIT)?;
    println!(
        "healed m{second}: leader {elected:?}, first write {:?} ({tries} failed tries), every \
         agent renewed {renewed:?} after the heal, the new service programmed {:?} after the heal",
        written - healed_at.0,
        healed_at.0.elapsed()
    );
    tb.etcd_cluster().restart(leader)?;
    println!("m{leader} restarted");

    // Nothing was lost or moved, nothing flapped.
    let (samples, wrong) = routes.finish()?;
    let (answered, lost) = pings.finish()?;
    println!("ROUTES read {samples} times; pings {answered} answered, {lost} lost");
    ensure!(wrong.is_empty(), "routes changed: {wrong:#?}");
    ensure!(lost == 0, "{lost} of {} pings lost", answered + lost);
    let after: Vec<String> = nodes
        .iter()
        .map(|n| tb.subnet_of(n))
        .collect::<Result<_>>()?;
    ensure!(after == subnets, "subnets moved: {subnets:?} -> {after:?}");
    let now = leases(&mut tb)?;
    ensure!(now == held, "leases changed: {held:?} -> {now:?}");
    for n in tb.nodes.iter() {
        let log = std::fs::read_to_string(n.agent_log())?;
        for bad in ["is gone", "re-acquired", "lease moved"] {
            if log.contains(bad) {
                bail!("the agent on {} logged {bad:?}:\n{log}", n.name);
            }
        }
        let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
        println!(
            "agent on {}: {} failed renewals, {} broken watches resumed, {} member changes",
            n.name,
            count("retrying in"),
            count("resuming after revision"),
            count("etcd member"),
        );
    }
    for s in servers {
        s.stop()?;
    }
    Ok(())
}
