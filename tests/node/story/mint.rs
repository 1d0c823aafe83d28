//! The test's stand-in for a cloud's token service (s7_minted_credentials): the plugin psi-mint
//! (tests/node/mint-provider.c), run by the controller, POSTs each CredentialProviderRequest
//! here. Each request mints a fresh credential the private registry accepts for `life` only:
//! a new user `mint-N` with a random password, added (bcrypt, `htpasswd -niB`, the password on
//! stdin) to the registry's htpasswd file and removed from it `life` later. The registry
//! (distribution 2.8) re-reads that file when its modification time changes, at the next
//! request (tests/node/README.md, Findings). The answer is the CredentialProviderResponse the
//! plugin prints: `cacheKeyType: Registry`, `cacheDuration` (shorter than `life`), `auth` for
//! the registry's host.
//!
//! The test can make it fail ([`MintService::set_failing`]: 500 to every request) and reads
//! what it did ([`MintService::mints`]). Passwords go into the journal's secret material (no
//! injector log may contain them) and are never printed. The htpasswd file is rewritten
//! atomically (a new file renamed over it), so the registry never reads half a file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::journal::Journal;

/// The users the service adds to htpasswd: `mint-1`, `mint-2`, ...
pub const USER_PREFIX: &str = "mint-";

/// One minted credential (no Debug: it holds the password).
#[derive(Clone)]
pub struct Mint {
    pub user: String,
    pub password: String,
    /// When it was minted and when it was removed from htpasswd.
    pub at: SystemTime,
    pub removed: Option<SystemTime>,
    /// What the plugin passed on: the request's image, its arguments, the names of its
    /// environment variables.
    pub image: String,
    pub args: String,
    pub env: String,
}

#[derive(Default)]
struct State {
    mints: Vec<Mint>,
    /// When requests were answered 500 (while failing).
    refused: Vec<SystemTime>,
    /// Requests that were not a CredentialProviderRequest (answered 400).
    bad: Vec<String>,
}

struct Inner {
    htpasswd: PathBuf,
    /// How long a minted user stays in htpasswd, in milliseconds (changeable).
    life_ms: AtomicU64,
    /// `cacheDuration` of every answer, as Go writes a metav1.Duration (`4m0s`).
    cache: String,
    /// The `auth` key of every answer: the registry's host:port.
    registry: String,
    failing: AtomicBool,
    /// Numbers the users.
    next: AtomicUsize,
    state: Mutex<State>,
    /// Serialises the htpasswd rewrites.
    file: tokio::sync::Mutex<()>,
    removals: Mutex<Vec<JoinHandle<()>>>,
    journal: &'static Journal,
}

pub struct MintService {
    inner: Arc<Inner>,
    accept: JoinHandle<()>,
}

impl MintService {
    /// Listens on `bind`. Each credential lives `life` in `htpasswd`; answers say `cache`.
    pub async fn start(
        bind: SocketAddr,
        htpasswd: &Path,
        registry: &str,
        life: Duration,
        cache: &str,
        journal: &'static Journal,
    ) -> Result<Self> {
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("mint service: binding {bind}"))?;
        let inner = Arc::new(Inner {
            htpasswd: htpasswd.to_path_buf(),
            life_ms: AtomicU64::new(life.as_millis() as u64),
            cache: cache.to_string(),
            registry: registry.to_string(),
            failing: AtomicBool::new(false),
            next: AtomicUsize::new(1),
            state: Mutex::new(State::default()),
            file: tokio::sync::Mutex::new(()),
            removals: Mutex::new(Vec::new()),
            journal,
        });
        let served = inner.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let inner = served.clone();
                tokio::spawn(async move {
                    let _ = serve(&inner, stream).await;
                });
            }
        });
        Ok(Self { inner, accept })
    }

    /// From now on every request is answered 500 (`true`), or minted again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.inner.failing.store(failing, Ordering::SeqCst);
    }

    /// How long credentials minted from now on stay in htpasswd.
    pub fn set_life(&self, life: Duration) {
        self.inner
            .life_ms
            .store(life.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn mints(&self) -> Vec<Mint> {
        self.inner.lock().mints.clone()
    }

    /// When the requests answered 500 came.
    pub fn refused(&self) -> Vec<SystemTime> {
        self.inner.lock().refused.clone()
    }

    pub fn bad_requests(&self) -> Vec<String> {
        self.inner.lock().bad.clone()
    }

    /// Stops listening, cancels the pending removals and takes every minted user out of
    /// htpasswd (the registry's own user stays).
    pub async fn stop(&self) {
        self.accept.abort();
        for task in std::mem::take(
            &mut *self
                .inner
                .removals
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        ) {
            task.abort();
        }
        let _ = self
            .inner
            .rewrite(|line| !line.starts_with(USER_PREFIX))
            .await;
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rewrites htpasswd keeping the lines `keep` accepts, then appends `add`: a new file
    /// renamed over the old one (a new modification time, which the registry checks).
    async fn rewrite_with(&self, keep: impl Fn(&str) -> bool, add: Option<&str>) -> Result<()> {
        let _guard = self.file.lock().await;
        let text = tokio::fs::read_to_string(&self.htpasswd)
            .await
            .with_context(|| format!("reading {}", self.htpasswd.display()))?;
        let mut out: String = text
            .lines()
            .filter(|l| !l.trim().is_empty() && keep(l))
            .map(|l| format!("{l}\n"))
            .collect();
        if let Some(line) = add {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let tmp = self.htpasswd.with_extension("mint.tmp");
        tokio::fs::write(&tmp, out).await?;
        tokio::fs::rename(&tmp, &self.htpasswd).await?;
        Ok(())
    }

    async fn rewrite(&self, keep: impl Fn(&str) -> bool) -> Result<()> {
        self.rewrite_with(keep, None).await
    }
}

/// A random password: 24 bytes of /dev/urandom, hex.
fn random_password() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// One connection: an HTTP/1.0 request in, one answer out.
async fn serve(inner: &Arc<Inner>, mut stream: TcpStream) -> Result<()> {
    let exchange = async {
        let (head, body) = read_request(&mut stream).await?;
        let (status, answer) = match handle(inner, &head, &body).await {
            Ok(response) => (200, response),
            Err(Refusal::Failing) => (500, "minting disabled by the test\n".to_string()),
            Err(Refusal::Bad(why)) => {
                inner.lock().bad.push(why.clone());
                (400, format!("{why}\n"))
            }
            Err(Refusal::Broken(e)) => (502, format!("mint failed: {e:#}\n")),
        };
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            500 => "Internal Server Error",
            _ => "Bad Gateway",
        };
        let content_type = if status == 200 {
            "application/json"
        } else {
            "text/plain"
        };
        stream
            .write_all(
                format!(
                    "HTTP/1.0 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                )
                .as_bytes(),
            )
            .await?;
        stream.shutdown().await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .map_err(|_| anyhow!("mint service: a connection took over 20 s"))?
}

enum Refusal {
    Failing,
    Bad(String),
    Broken(anyhow::Error),
}

/// Reads the head (up to the blank line) and the body (Content-Length bytes).
async fn read_request(stream: &mut TcpStream) -> Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let split = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        ensure!(buf.len() < 65536, "request head over 64 KiB");
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed in the request head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let length: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    ensure!(length <= 65536, "request body over 64 KiB");
    let mut body = buf[split + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed in the request body");
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok((head, body))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

async fn handle(inner: &Arc<Inner>, head: &str, body: &[u8]) -> Result<String, Refusal> {
    if !head.starts_with("POST /mint ") {
        return Err(Refusal::Bad(format!(
            "not POST /mint: {:?}",
            head.lines().next().unwrap_or_default()
        )));
    }
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::Bad(format!("the request is not JSON: {e}")))?;
    if request["apiVersion"] != "credentialprovider.kubelet.k8s.io/v1"
        || request["kind"] != "CredentialProviderRequest"
    {
        return Err(Refusal::Bad(format!(
            "not a credentialprovider.kubelet.k8s.io/v1 CredentialProviderRequest: apiVersion {}, kind {}",
            request["apiVersion"], request["kind"]
        )));
    }
    let image = request["image"]
        .as_str()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Refusal::Bad("the request names no image".into()))?
        .to_string();
    if inner.failing.load(Ordering::SeqCst) {
        inner.lock().refused.push(SystemTime::now());
        return Err(Refusal::Failing);
    }
    let mint = mint(inner, image, head).await.map_err(Refusal::Broken)?;
    Ok(json!({
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderResponse",
        "cacheKeyType": "Registry",
        "cacheDuration": inner.cache,
        "auth": {inner.registry.clone(): {"username": mint.user, "password": mint.password}},
    })
    .to_string())
}

async fn mint(inner: &Arc<Inner>, image: String, head: &str) -> Result<Mint> {
    let password = random_password()?;
    let user = format!("{USER_PREFIX}{}", inner.next.fetch_add(1, Ordering::SeqCst));
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{user}:{password}"),
    );
    inner.journal.remember_secret([password.clone(), auth]);
    let out =
        crate::tools::run("htpasswd", &["-niB", &user], Some(format!("{password}\n"))).await?;
    if !out.ok || !out.stdout.starts_with(&format!("{user}:$2")) {
        bail!("htpasswd -niB {user}: {}", out.stderr.trim());
    }
    let line = out.stdout.trim().to_string();
    let prefix = format!("{user}:");
    inner
        .rewrite_with(|l| !l.starts_with(&prefix), Some(&line))
        .await?;
    let minted = Mint {
        user: user.clone(),
        password,
        at: SystemTime::now(),
        removed: None,
        image,
        args: header(head, "x-plugin-args")
            .unwrap_or_default()
            .to_string(),
        env: header(head, "x-plugin-env").unwrap_or_default().to_string(),
    };
    inner.lock().mints.push(minted.clone());
    let later = inner.clone();
    let life = Duration::from_millis(inner.life_ms.load(Ordering::SeqCst));
    let removal = tokio::spawn(async move {
        tokio::time::sleep(life).await;
        if later.rewrite(|l| !l.starts_with(&prefix)).await.is_ok() {
            let mut state = later.lock();
            if let Some(m) = state.mints.iter_mut().find(|m| m.user == user) {
                m.removed = Some(SystemTime::now());
            }
        }
    });
    inner
        .removals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(removal);
    Ok(minted)
}
