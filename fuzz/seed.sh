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
echo "seeded: $(ls "$here"/corpus/* | wc -l) files"
