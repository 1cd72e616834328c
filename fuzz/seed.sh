#!/bin/sh
# Fills fuzz/corpus/<target>/ with the real dumps of crates/xstate/tests/fixtures/cpuid as seeds
# (and their xstate JSON form for the json and detect targets). Run from anywhere.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fix="$here/../crates/xstate/tests/fixtures/cpuid"
mkdir -p "$here/corpus/cpuid_r" "$here/corpus/aida64" "$here/corpus/hwloc" "$here/corpus/json" "$here/corpus/detect"
cp "$fix"/cpuid-r/*.txt "$here/corpus/cpuid_r/"
cp "$fix"/aida64/*.txt "$here/corpus/aida64/"
cp "$fix"/hwloc/*.txt "$here/corpus/hwloc/"
cp "$fix"/*/*.txt "$here/corpus/detect/"
cargo build -q --manifest-path "$here/../Cargo.toml" -p xstate --example cpuid2json
bin="$here/../target/debug/examples/cpuid2json"
for f in "$fix"/*/*.txt; do
    out="$here/corpus/json/$(basename "$f" .txt).json"
    "$bin" "$f" > "$out"
    cp "$out" "$here/corpus/detect/"
done
# snapshot: the committed v1 sample, raw (mode byte 0) and as a bare body (mode byte 1).
sample="$here/../crates/xstate/tests/data/v1-skylake-sp.xsnap"
mkdir -p "$here/corpus/snapshot"
{ printf '\000'; cat "$sample"; } > "$here/corpus/snapshot/v1-raw"
len=$(($(wc -c < "$sample") - 20))
{ printf '\001'; tail -c +17 "$sample" | head -c "$len"; } > "$here/corpus/snapshot/v1-body"
# filekind: one of each kind (snapshot, CPUID dumps; seed images are added below).
# The target's first byte is a mode byte (0: the rest is the file).
mkdir -p "$here/corpus/filekind"
for f in "$sample" "$fix"/hwloc/Intel-Skylake-2xXeon6140.txt "$fix"/aida64/amd-ryzen-7-9700x-8-core-processor.txt; do
    { printf '\000'; cat "$f"; } > "$here/corpus/filekind/$(basename "$f")"
done
echo "seeded: $(ls "$here"/corpus/* | wc -l) files"

# Image targets: well-formed standard and compacted images of the three layouts of
# fuzz_targets/image_common.rs (Zen 5, Sapphire Rapids, Skylake-SP), with the selector bytes
# each target reads first, so that mutations start from images that parse.
python3 - "$here/corpus" <<'PY'
import os, struct, sys
corpus = sys.argv[1]
cpus = [(0xe7, 2432, 2432), (0x602e7, 11008, 10752), (0x2ff, 2696, 2568)]
for t in ("image_parse", "validate", "convert"):
    os.makedirs(os.path.join(corpus, t), exist_ok=True)
for sel, (xcr0, std, cmp) in enumerate(cpus):
    for form, size, xcomp in (("std", std, 0), ("cmp", cmp, xcr0 | 1 << 63)):
        img = bytearray(size)
        img[0:2] = struct.pack("<H", 0x37F)
        img[24:28] = struct.pack("<I", 0x1F80)
        for i in range(160, 416):
            img[i] = i & 0xFF
        for i in range(576, size):
            img[i] = (i * 7) & 0xFF
        img[512:520] = struct.pack("<Q", xcr0)
        img[520:528] = struct.pack("<Q", xcomp)
        name = f"cpu{sel}-{form}"
        open(os.path.join(corpus, "image_parse", name), "wb").write(bytes([sel]) + img)
        os.makedirs(os.path.join(corpus, "filekind"), exist_ok=True)
        open(os.path.join(corpus, "filekind", name), "wb").write(bytes([0]) + img)
        cfg = bytes([sel, 3]) + struct.pack("<QQ", 0, 0xFFFF) + bytes([48]) + struct.pack("<Q", ~0 & (2**64 - 1))
        open(os.path.join(corpus, "validate", name), "wb").write(cfg + img)
        for dst in range(3):
            open(os.path.join(corpus, "convert", f"{name}-to{dst}"), "wb").write(bytes([sel, dst]) + struct.pack("<Q", 0xFF) + img)
PY
echo "seeded image targets"
