//! A SYN flood from one of the testbed's namespaces: TCP SYNs crafted with
//! [`PacketSpec`], sent through a raw socket (`IPPROTO_RAW`, the IP header included) with
//! random source ports and source addresses spoofed from a range, paced to a rate for a
//! while; and [`send_forged`], any crafted packets sent once. The namespace's routes decide
//! where they go, so what a testbed namespace sends stays inside the testbed.
use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail, ensure};

use crate::{
    netns,
    packet::{IPPROTO_TCP, PacketSpec},
};

/// What to flood and how hard.
#[derive(Debug, Clone, Copy)]
pub struct SynFlood {
    pub dst: Ipv4Addr,
    pub dport: u16,
    /// Spoofed source addresses, inclusive; each SYN picks one at random.
    pub sources: (Ipv4Addr, Ipv4Addr),
    /// SYNs per second to aim for.
    pub rate: u64,
    pub duration: Duration,
    pub seed: u64,
}

/// What a flood sent.
#[derive(Debug, Clone, Copy)]
pub struct FloodReport {
    /// SYNs the kernel took.
    pub sent: u64,
    /// Sends the kernel refused (ENOBUFS and the like).
    pub failed: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    /// SYNs per second actually sent.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A flood under way on a thread of its own.
pub struct Flood {
    sent: Arc<AtomicU64>,
    thread: JoinHandle<Result<FloodReport>>,
}

impl Flood {
    /// Starts sending from namespace `ns`.
    pub fn start(ns: &str, spec: SynFlood) -> Result<Self> {
        let (lo, hi) = (u32::from(spec.sources.0), u32::from(spec.sources.1));
        ensure!(lo <= hi, "empty source range {:?}", spec.sources);
        ensure!(spec.rate > 0, "a flood needs a rate");
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let thread = netns::in_netns(ns, move || run(spec, lo, hi, &counter))?;
        Ok(Flood { sent, thread })
    }

    /// SYNs sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the flood to end.
    pub fn wait(self) -> Result<FloodReport> {
        netns::join(self.thread)
    }
}

/// Sends `frames` (Ethernet frames as [`PacketSpec`] builds them; their IP packets go out)
/// once each from namespace `ns`, through a raw socket, as forged packets are sent: the
/// source address and ports are whatever the frames say. Returns how many the kernel took.
pub fn send_forged(ns: &str, frames: Vec<Vec<u8>>) -> Result<u64> {
    netns::join(netns::in_netns(ns, move || {
        let sock = raw_socket()?;
        let mut sent = 0;
        for frame in &frames {
            let ip = frame
                .get(14..)
                .ok_or_else(|| anyhow!("a frame without IP"))?;
            ensure!(ip.len() >= 20, "a frame without IP");
            let to = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            if send_ip(&sock, &to_addr(to), ip) != ip.len() as isize {
                bail!(
                    "sending a forged packet: {}",
                    std::io::Error::last_os_error()
                );
            }
            sent += 1;
        }
        Ok(sent)
    })?)
}

fn to_addr(dst: Ipv4Addr) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; zero is a valid value.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as u16;
    to.sin_addr.s_addr = u32::from(dst).to_be();
    to
}

/// Sends IP packet `ip` (its header included) to `to`; what sendto returned.
fn send_ip(sock: &OwnedFd, to: &libc::sockaddr_in, ip: &[u8]) -> isize {
    // SAFETY: the buffer and the address outlive the call.
    unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            ip.as_ptr().cast(),
            ip.len(),
            0,
            (to as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    }
}

fn raw_socket() -> Result<OwnedFd> {
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        bail!("raw socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and nobody else holds.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn run(spec: SynFlood, lo: u32, hi: u32, counter: &AtomicU64) -> Result<FloodReport> {
    let sock = raw_socket()?;
    let to = to_addr(spec.dst);
    let mut rng = spec.seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let span = u64::from(hi - lo) + 1;
    let (mut sent, mut failed) = (0u64, 0u64);
    let started = Instant::now();
    loop {
        let elapsed = started.elapsed();
        if elapsed >= spec.duration {
            break;
        }
        // Paced: catch up to where the rate says we should be, then wait a little.
        let due = (elapsed.as_secs_f64() * spec.rate as f64) as u64;
        if sent + failed >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        for _ in 0..(due - sent - failed).min(256) {
            let r = next();
            let src = Ipv4Addr::from(lo + (r % span) as u32);
            let sport = 1024 + ((r >> 32) % (65536 - 1024)) as u16;
            let frame = PacketSpec {
                src,
                dst: spec.dst,
                proto: IPPROTO_TCP,
                sport,
                dport: spec.dport,
                tcp_flags: 0x02,
                payload: Vec::new(),
                ..Default::default()
            }
            .build();
            let ip = &frame[14..];
            let n = send_ip(&sock, &to, ip);
            if n == ip.len() as isize {
                sent += 1;
            } else {
                failed += 1;
                let err = std::io::Error::last_os_error();
                if n >= 0 || err.raw_os_error() != Some(libc::ENOBUFS) {
                    return Err(anyhow!("sending a SYN to {}: {err}", spec.dst));
                }
            }
        }
        counter.store(sent, Ordering::Relaxed);
    }
    counter.store(sent, Ordering::Relaxed);
    Ok(FloodReport {
        sent,
        failed,
        elapsed: started.elapsed(),
    })
}
