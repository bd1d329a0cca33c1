#!/usr/bin/env bash
# ARM tests under emulation: cross-builds the native test executable for aarch64 and runs it
# under qemu-aarch64 as three CPUs, checking that each ran exactly the kernel tables its
# features allow (so a dispatch bug cannot hide behind a skip):
#   -cpu max         (dotprod + i8mm: every table)
#   -cpu cortex-a76  (Raspberry Pi 5: dotprod, no i8mm)
#   -cpu cortex-a72  (Raspberry Pi 4: baseline NEON only; must not die of SIGILL)
# then the Python package the same way (tools/arm_python_test.sh).
# Installs the cross compiler and qemu with apt if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cmake >/dev/null && command -v ninja >/dev/null || pip install --quiet cmake ninja

build=build/aarch64
cmake -S . -B "$build" -G Ninja -DCMAKE_TOOLCHAIN_FILE=tools/aarch64-linux-gnu.cmake \
    -DQE_BUILD_TESTS=ON -DQE_BUILD_PYTHON=OFF -DQE_WERROR=ON >/dev/null
cmake --build "$build"

# Tables a CPU must run, given its features; tables not compiled into this build are dropped.
expected_for() {
    case "$1" in
        max) echo "neon_i8mm neon_dotprod neon ref" ;;
        cortex-a76) echo "neon_dotprod neon ref" ;;
        cortex-a72) echo "neon ref" ;;
    esac
}

status=0
for cpu in max cortex-a76 cortex-a72; do
    echo "=== qemu-aarch64 -cpu $cpu"
    log=$(mktemp)
    if ! qemu-aarch64 -cpu "$cpu" -L /usr/aarch64-linux-gnu "$build/qe_tests" >"$log" 2>&1; then
        cat "$log"
        echo "FAILED on -cpu $cpu"
        status=1
        continue
    fi
    grep -E "^(ok|FAIL)|tests," "$log" | tail -n 3
    compiled=$(sed -n 's/^  compiled table: //p' "$log" | tr '\n' ' ')
    supported=$(sed -n 's/^  supported table: //p' "$log" | tr '\n' ' ')
    want=""
    for t in $(expected_for "$cpu"); do
        case " $compiled " in *" $t "*) want="$want$t " ;; esac
    done
    if [ "$supported" != "$want" ]; then
        echo "FAILED on -cpu $cpu: ran tables '$supported', expected '$want'"
        status=1
    else
        echo "tables run: $supported"
    fi
    rm -f "$log"
done

# The Python package: cross-built extension imported and tested under emulated CPython.
echo "=== Python extension under emulated aarch64 CPython"
tools/arm_python_test.sh || { echo "FAILED: tools/arm_python_test.sh"; status=1; }
exit $status
