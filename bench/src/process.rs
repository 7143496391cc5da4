//! Child processes a benchmark starts, stopped by their own PID.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long a process gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A child process, stopped (SIGTERM, then SIGKILL after a grace period) when dropped, so a
/// failed benchmark leaves nothing running.
pub struct ChildProcess {
    child: Child,
    name: String,
}

impl ChildProcess {
    pub fn spawn(command: &mut Command, name: &str) -> anyhow::Result<ChildProcess> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        Ok(ChildProcess {
            child,
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it has exited (and been reaped).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// SIGTERM, so the component shuts down as in production (and cleans up after itself);
    /// SIGKILL if it is still running after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop after SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}
