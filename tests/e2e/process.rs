//! Processes the tests start: scripts (chart rendering, certificates, the API server restart)
//! and the injector itself. Every injector has a pid file in `E2E_RUN/pids`, so `run.sh`
//! stops whatever a crashed test binary left behind (by pid, command line checked).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::harness::{file_len, read_from};

/// Runs a script to completion; its stdout, or an error with the end of its output.
pub async fn run_script(script: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let mut command = Command::new(script);
    command.args(args).stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let shown = format!("{} {}", script.display(), args.join(" "));
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .with_context(|| format!("running {shown}"))?;
    if !output.status.success() {
        let tail = |bytes: &[u8]| {
            let text = String::from_utf8_lossy(bytes);
            let lines: Vec<&str> = text.lines().rev().take(15).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        bail!(
            "{shown} failed ({}):\n{}\n{}",
            output.status,
            tail(&output.stdout),
            tail(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a binary with a clean environment (only `PATH`); exit status, stdout and stderr.
pub async fn run_binary(bin: &Path, args: &[&str]) -> Result<(ExitStatus, String, String)> {
    let mut command = Command::new(bin);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    let shown = format!("{} {}", bin.display(), args.join(" "));
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .with_context(|| format!("running {shown}"))?;
    Ok((
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// One injector process (`pullsecret-injector serve`), restartable.
pub struct Injector {
    /// `POD_NAME`: its identity in the Lease.
    pub identity: String,
    /// TLS (webhook) port.
    pub port: u16,
    /// Admin (plain HTTP) port.
    pub admin_port: u16,
    pub log: PathBuf,
    pidfile: PathBuf,
    bin: PathBuf,
    pub args: Vec<String>,
    child: Mutex<Option<Child>>,
}

impl Injector {
    pub fn new(
        identity: String,
        port: u16,
        admin_port: u16,
        log: PathBuf,
        pidfile: PathBuf,
        bin: PathBuf,
        args: Vec<String>,
    ) -> Self {
        Self {
            identity,
            port,
            admin_port,
            log,
            pidfile,
            bin,
            args,
            child: Mutex::new(None),
        }
    }

    /// Starts the process and waits for `/readyz` (20 s).
    pub async fn start(&self) -> Result<()> {
        stop_recorded(&self.pidfile);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        writeln!(
            log,
            "--- start: POD_NAME={} {} {}",
            self.identity,
            self.bin.display(),
            self.args.join(" ")
        )?;
        let offset = file_len(&self.log);
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("POD_NAME", &self.identity)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        std::fs::write(&self.pidfile, child.id().to_string())?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited()? {
                bail!(
                    "{} exited at startup ({status}): {}",
                    self.identity,
                    read_from(&self.log, offset).trim()
                );
            }
            if matches!(self.get("/readyz").await, Ok((200, _))) {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(20) {
                let reason = self.get("/readyz").await.map(|r| r.1).unwrap_or_default();
                bail!("{} not ready within 20 s: {reason}", self.identity);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The exit status, if the process has ended (reaping it).
    fn exited(&self) -> Result<Option<ExitStatus>> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Err(anyhow!("{} was never started", self.identity)),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Child::id)
    }

    pub fn running(&self) -> bool {
        matches!(self.exited(), Ok(None))
    }

    /// SIGTERM; the process must exit with status 0 within `within`.
    pub async fn stop(&self, within: Duration) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("not started"))?;
        if !self.running() {
            bail!("{} was not running", self.identity);
        }
        signal(pid, "TERM")?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited()? {
                let _ = std::fs::remove_file(&self.pidfile);
                if !status.success() {
                    bail!("{} exited with {status} after SIGTERM", self.identity);
                }
                return Ok(());
            }
            if started.elapsed() > within {
                self.kill()?;
                bail!(
                    "{} did not exit within {within:?} of SIGTERM (killed)",
                    self.identity
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&self) -> Result<()> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = child.as_mut() {
            c.kill()?;
            c.wait()?;
        }
        let _ = std::fs::remove_file(&self.pidfile);
        Ok(())
    }

    /// GET on the admin listener: status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        let (port, path) = (self.admin_port, path.to_string());
        tokio::task::spawn_blocking(move || http_get(port, &path)).await?
    }

    pub async fn metrics(&self) -> Result<String> {
        match self.get("/metrics").await? {
            (200, body) => Ok(body),
            (status, body) => bail!("{}: /metrics answered {status}: {body}", self.identity),
        }
    }

    pub async fn metric(&self, name: &str) -> Result<f64> {
        Ok(crate::api::metric(&self.metrics().await?, name))
    }

    pub fn log_len(&self) -> u64 {
        file_len(&self.log)
    }

    pub fn log_since(&self, offset: u64) -> String {
        read_from(&self.log, offset)
    }
}

fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

/// Stops a process an earlier run recorded in `pidfile`, if it is still an injector.
fn stop_recorded(pidfile: &Path) {
    let Ok(pid) = std::fs::read_to_string(pidfile) else {
        return;
    };
    let pid = pid.trim();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains("pullsecret-injector") {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_file(pidfile);
}

/// A minimal HTTP/1.0 GET (no chunking to undo) on loopback.
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status in {:?}", response.lines().next()))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
