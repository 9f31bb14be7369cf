//! The biased lock never goes on without its barrier: when `membarrier`
//! fails after registration (here a seccomp filter, installed later, makes
//! it fail as a sandbox would), the process aborts with a message instead
//! of letting a second thread in beside the lock's owner. Run in a child
//! process, whose death by SIGABRT is the expected outcome.

#![cfg(not(lle_mempool_model))]

#[path = "common/forking.rs"]
mod forking;

use forking::{fork_and_wait, ChildEnd};
use lle_mempool::MemoryPool;
use std::thread;

const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
/// `prctl` options, from `<linux/prctl.h>`.
const PR_SET_NO_NEW_PRIVS: libc::c_int = 38;
const PR_SET_SECCOMP: libc::c_int = 22;

/// Whether the kernel has the barriers the lock is biased with at all.
fn private_expedited_barriers_supported() -> bool {
    // SAFETY: a query with no pointer arguments.
    let supported = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0) };
    supported > 0 && supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED != 0
}

/// Makes every later `membarrier` call of this thread, and of the threads
/// it starts, fail with EPERM.
fn refuse_membarrier() -> Result<(), String> {
    let program = [
        // The system call number, at offset 0 of `struct seccomp_data`.
        libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k: 0 },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_membarrier as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW },
    ];
    let filter = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
    // SAFETY: plain prctl calls; the filter outlives the call, which copies it.
    unsafe {
        if libc::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
        }
        if libc::prctl(PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &filter as *const libc::sock_fprog) != 0 {
            return Err(format!("seccomp: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[test]
fn a_failed_barrier_aborts_rather_than_letting_a_second_thread_in() {
    if !private_expedited_barriers_supported() {
        eprintln!("skipped: this kernel has no private expedited membarrier, so no pool lock is biased");
        return;
    }
    let end = fork_and_wait(|| {
        // Biased to this thread, with the barrier registered.
        let pool = MemoryPool::new(1 << 20).map_err(|error| error.to_string())?;
        let block = pool.allocate(64).map_err(|error| error.to_string())?;
        refuse_membarrier()?;
        // Another thread must revoke the bias, and cannot fence this one.
        let address = block.as_ptr() as usize;
        let other =
            thread::scope(|scope| scope.spawn(|| pool.allocate(64).map(|other| other.as_ptr() as usize)).join());
        match other {
            Ok(Ok(other)) if other != address => Err("a second thread entered the pool without the barrier".into()),
            outcome => Err(format!("neither an abort nor a second block: {outcome:?}")),
        }
    });
    assert_eq!(end, ChildEnd::Signalled(libc::SIGABRT), "the child went on without the barrier");
}
