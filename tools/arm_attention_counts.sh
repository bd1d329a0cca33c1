#!/usr/bin/env bash
# What the aarch64 attention kernel costs, counted under qemu (which cannot time it): the
# instructions it executes (tools/qemu_insn_count.c) and the bytes it fetches from beyond a
# simulated cache level (tools/qemu_cache_sim.c: every load and store through an LRU cache of
# 64-byte lines; default 512 KiB, 8 ways: a Cortex-A76's L2). Runs `qe_bench --attention` on
# the `neon` table, and for the 4-bit cache also `neon_dotprod` (a GQA group of 4 query heads,
# d = 256, 128 tokens at DEPTH, one per call or all in one) with 1 and 3 repetitions and prints
# the difference / 2 per token and KV head; the traffic beside the bytes of that head's cache
# (a ratio of 1 reads the cache once per token).
#   tools/arm_attention_counts.sh [depth] [cache KiB] [ways]      (default 2048 512 8)
# Needs the cross compiler and qemu that tools/arm_test.sh installs; docs/arm-performance.md
# records the results.
set -euo pipefail
cd "$(dirname "$0")/.."
depth=${1:-2048} kib=${2:-512} ways=${3:-8}

build=build/aarch64
plugins=build/qemu-plugin
mkdir -p "$plugins"
for name in insn_count cache_sim; do
    [ "$plugins/$name.so" -nt "tools/qemu_$name.c" ] ||
        cc -O2 -shared -fPIC -fvisibility=hidden -o "$plugins/$name.so" "tools/qemu_$name.c"
done
cmake -S . -B "$build" -G Ninja -DCMAKE_TOOLCHAIN_FILE=tools/aarch64-linux-gnu.cmake \
    -DQE_BUILD_TESTS=ON -DQE_BUILD_PYTHON=OFF >/dev/null
cmake --build "$build" --target qe_bench >/dev/null

count() {  # plugin[,options] tokens-per-call cache table reps -> what the plugin printed
    qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu -plugin "$plugins/$1" -d plugin \
        "$build/qe_bench" --attention "$depth" "$2" "$4" "$5" "$3" 2>&1 >/dev/null |
        sed -n 's/^[a-z]*: //p'
}
per_token() {  # plugin tokens-per-call cache table -> the plugin's count per token of one rep
    local a b
    a=$(count "$1" "$2" "$3" "$4" 1)
    b=$(count "$1" "$2" "$3" "$4" 3)
    echo $(((b - a) / 2 / chunk))
}

chunk=128
echo "attention at depth $depth, per token and KV head; traffic through a simulated"
echo "${kib} KiB ${ways}-way cache"
printf '| %-5s | %-12s | %-15s | %-12s | %-14s | %-14s | %5s |\n' cache table \
    "tokens per call" instructions "KiB fetched" "KiB of K + V" ratio
echo "|-------|--------------|-----------------|--------------|----------------|----------------|-------|"
for cache in f16 q8 q4; do
    # K and V rows of d = 256 at the chunk's mean depth: 512 bytes (f16), 8 blocks of 36 (q8)
    # or of 20 (q4).
    case "$cache" in f16) row=512 ;; q8) row=288 ;; q4) row=160 ;; esac
    tables=neon
    [ "$cache" = q4 ] && tables="neon neon_dotprod"
    kv=$(((depth + chunk / 2) * row * 2))
    for table in $tables; do
        for per_call in 1 $chunk; do
            insns=$(per_token insn_count.so "$per_call" "$cache" "$table")
            bytes=$(($(per_token "cache_sim.so,size=$kib,ways=$ways" "$per_call" "$cache" \
                "$table") * 64))
            printf '| %-5s | %-12s | %15d | %12d | %14.0f | %14.0f | %5.2f |\n' "$cache" \
                "$table" "$per_call" "$insns" "$(awk -v x="$bytes" 'BEGIN { print x / 1024 }')" \
                "$(awk -v x="$kv" 'BEGIN { print x / 1024 }')" \
                "$(awk -v a="$bytes" -v b="$kv" 'BEGIN { print a / b }')"
        done
    done
done
