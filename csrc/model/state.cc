// SPDX-License-Identifier: Apache-2.0
#include "model/state.h"

#include <algorithm>
#include <cstring>

#include "common.h"
#include "kernels/kernels.h"

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

StateSizes State::sizes_for(const ModelConfig& c, int64_t context, int64_t batch, KvType kv_type,
                            int threads) {
    QE_CHECK(context >= 1 && context <= c.max_position, "context must be in 1..",
             c.max_position, " (the model's max_position_embeddings), got ", context);
    QE_CHECK(batch >= 1 && batch <= 4096, "batch must be in 1..4096, got ", batch);
    QE_CHECK(!kv_in_groups(kv_type) || c.head_dim % kBlockK == 0,
             "an int8 or 4-bit KV cache needs head_dim divisible by ", kBlockK, ", got ",
             c.head_dim);
    QE_CHECK(threads >= 1, "threads must be at least 1, got ", threads);
    StateSizes z;
    z.full_layers = count_layers(c, LayerType::kFull);
    z.linear_layers = count_layers(c, LayerType::kLinear);
    z.kv = bytes_of(c.n_head_kv, kv_rows(kv_type, context), kv_row_bytes(kv_type, c.head_dim));
    z.conv = bytes_of(c.conv_kernel - 1, c.conv_dim(), 4);
    z.recurrent = bytes_of(c.n_v_head, c.k_head_dim, c.v_head_dim, 4);
    const uint64_t b = uint64_t(batch), f = sizeof(float);
    const uint64_t attn = bytes_of(c.n_head, c.head_dim);
    // 2 * n_embd: the MTP head's fc input.
    const uint64_t widest = std::max(
        {2 * uint64_t(c.n_embd), uint64_t(c.n_ff), uint64_t(c.value_dim()), attn});
    const uint64_t proj = std::max(uint64_t(c.conv_dim()), 2 * attn);
    const uint64_t heads = std::max(uint64_t(c.value_dim()), attn);
    z.h = bytes_of(b, c.n_embd, f);
    z.x = bytes_of(b, c.n_embd, f);
    z.mix = bytes_of(b, c.n_embd, f);
    z.xq = bytes_of(b, (widest + kBlockK - 1) / kBlockK, sizeof(BlockQ8A));
    z.proj = bytes_of(b, proj, f);
    z.conv_out = bytes_of(b, std::max(uint64_t(c.conv_dim()), attn), f);
    z.gate = bytes_of(b, heads, f);
    z.kv_new = bytes_of(b, 2 * c.n_head_kv, c.head_dim, f);
    z.heads = bytes_of(b, heads, f);
    z.ab = bytes_of(b, 2 * c.n_v_head, f);
    z.ff = bytes_of(b, 2 * c.n_ff, f);
    // One tile of scores per query head of a GQA group, token of an attention work item and
    // thread: the attention kernels stream the cache (kernels.h), so this stops growing at
    // kAttentionTile positions.
    z.scores =
        bytes_of(threads, attention_scratch(c.n_head / c.n_head_kv * kAttentionTokens, context), f);
    z.rope = bytes_of(b, c.rotary_dim(), f);
    z.logits = bytes_of(c.vocab_size, f);
    return z;
}

uint64_t StateSizes::cache_bytes() const {
    return 2 * uint64_t(full_layers) * kv + uint64_t(linear_layers) * (conv + recurrent);
}

uint64_t StateSizes::scratch_bytes() const {
    return uint64_t(h) + x + mix + xq + proj + conv_out + gate + kv_new + heads + ab + ff +
           scores + rope + logits;
}

State::State(const ModelConfig& config, int64_t context, int64_t batch, KvType kv_type, int threads)
    : config_(config), context_(context), batch_(batch), kv_type_(kv_type), threads_(threads) {
    const StateSizes z = sizes_for(config, context, batch, kv_type, threads);
    for (int64_t i = 0; i < z.full_layers; ++i) {
        kv_.emplace_back(z.kv);
        kv_.emplace_back(z.kv);
    }
    for (int64_t i = 0; i < z.linear_layers; ++i) {
        conv_.emplace_back(z.conv);
        recurrent_.emplace_back(z.recurrent);
    }
    alloc_scratch(scratch_, z, batch_);
}

State::State(const State& other)
    : State(other.config_, other.context_, other.batch_, other.kv_type_, other.threads_) {
    copy_from(other);
}

void alloc_scratch(Scratch& s, const StateSizes& z, int64_t batch) {
    s.batch = batch;
    s.h = Buffer(z.h);
    s.x = Buffer(z.x);
    s.mix = Buffer(z.mix);
    s.xq = Buffer(z.xq);
    s.proj = Buffer(z.proj);
    s.conv = Buffer(z.conv_out);
    s.gate = Buffer(z.gate);
    s.kv = Buffer(z.kv_new);
    s.heads = Buffer(z.heads);
    s.ab = Buffer(z.ab);
    s.ff = Buffer(z.ff);
    s.scores = Buffer(z.scores);
    s.rope = Buffer(z.rope);
    s.logits = Buffer(z.logits);
}

void State::reset() {
    position_ = 0;
    mtp_position_ = 0;
    mtp_hidden_at_ = -1;
    ckpt_tokens_ = 0;
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
    QE_CHECK(!other.speculation_enabled() || other.mtp_position_ <= context_,
             "states of different models or sizes cannot be copied into each other");
    interrupted_ = other.interrupted_;
    ckpt_tokens_ = 0;
    if (other.speculation_enabled()) enable_speculation(std::min(other.slots_, batch_ - 1));
    mtp_position_ = speculation_enabled() ? other.mtp_position_ : 0;
    mtp_hidden_at_ = other.speculation_enabled() ? other.mtp_hidden_at_ : -1;
    if (mtp_hidden_at_ >= 0)
        std::memcpy(mtp_hidden_.as<void>(), other.mtp_hidden_.as<void>(), mtp_hidden_.size());
    // Only the filled part of each head's KV rows (the int8 cache's in whole groups, which both
    // states hold whole).
    const size_t to = kv_head_bytes(kv_type_, context_, config_.head_dim);
    const size_t from = kv_head_bytes(kv_type_, other.context_, config_.head_dim);
    auto copy_heads = [&](char* dst, const char* src, int64_t filled) {
        for (int64_t h = 0; h < config_.n_head_kv; ++h)
            std::memcpy(dst + size_t(h) * to, src + size_t(h) * from,
                        kv_head_bytes(kv_type_, filled, config_.head_dim));
    };
    for (size_t i = 0; i < kv_.size(); ++i)
        copy_heads(kv_[i].as<char>(), other.kv_[i].as<char>(), position_);
    for (size_t i = 0; other.speculation_enabled() && i < mtp_kv_.size(); ++i)
        copy_heads(mtp_kv_[i].as<char>(), other.mtp_kv_[i].as<char>(), mtp_position_);
    for (size_t i = 0; i < conv_.size(); ++i) {
        std::memcpy(conv_[i].as<void>(), other.conv_[i].as<void>(), conv_[i].size());
        std::memcpy(recurrent_[i].as<void>(), other.recurrent_[i].as<void>(), recurrent_[i].size());
    }
}

void State::enable_speculation(int64_t slots) {
    QE_CHECK(slots >= 0 && slots < batch_, "speculation: checkpoint slots must be in 0..",
             batch_ - 1, " (the state's batch - 1), got ", slots);
    if (mtp_kv_.empty()) {
        const size_t kv_bytes = bytes_of(config_.n_head_kv, kv_rows(kv_type_, context_),
                                         kv_row_bytes(kv_type_, config_.head_dim));
        mtp_kv_.emplace_back(kv_bytes);
        mtp_kv_.emplace_back(kv_bytes);
        scratch_.mtp_in = Buffer(bytes_of(batch_, 2 * config_.n_embd, sizeof(float)));
        mtp_hidden_ = Buffer(bytes_of(config_.n_embd, sizeof(float)));
        mtp_position_ = 0;
        mtp_hidden_at_ = -1;
    }
    if (slots <= slots_) return;
    ckpt_conv_.clear();
    pre_recurrent_.clear();
    replay_in_.clear();
    const size_t row = bytes_of(config_.conv_dim() + 2 * config_.n_v_head, sizeof(float));
    for (size_t i = 0; i < conv_.size(); ++i) {
        ckpt_conv_.emplace_back(bytes_of(slots, conv_[i].size()));
        pre_recurrent_.emplace_back(recurrent_[i].size());
        replay_in_.emplace_back(bytes_of(slots + 1, row));
    }
    slots_ = slots;
    ckpt_tokens_ = 0;
}

void State::set_mtp_hidden(const float* hidden) {
    QE_CHECK(speculation_enabled(), "the state has no MTP cache (enable_speculation first)");
    QE_CHECK(position_ > 0, "set_mtp_hidden: the state holds no position yet");
    std::memcpy(mtp_hidden_.as<void>(), hidden, mtp_hidden_.size());
    mtp_hidden_at_ = position_ - 1;
}

void State::set_mtp_position(int64_t p) {
    QE_CHECK(speculation_enabled(), "the state has no MTP cache (enable_speculation first)");
    QE_CHECK(p >= 0 && p <= mtp_position_, "set_mtp_position: ", p, " is outside 0..",
             mtp_position_, " (the MTP cache can only be truncated)");
    mtp_position_ = p;
}

uint64_t State::allocated_bytes() const {
    const Scratch& s = scratch_;
    uint64_t n = main_cache_bytes();
    for (const Buffer* b : {&s.h, &s.x, &s.mix, &s.xq, &s.proj, &s.conv, &s.gate, &s.kv, &s.heads,
                            &s.ab, &s.ff, &s.scores, &s.rope, &s.logits})
        n += b->size();
    return n;
}

uint64_t State::main_cache_bytes() const {
    uint64_t n = 0;
    for (const auto& b : kv_) n += b.size();
    for (const auto& b : conv_) n += b.size();
    for (const auto& b : recurrent_) n += b.size();
    return n;
}

uint64_t State::cache_bytes() const {
    uint64_t n = main_cache_bytes();
    for (const auto& b : mtp_kv_) n += b.size();
    return n + mtp_hidden_.size();
}

}  // namespace qe
