#!/usr/bin/env bash
# Did a change move the kernels? Instruction counts per kernel call at two commits, side by side:
# the aarch64 tables under qemu (tools/arm_insn_count.sh of each commit) and the x86 ref and
# avx2 tables under callgrind (valgrind has no AVX-512). Counts, not seconds, so the answer does
# not depend on what else the machine is doing.
#   tools/kernel_insn_diff.sh OLD [NEW]      (NEW defaults to the work tree as it is)
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=${2:-}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)"; exit 2; }
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/old" 2>/dev/null; [ -n "$new" ] && git worktree remove --force "$tmp/new" 2>/dev/null; rm -rf "$tmp"' EXIT
git worktree add --detach "$tmp/old" "$old" >/dev/null 2>&1
if [ -n "$new" ]; then git worktree add --detach "$tmp/new" "$new" >/dev/null 2>&1; else ln -s "$PWD" "$tmp/new"; fi

counts() {  # tree -> "format isa kernel insns" lines
    local tree=$1 fmt isa fam m a b
    (cd "$tree" && tools/arm_insn_count.sh 64 1024 16) |
        awk -F'|' '$5 ~ /[0-9]/ {gsub(/ /, ""); print $2, "arm:" $3, $4, $5}'
    cmake -S "$tree" -B "$tree/build/x86-insn" -G Ninja -DQE_BUILD_TESTS=ON -DQE_BUILD_PYTHON=OFF >/dev/null
    cmake --build "$tree/build/x86-insn" --target qe_kernel_runner >/dev/null
    for fmt in q4g32 q8g32 q4ag32 q4k q6k; do
        for isa in ref avx2; do
            for fam in gemv gemm; do
                m=1 && [ $fam = gemm ] && m=16
                a=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
                    "$tree/build/x86-insn/qe_kernel_runner" $isa $fam $fmt 64 1024 $m 1 2>&1 |
                    sed -n 's/.*Collected : //p')
                b=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
                    "$tree/build/x86-insn/qe_kernel_runner" $isa $fam $fmt 64 1024 $m 3 2>&1 |
                    sed -n 's/.*Collected : //p')
                echo "$fmt x86:$isa $fam $(((b - a) / 2))"
            done
        done
    done
}
counts "$tmp/old" >"$tmp/old.txt"
counts "$tmp/new" >"$tmp/new.txt"
echo "instructions per call (rows=64 k=1024; gemm: 16 tokens), $old -> ${new:-work tree}"
printf '| %-7s | %-18s | %-10s | %10s | %10s | %6s |\n' format table kernel old new ratio
echo "|---------|--------------------|------------|------------|------------|--------|"
key() { awk '{print $1 "/" $2 "/" $3, $4}' "$1" | sort; }
join <(key "$tmp/old.txt") <(key "$tmp/new.txt") |
    tr '/' ' ' | awk '{printf "| %-7s | %-18s | %-10s | %10d | %10d | %6.3f |\n", $1, $2, $3, $4, $5, $5 / $4}'
