//! Render workers as real processes, for fault tests that kill them: this
//! package's `render-worker` binary (the render service's main), configured
//! through its environment, pointed at a test cluster's NATS and store.

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
        let mut command = Command::new(binary);
        command
            .env("REELMESH_RENDER_NATS_URL", nats_url)
            .env("REELMESH_RENDER_STORE_URL", store_url)
            .env("REELMESH_RENDER_LISTEN", "127.0.0.1:0")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null());
        for (name, value) in settings {
            command.env(format!("REELMESH_RENDER_{name}"), value);
        }
        let child = command.spawn().context("starting reelmesh-render")?;
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
        let pid = i32::try_from(self.child.id())?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        Ok(self.child.wait()?)
    }
}
