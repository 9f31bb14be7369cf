//! Event storm: producer threads allocate events from the pool's fast path
//! and pass them in batches to consumer threads, which verify and free them,
//! so every free is remote (made by a thread other than the allocating one).
//!
//! ```text
//! cargo run --release --example event_storm -- --producers 4 --consumers 2 --compare
//! ```
//!
//! With `--compare`, the same workload then runs on the system allocator and
//! on mimalloc, and their throughput is reported beside the pool's. With
//! `--checked`, it runs again on a checked pool that tracks its callers
//! (guard bytes, poison, double-free detection): the run prints what
//! checking costs, the leak report of the busy pool halfway through (the
//! events in flight, with the line that allocated them), and the report at
//! the end, which must list no block.
//!
//! Exits non-zero if any event arrives corrupted, lost or duplicated, if the
//! pool refuses an allocation or a free, or if `MemoryPool::check` fails.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt;
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanCount, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use lle_mempool::{write_leak_report, LiveBlock, MemoryPool, PoolConfig, PoolError, PoolKind, PoolStats};
use mimalloc::MiMalloc;

/// Sized so the default run (2 producers, 2 consumers, 64-byte events) takes
/// roughly 5 to 10 seconds in release mode on a 2-core machine.
const DEFAULT_EVENTS: u64 = 40_000_000;
const DEFAULT_EVENT_SIZE: usize = 64;
const DEFAULT_PRODUCERS: usize = 2;
const DEFAULT_CONSUMERS: usize = 2;
/// Batching amortises the channel's cost, which would otherwise dwarf an
/// allocation.
const BATCH_LEN: usize = 256;
/// Bounded channels give backpressure: without it producers race ahead and
/// the pool measures how much memory a backlog needs, not how fast it recycles.
const BATCHES_IN_FLIGHT_PER_CONSUMER: usize = 16;
const INITIAL_POOL_BYTES: usize = 1 << 20;
/// Events are small messages; a cap keeps a typo from asking for terabytes.
const MAX_EVENT_SIZE: usize = 1 << 20;
/// More failure messages than this add nothing but noise.
const MAX_REPORTED_FAILURES: usize = 8;
/// Run labels ("pool", "system", "mimalloc") are right-aligned to this
/// width, so the runs' lines and progress bars line up.
const LABEL_WIDTH: usize = 8;

#[repr(C)]
struct EventHeader {
    seq: u64,
    producer: u32,
    kind: u32,
}

const HEADER_LEN: usize = size_of::<EventHeader>();
/// What `malloc` gives (glibc's and mimalloc's), asked of the peers. The
/// pool's fast path promises less for sizes that are not multiples of 16
/// (only what an object of that size could need), so the header is read and
/// written unaligned.
const PEER_ALIGN: usize = 16;

/// The kinds a line editor's event queue carries; only used to vary the data.
const EVENT_KINDS: u32 = 4;

fn usage() -> String {
    format!(
        "\
usage: event_storm [OPTIONS]

Producer threads allocate events from an lle-mempool fast path and hand them
in batches to consumer threads, which verify and free them.

options:
  --producers N       producer threads (default {DEFAULT_PRODUCERS})
  --consumers M       consumer threads (default {DEFAULT_CONSUMERS})
  --events COUNT      events to send in total (default {DEFAULT_EVENTS})
  --event-size BYTES  bytes per event, {HEADER_LEN} to {MAX_EVENT_SIZE} (default {DEFAULT_EVENT_SIZE})
  --compare           also run the workload on the system allocator and on
                      mimalloc, and print the throughput ratios
  --checked           also run it on a checked pool that tracks callers: print
                      what checking costs and the pool's leak reports, halfway
                      (the events in flight) and at the end (none may be left)
  --help              print this help"
    )
}

#[derive(Clone, Copy, Debug)]
struct Options {
    producers: usize,
    consumers: usize,
    events: u64,
    event_size: usize,
    compare: bool,
    checked: bool,
}

fn parse_number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    // Underscores make large event counts readable: --events 50_000_000.
    value.replace('_', "").parse().map_err(|_| format!("{flag}: {value:?} is not a valid number"))
}

/// Returns `Ok(None)` when `--help` was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        producers: DEFAULT_PRODUCERS,
        consumers: DEFAULT_CONSUMERS,
        events: DEFAULT_EVENTS,
        event_size: DEFAULT_EVENT_SIZE,
        compare: false,
        checked: false,
    };
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let mut value = || inline_value.clone().or_else(|| args.next());
        match flag.as_str() {
            "--producers" => options.producers = parse_number(&flag, value())?,
            "--consumers" => options.consumers = parse_number(&flag, value())?,
            "--events" => options.events = parse_number(&flag, value())?,
            "--event-size" => options.event_size = parse_number(&flag, value())?,
            "--compare" if inline_value.is_none() => options.compare = true,
            "--compare" => return Err("--compare takes no value".into()),
            "--checked" if inline_value.is_none() => options.checked = true,
            "--checked" => return Err("--checked takes no value".into()),
            "--help" | "-h" => return Ok(None),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if options.producers == 0 || options.consumers == 0 {
        return Err("--producers and --consumers must be at least 1".into());
    }
    if options.events == 0 {
        return Err("--events must be at least 1".into());
    }
    if !(HEADER_LEN..=MAX_EVENT_SIZE).contains(&options.event_size) {
        return Err(format!("--event-size must be between {HEADER_LEN} (the event header) and {MAX_EVENT_SIZE}"));
    }
    Ok(Some(options))
}

/// Where events come from: the pool under test, or a peer allocator as a
/// baseline.
trait EventAllocator: Sync {
    fn allocate(&self) -> Result<NonNull<u8>, String>;

    /// # Safety
    ///
    /// `event` must come from `allocate` on this allocator, and not be used
    /// afterwards.
    unsafe fn free(&self, event: NonNull<u8>) -> Result<(), String>;
}

struct PoolEvents<'a> {
    pool: &'a MemoryPool,
    event_size: usize,
}

impl EventAllocator for PoolEvents<'_> {
    fn allocate(&self) -> Result<NonNull<u8>, String> {
        self.pool.allocate_fast(self.event_size).map_err(|e| format!("allocate_fast({}): {e}", self.event_size))
    }

    unsafe fn free(&self, event: NonNull<u8>) -> Result<(), String> {
        // SAFETY: forwarded from this method's contract; the block came from
        // allocate_fast on this pool.
        unsafe { self.pool.free_fast(event) }.map_err(|e| format!("free_fast({event:p}): {e}"))
    }
}

/// A peer: any `GlobalAlloc` (the system allocator, mimalloc), called
/// directly rather than installed as the global allocator.
struct PeerEvents<A> {
    name: &'static str,
    allocator: A,
    layout: Layout,
}

impl<A: GlobalAlloc + Sync> EventAllocator for PeerEvents<A> {
    fn allocate(&self) -> Result<NonNull<u8>, String> {
        // SAFETY: the layout's size is at least HEADER_LEN, so non-zero.
        NonNull::new(unsafe { self.allocator.alloc(self.layout) })
            .ok_or_else(|| format!("{} refused {} bytes", self.name, self.layout.size()))
    }

    unsafe fn free(&self, event: NonNull<u8>) -> Result<(), String> {
        // SAFETY: per this method's contract the block came from `allocate`
        // on this allocator, which always uses `self.layout`.
        unsafe { self.allocator.dealloc(event.as_ptr(), self.layout) };
        Ok(())
    }
}

/// Runs the storm on a peer, labelled with the peer's name.
fn run_peer_storm<A: GlobalAlloc + Sync>(options: &Options, peer: PeerEvents<A>) -> (&'static str, RunOutcome) {
    (peer.name, run_storm(peer.name, options, &peer, None))
}

/// SplitMix64's finaliser: cheap, and every input bit affects every output
/// bit, so neighbouring events get unrelated payloads.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn event_kind(seq: u64) -> u32 {
    (mix(seq) % u64::from(EVENT_KINDS)) as u32
}

/// The payload is a sequence of 8-byte words, each derived from the event's
/// identity and its position, so a block that is overwritten, shifted or
/// swapped with another event's fails verification.
fn payload_seed(seq: u64, producer: u32) -> u64 {
    mix(seq ^ (u64::from(producer) << 56))
}

fn payload_word(seed: u64, index: usize) -> [u8; 8] {
    (seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes()
}

/// Writes a complete event into a fresh block of `event_size` bytes.
///
/// # Safety
///
/// `block` must be valid for writes of `event_size` bytes and not accessed by
/// anyone else.
unsafe fn write_event(block: NonNull<u8>, event_size: usize, seq: u64, producer: u32) {
    let header = EventHeader { seq, producer, kind: event_kind(seq) };
    // SAFETY: the block is exclusively ours and large enough for the header
    // (caller's contract, event_size >= HEADER_LEN); no alignment is assumed.
    unsafe { block.cast::<EventHeader>().write_unaligned(header) };
    // SAFETY: bytes HEADER_LEN..event_size lie inside the block.
    let payload = unsafe { std::slice::from_raw_parts_mut(block.as_ptr().add(HEADER_LEN), event_size - HEADER_LEN) };
    let seed = payload_seed(seq, producer);
    for (index, chunk) in payload.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&payload_word(seed, index)[..chunk.len()]);
    }
}

/// What a consumer learned from one event.
enum Inspection {
    Intact { seq: u64, checksum: u64 },
    Corrupted(String),
}

/// "Processes" an event: checks its header and payload pattern and folds the
/// payload into a checksum.
///
/// # Safety
///
/// `block` must point to `event_size` initialised bytes written by
/// `write_event` and not be written concurrently.
unsafe fn inspect_event(block: NonNull<u8>, event_size: usize, producers: usize) -> Inspection {
    // SAFETY: caller's contract; write_event stored a header at the start,
    // and no alignment is assumed.
    let header = unsafe { block.cast::<EventHeader>().read_unaligned() };
    if header.producer as usize >= producers || header.kind != event_kind(header.seq) {
        return Inspection::Corrupted(format!(
            "event at {block:p}: implausible header (seq {}, producer {}, kind {})",
            header.seq, header.producer, header.kind
        ));
    }
    // SAFETY: bytes HEADER_LEN..event_size lie inside the block.
    let payload = unsafe { std::slice::from_raw_parts(block.as_ptr().add(HEADER_LEN), event_size - HEADER_LEN) };
    let seed = payload_seed(header.seq, header.producer);
    let mut checksum = header.seq;
    for (index, chunk) in payload.chunks(8).enumerate() {
        let expected = payload_word(seed, index);
        if chunk != &expected[..chunk.len()] {
            return Inspection::Corrupted(format!(
                "event {} from producer {}: payload differs at byte {}",
                header.seq,
                header.producer,
                HEADER_LEN + index * 8
            ));
        }
        let mut word = [0; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        checksum = checksum.rotate_left(5) ^ u64::from_le_bytes(word);
    }
    Inspection::Intact { seq: header.seq, checksum }
}

/// Order-independent summary of a set of sequence numbers: two sets with the
/// same count and fingerprint are, for practical purposes, the same set, so
/// comparing what producers sent with what consumers saw catches events lost
/// or delivered twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    events: u64,
    fingerprint: u64,
}

impl Tally {
    fn add(&mut self, seq: u64) {
        self.events += 1;
        self.fingerprint = self.fingerprint.wrapping_add(mix(seq ^ 0x5EED));
    }

    fn merge(&mut self, other: Tally) {
        self.events += other.events;
        self.fingerprint = self.fingerprint.wrapping_add(other.fingerprint);
    }
}

/// Failures seen by every thread of a run, kept short.
#[derive(Default)]
struct FailureLog {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl FailureLog {
    fn record(&self, message: String) {
        if self.count.fetch_add(1, Ordering::Relaxed) < MAX_REPORTED_FAILURES as u64 {
            self.first.lock().unwrap_or_else(|e| e.into_inner()).push(message);
        }
    }
}

struct ProducerReport {
    sent: Tally,
}

struct ConsumerReport {
    received: Tally,
    corrupted: u64,
    digest: u64,
    finished_at: Instant,
}

/// The events producer `index` owns: an even share of `0..total`.
fn producer_range(index: usize, producers: usize, total: u64) -> std::ops::Range<u64> {
    // In u128 so that `total * i` cannot overflow.
    let share = |i: usize| (u128::from(total) * i as u128 / producers as u128) as u64;
    share(index)..share(index + 1)
}

fn run_producer(
    index: usize,
    options: &Options,
    allocator: &dyn EventAllocator,
    consumers: &[SyncSender<Vec<usize>>],
    abort: &AtomicBool,
    failures: &FailureLog,
) -> ProducerReport {
    let mut sent = Tally::default();
    let mut batch = Vec::with_capacity(BATCH_LEN);
    // Starting each producer at a different consumer spreads the load even
    // when there are fewer batches than consumers.
    let mut next_consumer = index % consumers.len();
    let mut deliver = |batch: Vec<usize>| {
        let delivered = consumers[next_consumer].send(batch).is_ok();
        next_consumer = (next_consumer + 1) % consumers.len();
        delivered
    };
    for seq in producer_range(index, options.producers, options.events) {
        if abort.load(Ordering::Relaxed) {
            break;
        }
        let block = match allocator.allocate() {
            Ok(block) => block,
            Err(message) => {
                failures.record(format!("producer {index}: {message}"));
                abort.store(true, Ordering::Relaxed);
                break;
            }
        };
        // SAFETY: a fresh block of event_size bytes, owned by this thread until
        // it is sent.
        unsafe { write_event(block, options.event_size, seq, index as u32) };
        batch.push(block.as_ptr() as usize);
        sent.add(seq);
        if batch.len() == BATCH_LEN {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_LEN));
            if !deliver(full) {
                break;
            }
        }
    }
    if !batch.is_empty() {
        deliver(batch);
    }
    ProducerReport { sent }
}

fn run_consumer(
    options: &Options,
    allocator: &dyn EventAllocator,
    batches: Receiver<Vec<usize>>,
    processed: &AtomicU64,
    failures: &FailureLog,
) -> ConsumerReport {
    let mut report =
        ConsumerReport { received: Tally::default(), corrupted: 0, digest: 0, finished_at: Instant::now() };
    for batch in batches {
        for &address in &batch {
            let block = NonNull::new(address as *mut u8).expect("producers never send null");
            // SAFETY: the producer wrote the whole event before sending it and
            // gave up the block; this thread is its only user now.
            match unsafe { inspect_event(block, options.event_size, options.producers) } {
                Inspection::Intact { seq, checksum } => {
                    report.received.add(seq);
                    report.digest = report.digest.wrapping_add(checksum);
                }
                Inspection::Corrupted(message) => {
                    report.corrupted += 1;
                    failures.record(message);
                }
            }
            // Corrupted or not, the address came from our own producers, so
            // the block is still ours to return.
            // SAFETY: the block came from this allocator and is not touched
            // again.
            if let Err(message) = unsafe { allocator.free(block) } {
                failures.record(message);
            }
        }
        processed.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
    report.finished_at = Instant::now();
    report
}

struct RunOutcome {
    elapsed: Duration,
    sent: Tally,
    received: Tally,
    corrupted: u64,
    digest: u64,
    failures: Vec<String>,
    failure_count: u64,
}

impl RunOutcome {
    fn events_per_second(&self) -> f64 {
        self.received.events as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn succeeded(&self, options: &Options) -> bool {
        self.failure_count == 0
            && self.corrupted == 0
            && self.sent == self.received
            && self.received.events == options.events
    }
}

fn progress_bar(label: &str, events: u64) -> ProgressBar {
    // indicatif draws nothing when stderr is not a terminal, so piping the
    // output (or running under CI) leaves only the report.
    let bar = ProgressBar::with_draw_target(Some(events), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({rate}, eta {eta})",
    )
    .expect("progress template is valid")
    // indicatif's own {per_sec} prints four decimals of a rate in the millions.
    .with_key("rate", |state: &ProgressState, out: &mut dyn fmt::Write| {
        let _ = write!(out, "{}/s", HumanCount(state.per_sec() as u64));
    })
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{label:>LABEL_WIDTH$}"));
    bar
}

/// Runs the storm. `midway`, if given, runs once on this thread when half
/// the events have been processed, while producers and consumers are busy.
fn run_storm(
    label: &str,
    options: &Options,
    allocator: &dyn EventAllocator,
    mut midway: Option<&mut dyn FnMut()>,
) -> RunOutcome {
    let processed = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let failures = FailureLog::default();
    let bar = progress_bar(label, options.events);
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..options.consumers).map(|_| mpsc::sync_channel::<Vec<usize>>(BATCHES_IN_FLIGHT_PER_CONSUMER)).unzip();

    let started = Instant::now();
    let (producer_reports, consumer_reports) = thread::scope(|scope| {
        let consumers: Vec<_> = receivers
            .into_iter()
            .map(|batches| {
                let (processed, failures) = (&processed, &failures);
                scope.spawn(move || run_consumer(options, allocator, batches, processed, failures))
            })
            .collect();
        let producers: Vec<_> = (0..options.producers)
            .map(|index| {
                let senders = senders.clone();
                let (abort, failures) = (&abort, &failures);
                scope.spawn(move || run_producer(index, options, allocator, &senders, abort, failures))
            })
            .collect();
        // Each producer holds its own senders, so consumers stop as soon as
        // the last producer finishes.
        drop(senders);

        // Consumers finish last (they drain what the producers sent), so
        // watching them covers the whole run.
        while !consumers.iter().all(|handle| handle.is_finished()) {
            let done = processed.load(Ordering::Relaxed);
            bar.set_position(done);
            if done >= options.events / 2 {
                if let Some(midway) = midway.take() {
                    midway();
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        let producer_reports: Vec<ProducerReport> =
            producers.into_iter().map(|handle| handle.join().expect("producer thread panicked")).collect();
        let consumer_reports: Vec<ConsumerReport> =
            consumers.into_iter().map(|handle| handle.join().expect("consumer thread panicked")).collect();
        (producer_reports, consumer_reports)
    });
    bar.set_position(processed.load(Ordering::Relaxed));
    bar.finish();

    let finished = consumer_reports.iter().map(|report| report.finished_at).max().unwrap_or(started);
    let mut outcome = RunOutcome {
        elapsed: finished.saturating_duration_since(started),
        sent: Tally::default(),
        received: Tally::default(),
        corrupted: 0,
        digest: 0,
        failure_count: failures.count.load(Ordering::Relaxed),
        failures: failures.first.into_inner().unwrap_or_else(|e| e.into_inner()),
    };
    for report in producer_reports {
        outcome.sent.merge(report.sent);
    }
    for report in consumer_reports {
        outcome.received.merge(report.received);
        outcome.corrupted += report.corrupted;
        outcome.digest = outcome.digest.wrapping_add(report.digest);
    }
    outcome
}

fn print_run(label: &str, outcome: &RunOutcome, options: &Options) {
    let label = format!("{label:>LABEL_WIDTH$}");
    println!(
        "{label}: {:>11} events/s  ({} events in {:.2} s)",
        HumanCount(outcome.events_per_second() as u64).to_string(),
        HumanCount(outcome.received.events),
        outcome.elapsed.as_secs_f64()
    );
    if outcome.corrupted > 0 {
        println!("{label}: corrupted events: {}", HumanCount(outcome.corrupted));
    }
    if outcome.sent != outcome.received || outcome.received.events != options.events {
        println!(
            "{label}: {} events asked for, {} sent, {} received intact (fingerprints {:#x} vs {:#x})",
            HumanCount(options.events),
            HumanCount(outcome.sent.events),
            HumanCount(outcome.received.events),
            outcome.sent.fingerprint,
            outcome.received.fingerprint
        );
    }
    if outcome.failure_count > 0 {
        println!("{label}: failures: {} (the first are listed below)", outcome.failure_count);
        for failure in &outcome.failures {
            println!("{:indent$}{failure}", "", indent = LABEL_WIDTH + 4);
        }
    }
}

fn percent_of(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn print_pool_report(pool: &MemoryPool, stats: &PoolStats, resizes: &[String]) {
    println!();
    println!("pool size      {}", HumanBytes(stats.size as u64));
    println!("utilization    {:.1} %", pool.utilization());
    println!(
        "peak used      {} ({:.1} % of the final size)",
        HumanBytes(stats.peak_used as u64),
        percent_of(stats.peak_used, stats.size)
    );
    if !resizes.is_empty() {
        println!("resizes        {}", resizes.join(", "));
    }

    let rows: [(&str, String); 20] = [
        ("size", stats.size.to_string()),
        ("used", stats.used.to_string()),
        ("free", stats.free.to_string()),
        ("largest free block", stats.largest_free_block.to_string()),
        ("free blocks", stats.free_blocks.to_string()),
        ("live allocations", stats.live_allocations.to_string()),
        ("peak used", stats.peak_used.to_string()),
        ("total allocations", stats.total_allocations.to_string()),
        ("total frees", stats.total_frees.to_string()),
        ("failed allocations", stats.failed_allocations.to_string()),
        ("expansions", stats.expansions.to_string()),
        ("compactions", stats.compactions.to_string()),
        ("avg alloc time", format!("{:?}", stats.avg_alloc_time)),
        ("avg free time", format!("{:?}", stats.avg_free_time)),
        ("fast allocations", stats.fast.allocations.to_string()),
        ("fast frees", stats.fast.frees.to_string()),
        ("fast remote frees", stats.fast.remote_frees.to_string()),
        ("fast cached blocks", stats.fast.cached_blocks.to_string()),
        ("fast slabs", stats.fast.slabs.to_string()),
        ("fast slab bytes", stats.fast.slab_bytes.to_string()),
    ];
    println!();
    println!("{:<20} {:>16}", "statistic", "value");
    println!("{:-<20} {:->16}", "", "");
    for (name, value) in rows {
        println!("{name:<20} {value:>16}");
    }
}

/// Prints a pool's leak report, under `title`, to stdout.
fn print_leak_report(title: &str, blocks: &[LiveBlock]) {
    println!();
    println!("{title}");
    if let Err(error) = write_leak_report(blocks, std::io::stdout().lock()) {
        println!("(the report could not be written: {error})");
    }
}

/// The storm again on a checked pool that tracks its callers: what checking
/// costs against `default_outcome`, the default pool's run, and the leak
/// reports a program reads from its pool while it is busy and at its end.
/// Returns whether the run succeeded and left no block live.
fn run_checked_storm(options: &Options, default_outcome: &RunOutcome) -> bool {
    let config = PoolConfig::new(INITIAL_POOL_BYTES).kind(PoolKind::Event).checked(true).track_callers(true);
    let pool = match MemoryPool::with_config(config) {
        Ok(pool) => pool,
        Err(error) => {
            println!("cannot create the checked pool: {error}");
            return false;
        }
    };
    let events = PoolEvents { pool: &pool, event_size: options.event_size };
    let mut in_flight: Option<Result<Vec<LiveBlock>, PoolError>> = None;
    let mut take_snapshot = || in_flight = Some(pool.live_blocks());
    let outcome = run_storm("checked", options, &events, Some(&mut take_snapshot));

    println!();
    print_run("checked", &outcome, options);
    let mut succeeded = outcome.succeeded(options);
    println!(
        "  ratio: checked mode runs at {:.2}x the default pool's events/s",
        outcome.events_per_second() / default_outcome.events_per_second().max(f64::MIN_POSITIVE)
    );
    if outcome.digest != default_outcome.digest {
        println!("checksum mismatch: pool {:#x}, checked {:#x}", default_outcome.digest, outcome.digest);
        succeeded = false;
    }
    match in_flight {
        Some(Ok(blocks)) => print_leak_report("halfway through, the events in flight:", &blocks),
        Some(Err(error)) => {
            println!("leak report halfway through FAILED: {error}");
            succeeded = false;
        }
        None => println!("(the run ended before its halfway leak report)"),
    }
    // Every event was freed: a program checks for leaks this way at exit.
    match pool.live_blocks() {
        Ok(blocks) if blocks.is_empty() => println!("\nleak report at the end: no live blocks"),
        Ok(blocks) => {
            print_leak_report("LEAKS at the end:", &blocks);
            succeeded = false;
        }
        Err(error) => {
            println!("leak report at the end FAILED: {error}");
            succeeded = false;
        }
    }
    let stats = pool.stats();
    if stats.quarantined_blocks != 0 {
        println!("checked pool quarantined {} damaged blocks", stats.quarantined_blocks);
        succeeded = false;
    }
    if let Err(error) = pool.check() {
        println!("checked pool check: FAILED: {error}");
        succeeded = false;
    }
    succeeded
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("event_storm: {message} (try --help)");
            return ExitCode::from(2);
        }
    };
    println!(
        "event storm: {} producers -> {} consumers, {} events of {} bytes",
        options.producers,
        options.consumers,
        HumanCount(options.events),
        options.event_size
    );

    let pool = match MemoryPool::with_config(PoolConfig::new(INITIAL_POOL_BYTES).kind(PoolKind::Event)) {
        Ok(pool) => pool,
        Err(error) => {
            eprintln!("event_storm: cannot create the pool: {error}");
            return ExitCode::FAILURE;
        }
    };
    let resizes = Arc::new(Mutex::new(Vec::new()));
    let listener = {
        let resizes = Arc::clone(&resizes);
        pool.on_resize(move |event| {
            let line = format!(
                "{} -> {} ({:?})",
                HumanBytes(event.old_size as u64),
                HumanBytes(event.new_size as u64),
                event.reason
            );
            resizes.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        })
    };

    let pool_events = PoolEvents { pool: &pool, event_size: options.event_size };
    let pool_outcome = run_storm("pool", &options, &pool_events, None);
    let peer_outcomes = if options.compare {
        let layout = Layout::from_size_align(options.event_size, PEER_ALIGN).expect("event size was validated");
        vec![
            run_peer_storm(&options, PeerEvents { name: "system", allocator: System, layout }),
            run_peer_storm(&options, PeerEvents { name: "mimalloc", allocator: MiMalloc, layout }),
        ]
    } else {
        Vec::new()
    };
    pool.remove_resize_listener(listener);

    println!();
    print_run("pool", &pool_outcome, &options);
    let mut succeeded = pool_outcome.succeeded(&options);
    if options.checked {
        succeeded &= run_checked_storm(&options, &pool_outcome);
        println!();
    }
    for (name, peer_outcome) in &peer_outcomes {
        print_run(name, peer_outcome, &options);
    }
    for (name, peer_outcome) in &peer_outcomes {
        println!(
            "  ratio: pool runs at {:.2}x {name}'s events/s",
            pool_outcome.events_per_second() / peer_outcome.events_per_second().max(f64::MIN_POSITIVE)
        );
        succeeded &= peer_outcome.succeeded(&options);
        // Every run verified the same events, so their checksums must agree.
        if peer_outcome.digest != pool_outcome.digest {
            println!("checksum mismatch: pool {:#x}, {name} {:#x}", pool_outcome.digest, peer_outcome.digest);
            succeeded = false;
        }
    }

    let stats = pool.stats();
    let resizes = resizes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    print_pool_report(&pool, &stats, &resizes);

    println!();
    // Producers that exited with events still in flight left their cache
    // slabs to the pool; compaction takes those back once the consumers have
    // returned every block, and checks that the pool recovers its memory.
    // Every event was freed, so nothing may be live; slabs that caches
    // still hold (a thread's exit may not have flushed its cache yet) are
    // memory in use, not allocations, and are reported apart.
    match pool.compact() {
        Ok(released) => {
            let after = pool.stats();
            println!(
                "compaction gave back {}: size now {}, {} live allocations, {} in {} cache slabs",
                HumanBytes(released as u64),
                HumanBytes(after.size as u64),
                after.live_allocations,
                HumanBytes(after.fast.slab_bytes as u64),
                after.fast.slabs
            );
            if after.live_allocations != 0 {
                println!("blocks still live after every event was freed");
                succeeded = false;
            }
        }
        Err(error) => {
            println!("compaction FAILED: {error}");
            succeeded = false;
        }
    }
    match pool.check() {
        Ok(()) => println!("pool check: ok"),
        Err(error) => {
            println!("pool check: FAILED: {error}");
            succeeded = false;
        }
    }
    println!("checksum: {:#018x}", pool_outcome.digest);
    if succeeded {
        ExitCode::SUCCESS
    } else {
        println!("event storm FAILED");
        ExitCode::FAILURE
    }
}
