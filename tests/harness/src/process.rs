//! Supervised server processes and the per-process scratch directory.

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Why a server could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A program the harness needs is not installed.
    #[error("{program} is not installed ({hint}); run ./scripts/test, which installs it")]
    Missing {
        /// The program.
        program: String,
        /// The package or command that provides it.
        hint: String,
    },
    /// Spawning, waiting or file system work failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A server did not become ready in time; carries the end of its log.
    #[error("{server} did not become ready within {seconds}s; last log lines:\n{log}")]
    NotReady {
        /// The server.
        server: String,
        /// How long it was given.
        seconds: u64,
        /// The tail of its log.
        log: String,
    },
    /// A setup command failed.
    #[error("{what} failed: {output}")]
    Command {
        /// The command.
        what: String,
        /// Its output.
        output: String,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// The user servers run as: `None` for the current user, or a uid/gid when running as root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Looks up a system user in /etc/passwd.
pub(crate) fn system_user(name: &str) -> Result<RunAs, HarnessError> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(io("reading /etc/passwd"))?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&name))
        .and_then(|fields| {
            Some(RunAs {
                uid: fields.get(2)?.parse().ok()?,
                gid: fields.get(3)?.parse().ok()?,
            })
        })
        .ok_or_else(|| HarnessError::Missing {
            program: format!("user `{name}`"),
            hint: "created by its Debian server package".into(),
        })
}

/// Whether this process runs as root (servers that refuse root then run as a system user).
pub(crate) fn running_as_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false)
}

/// This process's scratch directory, removed by a janitor process when this process exits.
pub(crate) fn scratch_root() -> Result<&'static Path, HarnessError> {
    static ROOT: OnceLock<Result<(PathBuf, Mutex<ChildStdin>), String>> = OnceLock::new();
    let entry = ROOT.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("kyma-test-")
            .tempdir()
            .map_err(|e| format!("creating the scratch directory: {e}"))?
            .keep();
        // World-traversable so servers running as their own users reach their directories.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        let mut janitor = Command::new("sh")
            // Servers may still be writing while they shut down: retry until the tree is gone.
            .args(["-c", JANITOR, &dir.to_string_lossy()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the scratch janitor: {e}"))?;
        let stdin = janitor.stdin.take().ok_or("the janitor has no stdin")?;
        Ok((dir, Mutex::new(stdin)))
    });
    match entry {
        Ok((dir, _)) => Ok(dir.as_path()),
        Err(message) => Err(HarnessError::Io {
            what: message.clone(),
            source: std::io::Error::other("scratch"),
        }),
    }
}

/// Waits for end of input (this process exited), then removes the scratch directory, retrying
/// for up to a minute while shutting-down servers still write into it.
const JANITOR: &str = r#"read _ignored
for _ in $(seq 300); do rm -rf -- "$0" 2>/dev/null; [ -e "$0" ] || exit 0; sleep 0.2; done"#;

/// A fresh directory under the scratch root, owned by `owner` when given.
pub(crate) fn scratch_dir(name: &str, owner: Option<RunAs>) -> Result<PathBuf, HarnessError> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(scratch_root()?)
        .map_err(io("creating a server directory"))?
        .keep();
    if let Some(owner) = owner {
        std::os::unix::fs::chown(&dir, Some(owner.uid), Some(owner.gid))
            .map_err(io("handing the server directory to its user"))?;
    }
    Ok(dir)
}

/// A free TCP port on 127.0.0.1 (bound and released; the server binds it next).
pub fn free_port() -> Result<u16, HarnessError> {
    // The OS may hand a port it just gave out (and that was released before its user bound
    // it) to the next caller: never hand one out twice in this process.
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
        let port = listener
            .local_addr()
            .map_err(io("finding a free port"))?
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return Ok(port);
        }
    }
}

/// Checks that `program` is on PATH (or is an existing path).
pub(crate) fn require(program: &str, hint: &str) -> Result<PathBuf, HarnessError> {
    let candidate = Path::new(program);
    if candidate.is_absolute() {
        return if candidate.exists() {
            Ok(candidate.to_path_buf())
        } else {
            Err(HarnessError::Missing {
                program: program.into(),
                hint: hint.into(),
            })
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // Cargo-installed tools (s3s-fs) live here even when PATH lacks it.
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.push("/usr/sbin".into());
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| HarnessError::Missing {
            program: program.into(),
            hint: hint.into(),
        })
}

/// Runs a setup command to completion, as `run_as` when given; its standard output and
/// error.
pub(crate) fn run(
    what: &str,
    command: &mut Command,
    run_as: Option<RunAs>,
) -> Result<String, HarnessError> {
    let output = output(what, command, run_as)?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// Runs a command to completion, as `run_as` when given; fails with both output streams
/// when it fails.
pub(crate) fn output(
    what: &str,
    command: &mut Command,
    run_as: Option<RunAs>,
) -> Result<std::process::Output, HarnessError> {
    if let Some(user) = run_as {
        std::os::unix::process::CommandExt::uid(command, user.uid);
        std::os::unix::process::CommandExt::gid(command, user.gid);
    }
    let output = command.stdin(Stdio::null()).output().map_err(io(what))?;
    if !output.status.success() {
        return Err(HarnessError::Command {
            what: what.into(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(output)
}

/// How to launch a server: program, arguments, user, log file, and the signal that stops it
/// cleanly.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub run_as: Option<RunAs>,
    pub log: PathBuf,
    pub stop_signal: &'static str,
}

/// A server running under its supervisor.
#[derive(Debug)]
pub struct ServerProcess {
    launch: Launch,
    running: Mutex<Option<(Child, ChildStdin)>>,
}

/// The supervisor: starts the server in the background, waits for a line (a signal name) or
/// end of input on stdin, signals the server and waits for it to exit.
const SUPERVISOR: &str = r#"log="$1"; sig="$2"; shift 2
"$@" </dev/null >>"$log" 2>&1 &
pid=$!
read -r asked || true
kill -"${asked:-$sig}" "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
exit 0"#;

impl ServerProcess {
    pub(crate) fn start(launch: Launch) -> Result<Self, HarnessError> {
        let process = Self {
            launch,
            running: Mutex::new(None),
        };
        process.spawn()?;
        Ok(process)
    }

    fn spawn(&self) -> Result<(), HarnessError> {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("kyma-supervisor")
            .arg(&self.launch.log)
            .arg(self.launch.stop_signal)
            .arg(&self.launch.program)
            .args(&self.launch.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(user) = self.launch.run_as {
            std::os::unix::process::CommandExt::uid(&mut command, user.uid);
            std::os::unix::process::CommandExt::gid(&mut command, user.gid);
        }
        let mut child = command
            .spawn()
            .map_err(io(format!("starting {}", self.launch.name)))?;
        let stdin = child.stdin.take().ok_or_else(|| HarnessError::Io {
            what: format!("starting {}", self.launch.name),
            source: std::io::Error::other("no stdin pipe"),
        })?;
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some((child, stdin));
        Ok(())
    }

    fn signal_and_wait(&self, signal: Option<&str>) -> Result<(), HarnessError> {
        let taken = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some((mut child, mut stdin)) = taken else {
            return Ok(());
        };
        if let Some(signal) = signal {
            // A supervisor that already exited has closed the pipe; waiting below still works.
            let _ = writeln!(stdin, "{signal}");
        }
        drop(stdin);
        child
            .wait()
            .map_err(io(format!("stopping {}", self.launch.name)))?;
        Ok(())
    }

    /// Stops the server cleanly and waits until it has exited. Its data stays.
    pub fn stop(&self) -> Result<(), HarnessError> {
        self.signal_and_wait(None)
    }

    /// Kills the server with SIGKILL (a crash) and waits until it has exited. Its data stays.
    pub fn kill(&self) -> Result<(), HarnessError> {
        self.signal_and_wait(Some("KILL"))
    }

    /// Starts the server again with the same arguments (same port and data).
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.stop()?;
        self.spawn()
    }

    /// Starts the server again after [`ServerProcess::stop`] or [`ServerProcess::kill`].
    pub fn start_again(&self) -> Result<(), HarnessError> {
        self.spawn()
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.launch.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Polls `ready` until it holds or `timeout` passes; the error carries the log tail.
    pub(crate) fn wait_ready(
        &self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ready() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(HarnessError::NotReady {
            server: self.launch.name.clone(),
            seconds: timeout.as_secs(),
            log: self.log_tail(),
        })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub(crate) fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Sends a plain HTTP/1.0 GET and returns the response (status line, headers and body).
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}
