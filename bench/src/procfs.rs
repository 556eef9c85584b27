//! Resource use of server processes from `/proc`: resident memory and CPU time.

use anyhow::Context;

/// Linux reports CPU times in /proc in USER_HZ, 100 per second on every mainstream kernel.
const TICKS_PER_SECOND: f64 = 100.0;

/// Resident set size of process `pid`, in bytes (`VmRSS` in /proc/PID/status).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system) process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ticks(&stat)
        .map(|t| t as f64 / TICKS_PER_SECOND)
        .with_context(|| format!("malformed {path}"))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces; the fields after its ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Whether process `pid` is still running (not gone, not a zombie waiting to be reaped).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x") | None)
}

/// Sum of [`rss_bytes`] over processes.
pub fn total_rss(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|&p| rss_bytes(p)).sum()
}

/// Sum of [`cpu_seconds`] over processes.
pub fn total_cpu(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|&p| cpu_seconds(p)).sum()
}

/// CPU seconds used by each of `pids` over a window: [`start`](CpuWindow::start) it, then
/// [`seconds`](CpuWindow::seconds) gives each process's use since, in the order given.
#[derive(Clone, Debug)]
pub struct CpuWindow {
    pids: Vec<u32>,
    before: Vec<f64>,
}

impl CpuWindow {
    /// Reads the CPU time of every process in `pids` now.
    pub fn start(pids: &[u32]) -> anyhow::Result<Self> {
        let before = pids
            .iter()
            .map(|&p| cpu_seconds(p))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            pids: pids.to_vec(),
            before,
        })
    }

    /// CPU seconds each process used since [`start`](Self::start).
    pub fn seconds(&self) -> anyhow::Result<Vec<f64>> {
        self.pids
            .iter()
            .zip(&self.before)
            .map(|(&p, before)| Ok(cpu_seconds(p)? - before))
            .collect()
    }
}

/// CPU seconds used by this process.
pub fn own_cpu() -> anyhow::Result<f64> {
    cpu_seconds(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_from_proc_text() {
        let status = "Name:\tspine\nVmPeak:\t  100 kB\nVmRSS:\t    2048 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        let stat = "42 (tokio worker) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn this_process_is_measurable() -> anyhow::Result<()> {
        assert!(rss_bytes(std::process::id())? > 0);
        assert!(own_cpu()? >= 0.0);
        assert!(alive(std::process::id()));
        let window = CpuWindow::start(&[std::process::id()])?;
        assert!(window.seconds()?.iter().all(|s| *s >= 0.0));
        assert!(CpuWindow::start(&[u32::MAX]).is_err());
        assert!(!alive(u32::MAX));
        Ok(())
    }
}
