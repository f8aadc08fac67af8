//! A connection that can stay silent for as long as a test likes: [`HoldServer`], an echo
//! server in a pod without an idle timeout (the [`crate::services::EchoServer`] gives up
//! after 30 s), and [`IdleConn`], a client that exchanges a message when it opens and then
//! only when asked. The conntrack tests hold one through floods and forged resets.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{netns, traffic::Pattern};

/// Bytes of each exchange.
const MSG: usize = 1024;

/// An echo server in a pod that greets with its name and echoes until the client closes,
/// however long the client stays silent (the testbed's `EchoServer` gives up after 30 s).
pub struct HoldServer {
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl HoldServer {
    pub fn start(ns: &str, port: u16, who: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (s, p, who) = (stop.clone(), peers.clone(), who.to_string());
        let listener = netns::join(netns::in_netns(ns, move || {
            let l = TcpListener::bind(("0.0.0.0", port))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?)?;
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        p.lock().expect("peers").push(peer);
                        let who = who.clone();
                        std::thread::spawn(move || -> std::io::Result<()> {
                            conn.set_nonblocking(false)?;
                            conn.set_read_timeout(Some(Duration::from_secs(120)))?;
                            conn.write_all(format!("{who}\n").as_bytes())?;
                            let mut buf = [0u8; 4096];
                            loop {
                                match conn.read(&mut buf)? {
                                    0 => return Ok(()),
                                    n => conn.write_all(&buf[..n])?,
                                }
                            }
                        });
                    }
                    // A non-blocking listener's poll, so the server sees `stop`.
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(HoldServer { stop, peers })
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

impl Drop for HoldServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A connection from a pod through the service to a [`HoldServer`]: one exchange when
/// opened, then silent until [`IdleConn::exchange`].
pub struct IdleConn {
    pub stream: TcpStream,
    /// The server's name, from its greeting.
    pub who: String,
    /// The client's address and port.
    pub local: SocketAddrV4,
    pattern: Pattern,
}

impl IdleConn {
    pub fn open(ns: &str, addr: Ipv4Addr, port: u16) -> Result<Self> {
        let to = SocketAddr::from((addr, port));
        // A socket belongs to the namespace it was created in; it is used from here on.
        let mut stream = netns::join(netns::in_netns(ns, move || {
            Ok(TcpStream::connect_timeout(&to, Duration::from_secs(5))?)
        })?)
        .with_context(|| format!("connecting from {ns} to {to}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let local = match stream.local_addr()? {
            SocketAddr::V4(a) => a,
            a => bail!("not an IPv4 socket: {a}"),
        };
        let mut greeting = Vec::new();
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            stream
                .read_exact(&mut byte)
                .context("reading the greeting")?;
            greeting.push(byte[0]);
        }
        let who = String::from_utf8_lossy(&greeting[..greeting.len() - 1]).into_owned();
        let mut conn = IdleConn {
            stream,
            who,
            local,
            pattern: Pattern::new(0xf100d),
        };
        conn.exchange()?;
        Ok(conn)
    }

    /// Sends the next message and checks its echo, byte for byte.
    pub fn exchange(&mut self) -> Result<()> {
        let mut part = vec![0u8; MSG];
        self.pattern.fill(&mut part);
        self.stream.write_all(&part)?;
        let mut back = vec![0u8; MSG];
        self.stream
            .read_exact(&mut back)
            .with_context(|| format!("reading an echo from {} on {}", self.who, self.local))?;
        ensure!(back == part, "the echo from {} differs", self.who);
        Ok(())
    }

    /// Closes its side; the server closes its own.
    pub fn finish(mut self) -> Result<()> {
        self.stream.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        self.stream.read_to_end(&mut rest)?;
        ensure!(rest.is_empty(), "{} bytes after the last echo", rest.len());
        Ok(())
    }
}
