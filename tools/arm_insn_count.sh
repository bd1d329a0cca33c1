#!/usr/bin/env bash
# Instruction counts of the aarch64 kernels under qemu, to choose between kernel designs without
# ARM hardware (docs/arm-performance.md records the results). Builds a tiny qemu TCG plugin
# (tools/qemu_insn_count.c) for the host, cross-builds tests/csrc/bench/kernel_runner.cc, runs
# each kernel with 1 and 3 repetitions and prints the difference / 2 = instructions per call,
# normalized per 256 MACs (one row group x one 32-column block x one token).
#   [QE_FORMATS="q4k q6k"] tools/arm_insn_count.sh [rows k m]     (default 64 1024 16, every format)
# Counts executed instructions, not cycles: latency, dual issue and memory stalls are not in it.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-64} k=${2:-1024} m=${3:-16}

build=build/aarch64
plugin=build/qemu-plugin/libinsncount.so
mkdir -p "$(dirname "$plugin")"
[ "$plugin" -nt tools/qemu_insn_count.c ] ||
    cc -O2 -shared -fPIC -fvisibility=hidden -o "$plugin" tools/qemu_insn_count.c
cmake -S . -B "$build" -G Ninja -DCMAKE_TOOLCHAIN_FILE=tools/aarch64-linux-gnu.cmake \
    -DQE_BUILD_TESTS=ON -DQE_BUILD_PYTHON=OFF >/dev/null
cmake --build "$build" --target qe_kernel_runner >/dev/null

count() {  # isa family format m reps -> instructions executed by the whole process
    qemu-aarch64 -cpu max -L /usr/aarch64-linux-gnu -plugin "$plugin" -d plugin \
        "$build/qe_kernel_runner" "$1" "$2" "$3" "$rows" "$k" "$4" "$5" 2>&1 >/dev/null |
        sed -n 's/^insns: //p'
}
per_call() {  # isa family format m
    local a b
    a=$(count "$1" "$2" "$3" "$4" 1)
    b=$(count "$1" "$2" "$3" "$4" 3)
    echo $(((b - a) / 2))
}

groups=$(((rows + 7) / 8))
blocks=$((k / 32))
echo "rows=$rows k=$k; gemv: 1 token, gemm: m=$m tokens; instructions per call and per 256 MACs"
printf '| %-7s | %-13s | %-10s | %12s | %9s |\n' format isa kernel "insns/call" "per 256"
echo "|---------|---------------|------------|--------------|-----------|"
for fmt in ${QE_FORMATS:-q4g32 q8g32 q4ag32 q4k q6k}; do
    for spec in "ref gemv 1" "neon gemv 1" "neon_dotprod gemv 1" "neon_i8mm gemv 1" \
        "ref gemm $m" "neon gemv_loop $m" "neon gemm $m" "neon_dotprod gemv_loop $m" \
        "neon_dotprod gemm $m" "neon_i8mm gemm $m"; do
        set -- $spec
        n=$(per_call "$1" "$2" "$fmt" "$3")
        units=$((groups * blocks * $3))
        printf '| %-7s | %-13s | %-10s | %12d | %9.1f |\n' "$fmt" "$1" "$2" "$n" \
            "$(awk -v a="$n" -v b="$units" 'BEGIN { print a / b }')"
    done
done
for spec in "ref quantize" "neon quantize" "ref dequantize" "neon dequantize"; do
    set -- $spec
    n=$(per_call "$1" "$2" q4g32 "$m")
    case $2 in quantize) units=$((m * blocks)) unit="per 32 x" ;; *) units=$((rows * blocks)) unit="per 32 w" ;; esac
    printf '| %-7s | %-13s | %-10s | %12d | %9.1f | (%s)\n' q4g32 "$1" "$2" "$n" \
        "$(awk -v a="$n" -v b="$units" 'BEGIN { print a / b }')" "$unit"
done
