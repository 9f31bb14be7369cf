//! Real programs under `LD_PRELOAD=liblle_malloc.so`: a C program that
//! calls every function the library exports and checks the data
//! (tests/drop_in.c), and python3 running a threaded JSON workload
//! (tests/json_threads.py). Both check that the preload is in effect. A
//! missing tool (`cc`, `python3`) fails the test, naming it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The library cargo built for this test run: beside the test executable
/// in `deps/`, or one directory up.
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's directory");
    [deps, deps.parent().unwrap_or(deps)]
        .iter()
        .map(|dir| dir.join("liblle_malloc.so"))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("liblle_malloc.so not found in {} or its parent", deps.display()))
}

/// Runs `command`, failing the test with its name if it can't be started.
fn run(command: &mut Command, tool: &str) -> Output {
    command.output().unwrap_or_else(|error| panic!("{tool} is needed to run this test and could not be run: {error}"))
}

/// Asserts that `output` is a success whose stdout has `expected`.
fn assert_succeeded(output: &Output, what: &str, expected: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains(expected), "{what} did not print {expected:?}:\n{stdout}\n{stderr}");
}

fn source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(name)
}

#[test]
fn a_c_program_runs_every_function_on_the_pool() {
    let program = Path::new(env!("CARGO_TARGET_TMPDIR")).join("drop_in");
    let compiled = run(
        Command::new("cc")
            .args(["-O1", "-fno-builtin", "-Wall", "-Wextra", "-Werror", "-pthread", "-o"])
            .arg(&program)
            .arg(source("drop_in.c"))
            .arg("-ldl"),
        "cc",
    );
    assert!(compiled.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&compiled.stderr));
    let output = run(Command::new(&program).env("LD_PRELOAD", library()), "the compiled test program");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for group in ["malloc/free", "calloc", "realloc", "alignment", "cross-thread frees", "fork"] {
        assert!(stdout.contains(&format!("{group}: ok")), "no {group} checks passed:\n{stdout}");
    }
    assert_succeeded(&output, "drop_in", "drop_in: all checks passed");
}

#[test]
fn python_runs_a_threaded_json_workload_on_the_pool() {
    let output = run(Command::new("python3").arg(source("json_threads.py")).env("LD_PRELOAD", library()), "python3");
    assert_succeeded(&output, "python3 json_threads.py", "round-tripped");
}
