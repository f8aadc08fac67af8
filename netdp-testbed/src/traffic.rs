//! Traffic between namespaces, checked byte for byte.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns;

/// `ping -c count` from namespace `ns`; Ok if every echo was answered.
pub fn ping(ns: &str, dst: Ipv4Addr, count: u32) -> Result<()> {
    let out = netns::run(
        ns,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            &dst.to_string(),
        ],
    )?;
    if !out.status.success() {
        bail!(
            "ping {dst} from {ns} failed: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

/// Whether a single ping gets an answer.
pub fn reachable(ns: &str, dst: Ipv4Addr) -> bool {
    netns::run(
        ns,
        &["ping", "-n", "-q", "-c", "1", "-W", "1", &dst.to_string()],
    )
    .map(|o| o.status.success())
    .unwrap_or(false)
}

/// A deterministic byte stream (xorshift), so the receiver can check every byte.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Transfer {
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Sends `bytes` over TCP from `from_ns` to a listener in `to_ns` at `to:port`; the
/// receiver checks every byte against the sender's pattern.
pub fn tcp_transfer(
    from_ns: &str,
    to_ns: &str,
    to: Ipv4Addr,
    port: u16,
    bytes: u64,
) -> Result<Transfer> {
    tcp_transfer_paced(from_ns, to_ns, to, port, bytes, Duration::ZERO)
}

/// Like [`tcp_transfer`], sleeping `pace` after every 64 KiB, so one connection can be
/// kept busy across some event (an agent restart, an etcd outage).
pub fn tcp_transfer_paced(
    from_ns: &str,
    to_ns: &str,
    to: Ipv4Addr,
    port: u16,
    bytes: u64,
    pace: Duration,
) -> Result<Transfer> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let seed = 0x5eed ^ port as u64;
    let server = netns::in_netns(to_ns, move || -> Result<u64> {
        let listener = TcpListener::bind(("0.0.0.0", port)).context("bind")?;
        let _ = ready_tx.send(());
        listener.set_nonblocking(false)?;
        let (mut conn, _) = listener.accept().context("accept")?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; 256 * 1024];
        let mut want = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = conn.read(&mut buf).context("receiving")?;
            if n == 0 {
                break;
            }
            pattern.fill(&mut want[..n]);
            if buf[..n] != want[..n] {
                let i = buf[..n]
                    .iter()
                    .zip(&want[..n])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                bail!("byte {} differs from what was sent", total + i as u64);
            }
            total += n as u64;
        }
        conn.write_all(&total.to_be_bytes())?;
        Ok(total)
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("server did not start")?;
    let client = netns::in_netns(from_ns, move || -> Result<Transfer> {
        let start = Instant::now();
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(10))
                .with_context(|| format!("connecting to {to}:{port}"))?;
        conn.set_write_timeout(Some(Duration::from_secs(30)))?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut pattern = Pattern::new(seed);
        let chunk = if pace.is_zero() {
            256 * 1024
        } else {
            64 * 1024
        };
        let mut buf = vec![0u8; chunk];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            pattern.fill(&mut buf[..n]);
            conn.write_all(&buf[..n]).context("sending")?;
            left -= n as u64;
            if !pace.is_zero() {
                std::thread::sleep(pace);
            }
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        let mut ack = [0u8; 8];
        conn.read_exact(&mut ack)
            .context("waiting for the receiver's count")?;
        let got = u64::from_be_bytes(ack);
        if got != bytes {
            bail!("receiver got {got} bytes of {bytes}");
        }
        Ok(Transfer {
            bytes,
            elapsed: start.elapsed(),
        })
    })?;
    let t = netns::join(client).with_context(|| format!("TCP {from_ns} -> {to}:{port}"))?;
    let received = netns::join(server).with_context(|| format!("TCP receiver at {to}:{port}"))?;
    if received != bytes {
        bail!("receiver counted {received} bytes of {bytes}");
    }
    Ok(t)
}

/// Sends `count` UDP datagrams from `from_ns` to an echo server in `to_ns` and checks every
/// reply. Returns how many came back.
pub fn udp_echo(from_ns: &str, to_ns: &str, to: Ipv4Addr, port: u16, count: u32) -> Result<u32> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = netns::in_netns(to_ns, move || -> Result<()> {
        let sock = UdpSocket::bind(("0.0.0.0", port))?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        let _ = ready_tx.send(());
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            sock.send_to(&buf[..n], peer)?;
        }
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("UDP server did not start")?;
    let client = netns::in_netns(from_ns, move || -> Result<u32> {
        let sock = UdpSocket::bind(("0.0.0.0", 0))?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut ok = 0;
        let mut buf = [0u8; 2048];
        for i in 0..count {
            let msg = format!("netdp-udp-{i}-{}", "x".repeat((i as usize * 37) % 900));
            sock.send_to(msg.as_bytes(), (to, port))?;
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if &buf[..n] == msg.as_bytes() {
                    ok += 1;
                }
            }
        }
        Ok(ok)
    })?;
    let ok = netns::join(client)?;
    let _ = netns::join(server);
    Ok(ok)
}
