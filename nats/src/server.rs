//! Runs a local nats-server process: for tests (own port, own store dir,
//! stopped on drop) and for the all-in-one `reelmesh dev` mode.
//!
//! Readiness is read from the server's own log ("Server is ready") rather
//! than guessed with sleeps, and the port is the one it reports binding.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::NatsError;

/// The oldest server whose JetStream features we rely on (KV via current
/// async-nats, multi-filter consumers).
pub const MIN_SERVER_VERSION: (u32, u32) = (2, 11);

#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    port: u16,
    store_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// Starts a server on a free loopback port with JetStream in a fresh
    /// temporary directory that is removed on drop.
    pub fn start_temporary() -> Result<Self, NatsError> {
        let temp = tempfile::tempdir().map_err(|err| NatsError::Server(err.to_string()))?;
        let mut server = Self::start_in(temp.path(), 0)?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// Starts a server keeping its JetStream files in `store_dir`; port 0
    /// lets the server pick a free one.
    pub fn start_in(store_dir: &Path, port: u16) -> Result<Self, NatsError> {
        let binary = find_binary()?;
        let port_arg = if port == 0 {
            "-1".to_string()
        } else {
            port.to_string()
        };
        let mut child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| NatsError::Server(format!("cannot run {}: {err}", binary.display())))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| NatsError::Server("no stderr".into()))?;
        match wait_until_ready(stderr) {
            Ok(port) => Ok(NatsServer {
                child,
                port,
                store_dir: store_dir.to_path_buf(),
                _temp: None,
            }),
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(err)
            }
        }
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and starts it
    /// again on the same port with the same JetStream files, as after a
    /// crash. For fault tests.
    pub fn restart(&mut self) -> Result<(), NatsError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut fresh = Self::start_in(&self.store_dir, self.port)?;
        // `fresh` goes with the dead child; it owns no directory to remove.
        std::mem::swap(&mut self.child, &mut fresh.child);
        Ok(())
    }

    /// SIGSTOP: the server keeps its connections but answers nothing, as
    /// one that hangs would, until [`NatsServer::resume`]. For fault tests.
    /// Returns once every thread of the server has stopped: `kill` only
    /// queues the signal, and a server still running for a moment would
    /// answer what a test sends it next.
    pub fn pause(&self) -> Result<(), NatsError> {
        self.signal("STOP")?;
        self.wait_until_stopped(true)
    }

    pub fn resume(&self) -> Result<(), NatsError> {
        self.signal("CONT")?;
        self.wait_until_stopped(false)
    }

    /// Waits (up to 10 s) until all the server's threads are stopped
    /// (`stopped`), or none is, as /proc tells.
    fn wait_until_stopped(&self, stopped: bool) -> Result<(), NatsError> {
        let tasks = format!("/proc/{}/task", self.child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let states = thread_states(&tasks)
                .map_err(|err| NatsError::Server(format!("reading {tasks}: {err}")))?;
            if states.iter().all(|&state| (state == 'T') == stopped) {
                return Ok(());
            }
            std::thread::yield_now();
        }
        Err(NatsError::Server(format!(
            "nats-server did not {} within 10 s",
            if stopped { "stop" } else { "resume" }
        )))
    }

    fn signal(&self, name: &str) -> Result<(), NatsError> {
        signal(self.child.id(), name)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the server log on a thread (it keeps logging after start-up and
/// must not block on a full pipe) until the ready line, or fails if the
/// server exits or stays silent for too long.
fn wait_until_ready(stderr: std::process::ChildStderr) -> Result<u16, NatsError> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut port = None;
        let mut ready = false;
        let mut log = Vec::new();
        // Keeps reading after start-up too, so the server never blocks on a
        // full log pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if ready {
                continue;
            }
            port = port.or_else(|| parse_client_port(&line));
            if let Some(version) = parse_version(&line).filter(|v| *v < MIN_SERVER_VERSION) {
                let _ = tx.send(Err(format!(
                    "nats-server {}.{} is too old; reelmesh needs >= {}.{} (run scripts/setup.sh)",
                    version.0, version.1, MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
                )));
                ready = true;
            } else if line.contains("Server is ready") {
                let _ = tx.send(port.ok_or_else(|| "server did not report its port".to_string()));
                ready = true;
            }
            log.push(line);
        }
        if !ready {
            let _ = tx.send(Err(format!("nats-server exited: {}", log.join("\n"))));
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(result) => result.map_err(NatsError::Server),
        Err(_) => Err(NatsError::Server(
            "nats-server did not become ready in 30 s".into(),
        )),
    }
}

fn parse_client_port(line: &str) -> Option<u16> {
    let rest = line.split("Listening for client connections on ").nth(1)?;
    rest.trim().rsplit(':').next()?.parse().ok()
}

fn parse_version(line: &str) -> Option<(u32, u32)> {
    let rest = line.split("Version:").nth(1)?.trim();
    let mut parts = rest.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// `REELMESH_NATS_SERVER`, else `nats-server` on PATH, else the copy that
/// scripts/setup.sh installs under `.tools/` of the checkout.
fn find_binary() -> Result<PathBuf, NatsError> {
    if let Some(path) = std::env::var_os("REELMESH_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file());
    if let Some(path) = on_path {
        return Ok(path);
    }
    let cwd = std::env::current_dir().map_err(|err| NatsError::Server(err.to_string()))?;
    cwd.ancestors()
        .map(|dir| dir.join(".tools/venv/bin/nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            NatsError::Server(
                "nats-server not found: run scripts/setup.sh or set REELMESH_NATS_SERVER".into(),
            )
        })
}

/// Sends signal `name` (`TERM`, `STOP`, ...) to process `pid`, as fault
/// tests do to the server and to service processes.
pub fn signal(pid: u32, name: &str) -> Result<(), NatsError> {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .map_err(|err| NatsError::Server(format!("kill -{name}: {err}")))?;
    match status.success() {
        true => Ok(()),
        false => Err(NatsError::Server(format!("kill -{name} {pid} failed"))),
    }
}

/// The state letter (R, S, T, ...) of every thread under a /proc task dir.
fn thread_states(tasks: &str) -> std::io::Result<Vec<char>> {
    let mut states = Vec::new();
    for task in std::fs::read_dir(tasks)? {
        let stat = std::fs::read_to_string(task?.path().join("stat"))?;
        // "<tid> (<comm>) <state> ...": the comm may hold spaces.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        states.extend(after.trim_start().chars().next());
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_port_and_version_from_the_log() {
        let line = "[1] 2026/11/23 00:00:00.000000 [INF] Listening for client connections on 127.0.0.1:41234";
        assert_eq!(parse_client_port(line), Some(41234));
        let line = "[1] 2026/11/23 00:00:00.000000 [INF]   Version:  2.15.1";
        assert_eq!(parse_version(line), Some((2, 15)));
        assert!(parse_version("[INF]   Version:  2.9.10").is_some_and(|v| v < MIN_SERVER_VERSION));
    }
}
