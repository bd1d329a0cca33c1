// SPDX-License-Identifier: Apache-2.0
#include "model/state.h"

#include <algorithm>
#include <cstring>

#include "common.h"

namespace qe {
namespace {

int64_t count_layers(const ModelConfig& c, LayerType type) {
    return std::count(c.layer_types.begin(), c.layer_types.end(), type);
}

// a * b * c * d for buffer sizes, throwing instead of wrapping.
size_t bytes_of(uint64_t a, uint64_t b, uint64_t c = 1, uint64_t d = 1) {
    uint64_t ab = 0, abc = 0, abcd = 0;
    QE_CHECK(!mul_overflows(a, b, &ab) && !mul_overflows(ab, c, &abc) &&
                 !mul_overflows(abc, d, &abcd) && abcd < (uint64_t{1} << 48),
             "state: buffer size overflows (", a, " x ", b, " x ", c, " x ", d, ")");
    return size_t(abcd);
}

}  // namespace

State::State(const ModelConfig& config, int64_t context, int64_t batch, KvType kv_type, int threads)
    : config_(config), context_(context), batch_(batch), kv_type_(kv_type), threads_(threads) {
    QE_CHECK(context >= 1 && context <= config.max_position, "context must be in 1..",
             config.max_position, " (the model's max_position_embeddings), got ", context);
    QE_CHECK(batch >= 1 && batch <= 4096, "batch must be in 1..4096, got ", batch);
    QE_CHECK(kv_type != KvType::kQ8 || config.head_dim % kBlockK == 0,
             "an int8 KV cache needs head_dim divisible by ", kBlockK, ", got ", config.head_dim);
    const size_t kv_bytes =
        bytes_of(config.n_head_kv, context, kv_row_bytes(kv_type, config.head_dim));
    for (int64_t i = 0; i < count_layers(config, LayerType::kFull); ++i) {
        kv_.emplace_back(kv_bytes);
        kv_.emplace_back(kv_bytes);
    }
    const size_t conv_bytes = bytes_of(config.conv_kernel - 1, config.conv_dim(), 4);
    const size_t rec_bytes = bytes_of(config.n_v_head, config.k_head_dim, config.v_head_dim, 4);
    for (int64_t i = 0; i < count_layers(config, LayerType::kLinear); ++i) {
        conv_.emplace_back(conv_bytes);
        recurrent_.emplace_back(rec_bytes);
    }
    alloc_scratch(config, threads);
}

State::State(const State& other)
    : State(other.config_, other.context_, other.batch_, other.kv_type_, other.threads_) {
    copy_from(other);
}

void State::alloc_scratch(const ModelConfig& c, int threads) {
    qe::alloc_scratch(scratch_, c, batch_, context_, threads);
}

void alloc_scratch(Scratch& s, const ModelConfig& c, int64_t batch, int64_t context, int threads) {
    const uint64_t b = uint64_t(batch), f = sizeof(float);
    const uint64_t attn = bytes_of(c.n_head, c.head_dim);
    const uint64_t widest =
        std::max({uint64_t(c.n_embd), uint64_t(c.n_ff), uint64_t(c.value_dim()), attn});
    const uint64_t proj = std::max(uint64_t(c.conv_dim()), 2 * attn);
    const uint64_t heads = std::max(uint64_t(c.value_dim()), attn);
    s.batch = batch;
    s.h = Buffer(bytes_of(b, c.n_embd, f));
    s.x = Buffer(bytes_of(b, c.n_embd, f));
    s.mix = Buffer(bytes_of(b, c.n_embd, f));
    s.xq = Buffer(bytes_of(b, (widest + kBlockK - 1) / kBlockK, sizeof(BlockQ8A)));
    s.proj = Buffer(bytes_of(b, proj, f));
    s.conv = Buffer(bytes_of(b, std::max(uint64_t(c.conv_dim()), attn), f));
    s.gate = Buffer(bytes_of(b, heads, f));
    s.kv = Buffer(bytes_of(b, 2 * c.n_head_kv, c.head_dim, f));
    s.heads = Buffer(bytes_of(b, heads, f));
    s.ab = Buffer(bytes_of(b, 2 * c.n_v_head, f));
    s.ff = Buffer(bytes_of(b, 2 * c.n_ff, f));
    s.scores = Buffer(bytes_of(threads, c.n_head / c.n_head_kv, context, f));
    s.rope = Buffer(bytes_of(b, c.rotary_dim(), f));
    s.logits = Buffer(bytes_of(c.vocab_size, f));
}

void State::reset() {
    position_ = 0;
    interrupted_ = false;
    // The KV cache needs no clearing: positions >= position_ are never read.
    for (auto& b : conv_) std::memset(b.as<void>(), 0, b.size());
    for (auto& b : recurrent_) std::memset(b.as<void>(), 0, b.size());
}

void State::copy_from(const State& other) {
    QE_CHECK(other.position_ <= context_ && kv_type_ == other.kv_type_ &&
                 kv_.size() == other.kv_.size() && conv_.size() == other.conv_.size() &&
                 config_.n_head_kv == other.config_.n_head_kv &&
                 config_.head_dim == other.config_.head_dim,
             "states of different models or sizes cannot be copied into each other");
    position_ = other.position_;
    interrupted_ = other.interrupted_;
    // Only the filled part of each head's KV rows (heads are context_ rows apart in each).
    const size_t row = kv_row_bytes(kv_type_, config_.head_dim);
    for (size_t i = 0; i < kv_.size(); ++i) {
        for (int64_t h = 0; h < config_.n_head_kv; ++h) {
            std::memcpy(kv_[i].as<char>() + size_t(h) * size_t(context_) * row,
                        other.kv_[i].as<char>() + size_t(h) * size_t(other.context_) * row,
                        size_t(position_) * row);
        }
    }
    for (size_t i = 0; i < conv_.size(); ++i) {
        std::memcpy(conv_[i].as<void>(), other.conv_[i].as<void>(), conv_[i].size());
        std::memcpy(recurrent_[i].as<void>(), other.recurrent_[i].as<void>(), recurrent_[i].size());
    }
}

uint64_t State::cache_bytes() const {
    uint64_t n = 0;
    for (const auto& b : kv_) n += b.size();
    for (const auto& b : conv_) n += b.size();
    for (const auto& b : recurrent_) n += b.size();
    return n;
}

}  // namespace qe
