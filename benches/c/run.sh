#!/usr/bin/env bash
# The standard allocator benchmarks, in C, against glibc, mimalloc, jemalloc
# and lle-mempool's drop-in malloc; and the fast-path pair from C and Rust.
#
# Usage: benches/c/run.sh [--quick] [--rounds N] [--csv FILE]
#
# What it does, in order:
#  1. Installs Debian's libmimalloc2.0 and libjemalloc2 when their shared
#     libraries are missing (apt-get, through sudo when not root).
#  2. Builds the workloads in this directory with `cc -O2` into
#     <target>/cbench/: larson, xmalloc-test, cache-scratch, cache-thrash,
#     mstress and bench-malloc-thread (each file's header says what it does
#     and its parameters), and pair.c three ways.
#  3. Builds the crate's C library (`cargo build --release --features capi`:
#     liblle_mempool.a and liblle_mempool.so) and, when the workspace has the
#     lle-malloc package, the drop-in library liblle_malloc.so
#     (`cargo build --release -p lle-malloc`); without it, says so and leaves
#     that allocator out. LLE_MALLOC_LIBRARY=/path/to/lib.so benchmarks that
#     library as the drop-in instead, without building anything for it.
#  4. Runs N rounds (default 3). Each round runs every workload with 2
#     threads under every allocator, one after another (glibc: no preload;
#     the others through LD_PRELOAD), starting with a different allocator in
#     each round so that none always runs first. cache-scratch and
#     cache-thrash, which last under two seconds a run, run three times
#     under every allocator in each round, interleaved, and each
#     allocator's fastest counts: a neighbour's burst on this shared machine
#     slows one such run by a tenth or more, and interleaving spreads it
#     over every allocator's runs. Then the pairs: 20 million
#     64-byte allocate/free pairs with one byte written into each block
#     (five times in each program, the fastest counting),
#     through lle_pool_allocate_fast / lle_pool_free_fast linked statically
#     (lle-static) and dynamically (lle-shared), through
#     MemoryPool::allocate_fast / free_fast from Rust (rust: the `pair` bench
#     of the benches/ package, on a default pool, as lle_create_memory_pool
#     makes; rust-checked: on a checked pool, for what checking costs), and
#     through malloc/free under each allocator.
#  5. Writes every run to a CSV (default <target>/cbench/results.csv) and
#     prints the medians over the rounds as Markdown tables: throughput in
#     operations per second, its ratio to glibc's, and the drop-in's ratio to
#     jemalloc's and mimalloc's; ns per pair and its ratio to the Rust pair.
#
# Every workload checks the data it wrote into its blocks; a failed check,
# a crash or a missing result line fails the script (exit status 1) after
# the remaining runs.
#
# --quick runs one round of every workload for a fraction of a second (the
# Rust pair in the test profile, which CI has built already): a smoke test
# that each one runs and passes its checks under every allocator, for CI.
# Its numbers are not a measurement.

set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD

quick=false
rounds=3
csv=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --quick) quick=true ;;
        --rounds)
            rounds=${2:?--rounds needs a count}
            shift
            ;;
        --csv)
            csv=${2:?--csv needs a file}
            shift
            ;;
        *)
            echo "usage: benches/c/run.sh [--quick] [--rounds N] [--csv FILE]" >&2
            exit 2
            ;;
    esac
    shift
done
if $quick; then
    rounds=1
fi
case "$rounds" in
    '' | *[!0-9]* | 0)
        echo "run.sh: --rounds must be a positive integer" >&2
        exit 2
        ;;
esac

target=${CARGO_TARGET_DIR:-$root/target}
release=$target/release
build=$target/cbench
mkdir -p "$build"
csv=${csv:-$build/results.csv}

# 1. The peers' shared libraries.
libdir=/usr/lib/$(cc -print-multiarch 2>/dev/null || gcc -dumpmachine)
mimalloc_library=$libdir/libmimalloc.so.2
jemalloc_library=$libdir/libjemalloc.so.2
if [ ! -e "$mimalloc_library" ] || [ ! -e "$jemalloc_library" ]; then
    echo "==> installing libmimalloc2.0 and libjemalloc2"
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        as_root=(sudo)
    fi
    "${as_root[@]}" apt-get install -y libmimalloc2.0 libjemalloc2 ||
        { "${as_root[@]}" apt-get update && "${as_root[@]}" apt-get install -y libmimalloc2.0 libjemalloc2; }
fi

# 2. The workloads.
echo "==> building the workloads into $build"
c_flags=(-O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -pthread)
here=$root/benches/c
cc "${c_flags[@]}" -o "$build/larson" "$here/larson.c"
cc "${c_flags[@]}" -o "$build/xmalloc-test" "$here/xmalloc_test.c"
cc "${c_flags[@]}" -DFALSE_SHARING_PASSIVE=1 -o "$build/cache-scratch" "$here/false_sharing.c"
cc "${c_flags[@]}" -DFALSE_SHARING_PASSIVE=0 -o "$build/cache-thrash" "$here/false_sharing.c"
cc "${c_flags[@]}" -o "$build/mstress" "$here/mstress.c"
cc "${c_flags[@]}" -o "$build/bench-malloc-thread" "$here/bench_malloc_thread.c" -lm
cc "${c_flags[@]}" -o "$build/pair-malloc" "$here/pair.c"

# 3. The crate's C library and the drop-in malloc.
echo "==> cargo build --release --features capi"
cargo build --release --features capi
cc "${c_flags[@]}" -I"$root/include" -DPAIR_POOL -o "$build/pair-static" "$here/pair.c" \
    "$release/liblle_mempool.a" -ldl -lm
# pair-shared loads its own copy of the shared library: a later cargo build
# without the capi feature replaces the one in target/release.
cp "$release/liblle_mempool.so" "$build/liblle_mempool.so"
cc "${c_flags[@]}" -I"$root/include" -DPAIR_POOL -o "$build/pair-shared" "$here/pair.c" \
    -L"$build" -l:liblle_mempool.so -Wl,-rpath,"$build"

allocators=(glibc mimalloc jemalloc)
declare -A preload=([glibc]="" [mimalloc]=$mimalloc_library [jemalloc]=$jemalloc_library)
if [ -n "${LLE_MALLOC_LIBRARY:-}" ]; then
    echo "==> the drop-in malloc: $LLE_MALLOC_LIBRARY (LLE_MALLOC_LIBRARY)"
    allocators+=(lle)
    preload[lle]=$LLE_MALLOC_LIBRARY
elif cargo metadata --no-deps --format-version 1 | grep -q '"name":"lle-malloc"'; then
    echo "==> cargo build --release -p lle-malloc"
    cargo build --release -p lle-malloc
    allocators+=(lle)
    preload[lle]=$release/liblle_malloc.so
else
    echo "==> no lle-malloc package in the workspace: the drop-in malloc is left out"
fi

if $quick; then
    echo "==> building the Rust pair (test profile)"
    cargo test -p lle-mempool-benches --bench pair --no-run
    rust_pair=(cargo test -q -p lle-mempool-benches --bench pair -- --pairs 200000)
    pairs=1000000
else
    echo "==> building the Rust pair (bench profile)"
    cargo bench -p lle-mempool-benches --bench pair --no-run
    rust_pair=(cargo bench -q -p lle-mempool-benches --bench pair -- --pairs 20000000)
    pairs=20000000
fi

# Each workload's command line with 2 threads: mimalloc-bench's parameters
# (glibc's for bench-malloc-thread, at 5 s instead of 10), or a fraction of a
# second each with --quick.
workloads=(larson xmalloc-test cache-scratch cache-thrash mstress bench-malloc-thread)
declare -A command
if $quick; then
    command[larson]="larson 0.2 8 1000 1000 10 4141 2"
    command[xmalloc-test]="xmalloc-test -w 2 -t 0.2 -s 64"
    command[cache-scratch]="cache-scratch 2 100 1 10000"
    command[cache-thrash]="cache-thrash 2 100 1 10000"
    command[mstress]="mstress 2 5 3"
    command[bench-malloc-thread]="bench-malloc-thread 2 0.2"
else
    command[larson]="larson 5 8 1000 5000 100 4141 2"
    command[xmalloc-test]="xmalloc-test -w 2 -t 5 -s 64"
    command[cache-scratch]="cache-scratch 2 1000 1 2000000"
    command[cache-thrash]="cache-thrash 2 1000 1 2000000"
    command[mstress]="mstress 2 50 25"
    command[bench-malloc-thread]="bench-malloc-thread 2 5"
fi

# Runs per round of each workload under each allocator (see above).
declare -A passes=([cache-scratch]=3 [cache-thrash]=3)

# 4. The rounds.
echo "round,workload,allocator,threads,operations,seconds,ops_per_s,ns_per_pair" >"$csv"
failures=()

# value KEY LINE: the value of KEY=... in a result line.
value() {
    local field
    for field in $2; do
        if [ "${field%%=*}" = "$1" ]; then
            echo "${field#*=}"
            return
        fi
    done
}

# measure ROUND WORKLOAD ALLOCATOR PRELOAD COMMAND...: runs one measurement
# and appends its CSV row; a failure is recorded, not fatal.
measure() {
    local round=$1 workload=$2 allocator=$3 library=$4
    shift 4
    local output line
    if output=$(env ${library:+LD_PRELOAD="$library"} timeout 300 "$@" 2>"$build/stderr.txt") &&
        line=$(grep -m1 'check=ok' <<<"$output"); then
        printf '%-20s %-10s %s\n' "$workload" "$allocator" "$line"
        echo "$round,$workload,$allocator,$(value threads "$line"),$(value operations "$line"),$(value seconds "$line"),$(value ops_per_s "$line"),$(value ns_per_pair "$line")" >>"$csv"
    else
        echo "FAILED: $workload under $allocator: $*"
        sed 's/^/    /' "$build/stderr.txt"
        failures+=("$workload/$allocator")
    fi
}

for ((round = 1; round <= rounds; round++)); do
    echo "==> round $round of $rounds"
    # Rotate the allocators' order from round to round.
    shift_by=$(((round - 1) % ${#allocators[@]}))
    order=("${allocators[@]:shift_by}" "${allocators[@]:0:shift_by}")
    for workload in "${workloads[@]}"; do
        read -r -a words <<<"${command[$workload]}"
        for ((pass = 1; pass <= ${passes[$workload]:-1}; pass++)); do
            for allocator in "${order[@]}"; do
                measure "$round" "$workload" "$allocator" "${preload[$allocator]}" "$build/${words[0]}" "${words[@]:1}"
            done
        done
    done
    measure "$round" pair rust "" "${rust_pair[@]}"
    measure "$round" pair rust-checked "" "${rust_pair[@]}" --checked
    measure "$round" pair lle-static "" "$build/pair-static" "$pairs"
    measure "$round" pair lle-shared "" "$build/pair-shared" "$pairs"
    for allocator in "${order[@]}"; do
        measure "$round" pair "$allocator" "${preload[$allocator]}" "$build/pair-malloc" "$pairs"
    done
done

# 5. The tables.
echo
python3 "$here/summarize.py" "$csv"
echo
echo "CSV: $csv"
if [ "${#failures[@]}" -gt 0 ]; then
    echo "FAILED runs: ${failures[*]}"
    exit 1
fi
