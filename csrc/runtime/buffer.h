// SPDX-License-Identifier: Apache-2.0
// Owned, 64-byte aligned, zero-initialized memory for states and scratch. Large buffers come
// straight from anonymous mmap, so pages a state never touches (the unused tail of a long KV
// cache) cost no resident memory.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qe {

class Buffer {
public:
    Buffer() = default;
    explicit Buffer(size_t bytes);
    ~Buffer();
    Buffer(Buffer&& other) noexcept;
    Buffer& operator=(Buffer&& other) noexcept;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;

    size_t size() const { return bytes_; }
    template <typename T>
    T* as() const {
        return static_cast<T*>(data_);
    }

private:
    void release();
    void* data_ = nullptr;
    size_t bytes_ = 0;
    bool mapped_ = false;
};

}  // namespace qe
