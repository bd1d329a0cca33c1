// SPDX-License-Identifier: Apache-2.0
#include "runtime/buffer.h"

#include <cstdlib>
#include <cstring>
#include <utility>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define QE_HAVE_MMAP 1
#endif

#include "common.h"

namespace qe {
namespace {
constexpr size_t kMapThreshold = size_t{1} << 18;  // mmap from 256 KiB up
}

Buffer::Buffer(size_t bytes) : bytes_(bytes) {
    if (bytes == 0) return;
#ifdef QE_HAVE_MMAP
    if (bytes >= kMapThreshold) {
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        QE_CHECK(p != MAP_FAILED, "out of memory: cannot map ", bytes, " bytes");
        data_ = p;
        mapped_ = true;
        return;
    }
#endif
    const size_t rounded = (bytes + 63) / 64 * 64;
    data_ = std::aligned_alloc(64, rounded);
    QE_CHECK(data_ != nullptr, "out of memory: cannot allocate ", bytes, " bytes");
    std::memset(data_, 0, rounded);
}

Buffer::~Buffer() {
    release();
}

Buffer::Buffer(Buffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      mapped_(std::exchange(other.mapped_, false)) {}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
    if (this != &other) {
        release();
        data_ = std::exchange(other.data_, nullptr);
        bytes_ = std::exchange(other.bytes_, 0);
        mapped_ = std::exchange(other.mapped_, false);
    }
    return *this;
}

void Buffer::release() {
    if (data_ == nullptr) return;
#ifdef QE_HAVE_MMAP
    if (mapped_) {
        munmap(data_, bytes_);
        data_ = nullptr;
        return;
    }
#endif
    std::free(data_);
    data_ = nullptr;
}

}  // namespace qe
