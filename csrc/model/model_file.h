// SPDX-License-Identifier: Apache-2.0
// Reader of the qwen-edge model file (docs/model-file.md): maps the file read-only, validates
// the preamble, header, config and every tensor and blob entry against the file before any of
// it is used, and hands out views into the mapping. The file is untrusted input: every size and
// offset is checked with overflow-safe arithmetic, and each failure is a qe::Error naming the
// file, the field, what was expected and what was found.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/json.h"
#include "quant/formats.h"

namespace qe {

constexpr char kModelFileMagic[8] = {'Q', 'W', 'E', 'N', 'E', 'D', 'G', 'E'};
constexpr uint32_t kModelFileVersion = 1;
constexpr uint64_t kPreambleBytes = 64;
constexpr uint64_t kMaxHeaderBytes = uint64_t{64} << 20;

struct TensorEntry {
    std::string name;
    WeightFormat format = WeightFormat::kF32;
    std::vector<int64_t> shape;  // logical shape, outermost first
    uint64_t offset = 0, size = 0;  // relative to the data section
    uint32_t crc32 = 0;
    const uint8_t* data = nullptr;  // inside the mapping
    PackedLayout layout;            // quantized formats only

    int64_t numel() const;
    // The packed view of a quantized 2-D tensor (throws if the tensor is not packed).
    PackedMatrix packed() const;
};

struct BlobEntry {
    std::string name;
    uint64_t offset = 0, size = 0;
    uint32_t crc32 = 0;
    const uint8_t* data = nullptr;
};

class ModelFile {
public:
    // Opens and validates `path`; with `verify`, also checks every tensor and blob CRC.
    static std::unique_ptr<ModelFile> open(const std::string& path, bool verify = false);
    ~ModelFile();
    ModelFile(const ModelFile&) = delete;
    ModelFile& operator=(const ModelFile&) = delete;

    const std::string& path() const { return path_; }
    uint64_t file_size() const { return size_; }
    const std::string& header_text() const { return header_text_; }
    const Json& header() const { return header_; }
    const ModelConfig& config() const { return config_; }
    const std::vector<TensorEntry>& tensors() const { return tensors_; }
    const std::vector<BlobEntry>& blobs() const { return blobs_; }

    // The tensor called `name`, or nullptr.
    const TensorEntry* find(const std::string& name) const;
    // The tensor called `name`; throws naming the file if it is absent.
    const TensorEntry& tensor(const std::string& name) const;
    const BlobEntry* find_blob(const std::string& name) const;

private:
    ModelFile() = default;
    void validate(bool verify);

    std::string path_;
    const uint8_t* map_ = nullptr;
    uint64_t size_ = 0;
    uint64_t data_offset_ = 0;
    std::string header_text_;
    Json header_;
    ModelConfig config_;
    std::vector<TensorEntry> tensors_;
    std::vector<BlobEntry> blobs_;
    std::map<std::string, size_t> index_;
};

// CRC-32 with the zlib polynomial (the value Python's zlib.crc32 gives), continuing `crc`.
uint32_t crc32(const uint8_t* data, uint64_t size, uint32_t crc = 0);

}  // namespace qe
