#!/usr/bin/env bash
# Builds the native test executable (no Python) with warnings as errors and runs it by ctest,
# then once more with the address and undefined-behaviour sanitizers.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cmake >/dev/null && command -v ninja >/dev/null || pip install --quiet cmake ninja
for variant in release asan; do
    flags=(-DQE_BUILD_TESTS=ON -DQE_WERROR=ON)
    [ "$variant" = asan ] && flags+=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DQE_SANITIZE=address,undefined)
    cmake -S . -B "build/native-$variant" -G Ninja "${flags[@]}" >/dev/null
    cmake --build "build/native-$variant"
    ctest --test-dir "build/native-$variant" --output-on-failure
done
