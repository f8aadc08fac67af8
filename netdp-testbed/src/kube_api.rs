//! A replaying stand-in for the Kubernetes API server, because none can be installed on
//! these machines (no package registry here carries kube-apiserver). It is not a fake of
//! the dataplane's side: the agent talks to it with the real kube-rs client over HTTP/1.1.
//! It serves what kube-apiserver serves for list and watch of Services, EndpointSlices and
//! Nodes, a Node's GET and its `nodes/status` PATCH, and nothing else:
//! - lists (`GET /api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`,
//!   `/api/v1/nodes`) with the collection's resourceVersion, honouring `limit` and
//!   `continue`;
//! - `GET /api/v1/nodes/<name>`, and `PATCH /api/v1/nodes/<name>/status` with a strategic
//!   merge patch (maps merged, `null` deleting a key, `status.conditions` merged by
//!   `type`: the parts of the strategy a node's annotations and conditions use);
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

/// The collections served, by path.
const COLLECTIONS: [(&str, &str, &str, &str); 3] = [
    ("/api/v1/services", "v1", "Service", "ServiceList"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "EndpointSliceList",
    ),
    ("/api/v1/nodes", "v1", "Node", "NodeList"),
];
const NODES: usize = 2;

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
    collections: [Collection; 3],
    /// Requests served: lists, watches, 410 Gone answers.
    stats: Stats,
}

/// What the server has answered so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub lists: u32,
    pub watches: u32,
    pub gone: u32,
    /// `nodes/status` patches applied.
    pub patches: u32,
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

/// `namespace/name`, or `name` for cluster-scoped objects (Nodes).
fn object_key(v: &Value) -> String {
    let m = &v["metadata"];
    let name = m["name"].as_str().unwrap_or("");
    match m["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
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
    pub fn apply(&self, object: Value) -> Result<()> {
        let kind = object["kind"].as_str().unwrap_or("").to_string();
        let c = collection_of(&kind)?;
        store(&self.shared, c, object);
        Ok(())
    }

    /// Every object of `kind` as served now.
    pub fn list(&self, kind: &str) -> Result<Vec<Value>> {
        let c = collection_of(kind)?;
        Ok(lock(&self.shared).collections[c]
            .objects
            .values()
            .cloned()
            .collect())
    }

    /// The object of `kind` at `namespace/name` (`name` for a Node) as served now.
    pub fn get(&self, kind: &str, id: &str) -> Result<Option<Value>> {
        let c = collection_of(kind)?;
        Ok(lock(&self.shared).collections[c].objects.get(id).cloned())
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

/// A Node as kubelet registers it and kube-controller-manager assigns its podCIDR (the
/// cloud's NetworkUnavailable condition still set).
pub fn node(name: &str, ip: Ipv4Addr, pod_cidr: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "uid": format!("7d1c2b3a-0f4e-4a5b-8c6d-{:012x}", u32::from(ip)),
            "creationTimestamp": "2026-11-30T09:02:11Z",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true"}
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip.to_string()},
                {"type": "Hostname", "address": name}],
            "conditions": [
                {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated",
                    "message": "Node created without a route",
                    "lastHeartbeatTime": "2026-11-30T09:02:11Z",
                    "lastTransitionTime": "2026-11-30T09:02:11Z"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": "2026-11-30T09:02:41Z",
                    "lastTransitionTime": "2026-11-30T09:02:41Z"}
            ],
            "nodeInfo": {"kubeletVersion": "v1.34.2", "containerRuntimeVersion": "containerd://2.1.4"}
        }
    })
}

/// Stores `object` in collection `c` under the next resourceVersion, and wakes watches.
fn store(shared: &Shared, c: usize, object: Value) -> Value {
    let stored = put(&mut lock(shared), c, object);
    shared.1.notify_all();
    stored
}

/// [`store`] with the lock held.
fn put(st: &mut State, c: usize, mut object: Value) -> Value {
    st.rv += 1;
    object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
    let key = object_key(&object);
    let rv = st.rv;
    let col = &mut st.collections[c];
    let kind = match col.objects.insert(key, object.clone()) {
        Some(_) => "MODIFIED",
        None => "ADDED",
    };
    col.log.push((rv, kind, object.clone()));
    object
}

/// Applies a strategic merge patch to `target`, as far as Node annotations and
/// conditions need: objects merge key by key (`null` deletes), `conditions` lists merge by
/// `type`, other values are replaced.
fn merge(target: &mut Value, patch: &Value, key: &str) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v, k);
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if key == "conditions" => {
            for item in p {
                match t.iter_mut().find(|c| c["type"] == item["type"]) {
                    Some(existing) => merge(existing, item, ""),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl Drop for ReplayApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.drop_connections();
    }
}

/// One request's method, path, query parameters and body.
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(conn: &TcpStream) -> Result<Request> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let method = words.next().context("no request method")?.to_string();
    let target = words.next().context("no request target")?;
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let query = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=")))
        .collect();
    // The headers: only the body's length matters here.
    let mut length = 0;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((name, value)) = h.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().context("Content-Length")?;
        }
    }
    let mut body = vec![0; length];
    std::io::Read::read_exact(&mut reader, &mut body)?;
    Ok(Request {
        method,
        path: path.to_string(),
        query,
        body,
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
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": "the server could not find the requested resource",
        "reason": "NotFound", "code": 404});
    if let Some(rest) = req.path.strip_prefix("/api/v1/nodes/") {
        return match serve_node(shared, rest, &req)? {
            Some(object) => respond(&mut conn, "200 OK", &object),
            None => respond(&mut conn, "404 Not Found", &not_found),
        };
    }
    let Some(c) = COLLECTIONS.iter().position(|c| c.0 == req.path) else {
        return respond(&mut conn, "404 Not Found", &not_found);
    };
    if req.query.get("watch").map(String::as_str) == Some("true") {
        watch(conn, shared, stop, c, &req)
    } else {
        list(conn, shared, c, &req)
    }
}

/// `GET nodes/<name>` or `PATCH nodes/<name>/status`: the Node as it is (after the
/// patch), `None` if there is no such Node or request.
fn serve_node(shared: &Shared, rest: &str, req: &Request) -> Result<Option<Value>> {
    let (name, status) = match rest.strip_suffix("/status") {
        Some(name) => (name, true),
        None => (rest, false),
    };
    // One lock for read, merge and store: a change made meanwhile is not lost.
    let mut st = lock(shared);
    let Some(mut object) = st.collections[NODES].objects.get(name).cloned() else {
        return Ok(None);
    };
    match (req.method.as_str(), status) {
        ("GET", _) => Ok(Some(object)),
        ("PATCH", true) => {
            let patch: Value = serde_json::from_slice(&req.body).context("the patch")?;
            // What the status subresource lets a node change: metadata and status.
            for part in ["metadata", "status"] {
                if let Some(p) = patch.get(part) {
                    merge(&mut object[part], p, part);
                }
            }
            st.stats.patches += 1;
            let stored = put(&mut st, NODES, object);
            shared.1.notify_all();
            Ok(Some(stored))
        }
        _ => Ok(None),
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
