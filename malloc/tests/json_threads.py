"""A threaded JSON workload, run under LD_PRELOAD by tests/preloaded.rs.

Checks first that this interpreter allocates through liblle_malloc.so:
the library is mapped, and malloc_usable_size answers as the pool does
(100 bytes round to its 112-byte class; glibc's would say 104).
"""
import ctypes
import json
import threading

with open("/proc/self/maps") as maps:
    assert "liblle_malloc.so" in maps.read(), "liblle_malloc.so is not mapped"
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.malloc_usable_size.restype = ctypes.c_size_t
libc.malloc_usable_size.argtypes = [ctypes.c_void_p]
libc.free.argtypes = [ctypes.c_void_p]
block = libc.malloc(100)
assert libc.malloc_usable_size(block) == 112, libc.malloc_usable_size(block)
libc.free(block)

THREADS = 6
ROUNDS = 40


def document(seed, depth=3):
    if depth == 0:
        return {"seed": seed, "text": "x" * (seed % 300), "values": list(range(seed % 50))}
    return {
        "id": seed,
        "name": f"node-{seed}",
        "children": [document(seed * 7 + child, depth - 1) for child in range(4)],
        "weights": [seed / (child + 1) for child in range(seed % 20)],
    }


errors = []
checked = [0] * THREADS


def work(index):
    try:
        for round_ in range(ROUNDS):
            original = document(index * 1000 + round_)
            text = json.dumps(original, sort_keys=True)
            assert json.loads(text) == original
            assert json.dumps(json.loads(text), sort_keys=True) == text
            checked[index] += 1
    except Exception as error:  # reported by the main thread
        errors.append(repr(error))


threads = [threading.Thread(target=work, args=(index,)) for index in range(THREADS)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
assert not errors, errors
assert checked == [ROUNDS] * THREADS, checked
print(f"json: {THREADS} threads x {ROUNDS} documents round-tripped")
