//! Backends that say who they are and clients that check what comes back: a pod's TCP
//! and UDP echo server, and connections through a service that tell which backend served
//! them and fail on any byte that came back wrong.
use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::{netns, traffic::Pattern};

/// A backend in a pod: a TCP server that first says who it is (one line) and then echoes
/// everything until the client is done, and a UDP server answering `<who>\n<datagram>`.
/// It records every client address it saw.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    threads: Vec<JoinHandle<Result<()>>>,
}

impl EchoServer {
    /// Serves TCP and UDP on `port` in namespace `ns`, introducing itself as `who`.
    pub fn start(ns: &str, port: u16, who: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        {
            let (stop, peers, who, ready) = (
                stop.clone(),
                peers.clone(),
                who.to_string(),
                ready_tx.clone(),
            );
            threads.push(netns::in_netns(ns, move || {
                let listener = TcpListener::bind(("0.0.0.0", port)).context("bind TCP")?;
                listener.set_nonblocking(true)?;
                let _ = ready.send(());
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, peer)) => {
                            peers.lock().map_err(|_| anyhow!("poisoned"))?.push(peer);
                            let who = who.clone();
                            conns.push(std::thread::spawn(move || serve(conn, &who)));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            // A non-blocking listener's poll, so the server sees `stop`;
                            // nothing waits on it.
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
                Ok(())
            })?);
        }
        {
            let (stop, peers, who) = (stop.clone(), peers.clone(), who.to_string());
            threads.push(netns::in_netns(ns, move || {
                let sock = UdpSocket::bind(("0.0.0.0", port)).context("bind UDP")?;
                sock.set_read_timeout(Some(Duration::from_millis(50)))?;
                let _ = ready_tx.send(());
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    match sock.recv_from(&mut buf) {
                        Ok((n, peer)) => {
                            peers.lock().map_err(|_| anyhow!("poisoned"))?.push(peer);
                            let mut reply = format!("{who}\n").into_bytes();
                            reply.extend_from_slice(&buf[..n]);
                            sock.send_to(&reply, peer)?;
                        }
                        Err(e)
                            if e.kind() == ErrorKind::WouldBlock
                                || e.kind() == ErrorKind::TimedOut => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            })?);
        }
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .context("echo server did not start")?;
        }
        Ok(EchoServer {
            stop,
            peers,
            threads,
        })
    }

    /// Client addresses seen so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }

    pub fn stop(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            netns::join(t)?;
        }
        Ok(())
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How long an [`EchoServer`] waits for more of a client's bytes before it gives up on it.
pub const SERVER_IDLE: Duration = Duration::from_secs(30);

/// Greets, reads the length the client announces, echoes that many bytes and closes:
/// the server closes first, so the client's port is free again at once (no TIME_WAIT on
/// its side), which tests that reuse source ports rely on.
fn serve(mut conn: TcpStream, who: &str) -> Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(SERVER_IDLE))?;
    conn.write_all(format!("{who}\n").as_bytes())?;
    let mut len = [0u8; 8];
    conn.read_exact(&mut len)?;
    let mut left = u64::from_be_bytes(len);
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = conn.read(&mut buf[..want])?;
        if n == 0 {
            bail!("client went away with {left} bytes to go");
        }
        conn.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// How a client connection goes.
#[derive(Debug, Clone, Copy)]
pub struct Connect {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Bytes sent and expected back.
    pub bytes: usize,
    /// Source port to bind (for flows with a known tuple).
    pub sport: Option<u16>,
    pub timeout: Duration,
}

impl Connect {
    pub fn new(addr: Ipv4Addr, port: u16) -> Self {
        Connect {
            addr,
            port,
            bytes: 4096,
            sport: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// One echo exchange from the current namespace: returns who answered, after checking
/// every byte that came back.
pub fn echo_once(c: &Connect, seed: u64) -> std::io::Result<String> {
    let sock = socket2_like_connect(c)?;
    let mut conn = sock;
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    conn.set_write_timeout(Some(Duration::from_secs(20)))?;
    let mut pattern = Pattern::new(seed);
    let mut data = vec![0u8; c.bytes];
    pattern.fill(&mut data);
    let writer = {
        let mut w = conn.try_clone()?;
        let data = data.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            w.write_all(&(data.len() as u64).to_be_bytes())?;
            w.write_all(&data)
        })
    };
    let mut got = Vec::with_capacity(c.bytes + 64);
    conn.read_to_end(&mut got)?;
    writer
        .join()
        .map_err(|_| std::io::Error::other("writer panicked"))??;
    let nl = got
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| std::io::Error::other("no greeting from the server"))?;
    let who = String::from_utf8_lossy(&got[..nl]).into_owned();
    if got[nl + 1..] != data[..] {
        return Err(std::io::Error::other(format!(
            "echo from {who} differs: {} bytes back of {}",
            got.len() - nl - 1,
            data.len()
        )));
    }
    Ok(who)
}

fn socket2_like_connect(c: &Connect) -> std::io::Result<TcpStream> {
    let dst = SocketAddr::V4(SocketAddrV4::new(c.addr, c.port));
    let Some(sport) = c.sport else {
        return TcpStream::connect_timeout(&dst, c.timeout);
    };
    // std has no bind-before-connect; do it with libc.
    // SAFETY: plain socket calls on a descriptor we own until it becomes the TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let mut local: libc::sockaddr_in = std::mem::zeroed();
        local.sin_family = libc::AF_INET as u16;
        local.sin_port = sport.to_be();
        if libc::bind(
            fd,
            &local as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let mut remote: libc::sockaddr_in = std::mem::zeroed();
        remote.sin_family = libc::AF_INET as u16;
        remote.sin_port = c.port.to_be();
        remote.sin_addr.s_addr = u32::from(c.addr).to_be();
        if libc::connect(
            fd,
            &remote as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// One echo exchange held open halfway: the first half of its bytes has gone to the server
/// and back (so the connection is established and who serves it is known), the second half
/// goes when the test says so. One connection kept open across some event (a backend
/// removed from a service, an agent restarted) by construction, not by timing. The server
/// waits up to [`SERVER_IDLE`] for the rest.
pub struct HeldEcho {
    /// Who answered (the server's greeting).
    pub who: String,
    resume: mpsc::Sender<()>,
    thread: JoinHandle<Result<String>>,
}

impl HeldEcho {
    /// Connects from namespace `ns` as `c` says and exchanges the first half of `c.bytes`
    /// (bytes of the pattern seeded with `seed`), checking every byte that came back.
    pub fn start(ns: &str, c: Connect, seed: u64) -> Result<Self> {
        let (held_tx, held_rx) = mpsc::channel();
        let (resume, resume_rx) = mpsc::channel::<()>();
        let label = ns.to_string();
        let thread = netns::in_netns(ns, move || -> Result<String> {
            let mut conn = socket2_like_connect(&c)
                .with_context(|| format!("connecting from {label} to {}:{}", c.addr, c.port))?;
            conn.set_read_timeout(Some(Duration::from_secs(20)))?;
            conn.set_write_timeout(Some(Duration::from_secs(20)))?;
            let mut data = vec![0u8; c.bytes];
            Pattern::new(seed).fill(&mut data);
            let half = c.bytes / 2;
            // Written by a thread of its own while this one reads the echo, so that neither
            // side's buffers fill up.
            let send = |conn: &TcpStream, header: bool, part: Vec<u8>| -> Result<_> {
                let mut w = conn.try_clone()?;
                let len = c.bytes as u64;
                Ok(std::thread::spawn(move || -> std::io::Result<()> {
                    if header {
                        w.write_all(&len.to_be_bytes())?;
                    }
                    w.write_all(&part)
                }))
            };
            let writer = send(&conn, true, data[..half].to_vec())?;
            let mut who = Vec::new();
            let mut byte = [0u8; 1];
            while byte[0] != b'\n' {
                conn.read_exact(&mut byte)
                    .context("reading the server's greeting")?;
                who.push(byte[0]);
            }
            let who = String::from_utf8_lossy(&who[..who.len() - 1]).into_owned();
            let mut back = vec![0u8; half];
            conn.read_exact(&mut back)
                .with_context(|| format!("reading the first {half} bytes back from {who}"))?;
            writer
                .join()
                .map_err(|_| anyhow!("writer panicked"))?
                .context("sending the first half")?;
            ensure!(
                back == data[..half],
                "the first half's echo from {who} differs"
            );
            let _ = held_tx.send(who.clone());
            resume_rx
                .recv()
                .context("the held echo was dropped before it was resumed")?;
            let writer = send(&conn, false, data[half..].to_vec())?;
            let mut rest = Vec::with_capacity(c.bytes - half);
            conn.read_to_end(&mut rest)
                .with_context(|| format!("reading the second half back from {who}"))?;
            writer
                .join()
                .map_err(|_| anyhow!("writer panicked"))?
                .context("sending the second half")?;
            ensure!(
                rest == data[half..],
                "the second half's echo from {who} differs: {} bytes back of {}",
                rest.len(),
                c.bytes - half
            );
            Ok(who)
        })?;
        match held_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(who) => Ok(HeldEcho {
                who,
                resume,
                thread,
            }),
            Err(_) => {
                drop(resume);
                Err(match netns::join(thread) {
                    Err(e) => e.context(format!(
                        "the first half of an echo to {}:{}",
                        c.addr, c.port
                    )),
                    Ok(who) => anyhow!("the echo with {who} ended without being held"),
                })
            }
        }
    }

    /// Sends the second half and checks every byte that comes back, up to the server's
    /// close; returns who answered.
    pub fn finish(self) -> Result<String> {
        // A thread that already failed has dropped its receiver; its join tells why.
        let _ = self.resume.send(());
        netns::join(self.thread)
    }
}

/// `count` echo exchanges from namespace `ns`, one after another (source ports from
/// `c.sport` upwards when set). Returns who answered each.
pub fn echo_many(ns: &str, c: Connect, count: usize) -> Result<Vec<String>> {
    let label = ns.to_string();
    netns::join(netns::in_netns(ns, move || {
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let mut ci = c;
            ci.sport = c.sport.map(|p| p + i as u16);
            let who = echo_once(&ci, 0x5e41 + i as u64).with_context(|| {
                format!(
                    "connection {i} from {label} to {}:{} (source port {:?})",
                    c.addr, c.port, ci.sport
                )
            })?;
            out.push(who);
        }
        Ok(out)
    })?)
}

/// The error a TCP connection from `ns` gets (`Ok` if it connects, which is then closed).
pub fn connect_error(ns: &str, c: Connect) -> Result<Option<std::io::ErrorKind>> {
    netns::join(netns::in_netns(ns, move || {
        Ok(socket2_like_connect(&c).err().map(|e| e.kind()))
    })?)
}

/// `count` UDP requests from `ns`; each reply must echo the request. Returns who answered
/// each (or `None` for requests that got no answer within the timeout).
pub fn udp_many(ns: &str, addr: Ipv4Addr, port: u16, count: usize) -> Result<Vec<Option<String>>> {
    netns::join(netns::in_netns(ns, move || {
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            // A new socket each time: a new flow, balanced on its own.
            let sock = UdpSocket::bind(("0.0.0.0", 0))?;
            sock.set_read_timeout(Some(Duration::from_millis(1000)))?;
            let msg = format!("request-{i}-{}", "u".repeat(i * 13 % 700));
            sock.send_to(msg.as_bytes(), (addr, port))?;
            let mut buf = [0u8; 2048];
            out.push(match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if from != SocketAddr::from((addr, port)) {
                        bail!("reply from {from}, not the service {addr}:{port}");
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let (who, body) = text
                        .split_once('\n')
                        .ok_or_else(|| anyhow!("malformed reply {text:?}"))?;
                    if body != msg {
                        bail!("reply body {body:?} is not the request {msg:?}");
                    }
                    Some(who.to_string())
                }
                Err(_) => None,
            });
        }
        Ok(out)
    })?)
}
