//! Shared by the process tests: `kyma` as a child process, killed when dropped.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kyma_test_harness::{free_port, http_get};

const KYMA: &str = env!("CARGO_BIN_EXE_kyma");

/// Runs `kyma ARGS` to completion.
pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(KYMA).args(args).output().expect("run kyma")
}

/// A `kyma` process, killed when dropped. Its log goes to a file shown when a wait fails.
pub struct Kyma {
    pub child: Child,
    pub http_port: u16,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Kyma {
    /// Starts `kyma ARGS --http-addr=…` on a free HTTP port.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    /// As [`Kyma::spawn`], with extra environment variables.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let http_port = free_port().expect("port");
        let log_dir = tempfile::tempdir().expect("log dir");
        let log = log_dir.path().join("kyma.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(KYMA)
            .args(args)
            .arg(format!("--http-addr=127.0.0.1:{http_port}"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start kyma");
        Self {
            child,
            http_port,
            log,
            _log_dir: log_dir,
        }
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `path` until it answers 200; fails if the process exits or a deadline passes.
    pub fn wait_for_200(&mut self, path: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(response) = http_get(self.http_port, path)
                && (response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"))
            {
                return response;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "kyma exited with {status} before {path} answered 200:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{path} did not answer 200 in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts that the `/metrics` of this (worker) process count rows streamed for
    /// connector `connector`.
    pub fn assert_counts_streamed_rows(&mut self, connector: &str) {
        let metrics = self.wait_for_200("/metrics");
        let series = format!("kyma_sync_rows_total{{connector=\"{connector}\"}} ");
        let streamed = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|n| n.trim().parse::<u64>().ok());
        assert!(
            streamed.is_some_and(|n| n > 0),
            "the worker counts streamed rows:\n{metrics}"
        );
    }

    /// Sends `signal` (a name such as `TERM`, `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid} failed");
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.child.wait().expect("wait")
    }

    /// Kills the process with SIGKILL (a crash) and reaps it.
    pub fn crash(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Kyma {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A two-thread runtime for the async parts of a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub mod source;
pub mod sync;
