#!/usr/bin/env bash
# The Python package on aarch64, without an aarch64 machine: unpacks Debian bookworm's arm64
# CPython 3.11, numpy and pytest into a folder (apt-get download + dpkg -x, cached under
# build/arm-python/debs), cross-builds qwen_edge._core with the project's own CMake against
# those headers (pybind11 from the host's pip package), checks that no x86 or global -march flag
# reached any compile command, then imports the extension under emulated CPython and runs the
# repo's Python tests there:
#   -cpu max         pytest on every table (neon_i8mm, neon_dotprod, neon, ref)
#   -cpu cortex-a72  import + a product on the baseline table (no SIGILL from an ISA file)
# Called by tools/arm_test.sh; can run alone. Needs qemu-user and g++-aarch64-linux-gnu.
set -euo pipefail
cd "$(dirname "$0")/.."

root=build/arm-python
debs=$root/debs
sysroot=$root/sysroot
triple=aarch64-linux-gnu
# Runtime closure of python3.11 + numpy + the extension (libstdc++) for what the tests touch
# (ssl, sqlite, readline... are left out), and pytest 7.2 with its pure-Python dependencies.
arch_pkgs=(libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libbz2-1.0 liblzma5
    libcrypt1 libuuid1 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
    libpython3.11-dev python3-numpy libblas3 liblapack3 libgfortran5)
all_pkgs=(python3-pytest python3-pluggy python3-iniconfig python3-packaging python3-py
    python3-attr)

# --- 1. the arm64 packages, downloaded once --------------------------------------------------
stamp="${arch_pkgs[*]} ${all_pkgs[*]}"
if [ "$(cat "$debs/.stamp" 2>/dev/null)" != "$stamp" ]; then
    if ! apt-cache show python3.11-minimal:arm64 >/dev/null 2>&1; then
        sudo_cmd=""
        [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        $sudo_cmd dpkg --add-architecture arm64
        $sudo_cmd apt-get update -qq
    fi
    rm -rf "$debs" && mkdir -p "$debs"
    # -o APT::Sandbox::User=root: the _apt user may not be able to write into the work tree.
    (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "${arch_pkgs[@]/%/:arm64}" "${all_pkgs[@]}")
    echo "$stamp" >"$debs/.stamp"
    rm -rf "$sysroot"
fi
if [ ! -x "$sysroot/usr/bin/python3.11" ]; then
    rm -rf "$sysroot" && mkdir -p "$sysroot"
    for deb in "$debs"/*.deb; do dpkg -x "$deb" "$sysroot"; done
    # update-alternatives (a postinst step dpkg -x skips) normally makes these two links.
    ln -sf blas/libblas.so.3 "$sysroot/usr/lib/$triple/libblas.so.3"
    ln -sf lapack/liblapack.so.3 "$sysroot/usr/lib/$triple/liblapack.so.3"
fi
py="$sysroot/usr/bin/python3.11"
emulate() {  # cpu, then the command
    local cpu=$1
    shift
    qemu-aarch64 -cpu "$cpu" -L "$sysroot" "$@"
}

# --- 2. cross-build the extension with the project's CMake -----------------------------------
# Debian's /usr/include/python3.11/pyconfig.h dispatches to <aarch64-linux-gnu/python3.11/...>;
# a merged copy gives FindPython one include directory with the aarch64 pyconfig.h in it.
inc=$root/include/python3.11
if [ ! -f "$inc/Python.h" ]; then
    rm -rf "$inc" && mkdir -p "$inc"
    cp -r "$sysroot/usr/include/python3.11/." "$inc/"
    cp "$sysroot/usr/include/$triple/python3.11/pyconfig.h" "$inc/pyconfig.h"
fi
# FindPython runs the aarch64 interpreter through the toolchain's emulator (policy CMP0190),
# which loads from the sysroot when QE_AARCH64_SYSROOT names it; pybind11 is told to take the
# SOABI from FindPython instead of running the interpreter itself.
export QE_AARCH64_SYSROOT=$PWD/$sysroot

build=build/aarch64-python
command -v cmake >/dev/null && command -v ninja >/dev/null || pip install --quiet cmake ninja
pybind11_dir=$(python3 -m pybind11 --cmakedir 2>/dev/null) || {
    pip install --quiet pybind11
    pybind11_dir=$(python3 -m pybind11 --cmakedir)
}
cmake -S . -B "$build" -G Ninja -DCMAKE_TOOLCHAIN_FILE=tools/aarch64-linux-gnu.cmake \
    -DQE_BUILD_PYTHON=ON -DQE_BUILD_TESTS=OFF -DQE_WERROR=ON -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
    -DCMAKE_POLICY_DEFAULT_CMP0190=NEW -DPython_EXECUTABLE="$PWD/$py" -DPython_INCLUDE_DIR="$PWD/$inc" \
    -DPYBIND11_USE_CROSSCOMPILING=ON \
    -Dpybind11_DIR="$pybind11_dir" -DSKBUILD_PROJECT_VERSION=0.0.0+arm-test >/dev/null
cmake --build "$build" --target _core
so=$build/_core.cpython-311-aarch64-linux-gnu.so
[ -f "$so" ] || { echo "FAILED: no $so (wrong SOABI?): $(ls "$build"/*.so)"; exit 1; }

# No x86 flag and no global -march may reach any compile command: -march appears only on the
# per-file ISA sources, with exactly the flags CMakeLists.txt gives their suffix.
python3 - "$build/compile_commands.json" <<'EOF'
import json, re, sys
bad = []
for entry in json.load(open(sys.argv[1])):
    flags = re.findall(r"(?<!\S)-m\S+", entry["command"])
    name = entry["file"].rsplit("/", 1)[-1]
    allowed = {"_neon_i8mm.cc": ["-march=armv8.2-a+dotprod+i8mm"],
               "_neon_dotprod.cc": ["-march=armv8.2-a+dotprod"]}
    want = next((v for k, v in allowed.items() if name.endswith(k)), [])
    if flags != want:
        bad.append(f"{name}: {flags} (expected {want})")
if bad:
    sys.exit("unexpected machine flags:\n  " + "\n  ".join(bad))
print("compile flags: no x86 flag, -march only on the dotprod/i8mm files")
EOF

# --- 3. import and test under emulated CPython ------------------------------------------------
site=$root/site
rm -rf "$site" && mkdir -p "$site"
cp -r qwen_edge "$site/"
find "$site" -name "*.so" -delete
cp "$so" "$site/qwen_edge/"
mkdir -p "$site/qwen_edge/boards" && cp boards/*.json "$site/qwen_edge/boards/"  # as the wheel
export PYTHONPATH="$PWD/$site" PYTHONDONTWRITEBYTECODE=1

echo "=== emulated CPython, -cpu cortex-a72 (baseline NEON)"
# -P: the work tree (cwd) must not shadow the staged package on sys.path.
emulate cortex-a72 "$py" -P - <<'EOF'
import numpy as np
from qwen_edge.backends.native import core
c = core()
print("cpu", c.cpu_info(), "tables", c.available_isas())
assert c.cpu_info()["arch"] == "aarch64"
assert c.available_isas() == ["neon", "ref"], c.available_isas()
rng = np.random.default_rng(0)
data = rng.integers(0, 256, c.packed_size("q4g32", 16, 64), dtype=np.uint8)
x = rng.standard_normal((3, 64)).astype(np.float32)
got, want = (c.matmul_q8a("q4g32", data, 16, 64, x, isa=i) for i in ("neon", "ref"))
assert np.array_equal(got, want)  # an exact contract: same bits as ref
print("neon matmul_q8a == ref on the emulated Cortex-A72")
EOF

echo "=== emulated CPython, -cpu max: pytest"
tests=(tests/backends/test_core.py tests/hardware/test_boards.py tests/formats/test_quant.py
       tests/backends/kernels)
# The sysroot has no torch: the x86 run is the one that must have the live reference.
(export QWEN_EDGE_REQUIRE_REFERENCE=0; emulate max "$py" -P -m pytest -q -p no:cacheprovider "${tests[@]}")

# --- 4. the whole model: the tiny model file's logits on each CPU against x86's ---------------
fwd=build/arm-forward
echo "=== whole model: tiny q4 logits, x86 golden vs emulated aarch64"
PYTHONPATH= python3 tools/arm_forward_check.py write "$fwd"
for cpu in max cortex-a76 cortex-a72; do
    echo "--- -cpu $cpu"
    emulate "$cpu" "$py" -P tools/arm_forward_check.py check "$fwd"
done
