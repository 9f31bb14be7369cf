//! The Rust side of the C pair benchmark (`benches/c/pair.c`): the same loop,
//! run by `benches/c/run.sh` in the same run, so the C API's cost is read
//! against the Rust fast path on the same machine at the same moment.
//!
//! `pairs` times: `MemoryPool::allocate_fast(64)`, write one byte into the
//! block, read it back, `MemoryPool::free_fast`. The byte goes through
//! volatile accesses, as in the C program, so neither the write nor the pair
//! can be optimised away. The first 100 000 pairs are not timed; the pairs
//! then run five times, and the fastest run counts. Prints one line in the
//! C workloads' format, with that run's mean time per pair in ns.
//!
//! The pool has the default settings (`PoolConfig::new`), as the pools
//! `lle_create_memory_pool` makes do, so the C pair reads against it; with
//! `--checked` it is checked (`PoolConfig::checked`), to show what checking
//! costs.
//!
//! Run: `cargo bench -p lle-mempool-benches --bench pair` (20 million pairs);
//! `-- --pairs N` sets the count, `-- --checked` checks the pool.

use std::env;
use std::fmt;
use std::process;
use std::ptr::NonNull;
use std::time::Instant;

use lle_mempool::{MemoryPool, PoolConfig, PoolError};

const BLOCK_SIZE: usize = 64;
const POOL_INITIAL_SIZE: usize = 1 << 20;
const DEFAULT_PAIRS: u64 = 20_000_000;
const WARM_UP_PAIRS: u64 = 100_000;
/// Timed runs of the pairs; the fastest counts: on a shared machine other
/// work only ever slows a run down, so the fastest is the nearest to the
/// code's own cost.
const REPETITIONS: u32 = 5;

/// Why a pair failed: the pool refused, or the block lost its byte.
enum PairError {
    Pool(PoolError),
    Corrupted(NonNull<u8>),
}

impl fmt::Display for PairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairError::Pool(error) => write!(f, "the pool refused: {error}"),
            PairError::Corrupted(block) => write!(f, "block {block:p} lost the byte written into it"),
        }
    }
}

fn run_pairs(pool: &MemoryPool, pairs: u64) -> Result<(), PairError> {
    for i in 0..pairs {
        let block = pool.allocate_fast(BLOCK_SIZE).map_err(PairError::Pool)?;
        let value = i as u8;
        // SAFETY: `block` is a live allocation of BLOCK_SIZE bytes that only
        // this thread holds.
        let read = unsafe {
            block.as_ptr().write_volatile(value);
            block.as_ptr().read_volatile()
        };
        if read != value {
            return Err(PairError::Corrupted(block));
        }
        // SAFETY: `block` came from this pool's `allocate_fast` and is freed
        // once, here.
        unsafe { pool.free_fast(block) }.map_err(PairError::Pool)?;
    }
    Ok(())
}

/// What the command line asks for.
struct Options {
    pairs: u64,
    checked: bool,
}

/// `--pairs N` and `--checked`; `--bench` (which cargo passes) is ignored.
fn parse_options() -> Result<Options, String> {
    let mut options = Options { pairs: DEFAULT_PAIRS, checked: false };
    let mut args = env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--checked" => options.checked = true,
            "--pairs" => {
                let value = args.next().ok_or("--pairs needs a count")?;
                options.pairs = value.parse().map_err(|_| format!("--pairs: {value} is not a count"))?;
                if options.pairs == 0 {
                    return Err("--pairs must be positive".into());
                }
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

fn main() {
    let Options { pairs, checked } = parse_options().unwrap_or_else(|error| {
        eprintln!("pair: {error}\nusage: pair [--pairs N] [--checked]");
        process::exit(2);
    });
    let workload = if checked { "pair-rust-checked" } else { "pair-rust" };
    let config = PoolConfig::new(POOL_INITIAL_SIZE).checked(checked);
    let pool = MemoryPool::with_config(config).unwrap_or_else(|error| {
        eprintln!("{workload}: FAILED: MemoryPool::with_config: {error}");
        process::exit(1);
    });
    let timed = run_pairs(&pool, WARM_UP_PAIRS).and_then(|()| {
        let mut fastest = std::time::Duration::MAX;
        for _ in 0..REPETITIONS {
            let started = Instant::now();
            run_pairs(&pool, pairs)?;
            fastest = fastest.min(started.elapsed());
        }
        Ok(fastest)
    });
    match timed {
        Ok(elapsed) => {
            let seconds = elapsed.as_secs_f64();
            println!(
                "workload={workload} threads=1 pairs={pairs} seconds={seconds:.4} ns_per_pair={:.2} check=ok",
                seconds * 1e9 / pairs as f64
            );
        }
        Err(error) => {
            eprintln!("{workload}: FAILED: {error}");
            process::exit(1);
        }
    }
}
