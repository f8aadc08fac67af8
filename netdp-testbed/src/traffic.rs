//! Traffic between namespaces, checked byte for byte.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::{netns, wait::wait_until};

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

/// A deterministic byte stream (xorshift), so the receiver can check every byte however
/// the stream is cut into reads.
pub struct Pattern {
    state: u64,
    /// Bytes of the current word not handed out yet.
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern {
            state: seed | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state.to_le_bytes()
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        // What is left of the current word, then whole words, then the start of the next.
        let head = (8 - self.used).min(buf.len());
        buf[..head].copy_from_slice(&self.word[self.used..self.used + head]);
        self.used += head;
        let mut chunks = buf[head..].chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_word());
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            self.word = self.next_word();
            let n = tail.len();
            tail.copy_from_slice(&self.word[..n]);
            self.used = n;
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
    transfer(from_ns, to_ns, to, port, bytes, pace, Arc::default())
}

/// A paced TCP transfer running in a thread of its own (see [`tcp_transfer_paced`]) that
/// tells how many bytes the receiver has checked so far, so a test can wait until it is
/// under way, and see it move on after some event, instead of guessing times.
pub struct Background {
    received: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Result<Transfer>>,
}

impl Background {
    /// Starts the transfer; it runs until every byte arrived (or it failed).
    pub fn start(
        from_ns: &str,
        to_ns: &str,
        to: Ipv4Addr,
        port: u16,
        bytes: u64,
        pace: Duration,
    ) -> Self {
        let received = Arc::new(AtomicU64::new(0));
        let (from, into, r) = (from_ns.to_string(), to_ns.to_string(), received.clone());
        let thread = std::thread::spawn(move || transfer(&from, &into, to, port, bytes, pace, r));
        Background { received, thread }
    }

    /// Bytes the receiver has got and checked so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until the receiver has checked at least `bytes` in all; fails after `timeout`,
    /// or at once if the transfer ended short of them.
    pub fn wait_received(&self, bytes: u64, timeout: Duration) -> Result<Duration> {
        wait_until(
            &format!("the receiver to get {bytes} bytes of the transfer"),
            timeout,
            || {
                if self.received() >= bytes {
                    return Ok(true);
                }
                if self.thread.is_finished() {
                    bail!(
                        "the transfer ended after {} bytes, short of {bytes}",
                        self.received()
                    );
                }
                Ok(false)
            },
        )
        .map_err(|e| anyhow!("{e:#} ({} bytes received so far)", self.received()))
    }

    /// Waits for the whole transfer: every byte arrived, in order, unchanged.
    pub fn join(self) -> Result<Transfer> {
        self.thread
            .join()
            .map_err(|_| anyhow!("the transfer thread panicked"))?
    }
}

fn transfer(
    from_ns: &str,
    to_ns: &str,
    to: Ipv4Addr,
    port: u16,
    bytes: u64,
    pace: Duration,
    received: Arc<AtomicU64>,
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
            received.store(total, Ordering::Relaxed);
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
                // Pacing is the point: one connection kept busy for a while.
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
    let sent = netns::join(client);
    let received = netns::join(server);
    let t = match (sent, &received) {
        (Ok(t), _) => t,
        // The receiver's reason (corruption, timeout) explains the sender's broken pipe.
        (Err(e), Err(r)) => {
            return Err(e.context(format!("TCP {from_ns} -> {to}:{port}; receiver: {r:#}")));
        }
        (Err(e), Ok(_)) => return Err(e.context(format!("TCP {from_ns} -> {to}:{port}"))),
    };
    let received = received.with_context(|| format!("TCP receiver at {to}:{port}"))?;
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
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && &buf[..n] == msg.as_bytes()
            {
                ok += 1;
            }
        }
        Ok(ok)
    })?;
    let ok = netns::join(client)?;
    let _ = netns::join(server);
    Ok(ok)
}

/// A server that answers every TCP connection and UDP datagram with the address it came
/// from (`a.b.c.d:port`): what a host sees of its clients, e.g. through masquerading.
pub struct Whoami {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl Whoami {
    /// Serves TCP and UDP on `port` in namespace `ns` until dropped.
    pub fn start(ns: &str, port: u16) -> Result<Self> {
        use std::sync::atomic::AtomicBool;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (s, tx) = (stop.clone(), ready_tx.clone());
        let tcp = netns::in_netns(ns, move || -> Result<()> {
            let listener = TcpListener::bind(("0.0.0.0", port)).context("bind TCP")?;
            listener.set_nonblocking(true)?;
            let _ = tx.send(());
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        conn.set_nonblocking(false)?;
                        let _ = conn.write_all(peer.to_string().as_bytes());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // A non-blocking listener's poll, so the server sees `stop`;
                        // nothing waits on it.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })?;
        let s = stop.clone();
        let udp = netns::in_netns(ns, move || -> Result<()> {
            let sock = UdpSocket::bind(("0.0.0.0", port)).context("bind UDP")?;
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            let _ = ready_tx.send(());
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    sock.send_to(peer.to_string().as_bytes(), peer)?;
                }
            }
            Ok(())
        })?;
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .context("whoami server did not start")?;
        }
        Ok(Whoami {
            stop,
            threads: vec![tcp, udp],
        })
    }
}

impl Drop for Whoami {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn parse_peer(text: &str) -> Result<std::net::SocketAddrV4> {
    text.trim()
        .parse()
        .with_context(|| format!("whoami answered {text:?}"))
}

/// Connects from namespace `from_ns` to a [`Whoami`] server: the address it saw us at.
pub fn whoami_tcp(from_ns: &str, to: Ipv4Addr, port: u16) -> Result<std::net::SocketAddrV4> {
    netns::join(netns::in_netns(from_ns, move || {
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(5))
                .with_context(|| format!("connecting to {to}:{port}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        parse_peer(&text)
    })?)
}

/// Sends a datagram from `from_ns` (source port `src_port`, 0 for any) to a [`Whoami`]
/// server: the address it saw us at.
pub fn whoami_udp(
    from_ns: &str,
    to: Ipv4Addr,
    port: u16,
    src_port: u16,
) -> Result<std::net::SocketAddrV4> {
    netns::join(netns::in_netns(from_ns, move || {
        let sock = UdpSocket::bind(("0.0.0.0", src_port))?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut buf = [0u8; 128];
        for _ in 0..6 {
            sock.send_to(b"who am i", (to, port))?;
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                return parse_peer(&String::from_utf8_lossy(&buf[..n]));
            }
        }
        bail!("no answer from {to}:{port} over UDP")
    })?)
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn pattern_is_one_stream_however_it_is_cut() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(7).fill(&mut whole);
        let mut cut = vec![0u8; 1000];
        let mut p = Pattern::new(7);
        let mut at = 0;
        for n in [3usize, 1, 8, 13, 500, 475] {
            p.fill(&mut cut[at..at + n]);
            at += n;
        }
        assert_eq!(whole, cut);
    }
}
