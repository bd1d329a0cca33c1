# CMake toolchain file for aarch64 Linux with Debian's cross compiler (g++-aarch64-linux-gnu).
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=tools/aarch64-linux-gnu.cmake
# With QE_AARCH64_SYSROOT set (a folder of unpacked arm64 packages, tools/arm_python_test.sh),
# find_* also searches it and the emulator loads libraries from it, so FindPython can run the
# aarch64 interpreter found there.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(_qe_qemu_root /usr/aarch64-linux-gnu)
if(DEFINED ENV{QE_AARCH64_SYSROOT})
  set(CMAKE_FIND_ROOT_PATH $ENV{QE_AARCH64_SYSROOT})
  set(_qe_qemu_root $ENV{QE_AARCH64_SYSROOT})
endif()
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
# Run cross-built executables under qemu (ctest, try_run, and FindPython's interpreter queries).
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;${_qe_qemu_root})
