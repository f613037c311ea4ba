//! Kernel-side costs of one measured phase: system calls and context
//! switches of a process (all its threads, including ones started during
//! the phase), counted by `perf stat` attached to it.
//!
//! CPU seconds say how much a proxy costs; these say where. A proxy that
//! wakes once per frame pays a context switch per frame however few system
//! calls it makes, and a proxy that writes in small pieces makes its peers
//! read in small pieces: the loader's own counts show that.
//!
//! perf is optional. Without it (or without permission to attach) the
//! counts are absent and the report says why, once.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// What one process did in the kernel during a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kernel {
    pub syscalls: u64,
    pub context_switches: u64,
}

/// A running `perf stat` on one process.
pub struct Counting {
    child: Child,
}

/// Why counts are missing, when they are (probed once per run).
pub fn unavailable() -> Option<&'static str> {
    static WHY: OnceLock<Option<&'static str>> = OnceLock::new();
    *WHY.get_or_init(|| {
        let ok = Command::new("perf")
            .args(["stat", "-x,", "-e", EVENTS, "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map(|o| o.status.success() && parse(&String::from_utf8_lossy(&o.stderr)).is_some());
        match ok {
            Ok(true) => None,
            Ok(false) => Some(
                "perf cannot count syscall tracepoints here (perf_event_paranoid, or no tracefs)",
            ),
            Err(_) => Some("perf is not installed (Debian: linux-perf)"),
        }
    })
}

const EVENTS: &str = "raw_syscalls:sys_enter,context-switches";

impl Counting {
    pub fn start(pid: u32) -> Option<Counting> {
        if unavailable().is_some() {
            return None;
        }
        let child = Command::new("perf")
            .args(["stat", "-x,", "-e", EVENTS, "-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        // perf attaches asynchronously: give it a moment, or the first
        // milliseconds of the phase go uncounted.
        std::thread::sleep(std::time::Duration::from_millis(50));
        Some(Counting { child })
    }

    /// Stops counting and reads the totals.
    pub fn stop(mut self) -> Option<Kernel> {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet
        // waited for, so it cannot have been reused) and a valid signal.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let mut err = String::new();
        self.child.stderr.take()?.read_to_string(&mut err).ok()?;
        let _ = self.child.wait();
        parse(&err)
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads perf's CSV output (`value,unit,event,...`).
fn parse(out: &str) -> Option<Kernel> {
    let mut k = Kernel::default();
    let (mut sys, mut cs) = (false, false);
    for line in out.lines() {
        let mut f = line.split(',');
        let (Some(v), Some(_), Some(ev)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(v) = v.trim().parse::<u64>() else {
            continue;
        };
        match ev.trim() {
            "raw_syscalls:sys_enter" => (k.syscalls, sys) = (v, true),
            "context-switches" => (k.context_switches, cs) = (v, true),
            _ => {}
        }
    }
    (sys && cs).then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_csv() {
        let out = "10034,,raw_syscalls:sys_enter,12930037,100.00,,\n7,,context-switches,12930037,100.00,,\n";
        assert_eq!(
            parse(out),
            Some(Kernel {
                syscalls: 10034,
                context_switches: 7
            })
        );
    }

    #[test]
    fn uncounted_events_are_no_figures() {
        let out =
            "<not counted>,,raw_syscalls:sys_enter,0,100.00,,\n7,,context-switches,1,100.00,,\n";
        assert_eq!(parse(out), None);
    }

    #[test]
    fn counts_this_process_when_perf_can() {
        if let Some(why) = unavailable() {
            // Not a silent pass: the reason is printed with the test output.
            eprintln!("not counted: {why}");
            return;
        }
        let c = Counting::start(std::process::id()).expect("perf starts");
        for _ in 0..2000 {
            // SAFETY: getppid takes no arguments and cannot fail.
            unsafe { libc::getppid() };
        }
        let k = c.stop().expect("perf reports");
        assert!(k.syscalls >= 2000, "{k:?}");
    }
}
