#!/usr/bin/env bash
# Coverage-guided fuzzing of every reader of untrusted input, SECONDS per target (default 15):
#   native (libFuzzer, clang, ASan+UBSan): fuzz_model_file (bytes -> model file -> one token),
#     fuzz_json_config (bytes -> header JSON -> ModelConfig);
#   Python (atheris): config, model_file, request, chat, tokenizer (tests/fuzz/fuzz_python.py).
# Seeds are generated (small valid inputs) plus tests/fuzz/corpus/<target>/, the committed
# findings. A finding stops the run with the crashing input in build/fuzz/findings/<target>/;
# copy it into tests/fuzz/corpus/<target>/ with its fix (tests/fuzz/test_corpus.py replays it).
# Prints one line per target: executions, corpus size, findings. docs/reliability.md has the
# figures of the longer runs.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-15}"
out=build/fuzz
mkdir -p "$out/findings"
python tests/fuzz/fuzz_python.py seeds "$out/seeds" >/dev/null

have_libfuzzer() {
    command -v clang++ >/dev/null && compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a" >/dev/null
}
if ! have_libfuzzer; then
    apt-get update -qq && apt-get install -y -qq clang libclang-rt-14-dev >/dev/null \
        || apt-get install -y -qq clang >/dev/null
fi
command -v cmake >/dev/null && command -v ninja >/dev/null || pip install --quiet cmake ninja
python -c "import atheris" 2>/dev/null || pip install --quiet atheris

cmake -S . -B "$out/native" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DQE_BUILD_TESTS=OFF \
    -DQE_FUZZ=ON -DQE_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$out/native" --target fuzz_model_file fuzz_json_config >/dev/null

status=0
report() {  # target, log: the last libFuzzer status line as "executions, corpus, findings"
    local execs corpus
    execs=$(grep -oE '#[0-9]+' "$2" | tail -1 | tr -d '#')
    corpus=$(grep -oE 'corp: [0-9]+' "$2" | tail -1 | grep -oE '[0-9]+')
    printf '%-22s %10s executions  corpus %5s  findings %s\n' "$1" "${execs:-0}" "${corpus:-0}" "$3"
}
run() {  # target, seed dir, command...
    local target=$1 seeds=$2 work="$out/corpus/$1" log="$out/$1.log"
    shift 2
    mkdir -p "$work" "$out/findings/$target" "tests/fuzz/corpus/$target"
    local found=0
    if ! "$@" "$work" "$seeds" "tests/fuzz/corpus/$target" -max_total_time="$seconds" \
        -max_len=65536 -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$out/findings/$target/" >"$log" 2>&1; then
        found=1
        status=1
        tail -40 "$log"
    fi
    report "$target" "$log" "$found"
}
export ASAN_OPTIONS=detect_leaks=0
# QE_FUZZ_TARGETS picks some targets (e.g. to run the native and Python ones side by side).
targets="${QE_FUZZ_TARGETS:-native_model_file native_json_config config model_file request chat tokenizer}"
for target in $targets; do
    case "$target" in
    native_model_file) run "$target" "$out/seeds/model_file" "$out/native/fuzz_model_file" ;;
    native_json_config) run "$target" "$out/seeds/config" "$out/native/fuzz_json_config" ;;
    *) run "$target" "$out/seeds/$target" python tests/fuzz/fuzz_python.py "$target" ;;
    esac
done
exit $status
