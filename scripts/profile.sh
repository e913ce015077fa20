#!/usr/bin/env bash
# Samples where the client's CPU goes per row: `perf record` (software cpu-clock, since this
# kind of VM has no hardware counters) of `dashbatch run` against a separate zero-latency
# emulator, then a flat self-time report and the top callers.
#
#   scripts/profile.sh [ROWS] [FILES]     # default 10000 rows over 0 = one file per row
#
# Needs: perf (linux-tools), a release build (cargo build --release --bins; the release
# profile keeps line tables, enough for symbols). Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-10000}
files=${2:-0}
bin=target/release/dashbatch
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf (or linux-tools-\$(uname -r))" >&2; exit 2; }
[ -x "$bin" ] || { echo "$bin is missing: cargo build --release --bins" >&2; exit 2; }

dir=$(mktemp -d)
emu_pid=
cleanup() { [ -n "$emu_pid" ] && kill "$emu_pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

mkdir "$dir/img"
n=$(( files == 0 ? rows : files ))
# n distinct 1 KB files img/000000.png ... in one pass (a fork per file is slow).
head -c $(( n * 1024 )) /dev/urandom | split -b 1024 -a 6 -d --additional-suffix=.png - "$dir/img/"
{
  echo "id,model,file,prompt"
  seq 0 $(( rows - 1 )) | awk -v n="$n" '{ printf "row-%d,qwen-vl-plus,img/%06d.png,Describe image %d briefly.\n", $1, $1 % n, $1 }'
} > "$dir/manifest.csv"

"$bin" emulator --listen 127.0.0.1:0 > "$dir/emu.out" 2>/dev/null &
emu_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$dir/emu.out" 2>/dev/null && break; sleep 0.05; done
url=$(sed -n 's/^listening on //p' "$dir/emu.out")

DASHSCOPE_API_KEY=sk-profile perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 \
  -o "$dir/perf.data" -- "$bin" run "$dir/manifest.csv" --base-url "$url" --fresh -q \
  --concurrency 256 --upload-concurrency 256 2>/dev/null
mkdir -p target/profile
mv "$dir/perf.data" target/profile/perf.data
echo "--- self time by symbol (target/profile/perf.data)"
perf report -i target/profile/perf.data --no-children --sort dso,symbol --stdio \
  --percent-limit 1 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | cut -c1-150 | head -30
echo "--- inclusive time of dashbatch's own functions"
perf report -i target/profile/perf.data --children --sort symbol --stdio --percent-limit 1 \
  -g none 2>/dev/null | grep -E 'dashbatch::|hash_file|reqwest|multipart|serde_json|csv::' \
  | grep -v '(inlined)' | cut -c1-180 | head -40
