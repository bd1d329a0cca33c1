// SPDX-License-Identifier: Apache-2.0
#include "model/model_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "common.h"

namespace qe {
namespace {

uint32_t read_u32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;  // the format is little-endian, as is every supported target
}

uint64_t read_u64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// Slicing-by-8 tables for the reflected zlib polynomial 0xEDB88320.
struct CrcTables {
    uint32_t t[8][256];
    CrcTables() {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
            t[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; ++i)
            for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
    }
};

}  // namespace

uint32_t crc32(const uint8_t* data, uint64_t size, uint32_t crc) {
    static const CrcTables tables;
    const auto& t = tables.t;
    crc = ~crc;
    while (size >= 8) {
        const uint32_t lo = read_u32(data) ^ crc, hi = read_u32(data + 4);
        crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
              t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
        data += 8;
        size -= 8;
    }
    while (size--) crc = t[0][(crc ^ *data++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

int64_t TensorEntry::numel() const {
    int64_t n = 1;
    for (const int64_t d : shape) n *= d;
    return n;
}

PackedMatrix TensorEntry::packed() const {
    QE_CHECK(is_quantized(format), "tensor '", name, "' is ", format_name(format),
             ", not a packed format");
    return PackedMatrix::view(format, layout, data);
}

std::unique_ptr<ModelFile> ModelFile::open(const std::string& path, bool verify) {
    std::unique_ptr<ModelFile> file(new ModelFile());
    file->path_ = path;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    QE_CHECK(fd >= 0, path, ": cannot open: ", std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        QE_CHECK(false, path, ": not a regular file");
    }
    file->size_ = uint64_t(st.st_size);
    if (file->size_ < kPreambleBytes) {
        ::close(fd);
        QE_CHECK(false, path, ": file size: expected at least ", kPreambleBytes,
                 " bytes, found ", file->size_, " (truncated, or not a qwen-edge model file)");
    }
    void* map = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);  // the mapping keeps the file alive
    QE_CHECK(map != MAP_FAILED, path, ": cannot map: ", std::strerror(errno));
    file->map_ = static_cast<const uint8_t*>(map);
    file->validate(verify);
    return file;
}

ModelFile::~ModelFile() {
    if (map_ != nullptr) ::munmap(const_cast<uint8_t*>(map_), size_);
}

void ModelFile::validate(bool verify) {
    const std::string& f = path_;
    // --- preamble ---
    QE_CHECK(std::memcmp(map_, kModelFileMagic, 8) == 0, f,
             ": magic: expected 'QWENEDGE', this is not a qwen-edge model file");
    const uint32_t version = read_u32(map_ + 8);
    QE_CHECK(version == kModelFileVersion, f, ": format version: expected ", kModelFileVersion,
             ", found ", version, version > kModelFileVersion
                                      ? " (written by a newer qwen-edge: upgrade to read it)"
                                      : "");
    const uint32_t header_size = read_u32(map_ + 12);
    const uint32_t header_crc = read_u32(map_ + 16);
    const uint32_t reserved = read_u32(map_ + 20);
    data_offset_ = read_u64(map_ + 24);
    const uint64_t declared_size = read_u64(map_ + 32);
    bool zeros = reserved == 0;
    for (int i = 40; i < 64; ++i) zeros = zeros && map_[i] == 0;
    QE_CHECK(zeros, f, ": reserved preamble bytes: expected zeros");
    QE_CHECK(header_size >= 2 && header_size <= kMaxHeaderBytes, f,
             ": header size: expected 2..", kMaxHeaderBytes, ", found ", header_size);
    QE_CHECK(data_offset_ % 64 == 0 && data_offset_ >= kPreambleBytes + header_size, f,
             ": data offset: expected a multiple of 64 >= ", kPreambleBytes + header_size,
             ", found ", data_offset_);
    QE_CHECK(declared_size == size_, f, ": file size: the preamble says ", declared_size,
             " bytes, the file has ", size_,
             declared_size > size_ ? " (truncated: an interrupted copy or download?)" : "");
    QE_CHECK(data_offset_ <= size_, f, ": data offset ", data_offset_, " is past the end");
    QE_CHECK(crc32(map_ + kPreambleBytes, header_size) == header_crc, f,
             ": header checksum mismatch (the file is corrupt)");

    // --- header ---
    header_text_.assign(reinterpret_cast<const char*>(map_ + kPreambleBytes), header_size);
    try {
        header_ = Json::parse(header_text_);
    } catch (const Error& e) {
        QE_CHECK(false, f, ": header: ", e.what());
    }
    QE_CHECK(header_.is_object(), f, ": header: expected a JSON object");
    auto require = [&](const char* key, Json::Type type) -> const Json& {
        const Json* v = header_.find(key);
        QE_CHECK(v != nullptr, f, ": header: missing '", key, "'");
        QE_CHECK(v->type() == type, f, ": header '", key, "': expected ", json_type_name(type),
                 ", found ", json_type_name(v->type()));
        return *v;
    };
    // Optional fields the runtime itself does not use are still type-checked, so both readers
    // (this one and qwen_edge/modelfile.py) accept exactly the same files.
    const std::pair<const char*, Json::Type> optional[] = {{"generation", Json::Type::kObject},
                                                           {"chat_template", Json::Type::kString},
                                                           {"special_tokens", Json::Type::kObject},
                                                           {"source", Json::Type::kObject}};
    for (const auto& [key, type] : optional) {
        const Json* v = header_.find(key);
        QE_CHECK(v == nullptr || v->type() == type, f, ": header '", key, "': expected ",
                 json_type_name(type), ", found ", json_type_name(v->type()));
    }
    const Json& arch = require("arch", Json::Type::kString);
    QE_CHECK(arch.as_string() == "qwen3_5", f, ": header 'arch': expected 'qwen3_5', found '",
             arch.as_string(), "'");
    config_ = ModelConfig::from_json(require("config", Json::Type::kObject), f);
    require("quant", Json::Type::kObject);

    // --- tensors and blobs: placement, then contents ---
    std::vector<std::pair<uint64_t, uint64_t>> extents;  // [begin, end) within the data section
    const uint64_t data_size = size_ - data_offset_;
    auto place = [&](const std::string& what, const Json& e, uint64_t* offset, uint64_t* size,
                     uint32_t* crc) {
        auto field = [&](const char* key) -> const Json& {
            const Json* v = e.find(key);
            QE_CHECK(v != nullptr && v->is_integer() && v->as_int() >= 0, f, ": ", what, ": '",
                     key, "' must be a non-negative integer");
            return *v;
        };
        *offset = uint64_t(field("offset").as_int());
        *size = uint64_t(field("size").as_int());
        const int64_t c = field("crc32").as_int();
        QE_CHECK(c <= 0xffffffffll, f, ": ", what, ": 'crc32' out of range");
        *crc = uint32_t(c);
        uint64_t end;
        QE_CHECK(*offset % 64 == 0, f, ": ", what, ": offset ", *offset,
                 " is not a multiple of 64");
        QE_CHECK(!add_overflows(*offset, *size, &end) && end <= data_size, f, ": ", what,
                 ": bytes [", *offset, ", +", *size, ") lie outside the data section (",
                 data_size, " bytes)");
        extents.emplace_back(*offset, end);
    };

    const Json& tensors = require("tensors", Json::Type::kArray);
    const auto expected = config_.text_tensor_shapes();
    for (const Json& e : tensors.as_array()) {
        QE_CHECK(e.is_object(), f, ": header 'tensors': entries must be objects");
        const Json* name = e.find("name");
        QE_CHECK(name != nullptr && name->is_string() && !name->as_string().empty(), f,
                 ": header 'tensors': an entry has no 'name'");
        TensorEntry t;
        t.name = name->as_string();
        const std::string what = "tensor '" + t.name + "'";
        QE_CHECK(index_.emplace(t.name, tensors_.size()).second, f, ": ", what,
                 " appears twice");
        const Json* format = e.find("format");
        QE_CHECK(format != nullptr && format->is_string() &&
                     parse_format(format->as_string(), &t.format),
                 f, ": ", what, ": unknown or missing 'format'");
        const Json* shape = e.find("shape");
        QE_CHECK(shape != nullptr && shape->is_array() && !shape->as_array().empty() &&
                     shape->as_array().size() <= 4,
                 f, ": ", what, ": 'shape' must be a list of 1 to 4 dims");
        uint64_t numel = 1;
        for (const Json& d : shape->as_array()) {
            QE_CHECK(d.is_integer() && d.as_int() > 0 && d.as_int() <= (int64_t{1} << 32), f,
                     ": ", what, ": 'shape' dims must be positive integers");
            t.shape.push_back(d.as_int());
            QE_CHECK(!mul_overflows(numel, uint64_t(d.as_int()), &numel), f, ": ", what,
                     ": shape too large");
        }
        place(what, e, &t.offset, &t.size, &t.crc32);
        uint64_t want_bytes = 0;
        if (is_quantized(t.format)) {
            QE_CHECK(t.shape.size() == 2 && packed_layout(t.format, t.shape[0], t.shape[1], &t.layout),
                     f, ": ", what, ": format ", format_name(t.format), " needs a 2-D shape with "
                     "columns a multiple of 32, found ", shape_str(t.shape));
            want_bytes = t.layout.total_bytes;
        } else {
            QE_CHECK(plain_bytes(t.format, numel, &want_bytes), f, ": ", what, ": shape too large");
        }
        QE_CHECK(t.size == want_bytes, f, ": ", what, ": size: expected ", want_bytes,
                 " bytes for ", format_name(t.format), " ", shape_str(t.shape), ", found ",
                 t.size);
        const auto it = expected.find(t.name);
        if (it != expected.end()) {
            QE_CHECK(it->second == t.shape, f, ": ", what, ": shape: expected ",
                     shape_str(it->second), " from the config, found ", shape_str(t.shape));
        } else {
            QE_CHECK(t.name.rfind("mtp.", 0) == 0, f, ": ", what,
                     " is not part of the text model this config describes");
        }
        t.data = map_ + data_offset_ + t.offset;
        tensors_.push_back(std::move(t));
    }
    for (const auto& [name, shape] : expected) {
        QE_CHECK(index_.count(name) == 1, f, ": tensor '", name, "' is missing");
    }

    const Json& blobs = require("blobs", Json::Type::kArray);
    for (const Json& e : blobs.as_array()) {
        QE_CHECK(e.is_object(), f, ": header 'blobs': entries must be objects");
        const Json* name = e.find("name");
        QE_CHECK(name != nullptr && name->is_string() && !name->as_string().empty(), f,
                 ": header 'blobs': an entry has no 'name'");
        BlobEntry b;
        b.name = name->as_string();
        QE_CHECK(find_blob(b.name) == nullptr, f, ": blob '", b.name, "' appears twice");
        place("blob '" + b.name + "'", e, &b.offset, &b.size, &b.crc32);
        b.data = map_ + data_offset_ + b.offset;
        blobs_.push_back(std::move(b));
    }

    std::sort(extents.begin(), extents.end());
    for (size_t i = 1; i < extents.size(); ++i) {
        QE_CHECK(extents[i].first >= extents[i - 1].second, f,
                 ": two tensors or blobs overlap at data offset ", extents[i].first);
    }

    if (verify) {
        for (const TensorEntry& t : tensors_) {
            QE_CHECK(crc32(t.data, t.size) == t.crc32, f, ": tensor '", t.name,
                     "': checksum mismatch (the file is corrupt)");
        }
        for (const BlobEntry& b : blobs_) {
            QE_CHECK(crc32(b.data, b.size) == b.crc32, f, ": blob '", b.name,
                     "': checksum mismatch (the file is corrupt)");
        }
    }
}

const TensorEntry* ModelFile::find(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorEntry& ModelFile::tensor(const std::string& name) const {
    const TensorEntry* t = find(name);
    QE_CHECK(t != nullptr, path_, ": no tensor '", name, "'");
    return *t;
}

const BlobEntry* ModelFile::find_blob(const std::string& name) const {
    for (const BlobEntry& b : blobs_) {
        if (b.name == name) return &b;
    }
    return nullptr;
}

}  // namespace qe
