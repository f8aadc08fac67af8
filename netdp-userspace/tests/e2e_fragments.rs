//! End to end: UDP datagrams bigger than the path MTU (3000 bytes, DNS over EDNS say) are
//! fragmented by the pod's kernel, and every fragment must get its flow's translation:
//! through a ClusterIP to a backend on another node (and its fragmented reply back), and
//! masqueraded to an outside host (and its reply back). Nodes run with IP forwarding off,
//! so what arrives was forwarded by the programs.
use std::{
    net::{Ipv4Addr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use netdp_testbed::{Spec, Testbed, netns, testbed::OUTSIDE_IP};
use serde_json::json;

const VXLAN: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 7);
const ECHO_PORT: u16 = 5353;
const SIZE: usize = 3000;

/// A UDP echo server in a namespace, until dropped.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<()>>>,
}

impl Echo {
    fn start(ns: &str) -> Result<Echo> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = netns::in_netns(ns, move || -> Result<()> {
            let sock = UdpSocket::bind(("0.0.0.0", ECHO_PORT))?;
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            let _ = tx.send(());
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    sock.send_to(&buf[..n], peer)?;
                }
            }
            Ok(())
        })?;
        rx.recv_timeout(Duration::from_secs(10))
            .context("the echo server did not start")?;
        Ok(Echo {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends a SIZE-byte datagram from `ns` to `to:port` and waits for it to come back whole;
/// a few tries (the first may wait on neighbour resolution).
fn big_echo(ns: &str, to: Ipv4Addr, port: u16) -> Result<()> {
    netns::join(netns::in_netns(ns, move || -> Result<()> {
        let sock = UdpSocket::bind(("0.0.0.0", 0))?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        let msg: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
        let mut buf = vec![0u8; 65536];
        for _ in 0..3 {
            sock.send_to(&msg, (to, port))?;
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                if buf[..n] != msg[..] {
                    bail!("{n} bytes came back from {from}, not the {SIZE} sent");
                }
                if from.ip() != std::net::IpAddr::V4(to) {
                    bail!("the answer came from {from}, not {to}");
                }
                return Ok(());
            }
        }
        bail!("no answer to a {SIZE}-byte datagram to {to}:{port} in 3 tries")
    })?)
}

#[test]
fn a_3000_byte_datagram_and_its_reply_cross_a_service_and_masquerading() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(2).outside().network(VXLAN))?;
    tb.start_agent("n1", &["--ip-masq"])?;
    tb.start_agent("n2", &[])?;
    let client = tb.add_pod("n1", "client")?;
    let backend = tb.add_pod("n2", "backend")?;
    let _in_backend = Echo::start(&backend.ns)?;
    let outside = tb.outside_ns.clone().expect("outside host");
    let _outside = Echo::start(&outside)?;
    let doc = json!([{
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "dns", "namespace": "default"},
        "spec": {"clusterIP": VIP.to_string(),
                 "ports": [{"name": "dns", "protocol": "UDP", "port": 53, "targetPort": ECHO_PORT}]},
        "endpoints": [{"ip": backend.ip.to_string(), "nodeName": tb.node("n2").ns}],
    }]);
    tb.apply_services(&doc.to_string())?;
    tb.wait_services_programmed(Duration::from_secs(30))?;

    big_echo(&client.ns, VIP, 53).context("through the ClusterIP")?;
    big_echo(&client.ns, OUTSIDE_IP, ECHO_PORT).context("masqueraded to the outside")?;

    // Every fragment took the programs' path: three of each datagram (1450-byte pod MTU)
    // on the way out and back.
    let fragments_out = tb.counter("n1", "from_pod", "encap_vxlan")?;
    assert!(fragments_out >= 3, "from_pod encapsulated {fragments_out}");
    let masqueraded = tb.counter("n1", "from_pod", "masquerade")?;
    let unmasqueraded = tb.counter("n1", "from_netdev", "unmasquerade")?;
    assert!(
        masqueraded >= 3 && unmasqueraded >= 3,
        "masqueraded {masqueraded}, unmasqueraded {unmasqueraded} fragments"
    );
    let replies = tb.counter("n1", "from_netdev", "decap_vxlan")?;
    assert!(replies >= 3, "decapsulated {replies} reply fragments");
    Ok(())
}
