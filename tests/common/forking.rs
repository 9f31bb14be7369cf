//! Forking from a multithreaded test: children that must finish, and a
//! parent that waits for each with a watchdog, so that a child deadlocked
//! in the allocator fails the test instead of hanging it.

#![allow(dead_code)]

use std::time::{Duration, Instant};

/// How long a child may take before it counts as hung.
pub const CHILD_DEADLINE: Duration = Duration::from_secs(5);

/// How a child ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ChildEnd {
    /// `_exit` with this status.
    Exited(i32),
    /// Killed by this signal (not by the watchdog).
    Signalled(i32),
    /// Still running at the deadline: killed by the watchdog.
    Hung,
}

/// Forks; the child runs `body` and `_exit`s with its result (0 when it
/// returns `Ok`, 1 after printing the error, 2 if it panicked). The parent
/// waits for the child, killing it at [`CHILD_DEADLINE`].
pub fn fork_and_wait(body: impl FnOnce() -> Result<(), String>) -> ChildEnd {
    // SAFETY: the child only runs `body` and then `_exit`s; it never
    // returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let status = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            Ok(Ok(())) => 0,
            Ok(Err(message)) => {
                write_stderr(&format!("fork child {}: {message}\n", std::process::id()));
                1
            }
            Err(_) => 2,
        };
        // SAFETY: ends the child at once, without running the parent's
        // exit handlers or destructors.
        unsafe { libc::_exit(status) };
    }
    wait_with_watchdog(pid)
}

/// Waits for `pid`, polling, and kills it with SIGKILL at the deadline.
pub fn wait_with_watchdog(pid: libc::pid_t) -> ChildEnd {
    let started = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(waited >= 0, "waitpid failed: {}", std::io::Error::last_os_error());
        if waited == pid {
            if libc::WIFEXITED(status) {
                return ChildEnd::Exited(libc::WEXITSTATUS(status));
            }
            return ChildEnd::Signalled(libc::WTERMSIG(status));
        }
        if started.elapsed() > CHILD_DEADLINE {
            // SAFETY: `pid` is our child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return ChildEnd::Hung;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Writes to stderr with one system call: std's stderr takes a lock that
/// a thread of the parent may have held at the fork.
pub fn write_stderr(message: &str) {
    // SAFETY: a valid buffer of that length.
    let _ = unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
}
