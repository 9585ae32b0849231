//! The learner thread's CPU priority: when serving and training both want the CPU, serving
//! gets it first, and the learner trains with what is left.
//!
//! Two `libc` calls rather than a crate: `thread-priority` and its kin wrap the same calls
//! and add real-time policies banditd has no use for.

use std::io;

/// Lowers the calling thread's priority to nice value `nice` (Linux keeps one per thread),
/// never raising it: a thread already at `nice` or lower priority is left as it is, and so
/// is every thread when `nice` is 0.
///
/// # Errors
/// The priority cannot be read or set, or this is not Linux (where nice values are
/// per process).
pub(super) fn lower_current_thread(nice: i32) -> io::Result<()> {
    if nice == 0 {
        return Ok(());
    }
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
        if current >= nice {
            return Ok(());
        }
        // SAFETY: plain integer arguments; the result is checked.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a per-thread nice value needs Linux",
        ))
    }
}

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

    #[test]
    fn lowers_but_never_raises_the_calling_thread() {
        std::thread::spawn(|| {
            let tid = unsafe { libc::gettid() }.to_string();
            let start = nice_of(&tid);
            lower_current_thread(0).unwrap();
            assert_eq!(nice_of(&tid), start, "0 leaves the priority as it is");
            let target = (start + 3).min(19);
            lower_current_thread(target).unwrap();
            assert_eq!(nice_of(&tid), target);
            lower_current_thread(start).unwrap();
            assert_eq!(nice_of(&tid), target, "a lower nice value would raise it");
        })
        .join()
        .unwrap();
    }
}
