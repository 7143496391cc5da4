//! Memory and CPU of a process, read from `/proc`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A `/proc/<pid>/status` field given in kB (VmRSS, VmHWM, ...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(value) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            return Ok(value.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    bail!("no {field} for pid {pid}")
}

/// Resident set size now, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// The largest resident set size the process ever had (the kernel's high-water mark), KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM")
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// CPU time (user + system) the process has used so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may contain spaces; the fields after it are
    // fixed. `after` starts at field 3 (state), so utime and stime (fields 14 and 15 of
    // proc(5)) are its 12th and 13th.
    let after = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// USER_HZ, the unit of [`cpu_ticks`] (100 on every Linux we know, but asked for).
pub fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system) the process has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    Ok(cpu_ticks(pid)? as f64 / clock_ticks_per_second())
}

/// CPU use of `pid` over the next `window`, as a percentage of one core.
pub async fn cpu_percent(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = cpu_seconds(pid)?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let used = cpu_seconds(pid)? - before;
    Ok(100.0 * used / started.elapsed().as_secs_f64())
}

/// Samples a process's RSS on a thread of its own until stopped, keeping the largest value:
/// VmHWM alone cannot tell the peak of one phase from an earlier one.
pub struct PeakRssSampler {
    peak: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PeakRssSampler {
    pub fn start(pid: u32, every: Duration) -> PeakRssSampler {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let running = Arc::new(AtomicBool::new(true));
        let thread = {
            let (peak, running) = (peak.clone(), running.clone());
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    if let Ok(kib) = rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(every);
                }
            })
        };
        PeakRssSampler {
            peak,
            running,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the largest RSS seen, in KiB.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.peak.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PeakRssSampler {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let rss = rss_kib(pid).unwrap();
        assert!(rss > 0);
        // The high-water mark, read later, cannot be below an earlier RSS.
        assert!(peak_rss_kib(pid).unwrap() >= rss);
        // Burn a little CPU so the counter has moved at least one tick.
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(started.elapsed());
        }
        assert!(cpu_seconds(pid).unwrap() > 0.0);
        assert!(status_kib(pid, "NoSuchField").is_err());
    }
}
