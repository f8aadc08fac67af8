//! End to end: what the agent tells its operators. `/readyz` answers from the start and
//! turns ready only once the node's lease is held, its programs attached and leases and
//! services synced; `/metrics` counts, per program and reason, exactly what was sent.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use netdp_testbed::{Spec, Testbed, netns, traffic};

const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;

/// One plain HTTP/1.0 GET on the loopback of the calling thread's namespace: status, body.
fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// The sum of the samples of `name` carrying `labels` in an exposition (0 if none).
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            series.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

fn metrics(tb: &Testbed, node: &str) -> Result<String> {
    let h = netns::in_netns(&tb.node(node).ns, || {
        let (status, body) = get(9962, "/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body)
    })?;
    netns::join(h)
}

#[test]
fn readyz_waits_for_the_first_sync_and_metrics_count_what_was_sent() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(2).network(HOST_GW))?;
    tb.start_agent("n2", &["--log-format=json"])?;
    // Every log line of a JSON-logging agent is one event with its fields.
    let log = std::fs::read_to_string(tb.node("n2").agent_log())?;
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(
        events.iter().any(
            |e| e["level"] == "info" && e["msg"].as_str().is_some_and(|m| m.contains("leased"))
        ),
        "{log}"
    );
    assert!(
        log.lines()
            .all(|l| l.starts_with('{') || l.starts_with("netdp agent ready")),
        "a line that is not an event: {log}"
    );
    // Watch n1's endpoints from before its agent starts until it is ready.
    let watcher = netns::in_netns(&tb.node("n1").ns, || {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut not_ready = None;
        while Instant::now() < deadline {
            match get(9876, "/readyz") {
                Ok((200, _)) => {
                    // Ready: by now the peer's lease is routed.
                    let (_, m) = get(9962, "/metrics")?;
                    return Ok((not_ready, sample(&m, "netdp_routes", &[])));
                }
                Ok((503, body)) => {
                    not_ready.get_or_insert(body);
                }
                Ok((other, body)) => bail!("/readyz answered {other}: {body}"),
                Err(_) => {} // not listening yet
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("/readyz never turned ready")
    })?;
    tb.start_agent("n1", &[])?;
    let (not_ready, routes_when_ready) = netns::join(watcher)?;
    let not_ready = not_ready.context("/readyz was never seen not ready")?;
    assert!(not_ready.starts_with("not ready: "), "{not_ready}");
    assert_eq!(
        routes_when_ready, 1.0,
        "ready before the peer's lease was routed"
    );
    let (status, body) = netns::join(netns::in_netns(&tb.node("n1").ns, || {
        get(9876, "/healthz")
    })?)?;
    assert_eq!((status, body.trim()), (200, "ok"));

    let a = tb.add_pod("n1", "a")?;
    let b = tb.add_pod("n2", "b")?;
    // Forwarded by from_pod to the peer: `direct`, or `direct_neigh` while the agent has
    // not learnt the next hop's MAC yet; nothing else leaves that pod.
    let sent = [("program", "from_pod"), ("verdict", "forwarded")];
    let before = metrics(&tb, "n1")?;
    traffic::ping(&a.ns, b.ip, 20)?;
    let after = metrics(&tb, "n1")?;
    let packets = sample(&after, "netdp_datapath_packets_total", &sent)
        - sample(&before, "netdp_datapath_packets_total", &sent);
    let bytes = sample(&after, "netdp_datapath_bytes_total", &sent)
        - sample(&before, "netdp_datapath_bytes_total", &sent);
    // 20 echo requests of 98 bytes (Ethernet, IPv4, ICMP, 56 bytes of data).
    let shown = |m: &str| {
        m.lines()
            .filter(|l| l.contains("from_pod"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(packets, 20.0, "{}\n---\n{}", shown(&before), shown(&after));
    assert_eq!(bytes, 20.0 * 98.0, "{}", shown(&after));
    assert_eq!(sample(&after, "netdp_lease_held", &[]), 1.0);
    // `netdp status` shows the same: ready, and the peer's route pinned.
    let node = tb.node("n1").ns.clone();
    let out = tb.netdp("n1", &["status", "--node-name", &node, "-o", "json"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["dataplane"]["routes"], 1, "{status}");
    assert_eq!(status["dataplane"]["xdp"]["mode"], "native", "{status}");
    assert_eq!(status["dataplane"]["xdp"]["interface"], "eth0", "{status}");
    assert!(sample(&after, "netdp_lease_expires_in_seconds", &[]) > 23.0 * 3600.0);
    Ok(())
}

/// A drop caused on purpose (a peer's truncated VXLAN packet) shows in `netdp monitor`
/// with its reason, program and addresses; filters keep other drops out.
#[test]
fn monitor_shows_a_drop_caused_on_purpose_with_its_reason() -> Result<()> {
    let mut tb = Testbed::new(
        Spec::flat(2).network(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#),
    )?;
    tb.start_all_agents(&[])?;
    let (n1_ns, n1_ip) = (tb.node("n1").ns.clone(), tb.node("n1").ip);
    let (n2_ns, n2_ip) = (tb.node("n2").ns.clone(), tb.node("n2").ip);
    let mut monitor = netns::command(&n1_ns, &tb.bins.netdp)?
        .args(["monitor", "--node-name", &n1_ns, "-o", "json"])
        .args(["--reason", "malformed", "--count", "1", "--duration", "30s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stderr = monitor.stderr.take().context("monitor stderr")?;
    let mut line = [0u8; 64];
    let n = stderr.read(&mut line)?;
    assert!(
        String::from_utf8_lossy(&line[..n]).starts_with("listening"),
        "{}",
        String::from_utf8_lossy(&line[..n])
    );
    // n2, a known peer, sends 16 bytes (too short for VXLAN) to n1's VXLAN port until the monitor
    // has seen it (it exits after one event).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sending = stop.clone();
    let sender = netns::in_netns(&n2_ns, move || {
        let sock = std::net::UdpSocket::bind(("0.0.0.0", 40000))?;
        for _ in 0..300 {
            if sending.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            sock.send_to(&[0u8; 16], (n1_ip, 8472))?;
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })?;
    let out = monitor.wait_with_output()?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    netns::join(sender)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(first) = text.lines().next() else {
        bail!("no event; n1's counters: {:?}", tb.counters("n1")?);
    };
    let event: serde_json::Value = serde_json::from_str(first)?;
    assert_eq!(event["reason"], "malformed", "{event}");
    assert_eq!(event["program"], "from_netdev", "{event}");
    assert_eq!(event["source"], n2_ip.to_string(), "{event}");
    assert_eq!(event["destinationPort"], 8472, "{event}");
    assert_eq!(event["protocol"], "udp", "{event}");
    assert!(tb.counter("n1", "from_netdev", "malformed")? >= 1);
    Ok(())
}
