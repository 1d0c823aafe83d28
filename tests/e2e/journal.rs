//! What the e2e suite and the node suite (`tests/node/story`, which includes this file) share:
//! the one runtime, the report each scenario writes as it finishes, the secret material no
//! log may contain, and a path helper.

use std::io::Write;
use std::path::Path;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use anyhow::{Result, anyhow};

/// One runtime for the whole test binary: clients, processes and installations outlive
/// single tests.
pub static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
});

/// The suite's report (stdout, not captured by libtest, and `report.txt`), its clock, and the
/// strings that must never appear in an injector's log.
pub struct Journal {
    file: Mutex<std::fs::File>,
    secret_material: Mutex<Vec<String>>,
    started: Instant,
}

impl Journal {
    /// Appends to `path`; the clock starts now.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: Mutex::new(file),
            secret_material: Mutex::new(Vec::new()),
            started: Instant::now(),
        })
    }

    /// Records strings that must never appear in a log.
    pub fn remember_secret(&self, values: impl IntoIterator<Item = String>) {
        self.secret_material
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(values);
    }

    pub fn secret_material(&self) -> Vec<String> {
        self.secret_material
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Seconds since the suite started, for the report.
    pub fn clock(&self) -> String {
        format!("{:.1}s", self.started.elapsed().as_secs_f64())
    }

    /// Written at once to stdout and to the report file.
    pub fn report(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = file.write_all(text.as_bytes());
    }
}

pub fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))
}
