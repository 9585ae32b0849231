//! The learner thread's CPU priority: when serving and training both want the CPU, serving
//! gets it first, and the learner trains with what is left.
//!
//! A handful of `libc` calls (gettid, getpriority, setpriority, errno) rather than a crate:
//! `thread-priority` and its kin wrap the same calls and add real-time policies banditd has
//! no use for.

use std::io;

/// Lowers the calling thread's priority by `increment` nice levels (as `nice -n` does; Linux
/// keeps a nice value per thread), capped at 19, Linux's lowest. It never raises the
/// priority, and 0 leaves the thread as it is. Returns the thread's nice value after.
///
/// # Errors
/// The priority cannot be read or set, or this is not Linux (where nice values are
/// per process).
pub(super) fn lower_current_thread(increment: i32) -> io::Result<i32> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() } as libc::id_t;
        // getpriority returns -1 both for nice -1 and for errors: only errno tells.
        clear_errno();
        // SAFETY: plain integer arguments; the result is checked below.
        let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        if current == -1 && io::Error::last_os_error().raw_os_error().unwrap_or(0) != 0 {
            return Err(io::Error::last_os_error());
        }
        let target = current.saturating_add(increment.max(0)).min(LOWEST);
        if target == current {
            return Ok(current);
        }
        // SAFETY: plain integer arguments; the result is checked.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, target) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(target)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = increment;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a per-thread nice value needs Linux",
        ))
    }
}

/// Linux's lowest priority (highest nice value).
#[cfg(target_os = "linux")]
const LOWEST: i32 = 19;

#[cfg(target_os = "linux")]
fn clear_errno() {
    // SAFETY: __errno_location returns this thread's errno, valid for the thread's life.
    unsafe { *libc::__errno_location() = 0 };
}

/// The nice value of thread `tid` of this process, from `/proc` (field 19 of `stat`).
#[cfg(all(test, target_os = "linux"))]
pub(super) fn nice_of(tid: &str) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    // The name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(16).unwrap().parse().unwrap()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Lowered by the increment, capped at 19, and never raised (a negative increment and 0
    /// change nothing).
    #[test]
    fn lowers_by_the_increment_capped_at_19() {
        std::thread::spawn(|| {
            let tid = unsafe { libc::gettid() }.to_string();
            let start = nice_of(&tid);
            assert!(
                start <= 16,
                "run the tests at nice 16 or below (this thread: {start})"
            );
            assert_eq!(lower_current_thread(0).unwrap(), start);
            assert_eq!(nice_of(&tid), start, "0 leaves the priority as it is");
            assert_eq!(lower_current_thread(-5).unwrap(), start, "never raised");
            assert_eq!(nice_of(&tid), start);
            assert_eq!(lower_current_thread(3).unwrap(), start + 3);
            assert_eq!(nice_of(&tid), start + 3);
            assert_eq!(lower_current_thread(100).unwrap(), 19, "capped");
            assert_eq!(nice_of(&tid), 19);
        })
        .join()
        .unwrap();
    }
}
