//! Builds the C test program against the hand-written header and the crate's
//! staticlib, runs it, and checks that the header agrees with `src/capi.rs`
//! on every constant, size and field offset.
//!
//! Needs a C compiler (`cc`, or `$CC`) and the `staticlib` crate type.
// Under shuttle or loom the pool's primitives only work inside the model
// checker's scheduler, which a C program cannot enter.
#![cfg(all(feature = "capi", not(lle_mempool_model)))]

use std::ffi::OsString;
use std::fmt::Write as _;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lle_mempool::capi::{
    self, LleBlockDamage, LleFastPathStatistics, LleMemoryPressureEvent, LlePoolStatistics, LleResult,
};
use lle_mempool::{MemoryPool, PoolConfig};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

const STRICT_C_FLAGS: &[&str] = &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"];

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The staticlib cargo built for this test run.
///
/// It is taken from `target/<profile>/deps/`, next to this test binary, not
/// from `target/<profile>/`: `cargo test` builds the library only as a
/// dependency, and cargo copies a staticlib up to the profile directory only
/// when the library itself was asked for (`cargo build`), so the copy there
/// may be from an older build.
fn staticlib() -> PathBuf {
    let test_binary = std::env::current_exe().expect("path of the test binary");
    let deps_dir = test_binary.parent().expect("test binary should live in target/<profile>/deps");
    let lib = deps_dir.join("liblle_mempool.a");
    assert!(
        lib.is_file(),
        "{} is missing: the C tests link the staticlib, so Cargo.toml's [lib] \
         crate-type must include \"staticlib\"",
        lib.display()
    );
    // Cargo names a staticlib without a hash, so a build with other features
    // (say `--all-features`) overwrites it. Cargo rebuilds it before the next
    // `cargo test`, but a test binary run directly would link the wrong one;
    // the library is always built before the test links, so one newer than
    // this binary is not the one it was built with.
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if let (Some(lib_time), Some(test_time)) = (modified(&lib), modified(&test_binary)) {
        assert!(
            lib_time <= test_time,
            "{} was rebuilt after this test binary, probably with other features; \
             `touch src/capi.rs` and run the test again",
            lib.display()
        );
    }
    lib
}

/// A path in cargo's per-target scratch directory, unique to this process so
/// concurrent test runs (debug and release, say) do not clobber each other.
fn scratch_path(stem: &str, extension: &str) -> PathBuf {
    let name = format!("{stem}-{}{extension}", std::process::id());
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn c_compiler() -> OsString {
    std::env::var_os("CC").unwrap_or_else(|| "cc".into())
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Compiles `source` with the strict flags and links it against the staticlib.
fn compile_c(source: &Path, executable: &Path) {
    let output = Command::new(c_compiler())
        .args(STRICT_C_FLAGS)
        .arg("-pthread")
        .arg("-I")
        .arg(manifest_dir().join("include"))
        .arg(source)
        .arg(staticlib())
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(executable)
        .output()
        .unwrap_or_else(|e| panic!("could not run the C compiler {:?}: {e}", c_compiler()));
    assert!(output.status.success(), "compiling {} failed: {}", source.display(), describe(&output));
}

fn run(executable: &Path) -> String {
    let output =
        Command::new(executable).output().unwrap_or_else(|e| panic!("could not run {}: {e}", executable.display()));
    let _ = std::fs::remove_file(executable);
    assert!(output.status.success(), "{} failed: {}", executable.display(), describe(&output));
    String::from_utf8(output.stdout).expect("C program output is UTF-8")
}

#[test]
fn c_test_program_passes() {
    let executable = scratch_path("capi_test", "");
    compile_c(&manifest_dir().join("tests/capi/capi_test.c"), &executable);
    let stdout = run(&executable);
    print!("{stdout}");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.ends_with(" passed, 0 failed") && !summary.starts_with("0 "),
        "unexpected summary line: {summary:?}"
    );
}

/// One C expression the probe prints, and the value Rust expects for it.
struct Expectation {
    c_expression: String,
    rust_value: i128,
}

fn expect(c_expression: impl Into<String>, rust_value: impl Into<i128>) -> Expectation {
    Expectation { c_expression: c_expression.into(), rust_value: rust_value.into() }
}

fn header_expectations() -> Vec<Expectation> {
    let mut expected = vec![
        expect("LLE_POOL_BUFFER", capi::LLE_POOL_BUFFER),
        expect("LLE_POOL_EVENT", capi::LLE_POOL_EVENT),
        expect("LLE_POOL_STRING", capi::LLE_POOL_STRING),
        expect("LLE_POOL_TEMP", capi::LLE_POOL_TEMP),
        expect("LLE_POOL_HISTORY", capi::LLE_POOL_HISTORY),
        expect("LLE_POOL_SYNTAX", capi::LLE_POOL_SYNTAX),
        expect("LLE_POOL_COMPLETION", capi::LLE_POOL_COMPLETION),
        expect("LLE_POOL_CUSTOM", capi::LLE_POOL_CUSTOM),
        expect("sizeof(lle_memory_pool_type_t)", size_of::<std::ffi::c_uint>() as u64),
        expect("sizeof(lle_result_t)", size_of::<LleResult>() as u64),
        expect("LLE_NO_LIMIT == SIZE_MAX", 1),
        expect("LLE_PRESSURE_SOFT_LIMIT", capi::LLE_PRESSURE_SOFT_LIMIT),
        expect("LLE_PRESSURE_MAX_SIZE", capi::LLE_PRESSURE_MAX_SIZE),
        expect("LLE_POOL_FLAG_CHECKED", capi::LLE_POOL_FLAG_CHECKED),
        expect("LLE_POOL_FLAG_ZERO_ON_FREE", capi::LLE_POOL_FLAG_ZERO_ON_FREE),
        expect("LLE_POOL_FLAG_HUGE_PAGES", capi::LLE_POOL_FLAG_HUGE_PAGES),
        expect("LLE_POOL_FLAG_REPORT_LEAKS_ON_DROP", capi::LLE_POOL_FLAG_REPORT_LEAKS_ON_DROP),
        expect("LLE_DAMAGE_OVERFLOW", capi::LLE_DAMAGE_OVERFLOW),
        expect("LLE_DAMAGE_WRITE_AFTER_FREE", capi::LLE_DAMAGE_WRITE_AFTER_FREE),
    ];
    let results = [
        ("LLE_SUCCESS", LleResult::Success),
        ("LLE_ERROR_NULL_POINTER", LleResult::ErrorNullPointer),
        ("LLE_ERROR_INVALID_PARAMETER", LleResult::ErrorInvalidParameter),
        ("LLE_ERROR_ZERO_SIZE", LleResult::ErrorZeroSize),
        ("LLE_ERROR_SIZE_OVERFLOW", LleResult::ErrorSizeOverflow),
        ("LLE_ERROR_INVALID_ALIGNMENT", LleResult::ErrorInvalidAlignment),
        ("LLE_ERROR_ALIGNMENT_TOO_LARGE", LleResult::ErrorAlignmentTooLarge),
        ("LLE_ERROR_FOREIGN_POINTER", LleResult::ErrorForeignPointer),
        ("LLE_ERROR_INTERIOR_POINTER", LleResult::ErrorInteriorPointer),
        ("LLE_ERROR_DOUBLE_FREE", LleResult::ErrorDoubleFree),
        ("LLE_ERROR_EXCEEDS_MAX_SIZE", LleResult::ErrorExceedsMaxSize),
        ("LLE_ERROR_SHRINK_BELOW_USED", LleResult::ErrorShrinkBelowUsed),
        ("LLE_ERROR_SHRINK_BLOCKED", LleResult::ErrorShrinkBlocked),
        ("LLE_ERROR_OUT_OF_MEMORY", LleResult::ErrorOutOfMemory),
        ("LLE_ERROR_INVALID_CONFIG", LleResult::ErrorInvalidConfig),
        ("LLE_ERROR_CORRUPTED", LleResult::ErrorCorrupted),
        ("LLE_ERROR_INTERNAL", LleResult::ErrorInternal),
        ("LLE_ERROR_REENTERED", LleResult::ErrorReentered),
    ];
    expected.extend(results.into_iter().map(|(name, code)| expect(name, code as i32)));

    macro_rules! layout {
        ($c_type:literal, $rust_type:ty, [$($field:ident),* $(,)?]) => {
            expected.push(expect(
                concat!("sizeof(", $c_type, ")"),
                size_of::<$rust_type>() as u64,
            ));
            expected.push(expect(
                concat!("_Alignof(", $c_type, ")"),
                std::mem::align_of::<$rust_type>() as u64,
            ));
            $(expected.push(expect(
                concat!("offsetof(", $c_type, ", ", stringify!($field), ")"),
                offset_of!($rust_type, $field) as u64,
            ));)*
        };
    }
    layout!("lle_memory_pressure_event_t", LleMemoryPressureEvent, [used, soft_limit, max_size, requested, reason]);
    layout!("lle_block_damage_t", LleBlockDamage, [block, size, usable, offset, kind]);
    layout!(
        "lle_fast_path_statistics_t",
        LleFastPathStatistics,
        [allocations, frees, remote_frees, cached_blocks, slabs, slab_bytes]
    );
    layout!(
        "lle_pool_statistics_t",
        LlePoolStatistics,
        [
            size,
            used,
            free,
            largest_free_block,
            free_blocks,
            live_allocations,
            peak_used,
            total_allocations,
            total_frees,
            failed_allocations,
            expansions,
            compactions,
            avg_alloc_time_ns,
            avg_free_time_ns,
            fast,
            quarantined_blocks,
            low_memory_retries,
            low_memory_recoveries,
        ]
    );
    expected
}

/// A hand-written header drifts silently from the Rust definitions; this
/// makes the C compiler report what it sees and compares it line by line.
#[test]
fn header_matches_rust_definitions() {
    let expected = header_expectations();
    let mut probe = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"lle/memory_management.h\"\n\
         int main(void) {\n",
    );
    for item in &expected {
        writeln!(probe, "    printf(\"%lld\\n\", (long long)({}));", item.c_expression).unwrap();
    }
    probe.push_str("    return 0;\n}\n");

    let source = scratch_path("layout_probe", ".c");
    std::fs::write(&source, probe).expect("write the layout probe");
    let executable = scratch_path("layout_probe", "");
    compile_c(&source, &executable);
    let _ = std::fs::remove_file(&source);

    let stdout = run(&executable);
    let c_values: Vec<&str> = stdout.lines().collect();
    assert_eq!(c_values.len(), expected.len(), "probe output: {stdout}");
    let mismatches: Vec<String> = expected
        .iter()
        .zip(c_values)
        .filter(|(item, c_value)| c_value.parse::<i128>() != Ok(item.rust_value))
        .map(|(item, c_value)| format!("{}: C says {c_value}, Rust says {}", item.c_expression, item.rust_value))
        .collect();
    assert!(mismatches.is_empty(), "header and src/capi.rs disagree:\n{}", mismatches.join("\n"));
}

/// C cannot give a pool a maximum size, which low-memory retries need, so
/// this test makes the pool in Rust and reads its statistics through the C
/// function: an allocation the maximum size refused, retried once the
/// pressure callback freed the block in its way.
#[test]
fn statistics_count_low_memory_retries() {
    let pool = Arc::new(MemoryPool::with_config(PoolConfig::new(4096).max_size(4096)).unwrap());
    let backlog: Arc<Mutex<Vec<usize>>> = Arc::default();
    let (relieving_pool, queue) = (Arc::downgrade(&pool), Arc::clone(&backlog));
    pool.on_memory_pressure(move |_| {
        let Some(pool) = relieving_pool.upgrade() else { return };
        for address in queue.lock().unwrap().drain(..) {
            unsafe { pool.free(NonNull::new(address as *mut u8).unwrap()).unwrap() };
        }
    });
    let first = pool.allocate(4096).unwrap();
    backlog.lock().unwrap().push(first.as_ptr() as usize);
    let second = pool.allocate(2048).unwrap();
    unsafe { second.as_ptr().write_bytes(0x5A, 2048) };

    let mut stats = LlePoolStatistics::default();
    let handle: *const MemoryPool = &*pool;
    assert_eq!(unsafe { capi::lle_get_pool_statistics(handle, &mut stats) }, LleResult::Success);
    assert_eq!((stats.low_memory_retries, stats.low_memory_recoveries), (1, 1));
    assert_eq!((stats.live_allocations, stats.quarantined_blocks), (1, 0));
    assert!(backlog.lock().unwrap().is_empty());
    assert!((0..2048).all(|offset| unsafe { second.as_ptr().add(offset).read() } == 0x5A));
    unsafe { pool.free(second).unwrap() };
}
