//! netdp's own load generators: blocking sockets on threads that entered the client's and
//! the servers' network namespaces (netdp-testbed's `in_netns`), one client at a time, so a
//! figure is the cost of one flow's path rather than of CPU contention.
//!
//! - connection rate: connect, one 64-byte request and response, close (the server closes
//!   first, so TIME_WAIT stays on the server and client ports never run out), with each
//!   connection's latency from connect() to its whole reply (kube-proxy's nftables
//!   post's first-packet metric), of which p50 and p99 are reported;
//! - request/response rate: 64-byte ping-pong on one established connection;
//! - stream: 256 KiB writes for the sample's duration, counted by the receiver.
//!
//! Every reply is checked byte for byte, and servers count connections so a test can see
//! which endpoints a service really reached.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use netdp_testbed::netns;

pub const DESCRIPTION: &str = "netdp's own (xtask/src/bench/load.rs): one client thread in the \
    client's network namespace, one server thread per endpoint, blocking sockets with \
    TCP_NODELAY; 64-byte requests and responses checked byte for byte; stream of 256 KiB writes";

const MSG: usize = 64;
const CLOSE: u8 = b'C';
const KEEP: u8 = b'K';
const STREAM: u8 = b'S';
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A server in one namespace; stops (and is joined) when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Server {
    /// Listens on `0.0.0.0:port` inside namespace `ns`.
    pub fn start(ns: &str, port: u16) -> Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let (stop2, conns2) = (stop.clone(), connections.clone());
        let handle = netns::in_netns(ns, move || -> Result<()> {
            let listener = match TcpListener::bind(("0.0.0.0", port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(format!("bind :{port}: {e}")));
                    return Ok(());
                }
            };
            // accept() gives up after SO_RCVTIMEO, so the stop flag is seen.
            set_timeout(&listener, Duration::from_millis(100))?;
            let _ = tx.send(Ok(()));
            while !stop2.load(Ordering::Relaxed) {
                let conn = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e).context("accept"),
                };
                conns2.fetch_add(1, Ordering::Relaxed);
                // A broken client connection is the client's error to report.
                let _ = serve(conn);
            }
            Ok(())
        })?;
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("server in {ns}: {e}"),
            Err(_) => bail!("server in {ns} did not start"),
        }
        Ok(Server {
            stop,
            connections,
            handle: Some(handle),
        })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn set_timeout(l: &TcpListener, d: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket fd and a timeval of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One connection: echo requests (closing after the first for CLOSE), or count a stream.
fn serve(mut conn: TcpStream) -> Result<()> {
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; MSG];
    loop {
        match conn.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        match buf[0] {
            CLOSE => {
                conn.write_all(&buf)?;
                // Dropping closes first: TIME_WAIT lands here, not on the client.
                return Ok(());
            }
            KEEP => conn.write_all(&buf)?,
            STREAM => {
                let mut big = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    let n = conn.read(&mut big)?;
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                conn.write_all(&total.to_be_bytes())?;
                return Ok(());
            }
            other => bail!("unknown request type {other}"),
        }
    }
}

fn request(kind: u8, seq: u64) -> [u8; MSG] {
    let mut m = [0x5au8; MSG];
    m[0] = kind;
    m[1..9].copy_from_slice(&seq.to_be_bytes());
    m
}

fn connect(to: SocketAddr) -> Result<TcpStream> {
    let c = TcpStream::connect_timeout(&to, IO_TIMEOUT)
        .with_context(|| format!("connecting to {to}"))?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    c.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(c)
}

fn in_client<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    netns::join(netns::in_netns(ns, f)?)
}

/// A connection-rate sample: new connections per second, and each one's time from
/// connect() to its whole reply, in µs.
pub struct Connections {
    pub rate: f64,
    pub latency_us: Vec<f64>,
}

impl Connections {
    /// The `q` quantile (0 to 1, nearest rank) of the latencies.
    pub fn latency(&self, q: f64) -> f64 {
        let mut v = self.latency_us.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
        v.get(rank - 1).copied().unwrap_or(f64::NAN)
    }
}

/// New connections from namespace `ns` to `to` for `dur`, one after another.
pub fn connections(ns: &str, to: (Ipv4Addr, u16), dur: Duration) -> Result<Connections> {
    let to = SocketAddr::from(to);
    in_client(ns, move || {
        let start = Instant::now();
        let mut latency_us = Vec::new();
        let mut n = 0u64;
        while start.elapsed() < dur {
            let req = request(CLOSE, n);
            let began = Instant::now();
            let mut c = connect(to).with_context(|| format!("after {n} connections"))?;
            c.write_all(&req)?;
            let mut resp = [0u8; MSG];
            c.read_exact(&mut resp)
                .with_context(|| format!("reply {n}"))?;
            latency_us.push(began.elapsed().as_secs_f64() * 1e6);
            if resp != req {
                bail!("reply {n} differs from its request");
            }
            let mut rest = [0u8; 1];
            if c.read(&mut rest)? != 0 {
                bail!("server sent more than one reply on connection {n}");
            }
            n += 1;
        }
        Ok(Connections {
            rate: n as f64 / start.elapsed().as_secs_f64(),
            latency_us,
        })
    })
}

/// Request/response round trips per second on one established connection.
pub fn request_rate(ns: &str, to: (Ipv4Addr, u16), dur: Duration) -> Result<f64> {
    let to = SocketAddr::from(to);
    in_client(ns, move || {
        let mut c = connect(to)?;
        let mut resp = [0u8; MSG];
        // One round trip before the clock starts: the connection is established.
        c.write_all(&request(KEEP, 0))?;
        c.read_exact(&mut resp)?;
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < dur {
            let req = request(KEEP, n + 1);
            c.write_all(&req)?;
            c.read_exact(&mut resp)
                .with_context(|| format!("reply {n}"))?;
            if resp != req {
                bail!("reply {n} differs from its request");
            }
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })
}

/// One TCP stream for `dur`; Gbit/s as counted by the receiver, including the drain.
pub fn stream(ns: &str, to: (Ipv4Addr, u16), dur: Duration) -> Result<f64> {
    let to = SocketAddr::from(to);
    in_client(ns, move || {
        let mut c = connect(to)?;
        c.write_all(&request(STREAM, 0))?;
        let buf = vec![0xa5u8; 256 * 1024];
        let mut sent = 0u64;
        let start = Instant::now();
        while start.elapsed() < dur {
            c.write_all(&buf)?;
            sent += buf.len() as u64;
        }
        c.shutdown(std::net::Shutdown::Write)?;
        let mut ack = [0u8; 8];
        c.read_exact(&mut ack)
            .context("waiting for the receiver's count")?;
        let elapsed = start.elapsed().as_secs_f64();
        let got = u64::from_be_bytes(ack);
        if got != sent {
            bail!("receiver counted {got} bytes of {sent}");
        }
        Ok(got as f64 * 8.0 / elapsed / 1e9)
    })
}
