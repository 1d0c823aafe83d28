//! What callers may hold at once: a process-wide budget of buffered request bytes and requests
//! in flight, derived from the container's memory limit, and each peer address's share of it.
//!
//! Every request body the listener reads is counted against both the process's budget and its
//! peer's share before it is buffered, and released when the request is answered. A request
//! that does not fit is refused with `503` and `Retry-After` (before its body is read when it
//! declares a `Content-Length`), and the refusal is counted. The shares are sized so the API
//! server's own traffic always fits in its share, while one flooding address can take only its
//! share: a Pod elsewhere in the cluster cannot OOM-kill the injector or crowd out the API
//! server (see `docs/security.md`, "Hostile callers").
//!
//! The accounting is synchronous and lock-free on the request path (a mutex only on connect
//! and disconnect), so it is tested here without sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::webhook::handler::MAX_BODY_BYTES;

/// The part of the container's memory limit that request bodies may occupy. A buffered body is
/// copied once when collected and decoded into objects a small multiple of its size, on as many
/// threads as the runtime has; a quarter leaves that and the process's own ~20 MiB in the limit.
pub const LIMIT_FRACTION_FOR_BODIES: u64 = 4;
/// Without a memory limit (a bare process, or a container without one), this is the budget.
pub const UNLIMITED_BODY_BUDGET: usize = 256 * 1024 * 1024;
/// Requests in flight per byte of budget: an AdmissionReview for a typical Pod is 5–30 KiB, so
/// one request per 32 KiB lets the whole budget serve typical Pods before the count refuses.
pub const BYTES_PER_REQUEST_SLOT: usize = 32 * 1024;
/// One peer address may hold this share (1/N) of the process's bytes and requests.
pub const PEER_SHARE: usize = 4;
/// ...but never less than one largest request: the API server must always be able to send the
/// largest Pod etcd can store.
pub const PEER_MIN_BYTES: usize = MAX_BODY_BYTES;
/// Requests in flight and open connections one peer may hold, whatever the budget. The API
/// server runs at most `--max-mutating-requests-inflight` (200 by default) mutating requests at
/// once, each making one webhook call on its own connection (HTTP/1.1) or stream (HTTP/2), so
/// its own address never reaches 256; a flood from one address stops there.
pub const PEER_MAX_REQUESTS: usize = 256;
pub const PEER_MAX_CONNECTIONS: usize = 256;

/// Why a request or connection was refused (the `reason` label of
/// `pullsecret_injector_requests_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The process's buffered-bytes budget is spent.
    Memory,
    /// This peer's share of the bytes is spent.
    PeerMemory,
    /// The process's requests-in-flight budget is spent.
    Requests,
    /// This peer already has its maximum of requests in flight.
    PeerRequests,
    /// This peer already holds its maximum of open connections.
    PeerConnections,
    /// A request body on a listener that takes none (the admin port).
    BodyNotAccepted,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Memory => "memory",
            Refusal::PeerMemory => "peer_memory",
            Refusal::Requests => "requests",
            Refusal::PeerRequests => "peer_requests",
            Refusal::PeerConnections => "peer_connections",
            Refusal::BodyNotAccepted => "body_not_accepted",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Memory => "the injector's request memory budget is spent; retry",
            Refusal::PeerMemory => "this client's share of the request memory budget is spent",
            Refusal::Requests => "too many requests in flight; retry",
            Refusal::PeerRequests => "too many requests in flight from this client",
            Refusal::PeerConnections => "too many connections from this client",
            Refusal::BodyNotAccepted => "this endpoint takes no request body",
        })
    }
}

impl std::error::Error for Refusal {}

/// The limits a [`Budget`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Request body bytes buffered at once, process-wide.
    pub bytes: usize,
    /// Requests in flight, process-wide.
    pub requests: usize,
    /// Per peer address.
    pub peer_bytes: usize,
    pub peer_requests: usize,
    pub peer_connections: usize,
}

impl BudgetLimits {
    /// The limits for a body budget of `bytes` (from `--memory-budget`, or derived from the
    /// container's memory limit by [`body_budget_for`]).
    pub fn for_body_budget(bytes: usize) -> Self {
        let bytes = bytes.max(MAX_BODY_BYTES);
        let requests = (bytes / BYTES_PER_REQUEST_SLOT).max(PEER_MAX_REQUESTS);
        Self {
            bytes,
            requests,
            peer_bytes: (bytes / PEER_SHARE).max(PEER_MIN_BYTES).min(bytes),
            peer_requests: (requests / PEER_SHARE).clamp(1, PEER_MAX_REQUESTS),
            peer_connections: PEER_MAX_CONNECTIONS,
        }
    }

    /// A listener that takes no request bodies (the admin port): `connections` per peer and
    /// requests in flight.
    pub fn bodiless(requests: usize, peer_connections: usize) -> Self {
        Self {
            bytes: 0,
            requests,
            peer_bytes: 0,
            peer_requests: requests,
            peer_connections,
        }
    }
}

/// The body budget for a container memory limit (`None`: no limit).
pub fn body_budget_for(memory_limit: Option<u64>) -> usize {
    match memory_limit {
        Some(limit) => usize::try_from(limit / LIMIT_FRACTION_FOR_BODIES).unwrap_or(usize::MAX),
        None => UNLIMITED_BODY_BUDGET,
    }
}

/// The memory limit of the cgroup this process runs in: cgroup v2's `memory.max`, else v1's
/// `memory.limit_in_bytes`, under `root` (`/sys/fs/cgroup`), at the path `self_cgroup`
/// (`/proc/self/cgroup`) names, else at the root (a container whose cgroup namespace or bind
/// mount shows its own cgroup there). `None` when there is none or it cannot be read: then
/// the fixed default budget applies.
pub fn cgroup_memory_limit(root: &Path, self_cgroup: &str) -> Option<u64> {
    let read = |path: &Path| std::fs::read_to_string(path).ok();
    let within = |dir: &Path, path: &str, file: &str| {
        [
            dir.join(path.trim_start_matches('/')).join(file),
            dir.join(file),
        ]
    };
    for line in self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let found = if controllers.is_empty() {
            within(root, path, "memory.max")
                .iter()
                .find_map(|f| read(f))
        } else if controllers.split(',').any(|c| c == "memory") {
            within(&root.join("memory"), path, "memory.limit_in_bytes")
                .iter()
                .find_map(|f| read(f))
        } else {
            None
        };
        if let Some(text) = found {
            // v2 says "max" for no limit; v1 a page-rounded i64::MAX.
            return text
                .trim()
                .parse()
                .ok()
                .filter(|&limit: &u64| limit < 1 << 62);
        }
    }
    None
}

/// [`cgroup_memory_limit`] of this process.
pub fn container_memory_limit() -> Option<u64> {
    let self_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup_memory_limit(Path::new("/sys/fs/cgroup"), &self_cgroup)
}

/// Counters shared by the process or by one peer.
#[derive(Debug, Default)]
struct Usage {
    bytes: AtomicUsize,
    requests: AtomicUsize,
    connections: AtomicUsize,
}

/// Adds `n` to `counter` if the result stays within `limit`.
fn try_add(counter: &AtomicUsize, n: usize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(n).filter(|&total| total <= limit)
        })
        .is_ok()
}

/// Called with each refusal, to count it.
pub type OnRefusal = Box<dyn Fn(Refusal) + Send + Sync>;

/// The process-wide budget and the usage of every connected peer.
pub struct Budget {
    limits: BudgetLimits,
    total: Usage,
    peers: Mutex<HashMap<IpAddr, Arc<Usage>>>,
    on_refusal: OnRefusal,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limits", &self.limits)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl Budget {
    pub fn new(limits: BudgetLimits, on_refusal: OnRefusal) -> Arc<Self> {
        Arc::new(Self {
            limits,
            total: Usage::default(),
            peers: Mutex::new(HashMap::new()),
            on_refusal,
        })
    }

    fn refused(&self, refusal: Refusal) -> Refusal {
        (self.on_refusal)(refusal);
        refusal
    }

    pub fn limits(&self) -> BudgetLimits {
        self.limits
    }

    /// Bytes buffered and requests in flight now, process-wide.
    pub fn in_use(&self) -> (usize, usize) {
        (
            self.total.bytes.load(Ordering::Acquire),
            self.total.requests.load(Ordering::Acquire),
        )
    }

    /// A new connection from `peer`, or a refusal if it already holds its maximum.
    pub fn connect(self: &Arc<Self>, peer: IpAddr) -> Result<Peer, Refusal> {
        let peer = peer.to_canonical();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let usage = peers.entry(peer).or_default().clone();
        if !try_add(&usage.connections, 1, self.limits.peer_connections) {
            return Err(self.refused(Refusal::PeerConnections));
        }
        Ok(Peer {
            budget: self.clone(),
            address: peer,
            usage,
        })
    }

    fn forget_if_unused(&self, address: IpAddr) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(usage) = peers.get(&address)
            && usage.connections.load(Ordering::Acquire) == 0
        {
            peers.remove(&address);
        }
    }
}

/// One open connection's claim on its peer's share; dropped when the connection closes.
#[derive(Debug)]
pub struct Peer {
    budget: Arc<Budget>,
    address: IpAddr,
    usage: Arc<Usage>,
}

impl Peer {
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// Starts a request, or refuses it: the peer or the process has its maximum in flight, or
    /// a declared `content_length` does not fit what is left of the byte budgets (then nothing
    /// of the body has been read). The declared length is reserved at once.
    pub fn start_request(&self, content_length: Option<usize>) -> Result<Request, Refusal> {
        let limits = &self.budget.limits;
        if !try_add(&self.usage.requests, 1, limits.peer_requests) {
            return Err(self.budget.refused(Refusal::PeerRequests));
        }
        if !try_add(&self.budget.total.requests, 1, limits.requests) {
            self.usage.requests.fetch_sub(1, Ordering::AcqRel);
            return Err(self.budget.refused(Refusal::Requests));
        }
        let request = Request {
            budget: self.budget.clone(),
            peer: self.usage.clone(),
            reserved: AtomicUsize::new(0),
            declared: content_length.unwrap_or(0),
        };
        if let Some(length) = content_length.filter(|&n| n > 0) {
            request.reserve(length)?;
        }
        Ok(request)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.usage.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.budget.forget_if_unused(self.address);
        }
    }
}

/// One request in flight and the body bytes reserved for it; released when dropped.
#[derive(Debug)]
pub struct Request {
    budget: Arc<Budget>,
    peer: Arc<Usage>,
    reserved: AtomicUsize,
    /// Bytes reserved up front from `Content-Length`; body frames consume it before reserving
    /// more (a client that sends more than it declared is charged for the excess).
    declared: usize,
}

impl Request {
    /// Reserves `n` more bytes against the peer's share and the process budget.
    pub fn reserve(&self, n: usize) -> Result<(), Refusal> {
        let limits = &self.budget.limits;
        if limits.bytes == 0 && n > 0 {
            return Err(self.budget.refused(Refusal::BodyNotAccepted));
        }
        if !try_add(&self.peer.bytes, n, limits.peer_bytes) {
            return Err(self.budget.refused(Refusal::PeerMemory));
        }
        if !try_add(&self.budget.total.bytes, n, limits.bytes) {
            self.peer.bytes.fetch_sub(n, Ordering::AcqRel);
            return Err(self.budget.refused(Refusal::Memory));
        }
        self.reserved.fetch_add(n, Ordering::AcqRel);
        Ok(())
    }

    /// Accounts a body frame of `n` bytes: covered by the declared length while it lasts,
    /// reserved on top of it after.
    pub fn received(&self, total_so_far: usize, n: usize) -> Result<(), Refusal> {
        let beyond_declared = (total_so_far + n).saturating_sub(self.declared.max(total_so_far));
        if beyond_declared == 0 {
            return Ok(());
        }
        self.reserve(beyond_declared)
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let n = self.reserved.load(Ordering::Acquire);
        self.peer.bytes.fetch_sub(n, Ordering::AcqRel);
        self.budget.total.bytes.fetch_sub(n, Ordering::AcqRel);
        self.peer.requests.fetch_sub(1, Ordering::AcqRel);
        self.budget.total.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const MIB: usize = 1024 * 1024;
    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn budgets_follow_the_memory_limit() {
        // (container memory limit, body budget, requests, peer bytes, peer requests)
        let table: &[(Option<u64>, usize, usize, usize, usize)] = &[
            // The chart's default limit: 32 MiB of bodies, 8 MiB per peer.
            (Some(128 * MIB as u64), 32 * MIB, 1024, 8 * MIB, 256),
            // Small limits still take one largest request, from any one peer.
            (
                Some(16 * MIB as u64),
                MAX_BODY_BYTES,
                256,
                MAX_BODY_BYTES,
                64,
            ),
            (Some(512 * MIB as u64), 128 * MIB, 4096, 32 * MIB, 256),
            (None, 256 * MIB, 8192, 64 * MIB, 256),
        ];
        for &(limit, bytes, requests, peer_bytes, peer_requests) in table {
            let limits = BudgetLimits::for_body_budget(body_budget_for(limit));
            assert_eq!(
                (
                    limits.bytes,
                    limits.requests,
                    limits.peer_bytes,
                    limits.peer_requests
                ),
                (bytes, requests, peer_bytes, peer_requests),
                "limit {limit:?}"
            );
            assert_eq!(limits.peer_connections, PEER_MAX_CONNECTIONS);
        }
    }

    #[test]
    fn cgroup_limits_are_read_where_the_process_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let write = |path: &str, text: &str| {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        let v1 = "12:memory:/bench/flood\n11:cpu,cpuacct:/bench\n0::/init.scope\n";
        let v2 = "0::/kubepods/pod1/c1\n";
        assert_eq!(cgroup_memory_limit(root, v1), None, "nothing mounted");
        // v1, the root says unlimited, the process's own cgroup has the limit.
        write("memory/memory.limit_in_bytes", "9223372036854771712\n");
        assert_eq!(cgroup_memory_limit(root, v1), None, "v1 unlimited");
        write("memory/bench/flood/memory.limit_in_bytes", "134217728\n");
        assert_eq!(cgroup_memory_limit(root, v1), Some(128 * MIB as u64));
        // A container's own cgroup mounted at the root (no matching path inside).
        write("memory/memory.limit_in_bytes", "268435456\n");
        assert_eq!(
            cgroup_memory_limit(root, "5:memory:/docker/abc\n"),
            Some(256 * MIB as u64)
        );
        // v2: "max" is no limit; a number is.
        write("memory.max", "max\n");
        assert_eq!(cgroup_memory_limit(root, v2), None, "v2 unlimited");
        write("kubepods/pod1/c1/memory.max", "67108864\n");
        assert_eq!(cgroup_memory_limit(root, v2), Some(64 * MIB as u64));
        assert_eq!(cgroup_memory_limit(root, "garbage"), None);
    }

    fn small() -> Arc<Budget> {
        Budget::new(
            BudgetLimits {
                bytes: 100,
                requests: 4,
                peer_bytes: 60,
                peer_requests: 3,
                peer_connections: 2,
            },
            Box::new(|_| {}),
        )
    }

    #[test]
    fn one_peer_cannot_take_more_than_its_share() {
        let budget = small();
        let flood = budget.connect(A).expect("a");
        let _second = budget.connect(A).expect("a, second connection");
        assert_eq!(budget.connect(A).map(|_| ()), Err(Refusal::PeerConnections));
        let big = flood.start_request(Some(60)).expect("fits the share");
        assert_eq!(
            flood.start_request(Some(1)).map(|_| ()),
            Err(Refusal::PeerMemory)
        );
        let _r2 = flood.start_request(None).expect("no body yet");
        let _r3 = flood.start_request(None).expect("third request");
        assert_eq!(
            flood.start_request(None).map(|_| ()),
            Err(Refusal::PeerRequests)
        );
        // Another address still gets its own share.
        let api_server = budget.connect(B).expect("b");
        let request = api_server.start_request(Some(40)).expect("b's request");
        assert_eq!(budget.in_use(), (100, 4));
        // The process budget is now spent, for everyone.
        assert_eq!(
            api_server.start_request(None).map(|_| ()),
            Err(Refusal::Requests)
        );
        drop((big, request));
        assert_eq!(budget.in_use(), (0, 2));
    }

    #[test]
    fn bodies_without_a_length_are_charged_as_they_arrive() {
        let budget = small();
        let peer = budget.connect(A).expect("a");
        let request = peer.start_request(None).expect("start");
        request.received(0, 30).expect("first frame");
        request.received(30, 30).expect("second frame");
        assert_eq!(request.received(60, 1), Err(Refusal::PeerMemory));
        drop(request);
        assert_eq!(budget.in_use(), (0, 0));
        // A declared length covers its frames; bytes beyond it are charged on top.
        let request = peer.start_request(Some(20)).expect("declared");
        request.received(0, 20).expect("covered");
        assert_eq!(budget.in_use().0, 20);
        request
            .received(20, 10)
            .expect("beyond the declared length");
        assert_eq!(budget.in_use().0, 30);
    }

    #[test]
    fn peers_are_forgotten_when_their_last_connection_closes() {
        let budget = small();
        let first = budget.connect(A).expect("a");
        let second = budget.connect(A).expect("a");
        drop(first);
        assert_eq!(budget.peers.lock().expect("lock").len(), 1);
        drop(second);
        assert!(budget.peers.lock().expect("lock").is_empty());
        // IPv4-mapped IPv6 is the same peer as its IPv4 address.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        let _a = budget.connect(A).expect("a");
        let _b = budget.connect(mapped).expect("mapped");
        assert_eq!(budget.connect(A).map(|_| ()), Err(Refusal::PeerConnections));
    }

    #[test]
    fn a_bodiless_listener_refuses_any_body() {
        let counted = Arc::new(AtomicUsize::new(0));
        let count = counted.clone();
        let budget = Budget::new(
            BudgetLimits::bodiless(8, 4),
            Box::new(move |_| {
                count.fetch_add(1, Ordering::AcqRel);
            }),
        );
        let peer = budget.connect(A).expect("a");
        let request = peer.start_request(None).expect("a GET");
        assert_eq!(request.received(0, 1), Err(Refusal::BodyNotAccepted));
        assert_eq!(
            peer.start_request(Some(5)).map(|_| ()),
            Err(Refusal::BodyNotAccepted)
        );
        assert_eq!(
            counted.load(Ordering::Acquire),
            2,
            "every refusal is counted"
        );
    }
}
