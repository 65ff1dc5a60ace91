#!/usr/bin/env python3
"""test_safetensors_interop.py - our safetensors reader/writer against the Python `safetensors` package.

Run: python test_safetensors_interop.py --bin BUILD/loraforge --workdir DIR
(st_tool, built from tests/tools/st_tool.c, must sit next to --bin.)

(a) Python writes files (safetensors.numpy.save_file with every numpy dtype, safetensors.torch.save_file
    with bf16/f16/f32 when torch imports, and safetensors.serialize_file with raw bytes for every dtype this
    safetensors version knows: F8 etc.), with random shapes including rank-0 and zero-size, random names
    and metadata with characters JSON must escape. `st_tool read` must report the same metadata, dtypes,
    shapes, offsets and FNV-1a 64 of the bytes; `st_tool copy` (our reader + writer) must reproduce the
    Python file byte for byte.
(b) `st_tool write` output loads in Python (deserialize, safe_open np/pt) with the documented bytes and
    metadata, and equals byte for byte what Python's own serializer produces for the same tensors.
(c) Files corrupted here (truncated, extended, wrong offsets, bad dtype, bad header length, ...) make
    `st_tool read` exit 1 with a message naming the file; the reference rejects the same files.

Seed: LF_TEST_SEED or time, printed. Ends with "N passed, M failed"; exit 1 on any failure. A missing
`safetensors` or numpy is a failure, never a skip.
"""
import argparse
import json
import os
import random
import struct
import subprocess
import sys
import time

try:
    import numpy as np
    import safetensors
    from safetensors import deserialize, safe_open, serialize, serialize_file
    from safetensors.numpy import load_file as np_load_file
    from safetensors.numpy import save_file as np_save_file
except Exception as e:  # ImportError, or a broken install
    print(f"FAIL: cannot import safetensors/numpy ({e!r}); install them into the test venv "
          "(scripts/setup-tests.sh), e.g. pip install safetensors numpy")
    print("0 passed, 1 failed")
    sys.exit(1)

try:
    import torch
    from safetensors.torch import save_file as pt_save_file
except Exception:
    torch = None


def _specs(tensors, keep):
    """{name: {"dtype", "shape", "data": bytes}} -> what this safetensors' serialize()/serialize_file() take.
    0.4.x took those dicts; 0.8 takes safetensors.TensorSpec(dtype, shape, data_ptr, data_len) over memory
    the caller keeps alive (keep: a list that holds the buffers until the call returns)."""
    spec = getattr(safetensors, "TensorSpec", None)
    if spec is None:
        return tensors
    out = {}
    for name, d in tensors.items():
        buf = np.frombuffer(bytes(d["data"]), np.uint8) if len(d["data"]) else np.zeros(1, np.uint8)
        keep.append(buf)
        out[name] = spec(dtype=d["dtype"], shape=list(d["shape"]), data_ptr=buf.ctypes.data, data_len=len(d["data"]))
    return out


def st_serialize(tensors, metadata):
    keep = []
    return serialize(_specs(tensors, keep), metadata)


def st_serialize_file(tensors, path, metadata):
    keep = []
    return serialize_file(_specs(tensors, keep), path, metadata)

# Our dtype names (lf_dtype order) -> names the Python binding's serialize() may accept, newest first.
BINDING_NAMES = {
    "BOOL": ["bool"], "F4": ["float4_e2m1fn_x2", "float4_e2m1fn", "float4"],
    "F6_E2M3": ["float6_e2m3fn", "float6_e2m3"], "F6_E3M2": ["float6_e3m2fn", "float6_e3m2"],
    "U8": ["uint8"], "I8": ["int8"], "F8_E5M2": ["float8_e5m2"], "F8_E4M3": ["float8_e4m3fn", "float8_e4m3"],
    "F8_E8M0": ["float8_e8m0fnu", "float8_e8m0"], "F8_E4M3FNUZ": ["float8_e4m3fnuz"],
    "F8_E5M2FNUZ": ["float8_e5m2fnuz"], "I16": ["int16"], "U16": ["uint16"], "F16": ["float16"],
    "BF16": ["bfloat16"], "I32": ["int32"], "U32": ["uint32"], "F32": ["float32"], "C64": ["complex64"],
    "F64": ["float64"], "I64": ["int64"], "U64": ["uint64"],
}
DTYPE_ORDER = list(BINDING_NAMES)
BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
        "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
        "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}
# Every safetensors release we support knows at least these (0.4.x).
REQUIRED = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
            "F64", "I64", "U64"]
NUMPY_DTYPES = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
                "F16": np.float16, "I32": np.int32, "U32": np.uint32, "F32": np.float32, "F64": np.float64,
                "I64": np.int64, "U64": np.uint64}
# Characters that exercise the header's JSON escaping (serde_json rules): quote, backslash, controls,
# DEL, slash, 2/3/4-byte UTF-8.
TRICKY = ['"', "\\", "\t", "\n", "\x01", "\x1f", "\x7f", "/", "\u00e9", "\u2713", "\U0001F600", " "]


class Runner:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def case(self, name, ok, detail=""):
        print(f"{'PASS' if ok else 'FAIL'} {name}{'' if ok or not detail else ': ' + detail}")
        sys.stdout.flush()
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        return ok


def fnv1a64(b):
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def parse_file(path):
    """(header dict, data buffer bytes, raw file bytes), parsed here without safetensors."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n].decode("utf-8")), raw[8 + n:], raw


def st_tool(tool, *args):
    return subprocess.run([tool, *args], capture_output=True, timeout=120)


def probe_dtypes():
    """Our dtype name -> binding name, for every dtype this safetensors can serialize and read back."""
    found = {}
    for dt, cands in BINDING_NAMES.items():
        numel = 8
        nbytes = numel * BITS[dt] // 8
        for c in cands:
            try:
                b = st_serialize({"x": {"dtype": c, "shape": [2, 4], "data": bytes(nbytes)}}, None)
                got = deserialize(bytes(b))
                if got and got[0][1]["dtype"] == dt and list(got[0][1]["shape"]) == [2, 4]:
                    found[dt] = c
                    break
            except Exception:
                continue
    return found


def random_shape(rng, dt, kind):
    """kind 0: rank 1-3; 1: rank 0; 2: zero-size. numel*bits is kept a multiple of 8."""
    if kind == 1:
        shape = []
    else:
        shape = [rng.randint(1, 5) for _ in range(rng.randint(1, 3))]
        if kind == 2:
            shape[rng.randrange(len(shape))] = 0
    numel = 1
    for d in shape:
        numel *= d
    if (numel * BITS[dt]) % 8:
        shape = (shape or [1])[:-1] + [(shape or [1])[-1] * 4]
    return shape


def random_name(rng, i, dt):
    base = f"model.layers.{rng.randint(0, 99)}.{rng.choice(['q_proj', 'k_proj', 'mlp.up'])}.{dt.lower()}.{i}"
    if rng.random() < 0.3:
        base += "".join(rng.choice(TRICKY) for _ in range(3))
    return base


def random_metadata(rng):
    meta = {"format": "pt"}
    for i in range(rng.randint(0, 3)):
        meta[f"key{i}{rng.choice(TRICKY)}"] = "".join(rng.choice(TRICKY + ["a", "b", "1"]) for _ in range(8))
    return meta


def random_array(rng, nprng, dt, shape):
    # np.asarray: for shape [] NumPy arithmetic gives a NumPy scalar, which safetensors 0.8's numpy save_file
    # (it reads .ctypes) no longer accepts; a 0-d array is what a rank-0 tensor is
    npdt = NUMPY_DTYPES[dt]
    if dt == "BOOL":
        return np.asarray(nprng.integers(0, 2, size=shape).astype(np.bool_))
    if np.issubdtype(npdt, np.integer):
        info = np.iinfo(npdt)
        return np.asarray(nprng.integers(info.min, info.max, size=shape, dtype=npdt, endpoint=True))
    return np.asarray((nprng.standard_normal(size=shape) * 10).astype(npdt))


def random_bytes(rng, dt, nbytes):
    if dt == "BOOL":
        return bytes(rng.randint(0, 1) for _ in range(nbytes))
    return bytes(rng.getrandbits(8) for _ in range(nbytes))


def expected_listing(path):
    """What st_tool read must print, computed from the file and cross-checked against safetensors."""
    header, buf, _ = parse_file(path)
    meta = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        tensors[name] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [b, e],
                         "fnv1a64": fnv1a64(buf[b:e])}
    return {"metadata": meta, "tensors": tensors}


def compare_listing(r, label, tool, path, want):
    p = st_tool(tool, "read", path)
    if p.returncode != 0:
        return r.case(f"{label}: st_tool read", False, p.stderr.decode(errors="replace").strip())
    got = json.loads(p.stdout)
    ok = r.case(f"{label}: metadata", got["metadata"] == want["metadata"],
                f"got {got['metadata']!r} want {want['metadata']!r}")
    bad = [n for n in want["tensors"] if got["tensors"].get(n) != want["tensors"][n]]
    extra = sorted(set(got["tensors"]) - set(want["tensors"]))
    ok &= r.case(f"{label}: {len(want['tensors'])} tensors (dtype, shape, offsets, fnv1a64)",
                 not bad and not extra,
                 f"differ: {[(n, got['tensors'].get(n), want['tensors'][n]) for n in bad[:3]]} extra: {extra[:3]}")
    offs = [t["data_offsets"][0] for t in got["tensors"].values()]
    ok &= r.case(f"{label}: listed in file-offset order", offs == sorted(offs))
    return ok


def check_copy(r, label, tool, path, workdir):
    out = os.path.join(workdir, "copy_" + os.path.basename(path))
    p = st_tool(tool, "copy", path, out)
    if p.returncode != 0:
        return r.case(f"{label}: st_tool copy", False, p.stderr.decode(errors="replace").strip())
    a, b = open(path, "rb").read(), open(out, "rb").read()
    return r.case(f"{label}: our writer reproduces the Python file byte for byte", a == b,
                  f"sizes {len(a)} vs {len(b)}; headers:\n  py : {a[8:8 + 200]!r}\n  our: {b[8:8 + 200]!r}")


def part_a(r, rng, tool, workdir, supported, trial):
    nprng = np.random.default_rng(rng.getrandbits(32))
    # numpy
    tensors, i = {}, 0
    for dt in NUMPY_DTYPES:
        for kind in (0, 1, 2):
            tensors[random_name(rng, i, dt)] = random_array(rng, nprng, dt, random_shape(rng, dt, kind))
            i += 1
    meta = random_metadata(rng)
    path = os.path.join(workdir, f"py_numpy_{trial}.safetensors")
    np_save_file(tensors, path, metadata=meta)
    want = expected_listing(path)
    loaded = np_load_file(path)
    _, buf, _ = parse_file(path)
    same = all(loaded[n].tobytes() == buf[want["tensors"][n]["data_offsets"][0]:want["tensors"][n]["data_offsets"][1]]
               and loaded[n].dtype == tensors[n].dtype and loaded[n].shape == tensors[n].shape for n in tensors)
    r.case(f"a{trial} numpy: oracle sanity (load_file bytes == file bytes)", same)
    compare_listing(r, f"a{trial} numpy", tool, path, want)
    check_copy(r, f"a{trial} numpy", tool, path, workdir)

    # torch (bf16 is not a numpy dtype)
    if torch is not None:
        g = torch.Generator().manual_seed(rng.getrandbits(31))
        tt = {}
        for j, (dt, tdt) in enumerate([("BF16", torch.bfloat16), ("F16", torch.float16), ("F32", torch.float32)]):
            for kind in (0, 1, 2):
                tt[random_name(rng, 100 + 3 * j + kind, dt)] = torch.randn(
                    random_shape(rng, dt, kind), generator=g).to(tdt)
        path = os.path.join(workdir, f"py_torch_{trial}.safetensors")
        pt_save_file(tt, path, metadata={"format": "pt"})
        want = expected_listing(path)
        _, buf, _ = parse_file(path)
        view = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}
        same = all(t.contiguous().view(view[t.dtype]).numpy().tobytes()
                   == buf[want["tensors"][n]["data_offsets"][0]:want["tensors"][n]["data_offsets"][1]]
                   for n, t in tt.items())
        r.case(f"a{trial} torch: oracle sanity (tensor bytes == file bytes)", same)
        compare_listing(r, f"a{trial} torch", tool, path, want)
        check_copy(r, f"a{trial} torch", tool, path, workdir)
    else:
        print(f"note: torch not importable; bf16 is covered by the raw-bytes file only")

    # raw bytes, every dtype this safetensors knows (F8, ...)
    raw = {}
    for j, dt in enumerate(supported):
        for kind in (0, 1, 2):
            shape = random_shape(rng, dt, kind)
            numel = 1
            for d in shape:
                numel *= d
            raw[random_name(rng, 200 + 3 * j + kind, dt)] = {
                "dtype": supported[dt], "shape": shape, "data": random_bytes(rng, dt, numel * BITS[dt] // 8)}
    path = os.path.join(workdir, f"py_raw_{trial}.safetensors")
    st_serialize_file(raw, path, random_metadata(rng))
    want = expected_listing(path)
    back = {n: d for n, d in deserialize(open(path, "rb").read())}
    r.case(f"a{trial} raw: oracle sanity (deserialize bytes == written bytes)",
           all(bytes(back[n]["data"]) == raw[n]["data"] for n in raw))
    compare_listing(r, f"a{trial} raw", tool, path, want)
    check_copy(r, f"a{trial} raw", tool, path, workdir)


def formula(numel_bytes, k, is_bool):
    b = bytes(((i * 131 + k * 17 + 7) & 0xFF) for i in range(numel_bytes))
    return bytes(x & 1 for x in b) if is_bool else b


def st_tool_expected(dtypes):
    """name -> (dtype, shape, bytes), as documented in st_tool.c."""
    out = {}
    for dt in dtypes:
        d = DTYPE_ORDER.index(dt)
        shape = [d % 3 + 1, 4]
        out["t." + dt.lower()] = (dt, shape, formula(shape[0] * shape[1] * BITS[dt] // 8, d, dt == "BOOL"))
    if "F32" in dtypes:
        out["extra.scalar"] = ("F32", [], formula(4, 100, False))
    if "I64" in dtypes:
        out["extra.empty"] = ("I64", [0, 5], b"")
    if "U8" in dtypes:
        out['extra.name "q" \\ \t caf\u00e9'] = ("U8", [3], formula(3, 102, False))
    return out


def part_b(r, tool, workdir, supported):
    dtypes = [dt for dt in DTYPE_ORDER if dt in supported]
    path = os.path.join(workdir, "st_tool_write.safetensors")
    p = st_tool(tool, "write", path, "--dtypes", ",".join(dtypes))
    if not r.case("b: st_tool write", p.returncode == 0, p.stderr.decode(errors="replace")):
        return
    want = st_tool_expected(dtypes)
    meta_want = {"format": "pt", "creator": "loraforge"}
    data = open(path, "rb").read()
    try:
        got = {n: d for n, d in deserialize(data)}
    except Exception as e:
        r.case("b: Python deserialize", False, repr(e))
        return
    ok = set(got) == set(want) and all(
        got[n]["dtype"] == want[n][0] and list(got[n]["shape"]) == want[n][1] and bytes(got[n]["data"]) == want[n][2]
        for n in want)
    r.case(f"b: Python deserialize: {len(want)} tensors with the documented dtype, shape and bytes", ok,
           f"names {sorted(got)[:5]}...")
    with safe_open(path, framework="np") as f:
        r.case("b: safe_open metadata", f.metadata() == meta_want, repr(f.metadata()))
        np_names = [n for n in want if want[n][0] in NUMPY_DTYPES]
        r.case(f"b: safe_open(np) get_tensor bytes for {len(np_names)} numpy-dtype tensors",
               all(f.get_tensor(n).tobytes() == want[n][2] and list(f.get_tensor(n).shape) == want[n][1]
                   for n in np_names))
    if torch is not None and "BF16" in dtypes:
        with safe_open(path, framework="pt") as f:
            t = f.get_tensor("t.bf16")
            r.case("b: safe_open(pt) bf16 bytes", t.dtype == torch.bfloat16
                   and t.contiguous().view(torch.int16).numpy().tobytes() == want["t.bf16"][2])
    # Byte identity with Python's serializer. Rust keeps __metadata__ in a HashMap whose order changes from
    # call to call, so serialize until the order matches ours (2 keys: p(no match in 64 tries) = 2^-64).
    ref_in = {n: {"dtype": supported[w[0]], "shape": w[1], "data": w[2]} for n, w in want.items()}
    ref = None
    for _ in range(64):
        ref = bytes(st_serialize(ref_in, meta_want))
        if ref == data:
            break
    r.case("b: file is byte-identical to safetensors.serialize() of the same tensors", ref == data,
           f"\n  py : {ref[:300]!r}\n  our: {data[:300]!r}")
    # And with a single metadata key the order question does not arise: via st_tool copy of a Python file.
    one = os.path.join(workdir, "py_one_meta.safetensors")
    st_serialize_file(ref_in, one, {"format": "pt"})
    check_copy(r, "b single-key metadata", tool, one, workdir)


def rewrite(header, buf, pad=True):
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + buf


def part_c(r, rng, tool, workdir):
    base = os.path.join(workdir, "py_numpy_0.safetensors")
    header, buf, raw = parse_file(base)
    names = [n for n in header if n != "__metadata__"]
    nonzero = sorted((n for n in names if header[n]["data_offsets"][1] > header[n]["data_offsets"][0]),
                     key=lambda n: header[n]["data_offsets"][0])
    first, last = nonzero[0], nonzero[-1]

    def edited(fn):
        h = json.loads(json.dumps(header))
        fn(h)
        return rewrite(h, buf)

    def set_off(h, n, b, e):
        h[n]["data_offsets"] = [b, e]

    hb, he = header[last]["data_offsets"]

    def shifted(delta, newbuf):
        """Move the last non-empty tensor (and the zero-size ones at its end) by delta bytes: the only
        defect left is the gap/overlap in front of it, so a reader that allowed it would accept the file."""
        h = json.loads(json.dumps(header))
        for n in names:
            b, e = h[n]["data_offsets"]
            if n == last or (b == e == he):
                h[n]["data_offsets"] = [b + delta, e + delta]
        return rewrite(h, newbuf)
    cases = [
        ("truncated by one byte", raw[:-1], None),
        ("truncated to 5 bytes", raw[:5], None),
        ("one byte appended", raw + b"\0", None),
        ("header length past end of file", struct.pack("<Q", len(raw)) + raw[8:], None),
        ("header length over 100 MB", struct.pack("<Q", 100_000_001) + raw[8:], None),
        ("header is not JSON", raw[:8] + b"{" + b"x" * (len(raw) - 9 - len(buf)) + buf, None),
        ("first tensor not at offset 0", edited(lambda h: set_off(h, first, 1, h[first]["data_offsets"][1])), first),
        ("last tensor one byte short", edited(lambda h: set_off(h, last, hb, he - 1)), last),
        ("gap before the last tensor", shifted(1, buf[:hb] + b"\0" + buf[hb:]), last),
        ("last tensor overlaps the previous one", shifted(-1, buf[:hb - 1] + buf[hb:]), last),
        ("span does not match shape", edited(lambda h: h[last].update(shape=[10 ** 6])), last),
        ("unknown dtype", edited(lambda h: h[last].update(dtype="F31")), last),
        ("negative shape", edited(lambda h: h[last].update(shape=[-1])), last),
        ("metadata value not a string", edited(lambda h: h.update(__metadata__={"format": 1})), "format"),
    ]
    for label, blob, needle in cases:
        path = os.path.join(workdir, "bad_" + label.replace(" ", "_") + ".safetensors")
        open(path, "wb").write(blob)
        p = st_tool(tool, "read", path)
        err = p.stderr.decode(errors="replace").strip()
        ok = p.returncode == 1 and os.path.basename(path) in err and (needle is None or needle in err)
        try:
            with safe_open(path, framework="np") as f:
                f.keys()
            ref_rejects = False
        except Exception:
            ref_rejects = True
        r.case(f"c: {label}: st_tool rejects with a message naming the file"
               f"{' and ' + repr(needle) if needle else ''}; safetensors rejects too",
               ok and ref_rejects, f"rc={p.returncode} reference_rejects={ref_rejects} stderr={err!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="path of the loraforge binary; st_tool is beside it")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    seed = int(os.environ.get("LF_TEST_SEED") or time.time_ns() % 2**32)
    print(f"test_safetensors_interop: seed {seed} (set LF_TEST_SEED to repeat); safetensors "
          f"{safetensors.__version__}, numpy {np.__version__}, torch {torch.__version__ if torch else 'absent'}")
    rng = random.Random(seed)
    os.makedirs(args.workdir, exist_ok=True)
    tool = os.path.join(os.path.dirname(os.path.abspath(args.bin)), "st_tool")
    r = Runner()
    if not r.case(f"st_tool exists at {tool}", os.access(tool, os.X_OK), "build the st_tool target"):
        print(f"{r.passed} passed, {r.failed} failed")
        return 1
    supported = probe_dtypes()
    missing = [dt for dt in REQUIRED if dt not in supported]
    r.case(f"safetensors {safetensors.__version__} serializes {len(supported)} of 22 dtypes", not missing,
           f"missing required dtypes {missing}")
    unknown = [dt for dt in DTYPE_ORDER if dt not in supported]
    if unknown:
        print(f"note: dtypes this safetensors version cannot read, left out of interop: {' '.join(unknown)} "
              f"(covered by tests/unit/test_safetensors.c)")
    for trial in range(args.trials):
        part_a(r, rng, tool, args.workdir, supported, trial)
    part_b(r, tool, args.workdir, supported)
    part_c(r, rng, tool, args.workdir)
    print(f"cases run: {r.passed + r.failed}")
    print(f"{r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
