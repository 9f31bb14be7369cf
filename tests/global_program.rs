//! A real program on `GlobalPool`: serde_json, hashbrown and regex at work
//! on several threads at once, with the pool as this test binary's global
//! allocator. Their documents, tables and automata need blocks of every
//! size, from a few bytes to several MiB, grown by `realloc` and freed on
//! other threads than the ones that allocated them, and all of them served
//! by the pool. Each workload checks its own results against data rebuilt
//! from the same seed; afterwards the pool must pass `check()`. Not under the models: their primitives work
//! only inside a model run, and the harness allocates before any test
//! starts.

#![cfg(not(lle_mempool_model))]

use hashbrown::HashMap;
use lle_mempool::GlobalPool;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

#[global_allocator]
static GLOBAL: GlobalPool = GlobalPool::new();

/// How long the program may run before the watchdog calls it hung: far
/// beyond the few seconds it needs, even under AddressSanitizer.
const HANG_LIMIT: Duration = Duration::from_secs(600);

/// Aborts the process unless the returned sender is dropped within
/// `HANG_LIMIT`, so that a deadlock in the allocator fails the test instead
/// of hanging it. Dropping the sender, on success or while a panic unwinds,
/// lets the watchdog go.
fn start_watchdog() -> mpsc::Sender<()> {
    let (alive, finished) = mpsc::channel::<()>();
    thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = finished.recv_timeout(HANG_LIMIT) {
            eprintln!("the program on the global pool did not finish within {HANG_LIMIT:?}");
            std::process::abort();
        }
    });
    alive
}

fn in_global_pool(block: *const u8) -> bool {
    GLOBAL.with_pool(|pool| pool.contains(block)).expect("the global pool exists")
}

/// A deterministic stream of numbers (splitmix64): every document can be
/// rebuilt from its seed to compare against what came back.
struct Numbers(u64);

impl Numbers {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut value = self.0;
        value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        value ^ (value >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    /// Present on every third order; some are longer than 1 KiB.
    note: Option<String>,
    lines: Vec<OrderLine>,
    tags: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderLine {
    sku: String,
    quantity: u32,
    unit_price_cents: u64,
    description: String,
}

/// `count` orders generated from `seed`, with escapes and non-ASCII text
/// for the serialiser and strings from empty to a few KiB.
fn orders(seed: u64, count: usize) -> Vec<Order> {
    let mut numbers = Numbers(seed);
    (0..count as u64)
        .map(|id| {
            let lines = (0..numbers.below(6))
                .map(|line| OrderLine {
                    sku: format!("SKU-{seed}-{id}-{line}"),
                    quantity: numbers.below(50) as u32 + 1,
                    unit_price_cents: numbers.below(100_000),
                    description: "crème brûlée \"deluxe\"\t".repeat(numbers.below(12) as usize),
                })
                .collect();
            let note = (id % 3 == 0).then(|| format!("leave at door\n{}", "ü".repeat(numbers.below(1500) as usize)));
            let tags = (0..numbers.below(4)).map(|tag| (format!("tag-{tag}"), numbers.below(1000) as u32)).collect();
            Order { id, customer: format!("customer {} of seed {seed}", numbers.below(10_000)), note, lines, tags }
        })
        .collect()
}

/// Panics naming the first order that differs, rather than printing
/// megabytes of both.
fn assert_same_orders(found: &[Order], expected: &[Order], what: &str) {
    assert_eq!(found.len(), expected.len(), "{what}: number of orders");
    if let Some(index) = (0..found.len()).find(|&index| found[index] != expected[index]) {
        panic!("{what}: order {index} is {:?}, expected {:?}", found[index], expected[index]);
    }
}

/// Writers serialise documents of several MiB on their own threads;
/// readers on other threads parse them back, both into the types and into
/// `serde_json::Value`, pretty-print that, and parse the pretty text again.
fn json_documents_round_trip_across_threads() {
    const DOCUMENTS: u64 = 3;
    const ORDERS: usize = 4_000;
    let (sender, receiver) = mpsc::channel::<(u64, String)>();
    thread::scope(|scope| {
        for seed in 0..DOCUMENTS {
            let sender = sender.clone();
            scope.spawn(move || {
                let text = serde_json::to_string(&orders(seed, ORDERS)).expect("orders serialise");
                sender.send((seed, text)).expect("the reading thread is alive");
            });
        }
        drop(sender);
        let readers: Vec<_> = receiver
            .into_iter()
            .map(|(seed, text)| {
                scope.spawn(move || {
                    assert!(text.len() > 2 << 20, "document {seed} has only {} bytes", text.len());
                    assert!(in_global_pool(text.as_ptr()), "document {seed}'s buffer is not the pool's");
                    let expected = orders(seed, ORDERS);
                    let parsed: Vec<Order> = serde_json::from_str(&text).expect("the document parses");
                    assert_same_orders(&parsed, &expected, "parsed document");

                    let value: serde_json::Value = serde_json::from_str(&text).expect("the document parses");
                    let orders_in_value = value.as_array().expect("the document is an array");
                    let lines_in_value: usize = orders_in_value
                        .iter()
                        .map(|order| order["lines"].as_array().expect("lines are an array").len())
                        .sum();
                    assert_eq!(lines_in_value, expected.iter().map(|order| order.lines.len()).sum::<usize>());

                    let pretty = serde_json::to_string_pretty(&value).expect("a value prints");
                    assert!(pretty.len() > text.len());
                    assert!(in_global_pool(pretty.as_ptr()), "pretty document {seed}'s buffer is not the pool's");
                    drop(text);
                    let reparsed: Vec<Order> = serde_json::from_str(&pretty).expect("the pretty text parses");
                    assert_same_orders(&reparsed, &expected, "pretty-printed document");
                })
            })
            .collect();
        for reader in readers {
            reader.join().expect("a reader panicked");
        }
    });
}

/// The value stored under `key`, rebuilt from the key alone.
fn value_of(key: u64) -> Vec<u32> {
    (0..key % 13).map(|n| (key as u32).wrapping_mul(31).wrapping_add(n as u32)).collect()
}

/// Maps built on one thread are moved to another, which grows them with
/// its own keys, removes a third of the old ones and checks every entry;
/// half of them are dropped there, half back on the calling thread.
fn hash_maps_built_on_one_thread_grow_and_die_on_another() {
    const THREADS: u64 = 4;
    const BUILT: u64 = 40_000;
    const ADDED: u64 = 20_000;
    let key = |tag: u64, index: u64| tag << 32 | index;
    let index_of = |key: u64| key & 0xFFFF_FFFF;
    let maps: Vec<HashMap<u64, Vec<u32>>> = thread::scope(|scope| {
        let builders: Vec<_> = (0..THREADS)
            .map(|tag| {
                scope.spawn(move || (0..BUILT).map(|index| (key(tag, index), value_of(key(tag, index)))).collect())
            })
            .collect();
        builders.into_iter().map(|builder| builder.join().expect("a builder panicked")).collect()
    });
    let kept: Vec<HashMap<u64, Vec<u32>>> = thread::scope(|scope| {
        let extenders: Vec<_> = maps
            .into_iter()
            .enumerate()
            .map(|(builder, mut map)| {
                scope.spawn(move || {
                    let tag = THREADS + builder as u64;
                    map.extend((0..ADDED).map(|index| (key(tag, index), value_of(key(tag, index)))));
                    map.retain(|&key, _| key >> 32 >= THREADS || index_of(key) % 3 != 0);
                    assert_eq!(map.len() as u64, BUILT - BUILT.div_ceil(3) + ADDED);
                    for (&key, value) in &map {
                        assert_eq!(*value, value_of(key), "key {key:#x}");
                    }
                    for index in 0..ADDED {
                        assert!(map.contains_key(&key(tag, index)), "added key {index} of map {builder}");
                    }
                    (builder % 2 == 1).then_some(map)
                })
            })
            .collect();
        extenders.into_iter().filter_map(|extender| extender.join().expect("an extender panicked")).collect()
    });
    assert_eq!(kept.len() as u64, THREADS / 2);
    for map in kept {
        assert_eq!(map.len() as u64, BUILT - BUILT.div_ceil(3) + ADDED);
    }
}

/// Threads compile their own regexes, and share one compiled on this
/// thread, over a text whose matches are known from how it was built.
fn regexes_compile_and_match_on_every_thread() {
    const THREADS: usize = 4;
    const LINES: u64 = 20_000;
    const WORDS: u64 = 500;
    let mut text = String::new();
    let mut expected_words = 0u64;
    for n in 0..LINES {
        text.push_str(&format!("user{n}@host{}.example.org\n", n % 7));
        let word = n % 700;
        expected_words += u64::from(word < WORDS);
        text.push_str(&format!("noise {n}: Café ñandú term{word}x, and nothing else\n"));
    }
    let addresses = Regex::new(r"(?m)^user(\d+)@host(\d)\.example\.org$").expect("the pattern compiles");
    thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (text, addresses) = (&text, &addresses);
                scope.spawn(move || {
                    let (mut count, mut user_sum, mut host_sum) = (0u64, 0u64, 0u64);
                    for captures in addresses.captures_iter(text) {
                        count += 1;
                        user_sum += captures[1].parse::<u64>().expect("digits");
                        host_sum += captures[2].parse::<u64>().expect("a digit");
                    }
                    assert_eq!(count, LINES);
                    assert_eq!(user_sum, LINES * (LINES - 1) / 2);
                    assert_eq!(host_sum, (0..LINES).map(|n| n % 7).sum::<u64>());

                    let alternatives: Vec<String> = (0..WORDS).map(|word| format!("term{word}x")).collect();
                    let words = Regex::new(&format!(r"\b(?:{})\b", alternatives.join("|"))).expect("compiles");
                    assert_eq!(words.find_iter(text).count() as u64, expected_words);

                    let accented = Regex::new(r"(?i)CAFÉ\s+Ñandú").expect("compiles");
                    assert_eq!(accented.find_iter(text).count() as u64, LINES);
                    let letters = Regex::new(r"\p{L}+").expect("compiles");
                    // "user", "host", "example", "org"; "noise", "Café",
                    // "ñandú", "term", "x", "and", "nothing", "else".
                    assert_eq!(letters.find_iter(text).count() as u64, LINES * (4 + 8));
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("a regex worker panicked");
        }
    });
}

#[test]
fn serde_json_hashbrown_and_regex_run_on_the_global_pool() {
    let _watchdog = start_watchdog();
    thread::scope(|scope| {
        let workloads = [
            scope.spawn(json_documents_round_trip_across_threads),
            scope.spawn(hash_maps_built_on_one_thread_grow_and_die_on_another),
            scope.spawn(regexes_compile_and_match_on_every_thread),
        ];
        for workload in workloads {
            workload.join().expect("a workload failed");
        }
    });
    let (verdict, stats) = GLOBAL.with_pool(|pool| (pool.check(), pool.stats())).expect("the global pool exists");
    assert_eq!(verdict, Ok(()));
    // Documents of several MiB were live at once: the pool held them.
    assert!(stats.peak_used > 4 << 20, "{stats:?}");
}
