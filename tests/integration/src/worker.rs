//! Render workers (and notify) as real processes, for fault tests that kill
//! them: this package's `render-worker` and `notify` binaries (the
//! services' mains), configured through their environment, pointed at a
//! test cluster's NATS and store.

use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

/// A running `reelmesh-render` process; killed on drop.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl WorkerProcess {
    /// Starts `binary` (a test's `env!("CARGO_BIN_EXE_render-worker")`;
    /// only integration tests are told where it is) on `nats_url` and
    /// `store_url`, with settings as `REELMESH_RENDER_*` variables (e.g.
    /// `("TOPOLOGY__WORK_ACK_WAIT", "2")`).
    pub fn spawn(
        binary: &str,
        nats_url: &str,
        store_url: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let store = [("STORE_URL", store_url)];
        let all: Vec<_> = store.iter().chain(settings).copied().collect();
        Self::spawn_service(binary, "RENDER", nats_url, &all)
    }

    /// Starts the notify service's `binary` (`env!("CARGO_BIN_EXE_notify")`)
    /// on `nats_url`, with `REELMESH_NOTIFY_*` settings.
    pub fn spawn_notify(
        binary: &str,
        nats_url: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::spawn_service(binary, "NOTIFY", nats_url, settings)
    }

    fn spawn_service(
        binary: &str,
        service: &str,
        nats_url: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command
            .env(format!("REELMESH_{service}_NATS_URL"), nats_url)
            .env(format!("REELMESH_{service}_LISTEN"), "127.0.0.1:0")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null());
        for (name, value) in settings {
            command.env(format!("REELMESH_{service}_{name}"), value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        Ok(WorkerProcess { child })
    }

    /// SIGKILL: the worker gets no chance to hand anything back.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Waits for the process to exit by itself (e.g. refusing its config).
    pub fn wait(mut self) -> anyhow::Result<std::process::ExitStatus> {
        Ok(self.child.wait()?)
    }

    /// SIGTERM, then waits for the process to exit by itself.
    pub fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal("TERM")?;
        Ok(self.child.wait()?)
    }

    /// SIGSTOP: the worker stalls as a stuck one would, holding its jobs
    /// without a heartbeat, until [`WorkerProcess::resume`].
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// SIGCONT after [`WorkerProcess::pause`].
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        Ok(reelmesh_nats::server::signal(self.child.id(), name)?)
    }
}
