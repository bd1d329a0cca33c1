// SPDX-License-Identifier: Apache-2.0
// The model-file reader on untrusted input: a valid file opens and its views are right; every
// truncation, every preamble byte flip, header byte flips and each corruption class give a
// qe::Error (under ASan/UBSan in CI), never a crash or an out-of-bounds read.
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include "check.h"
#include "common.h"
#include "model/json.h"
#include "model/model_file.h"

namespace {

const char* kConfig =
    R"({"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
        "linear_num_key_heads": 1, "linear_num_value_heads": 2, "linear_key_head_dim": 8,
        "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4, "rms_norm_eps": 1e-6,
        "rope_theta": 10000000.0, "partial_rotary_factor": 0.25, "tie_word_embeddings": true,
        "max_position_embeddings": 4096, "eos_token_id": [63],
        "layer_types": ["linear_attention", "full_attention"]})";

void put_u32(std::string& s, size_t at, uint32_t v) { std::memcpy(&s[at], &v, 4); }
void put_u64(std::string& s, size_t at, uint64_t v) { std::memcpy(&s[at], &v, 8); }

// A valid model file for kConfig: MLP matrices q4g32, everything else f32, one blob.
// `extra_header` is appended to the header object (the CRC covers it when `seal`).
std::string build_file(const std::string& extra_header = "", bool seal = true) {
    const auto cfg = qe::ModelConfig::from_json(qe::Json::parse(kConfig), "test");
    std::string data, entries;
    std::mt19937 rng(5);
    auto add = [&](const std::string& name, const std::string& fields, uint64_t size) {
        data.resize((data.size() + 63) / 64 * 64);
        const uint64_t offset = data.size();
        for (uint64_t i = 0; i < size; ++i) data += char(rng() & 0xff);
        const uint32_t crc = qe::crc32(reinterpret_cast<const uint8_t*>(data.data()) + offset, size);
        if (!entries.empty() && entries.back() != '[') entries += ",";
        entries += "{\"name\": \"" + name + "\"" + fields + ", \"offset\": " +
                   std::to_string(offset) + ", \"size\": " + std::to_string(size) +
                   ", \"crc32\": " + std::to_string(crc) + "}";
    };
    entries = "\"tensors\": [";
    for (const auto& [name, shape] : cfg.text_tensor_shapes()) {
        std::string dims;
        uint64_t numel = 1;
        for (auto d : shape) {
            dims += (dims.empty() ? "" : ", ") + std::to_string(d);
            numel *= uint64_t(d);
        }
        const bool packed = name.find("mlp.") != std::string::npos;
        uint64_t size = numel * 4;
        if (packed) {
            qe::PackedLayout l;
            qe::packed_layout(qe::WeightFormat::kQ4g32, shape[0], shape[1], &l);
            size = l.total_bytes;
        }
        add(name,
            std::string(", \"format\": \"") + (packed ? "q4g32" : "f32") + "\", \"shape\": [" +
                dims + "]",
            size);
    }
    entries += "], \"blobs\": [";
    add("tokenizer.json", "", 100);
    entries += "]";
    const std::string header = std::string("{\"arch\": \"qwen3_5\", \"config\": ") + kConfig +
                               ", \"quant\": {\"recipe\": \"test\"}, " + entries + extra_header +
                               "}";
    const uint64_t data_offset = (64 + header.size() + 63) / 64 * 64;
    std::string file(data_offset, '\0');
    std::memcpy(&file[0], "QWENEDGE", 8);
    put_u32(file, 8, 1);
    put_u32(file, 12, uint32_t(header.size()));
    put_u32(file, 16,
            seal ? qe::crc32(reinterpret_cast<const uint8_t*>(header.data()), header.size()) : 0);
    put_u64(file, 24, data_offset);
    std::memcpy(&file[64], header.data(), header.size());
    file += data;
    put_u64(file, 32, file.size());
    return file;
}

std::string write_temp(const std::string& bytes) {
    char path[] = "/tmp/qe_model_file_XXXXXX";
    const int fd = mkstemp(path);
    if (fd >= 0) {
        const ssize_t n = write(fd, bytes.data(), bytes.size());
        (void)n;
        close(fd);
    }
    return path;
}

// Opens `bytes` as a model file: "" on success, else the error message.
std::string open_error(const std::string& bytes, bool verify = false) {
    const std::string path = write_temp(bytes);
    std::string error;
    try {
        auto file = qe::ModelFile::open(path, verify);
    } catch (const qe::Error& e) {
        error = e.what();
        if (error.empty()) error = "?";
    }
    std::remove(path.c_str());
    return error;
}

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

}  // namespace

QE_TEST(crc32_matches_zlib) {
    const std::string s = "123456789";
    EXPECT_TRUE(qe::crc32(reinterpret_cast<const uint8_t*>(s.data()), s.size()) == 0xcbf43926u);
    std::vector<uint8_t> big(1000);
    for (size_t i = 0; i < big.size(); ++i) big[i] = uint8_t(i * 7);
    // Incremental equals one shot, across the 8-byte stride boundary.
    const uint32_t whole = qe::crc32(big.data(), big.size());
    EXPECT_TRUE(qe::crc32(big.data() + 13, big.size() - 13, qe::crc32(big.data(), 13)) == whole);
}

QE_TEST(json_parses_and_rejects) {
    const qe::Json j = qe::Json::parse(
        R"( {"a": [1, -2.5e3, true, false, null], "s": "x\u00e9\ud83d\ude00\n", "big": 9007199254740993} )");
    EXPECT_TRUE(j.find("a")->as_array().size() == 5);
    EXPECT_TRUE(j.find("a")->as_array()[0].as_int() == 1);
    EXPECT_TRUE(j.find("a")->as_array()[1].as_double() == -2500.0);
    EXPECT_TRUE(j.find("a")->as_array()[2].as_bool());
    EXPECT_TRUE(j.find("s")->as_string() == "x\xc3\xa9\xf0\x9f\x98\x80\n");
    EXPECT_TRUE(j.find("big")->as_int() == 9007199254740993ll);
    const char* bad[] = {"",       "{",          "[1,]",       "{\"a\":1,}",   "01",
                         "1.",     "-",          "\"\\ud800\"", "\"\\x\"",      "{\"a\" 1}",
                         "[1] 2",  "nul",        "1e999",       "{\"a\":1,\"a\":2}",
                         "\"\xff\"", "\"\xed\xa0\x80\"", "\"a\nb\""};
    for (const char* text : bad) {
        bool threw = false;
        try {
            qe::Json::parse(text);
        } catch (const qe::Error&) {
            threw = true;
        }
        if (!threw) std::printf("  accepted bad JSON: %s\n", text);
        EXPECT_TRUE(threw);
    }
    std::string deep(1000, '[');
    bool threw = false;
    try {
        qe::Json::parse(deep);
    } catch (const qe::Error& e) {
        threw = contains(e.what(), "nesting too deep");
    }
    EXPECT_TRUE(threw);
}

QE_TEST(model_file_valid) {
    const std::string bytes = build_file();
    const std::string path = write_temp(bytes);
    auto file = qe::ModelFile::open(path, /*verify=*/true);
    EXPECT_TRUE(file->config().n_layer == 2);
    EXPECT_TRUE(file->find("layers.1.self_attn.q_proj.weight") != nullptr);
    const auto& up = file->tensor("layers.0.mlp.up_proj.weight");
    EXPECT_TRUE(up.format == qe::WeightFormat::kQ4g32);
    const qe::PackedMatrix m = up.packed();
    EXPECT_TRUE(m.rows == 64 && m.k == 32 && m.groups == 8 && m.blocks == 1);
    EXPECT_TRUE(file->find_blob("tokenizer.json") != nullptr &&
                file->find_blob("tokenizer.json")->size == 100);
    std::remove(path.c_str());
}

QE_TEST(model_file_truncation_and_byte_flips) {
    const std::string good = build_file();
    EXPECT_TRUE(open_error(good).empty());
    int checked = 0;
    // Every length up to the end of the header, then a sweep through the data.
    const uint32_t header_end = 64 + [&] {
        uint32_t n;
        std::memcpy(&n, &good[12], 4);
        return n;
    }();
    for (size_t n = 0; n < good.size(); n += (n < header_end + 64 ? 1 : 37)) {
        const std::string err = open_error(good.substr(0, n));
        EXPECT_TRUE(!err.empty());
        ++checked;
    }
    // Every preamble byte, and many header bytes, flipped: an error, never a crash.
    std::mt19937 rng(11);
    for (size_t at = 0; at < header_end; at += (at < 64 ? 1 : 3)) {
        std::string bad = good;
        bad[at] = char(bad[at] ^ (1 + rng() % 255));
        EXPECT_TRUE(!open_error(bad).empty());
        ++checked;
    }
    std::printf("  %d corrupt files rejected\n", checked);
}

QE_TEST(model_file_corruption_classes) {
    struct Case {
        const char* name;
        std::string bytes;
        const char* message;
        bool verify;
    };
    std::vector<Case> cases;
    auto with = [&](const char* name, const char* message, auto edit, bool verify = false) {
        std::string b = build_file();
        edit(b);
        cases.push_back({name, b, message, verify});
    };
    with("magic", "magic", [](std::string& b) { b[0] = 'X'; });
    with("version", "format version: expected 1, found 2", [](std::string& b) { put_u32(b, 8, 2); });
    with("reserved", "reserved", [](std::string& b) { b[50] = 1; });
    with("header size", "header size", [](std::string& b) { put_u32(b, 12, 1); });
    with("data offset", "data offset", [](std::string& b) { put_u64(b, 24, 65); });
    with("file size", "file size", [](std::string& b) { put_u64(b, 32, b.size() + 1); });
    with("header crc", "header checksum", [](std::string& b) { b[70] ^= 1; });
    with("tensor crc", "checksum mismatch", [](std::string& b) { b[b.size() - 200] ^= 1; }, true);
    cases.push_back({"header json", build_file(", \"x\": [1,", true),
                     "invalid JSON", false});  // sealed with a valid CRC, invalid JSON
    auto rewrite = [&](const char* name, const char* message, const std::string& from,
                       const std::string& to) {
        std::string good = build_file();
        uint32_t n;
        std::memcpy(&n, &good[12], 4);
        std::string header = good.substr(64, n);
        const size_t at = header.find(from);
        if (at == std::string::npos) {
            std::printf("  case %s: pattern not found\n", name);
            ++qe_test::failures();
            return;
        }
        header.replace(at, from.size(), to);
        header.resize(n, ' ');  // keep the same size (only shrinking edits are used)
        std::string b = good;
        b.replace(64, n, header);
        put_u32(b, 16, qe::crc32(reinterpret_cast<const uint8_t*>(header.data()), n));
        cases.push_back({name, b, message, false});
    };
    rewrite("arch", "'arch': expected 'qwen3_5'", "\"qwen3_5\"", "\"llama\"  ");
    rewrite("format", "unknown or missing 'format'", "\"q4g32\"", "\"q3\"   ");
    rewrite("shape vs config", "shape: expected [64, 32] from the config", "\"shape\": [64, 32]",
            "\"shape\": [32, 64]");
    rewrite("size", "size: expected 128 bytes for f32 [32], found 124", "\"size\": 128,",
            "\"size\": 124,");
    rewrite("misaligned", "not a multiple of 64", "\"offset\": 0,", "\"offset\": 8,");
    rewrite("missing tensor", "is missing", "\"name\": \"norm.weight\"", "\"name\": \"mtp.x\"      ");
    rewrite("unknown tensor", "not part of the text model", "\"name\": \"norm.weight\"",
            "\"name\": \"nor.weight\" ");
    rewrite("bad config", "num_attention_heads (2) is not a multiple", "\"num_key_value_heads\": 1",
            "\"num_key_value_heads\": 3");
    rewrite("eos", "eos_token_id", "\"eos_token_id\": [63]", "\"eos_token_id\": [-1]");
    for (const Case& c : cases) {
        const std::string err = open_error(c.bytes, c.verify);
        if (!contains(err, c.message)) {
            std::printf("  case %s: expected '%s', got '%s'\n", c.name, c.message, err.c_str());
            ++qe_test::failures();
        }
    }
}

// Hostile config values (issue 12): each is a qe::Error naming its field, checked before any
// conversion to an integer. partial_rotary_factor = 1e308 once reached rotary_dim(), which
// converts head_dim x factor (infinite) to int64: undefined behaviour, which UBSan (the asan
// variant of tools/native_test.sh) reports as a failure here.
QE_TEST(config_rejects_hostile_values) {
    const std::string good = kConfig;
    struct Case {
        const char* from;
        const char* to;
        const char* message;
    };
    const Case cases[] = {
        {"\"partial_rotary_factor\": 0.25", "\"partial_rotary_factor\": 1e308", "(0, 1]"},
        {"\"partial_rotary_factor\": 0.25", "\"partial_rotary_factor\": 1.0000001", "(0, 1]"},
        {"\"partial_rotary_factor\": 0.25", "\"partial_rotary_factor\": 0", "positive finite"},
        {"\"partial_rotary_factor\": 0.25", "\"partial_rotary_factor\": -1e308", "positive finite"},
        {"\"partial_rotary_factor\": 0.25", "\"partial_rotary_factor\": \"x\"", "positive finite"},
        {"\"partial_rotary_factor\": 0.25", "\"partial_rotary_factor\": 1e-300", "rotary dims"},
        {"\"partial_rotary_factor\": 0.25", "\"partial_rotary_factor\": 1e999", "invalid JSON"},
        {"\"rope_theta\": 10000000.0", "\"rope_theta\": -1", "rope_theta"},
        {"\"rms_norm_eps\": 1e-6", "\"rms_norm_eps\": 0", "rms_norm_eps"},
        {"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1000000000000000000",
         "num_hidden_layers' must be an integer in 1.."},
        {"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 5000", "at most 4096"},
        {"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 2.5", "num_hidden_layers"},
        {"\"head_dim\": 16", "\"head_dim\": 9223372036854775807", "head_dim"},
        {"\"head_dim\": 16", "\"head_dim\": -16", "head_dim"},
        {"\"max_position_embeddings\": 4096", "\"max_position_embeddings\": 1e300",
         "max_position_embeddings"},
        {"\"tie_word_embeddings\": true", "\"tie_word_embeddings\": \"no\"", "tie_word_embeddings"},
        {"\"eos_token_id\": [63]", "\"eos_token_id\": [\"a\"]", "eos_token_id"},
        {"\"layer_types\": [", "\"layer_types\": [[\"full_attention\"], ", "layer_types"},
    };
    for (const Case& c : cases) {
        std::string text = good;
        const size_t at = text.find(c.from);
        if (at == std::string::npos) {
            std::printf("  case %s: pattern not found\n", c.to);
            ++qe_test::failures();
            continue;
        }
        text.replace(at, std::strlen(c.from), c.to);
        std::string err;
        try {
            qe::ModelConfig::from_json(qe::Json::parse(text), "test");
        } catch (const qe::Error& e) {
            err = e.what();
        }
        if (!contains(err, c.message)) {
            std::printf("  case %s: expected '%s', got '%s'\n", c.to, c.message, err.c_str());
            ++qe_test::failures();
        }
    }
}
