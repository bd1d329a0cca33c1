// SPDX-License-Identifier: Apache-2.0
#include "model/state.h"

#include <algorithm>
#include <cstring>

#include "common.h"

namespace qe {

State::State(const Qwen35Config& config, int64_t context, int64_t batch, KvType kv_type,
             int threads)
    : config_(config), context_(context), batch_(batch), kv_type_(kv_type), threads_(threads) {
    QE_CHECK(context >= 1 && context <= config.max_position_embeddings,
             "context must be in 1..", config.max_position_embeddings, " (the model's "
             "max_position_embeddings), got ", context);
    QE_CHECK(batch >= 1 && batch <= 4096, "batch must be in 1..4096, got ", batch);
    const size_t elem = kv_type == KvType::kF16 ? 2 : 4;
    const size_t kv_bytes = size_t(config.n_head_kv) * size_t(context) * size_t(config.head_dim) *
                            elem;
    for (int64_t i = 0; i < config.n_full(); ++i) {
        kv_.emplace_back(kv_bytes);
        kv_.emplace_back(kv_bytes);
    }
    const size_t conv_bytes = size_t(config.lin_conv_kernel - 1) * size_t(config.conv_dim()) * 4;
    const size_t rec_bytes = size_t(config.n_lin_head_v) * size_t(config.lin_head_dim_k) *
                             size_t(config.lin_head_dim_v) * 4;
    for (int64_t i = 0; i < config.n_linear(); ++i) {
        conv_.emplace_back(conv_bytes);
        recurrent_.emplace_back(rec_bytes);
    }
    alloc_scratch(config, threads);
}

State::State(const State& other)
    : State(other.config_, other.context_, other.batch_, other.kv_type_, other.threads_) {
    copy_from(other);
}

void State::alloc_scratch(const Qwen35Config& c, int threads) {
    const size_t b = size_t(batch_), f = sizeof(float);
    const size_t attn = size_t(c.n_head * c.head_dim);
    const size_t widest = std::max({c.n_embd, c.n_ff, c.value_dim(), c.n_head * c.head_dim});
    Scratch& s = scratch_;
    s.batch = batch_;
    s.h = Buffer(b * c.n_embd * f);
    s.x = Buffer(b * c.n_embd * f);
    s.mix = Buffer(b * c.n_embd * f);
    s.xq = Buffer(b * ((widest + kBlockK - 1) / kBlockK) * sizeof(BlockQ8A));
    s.proj = Buffer(b * std::max(size_t(c.conv_dim()), 2 * attn) * f);
    s.conv = Buffer(b * std::max(size_t(c.conv_dim()), attn) * f);
    s.gate = Buffer(b * std::max(size_t(c.value_dim()), attn) * f);
    s.kv = Buffer(b * 2 * c.n_head_kv * c.head_dim * f);
    s.heads = Buffer(b * std::max(size_t(c.value_dim()), attn) * f);
    s.ab = Buffer(b * 2 * c.n_lin_head_v * f);
    s.ff = Buffer(b * 2 * c.n_ff * f);
    s.scores = Buffer(size_t(threads) * (c.n_head / c.n_head_kv) * context_ * f);
    s.logits = Buffer(size_t(c.n_vocab) * f);
}

void State::reset() {
    position_ = 0;
    // The KV cache needs no clearing: positions >= position_ are never read.
    for (auto& b : conv_) std::memset(b.as<void>(), 0, b.size());
    for (auto& b : recurrent_) std::memset(b.as<void>(), 0, b.size());
}

void State::copy_from(const State& other) {
    QE_CHECK(context_ == other.context_ && kv_type_ == other.kv_type_ &&
                 kv_.size() == other.kv_.size() && conv_.size() == other.conv_.size() &&
                 config_.n_head_kv == other.config_.n_head_kv &&
                 config_.head_dim == other.config_.head_dim,
             "states of different models or sizes cannot be copied into each other");
    position_ = other.position_;
    // Only the filled part of each head's KV rows.
    const size_t elem = kv_type_ == KvType::kF16 ? 2 : 4;
    const size_t row = size_t(config_.head_dim) * elem;
    for (size_t i = 0; i < kv_.size(); ++i) {
        for (int64_t h = 0; h < config_.n_head_kv; ++h) {
            const size_t off = size_t(h) * size_t(context_) * row;
            std::memcpy(kv_[i].as<char>() + off, other.kv_[i].as<char>() + off,
                        size_t(position_) * row);
        }
    }
    for (size_t i = 0; i < conv_.size(); ++i) {
        std::memcpy(conv_[i].as<void>(), other.conv_[i].as<void>(), conv_[i].size());
        std::memcpy(recurrent_[i].as<void>(), other.recurrent_[i].as<void>(),
                    recurrent_[i].size());
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
