//! Waiting for ovs-vswitchd to apply a configuration (`cur_cfg` reaching `next_cfg`) for as
//! long as it makes progress.
//!
//! A large change (thousands of ports on the userspace datapath) can keep ovs-vswitchd busy
//! for a long time, and it writes nothing to OVSDB until it is done. So the wait has a bound
//! that grows with the change, and past that bound it goes on while ovs-vswitchd visibly works
//! (its CPU time grows); a stopped (SIGSTOP) or vanished ovs-vswitchd ends the wait early.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::info;

use super::client::{Client, OvsdbError};

/// The bound for a change of `work` OVS rows: this much…
const BASE: Duration = Duration::from_secs(10);
/// …plus this much per row.
const PER_ROW: Duration = Duration::from_millis(20);
/// Never wait longer than this, progress or not.
const HARD_CAP: Duration = Duration::from_secs(15 * 60);
/// Past the bound, give up when ovs-vswitchd's CPU time has not grown for this long.
const STALL: Duration = Duration::from_secs(5);
/// A stopped ovs-vswitchd is given this long before the wait ends.
const STOPPED: Duration = Duration::from_secs(3);
const SAMPLE: Duration = Duration::from_millis(500);

/// State and CPU time of a process, from `/proc/<pid>/stat`.
fn sample(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the state.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((state, ticks))
}

fn is_vswitchd(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim_end() == "ovs-vswitchd")
}

/// The ovs-vswitchd that serves this OVSDB: its pidfile beside the database socket (OVS's
/// run directory), else the one process of that name in our network namespace.
pub(crate) fn find(db_socket: &Path) -> Option<i32> {
    let from_pidfile = db_socket
        .parent()
        .map(|d| d.join("ovs-vswitchd.pid"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|pid| is_vswitchd(*pid));
    if from_pidfile.is_some() {
        return from_pidfile;
    }
    let netns = |pid: &str| {
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .ok()
            .map(|m| m.ino())
    };
    let ours = netns("self")?;
    let mut found = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| is_vswitchd(*pid) && netns(&pid.to_string()) == Some(ours));
    let pid = found.next()?;
    found.next().is_none().then_some(pid)
}

/// How the wait for one configuration is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Wait,
    GiveUp(&'static str),
}

/// The waiting policy, kept apart from the clock and /proc so it can be tested.
#[derive(Debug)]
struct Progress {
    bound: Duration,
    last_ticks: Option<u64>,
    /// When the CPU time last grew (or the wait began).
    grew_at: Duration,
    stopped_since: Option<Duration>,
}

impl Progress {
    fn new(work: usize) -> Self {
        Progress {
            bound: (BASE + PER_ROW * work as u32).min(HARD_CAP),
            last_ticks: None,
            grew_at: Duration::ZERO,
            stopped_since: None,
        }
    }

    /// Take one sample (`None`: the process cannot be seen) at `now` since the wait began.
    fn step(&mut self, now: Duration, sample: Option<(char, u64)>) -> Verdict {
        if let Some((state, ticks)) = sample {
            if self.last_ticks.is_some_and(|t| ticks > t) {
                self.grew_at = now;
            }
            self.last_ticks = Some(ticks);
            if matches!(state, 'T' | 't') {
                let since = *self.stopped_since.get_or_insert(now);
                if now - since >= STOPPED {
                    return Verdict::GiveUp("ovs-vswitchd is stopped");
                }
            } else {
                self.stopped_since = None;
            }
        }
        if now >= HARD_CAP {
            return Verdict::GiveUp("the longest wait is over");
        }
        if now < self.bound {
            return Verdict::Wait;
        }
        match sample {
            Some(_) if now - self.grew_at < STALL => Verdict::Wait,
            Some(_) => Verdict::GiveUp("ovs-vswitchd made no progress"),
            None => Verdict::GiveUp("ovs-vswitchd cannot be seen working"),
        }
    }
}

fn cur_cfg(update: &Value) -> Option<i64> {
    update
        .get("Open_vSwitch")?
        .as_object()?
        .values()
        .find_map(|row| row.get("new")?.get("cur_cfg")?.as_i64())
}

/// Wait until `Open_vSwitch.cur_cfg >= next_cfg`, i.e. ovs-vswitchd has applied a change of
/// `work` rows; see the module documentation for how long.
pub async fn wait_applied(client: &Client, next_cfg: i64, work: usize) -> Result<(), OvsdbError> {
    let monitor_id = format!("l2s-vnf-cfg-{next_cfg}");
    let (initial, mut updates) = client
        .monitor(
            &monitor_id,
            json!({"Open_vSwitch": {"columns": ["cur_cfg"]}}),
        )
        .await?;
    let mut done = cur_cfg(&initial).is_some_and(|c| c >= next_cfg);
    let started = tokio::time::Instant::now();
    let pid = find(client.path());
    let mut progress = Progress::new(work);
    let mut tick = tokio::time::interval(SAMPLE);
    let mut next_log = Duration::from_secs(5);
    while !done {
        tokio::select! {
            u = updates.recv() => match u {
                Some(u) => done = cur_cfg(&u).is_some_and(|c| c >= next_cfg),
                None => return Err(OvsdbError::Closed(client.path().to_path_buf())),
            },
            _ = tick.tick() => {
                let now = started.elapsed();
                match progress.step(now, pid.and_then(sample)) {
                    Verdict::Wait if now >= next_log => {
                        info!(config = next_cfg, secs = now.as_secs(), rows = work, "waiting for ovs-vswitchd to apply the change; it is working");
                        next_log += Duration::from_secs(5);
                    }
                    Verdict::Wait => {}
                    Verdict::GiveUp(why) => {
                        let _ = client.monitor_cancel(&monitor_id).await;
                        return Err(OvsdbError::Rpc {
                            method: "wait for ovs-vswitchd".into(),
                            error: format!(
                                "ovs-vswitchd did not apply configuration {next_cfg} ({work} rows) within {:.1} s: {why}{}",
                                now.as_secs_f64(),
                                pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
                            ),
                        });
                    }
                }
            }
        }
    }
    client.monitor_cancel(&monitor_id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn the_bound_grows_with_the_change() {
        assert_eq!(Progress::new(0).bound, BASE);
        assert_eq!(Progress::new(1000).bound, BASE + s(20.0));
        assert_eq!(Progress::new(usize::MAX >> 40).bound, HARD_CAP);
    }

    #[test]
    fn a_working_vswitchd_is_waited_for_past_the_bound() {
        let mut p = Progress::new(0);
        let mut ticks = 0;
        for i in 0..100 {
            ticks += 10;
            assert_eq!(p.step(s(i as f64 * 0.5), Some(('R', ticks))), Verdict::Wait);
        }
        // Then it stops growing: given up STALL after the last growth, not before.
        let last = s(49.5);
        assert_eq!(p.step(last + s(4.0), Some(('S', ticks))), Verdict::Wait);
        assert!(matches!(
            p.step(last + STALL, Some(('S', ticks))),
            Verdict::GiveUp("ovs-vswitchd made no progress")
        ));
    }

    #[test]
    fn a_stopped_vswitchd_ends_the_wait_early() {
        let mut p = Progress::new(10_000);
        assert_eq!(p.step(s(0.0), Some(('T', 5))), Verdict::Wait);
        assert_eq!(p.step(s(2.5), Some(('T', 5))), Verdict::Wait);
        assert_eq!(
            p.step(s(3.0), Some(('T', 5))),
            Verdict::GiveUp("ovs-vswitchd is stopped")
        );
    }

    #[test]
    fn an_invisible_vswitchd_gets_the_bound_only() {
        let mut p = Progress::new(0);
        assert_eq!(p.step(s(9.9), None), Verdict::Wait);
        assert!(matches!(p.step(s(10.0), None), Verdict::GiveUp(_)));
    }

    #[test]
    fn proc_stat_is_read() {
        let (state, _) = sample(std::process::id() as i32).unwrap();
        assert!(state.is_ascii_alphabetic());
    }
}
