#!/usr/bin/env bash
# Memory traffic of the aarch64 attention kernel under qemu, which cannot time it: every load
# and store goes through a simulated cache level (tools/qemu_cache_sim.c; default 512 KiB,
# 8 ways: a Cortex-A76's L2), and the lines it has to fetch are the bytes that would come from
# beyond it. Runs `qe_bench --attention` (a GQA group of 4 query heads, d = 256, 128 tokens at
# DEPTH) with 1 and 3 repetitions and prints the difference / 2 per token and KV head, beside
# the bytes of that head's cache: a ratio of 1 reads the cache once per token.
#   tools/arm_cache_traffic.sh [depth] [cache KiB] [ways]      (default 2048 512 8)
# docs/arm-performance.md records the results.
set -euo pipefail
cd "$(dirname "$0")/.."
depth=${1:-2048} kib=${2:-512} ways=${3:-8}

build=build/aarch64
plugin=build/qemu-plugin/libcachesim.so
mkdir -p "$(dirname "$plugin")"
[ "$plugin" -nt tools/qemu_cache_sim.c ] ||
    cc -O2 -shared -fPIC -fvisibility=hidden -o "$plugin" tools/qemu_cache_sim.c
cmake -S . -B "$build" -G Ninja -DCMAKE_TOOLCHAIN_FILE=tools/aarch64-linux-gnu.cmake \
    -DQE_BUILD_TESTS=ON -DQE_BUILD_PYTHON=OFF >/dev/null
cmake --build "$build" --target qe_bench >/dev/null

misses() {  # tokens-per-call cache reps -> lines the whole process fetched
    qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu \
        -plugin "$plugin,size=$kib,ways=$ways" -d plugin \
        "$build/qe_bench" --attention "$depth" "$1" neon "$3" "$2" 2>&1 >/dev/null |
        sed -n 's/^misses: //p'
}

chunk=128
echo "neon attention at depth $depth, through a simulated ${kib} KiB ${ways}-way cache"
printf '| %-5s | %-15s | %-23s | %-21s | %5s |\n' cache "tokens per call" \
    "KiB fetched per token" "KiB of the head's K+V" ratio
echo "|-------|-----------------|-------------------------|-----------------------|-------|"
for cache in f16 q8; do
    # K and V rows of d = 256 at the chunk's mean depth: 512 bytes (f16) or 8 blocks of 40 (q8).
    row=$([ "$cache" = f16 ] && echo 512 || echo 320)
    kv=$(((depth + chunk / 2) * row * 2))
    for per_call in 1 $chunk; do
        a=$(misses "$per_call" "$cache" 1)
        b=$(misses "$per_call" "$cache" 3)
        bytes=$(((b - a) / 2 * 64 / chunk))
        printf '| %-5s | %15d | %23.0f | %21.0f | %5.2f |\n' "$cache" "$per_call" \
            "$(awk -v x="$bytes" 'BEGIN { print x / 1024 }')" \
            "$(awk -v x="$kv" 'BEGIN { print x / 1024 }')" \
            "$(awk -v a="$bytes" -v b="$kv" 'BEGIN { print a / b }')"
    done
done
