//! A replaying stand-in for the Kubernetes API server, because none can be installed on
//! these machines (no package registry here carries kube-apiserver). It is not a fake of
//! the dataplane's side: the agent talks to it with the real kube-rs client over HTTP/1.1.
//! It serves what kube-apiserver serves for list and watch of Services and EndpointSlices,
//! and nothing else:
//! - lists (`GET /api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`) with the
//!   collection's resourceVersion, honouring `limit` and `continue`;
//! - watches (`?watch=true&resourceVersion=N`): chunked JSON lines of ADDED / MODIFIED /
//!   DELETED events after N, BOOKMARKs when `allowWatchBookmarks` asks for them, and for a
//!   resourceVersion older than the last compaction the `ERROR` event with the 410 Expired
//!   Status kube-apiserver sends;
//! - connection drops on demand (the socket is shut mid-stream, no closing chunk).
//!
//! The objects are real API JSON handed in by the test; the server stamps each change with
//! the next resourceVersion, as etcd's revision does for kube-apiserver.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::netns;

/// The port it listens on (kube-apiserver's secure port; plain HTTP here).
pub const PORT: u16 = 6443;
/// How often an idle watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

/// The two collections served, by path.
const COLLECTIONS: [(&str, &str, &str, &str); 2] = [
    ("/api/v1/services", "v1", "Service", "ServiceList"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "EndpointSliceList",
    ),
];

#[derive(Default)]
struct Collection {
    objects: BTreeMap<String, Value>,
    /// Every change: its resourceVersion, event type, the object as of then.
    log: Vec<(u64, &'static str, Value)>,
}

#[derive(Default)]
struct State {
    rv: u64,
    compacted: u64,
    /// Bumped by [`ReplayApiServer::drop_connections`]; open watches end when it moves.
    drops: u64,
    /// Down ([`ReplayApiServer::go_down`]): every request gets 503.
    down: bool,
    collections: [Collection; 2],
    /// Requests served: lists, watches, 410 Gone answers.
    stats: Stats,
}

/// What the server has answered so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub lists: u32,
    pub watches: u32,
    pub gone: u32,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// The server; stops (and ends its watches) when dropped.
pub struct ReplayApiServer {
    shared: Shared,
    stop: Arc<AtomicBool>,
    pub addr: Ipv4Addr,
}

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.0.lock().unwrap_or_else(|e| e.into_inner())
}

fn object_key(v: &Value) -> String {
    let m = &v["metadata"];
    format!(
        "{}/{}",
        m["namespace"].as_str().unwrap_or("default"),
        m["name"].as_str().unwrap_or("")
    )
}

fn collection_of(kind: &str) -> Result<usize> {
    COLLECTIONS
        .iter()
        .position(|c| c.2 == kind)
        .with_context(|| format!("the replay API server serves no {kind}"))
}

impl ReplayApiServer {
    /// Listens on `addr`:[`PORT`] inside namespace `ns`.
    pub fn start(ns: &str, addr: Ipv4Addr) -> Result<Self> {
        let listener = netns::join(netns::in_netns(ns, move || {
            TcpListener::bind((addr, PORT)).with_context(|| format!("binding {addr}:{PORT}"))
        })?)?;
        listener.set_nonblocking(true)?;
        let shared: Shared = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, st) = (s.clone(), st.clone());
                        std::thread::spawn(move || {
                            let _ = serve(conn, &s, &st);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(ReplayApiServer { shared, stop, addr })
    }

    /// Adds or replaces an object (a Service or an EndpointSlice as the API serves it).
    pub fn apply(&self, mut object: Value) -> Result<()> {
        let kind = object["kind"].as_str().unwrap_or("").to_string();
        let c = collection_of(&kind)?;
        let mut st = lock(&self.shared);
        st.rv += 1;
        object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let key = object_key(&object);
        let rv = st.rv;
        let col = &mut st.collections[c];
        let kind = match col.objects.insert(key, object.clone()) {
            Some(_) => "MODIFIED",
            None => "ADDED",
        };
        col.log.push((rv, kind, object));
        self.shared.1.notify_all();
        Ok(())
    }

    /// Deletes the object of `kind` at `namespace/name`.
    pub fn delete(&self, kind: &str, id: &str) -> Result<()> {
        let c = collection_of(kind)?;
        let mut st = lock(&self.shared);
        st.rv += 1;
        let rv = st.rv;
        let col = &mut st.collections[c];
        let Some(mut object) = col.objects.remove(id) else {
            bail!("no {kind} {id} to delete");
        };
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        col.log.push((rv, "DELETED", object));
        self.shared.1.notify_all();
        Ok(())
    }

    /// Forgets the history: a watch from any resourceVersion before now gets 410 Gone.
    pub fn compact(&self) {
        let mut st = lock(&self.shared);
        st.compacted = st.rv;
        for c in &mut st.collections {
            c.log.clear();
        }
    }

    /// The server goes away: open watches are cut mid-stream and every request gets 503
    /// Service Unavailable until [`Self::come_back`]. Changes can still be made meanwhile.
    pub fn go_down(&self) {
        lock(&self.shared).down = true;
        self.drop_connections();
    }

    pub fn come_back(&self) {
        lock(&self.shared).down = false;
    }

    /// Cuts every open watch connection mid-stream.
    pub fn drop_connections(&self) {
        lock(&self.shared).drops += 1;
        self.shared.1.notify_all();
    }

    pub fn stats(&self) -> Stats {
        lock(&self.shared).stats
    }

    /// A kubeconfig pointing at this server (no credentials), written under `dir`.
    pub fn write_kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: replay\n  cluster:\n    server: http://{}:{PORT}\n\
             contexts:\n- name: replay\n  context:\n    cluster: replay\n    user: replay\n\
             current-context: replay\nusers:\n- name: replay\n  user: {{}}\n",
            self.addr
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for ReplayApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.drop_connections();
    }
}

/// One request's path and query parameters.
struct Request {
    path: String,
    query: BTreeMap<String, String>,
}

fn read_request(conn: &TcpStream) -> Result<Request> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line
        .split_whitespace()
        .nth(1)
        .context("no request target")?;
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let query = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=")))
        .collect();
    // The headers (nothing in them changes the answer).
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    Ok(Request {
        path: path.to_string(),
        query,
    })
}

fn respond(conn: &mut TcpStream, status: &str, body: &Value) -> Result<()> {
    let body = body.to_string();
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

fn serve(mut conn: TcpStream, shared: &Shared, stop: &AtomicBool) -> Result<()> {
    conn.set_nonblocking(false)?;
    let req = read_request(&conn)?;
    if lock(shared).down {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "the server is currently unable to handle the request",
            "reason": "ServiceUnavailable", "code": 503});
        return respond(&mut conn, "503 Service Unavailable", &status);
    }
    let Some(c) = COLLECTIONS.iter().position(|c| c.0 == req.path) else {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "the server could not find the requested resource",
            "reason": "NotFound", "code": 404});
        return respond(&mut conn, "404 Not Found", &status);
    };
    if req.query.get("watch").map(String::as_str) == Some("true") {
        watch(conn, shared, stop, c, &req)
    } else {
        list(conn, shared, c, &req)
    }
}

fn list(mut conn: TcpStream, shared: &Shared, c: usize, req: &Request) -> Result<()> {
    let body = {
        let mut st = lock(shared);
        st.stats.lists += 1;
        let (_, api_version, _, list_kind) = COLLECTIONS[c];
        let all: Vec<&Value> = st.collections[c].objects.values().collect();
        let from: usize = req
            .query
            .get("continue")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let limit: usize = req
            .query
            .get("limit")
            .and_then(|s| s.parse().ok())
            .unwrap_or(usize::MAX);
        let end = from.saturating_add(limit).min(all.len());
        let mut metadata = json!({"resourceVersion": st.rv.to_string()});
        if end < all.len() {
            metadata["continue"] = json!(end.to_string());
        }
        json!({"kind": list_kind, "apiVersion": api_version, "metadata": metadata,
            "items": all.get(from.min(end)..end).unwrap_or_default()})
    };
    respond(&mut conn, "200 OK", &body)
}

fn chunk(conn: &mut TcpStream, line: &Value) -> std::io::Result<()> {
    let data = format!("{line}\n");
    write!(conn, "{:x}\r\n{data}\r\n", data.len())?;
    conn.flush()
}

fn watch(
    mut conn: TcpStream,
    shared: &Shared,
    stop: &AtomicBool,
    c: usize,
    req: &Request,
) -> Result<()> {
    let mut from: u64 = req
        .query
        .get("resourceVersion")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let bookmarks = req.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let (_, api_version, kind, _) = COLLECTIONS[c];
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    let mut st = lock(shared);
    st.stats.watches += 1;
    if from < st.compacted {
        st.stats.gone += 1;
        let message = format!("too old resource version: {from} ({})", st.compacted);
        drop(st);
        let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
            "metadata": {}, "status": "Failure", "message": message, "reason": "Expired",
            "code": 410}});
        chunk(&mut conn, &status)?;
        write!(conn, "0\r\n\r\n")?;
        return Ok(());
    }
    let drops = st.drops;
    let mut last_bookmark = Instant::now();
    loop {
        // The log is in resourceVersion order.
        let log = &st.collections[c].log;
        let start = log.partition_point(|(rv, _, _)| *rv <= from);
        let pending: Vec<Value> = log[start..]
            .iter()
            .map(|(_, t, o)| json!({"type": t, "object": o}))
            .collect();
        from = st.rv;
        let cut = st.drops != drops || stop.load(Ordering::Relaxed);
        let rv = st.rv;
        drop(st);
        if cut {
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
        for event in &pending {
            chunk(&mut conn, event)?;
        }
        if bookmarks && last_bookmark.elapsed() >= BOOKMARK_EVERY {
            let mark = json!({"type": "BOOKMARK", "object": {"kind": kind,
                "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}}});
            chunk(&mut conn, &mark)?;
            last_bookmark = Instant::now();
        }
        st = lock(shared);
        if st.rv == from && st.drops == drops {
            st = shared
                .1
                .wait_timeout(st, BOOKMARK_EVERY)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}
