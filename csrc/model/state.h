// SPDX-License-Identifier: Apache-2.0
// The inference state of one sequence: every full-attention layer's KV cache, every gated
// DeltaNet layer's conv state and recurrent state (fp32, docs/model.md §6), the position, and the
// scratch arena the forward pass works in. Sized once at creation for a context length and a
// largest token batch, so a decode step allocates nothing. Copying a state copies the caches
// up to the current position (snapshot / restore for prompt caching and speculation); scratch
// is never copied.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "quant/formats.h"
#include "runtime/buffer.h"

namespace qe {

// Element type of the KV cache: f16 (default), f32, q8 (int8 in blocks of 32, one float scale
// each: 1.125 bytes per element, for long contexts) or q4 (4-bit codes, 0.625 bytes per
// element, for the longest); the integer caches need head_dim % 32 == 0.
enum class KvType : uint8_t { kF16, kF32, kQ8, kQ4 };
inline bool kv_in_groups(KvType t) {
    return t == KvType::kQ8 || t == KvType::kQ4;
}

// Bytes of one cached key or value vector of head_dim elements.
inline size_t kv_row_bytes(KvType t, int64_t head_dim) {
    if (t == KvType::kQ8) return size_t(head_dim / kBlockK * kKvBlockBytes);
    if (t == KvType::kQ4) return size_t(head_dim / kBlockK * kKvBlockBytesQ4);
    return size_t(head_dim) * (t == KvType::kF16 ? 2 : 4);
}

// Rows each head's K and V caches hold for `context` tokens: `context`, but whole groups of 16
// for the integer caches, which are written and read in groups (formats.h).
inline int64_t kv_rows(KvType t, int64_t context) {
    return kv_in_groups(t) ? (context + kKvGroup - 1) / kKvGroup * kKvGroup : context;
}
// Bytes from one head's cache to the next's.
inline size_t kv_head_bytes(KvType t, int64_t context, int64_t head_dim) {
    return size_t(kv_rows(t, context)) * kv_row_bytes(t, head_dim);
}

// Tokens per attention work item (Qwen35Model::attention_block): a kernel call reads each K/V
// tile once for all its tokens; 12 tokens of a 4-head GQA group (every Qwen3.5 size) are one
// block of the x86 kernels (4 runs of 12 rows sharing each tile), and a 128-token batch still
// gives 2 x 11 items to share out.
inline constexpr int64_t kAttentionTokens = 12;

// Scratch for a forward pass over at most `batch` tokens. [T, n] buffers are row-major,
// n contiguous, T = tokens of the current batch.
struct Scratch {
    int64_t batch = 0;
    Buffer h;       // [T, n_embd] the residual stream
    Buffer x;       // [T, n_embd] normed input of the current block
    Buffer mix;     // [T, n_embd] output of a block before the residual add
    Buffer xq;      // q8a blocks of the widest activation, [T, max_k / 32]
    Buffer proj;    // [T, max(conv_dim, 2 * n_head * head_dim)] qkv / q+gate projection
    Buffer conv;    // [T, conv_dim] GDN conv output; full attention: [T, n_head, head_dim] q
    Buffer gate;    // [T, max(value_dim, n_head * head_dim)] GDN z / attention gate
    Buffer kv;      // [T, 2, n_head_kv, head_dim] new keys and values
    Buffer heads;   // [T, max(value_dim, n_head * head_dim)] GDN / attention head outputs
    Buffer ab;      // [T, 2, n_v_head] GDN b and a, then beta and decay
    Buffer ff;      // [T, 2, n_ff] MLP gate and up
    Buffer scores;  // [threads, kAttentionTokens, n_head / n_head_kv, min(context, kAttentionTile)]
    Buffer rope;    // [T, 2, rotary_dim / 2] cos then sin of each token's position
    Buffer logits;  // [vocab_size] last-position logits when the caller gives no buffer
    Buffer mtp_in;  // [T, 2 * n_embd] the MTP head's concatenated input (enable_speculation)
};

// The sizes of every buffer of a state: what the constructor allocates, computable before it.
struct StateSizes {
    int64_t full_layers = 0, linear_layers = 0;
    size_t kv = 0;         // one K (or V) cache of one full-attention layer
    size_t conv = 0;       // one linear-attention layer's conv state
    size_t recurrent = 0;  // one linear-attention layer's recurrent state
    size_t h = 0, x = 0, mix = 0, xq = 0, proj = 0, conv_out = 0, gate = 0, kv_new = 0, heads = 0,
           ab = 0, ff = 0, scores = 0, rope = 0, logits = 0;  // Scratch
    uint64_t cache_bytes() const;
    uint64_t scratch_bytes() const;
    uint64_t total() const { return cache_bytes() + scratch_bytes(); }
};

// Allocates `s` with the scratch sizes of `z` for passes of at most `batch` tokens.
void alloc_scratch(Scratch& s, const StateSizes& z, int64_t batch);

class State {
public:
    // The buffer sizes of a state (throws qe::Error for arguments the constructor rejects).
    static StateSizes sizes_for(const ModelConfig& config, int64_t context, int64_t batch,
                                KvType kv_type, int threads);
    // Bytes a state would allocate (caches + scratch), before allocating it.
    static uint64_t bytes_for(const ModelConfig& config, int64_t context, int64_t batch,
                              KvType kv_type, int threads) {
        return sizes_for(config, context, batch, kv_type, threads).total();
    }

    // A zeroed state for `context` tokens; `batch` is the largest number of tokens one pass
    // of the forward processes (longer inputs are split). `threads`: the model's pool size.
    State(const ModelConfig& config, int64_t context, int64_t batch, KvType kv_type, int threads);
    State(const State& other);
    State& operator=(const State&) = delete;

    int64_t position() const { return position_; }
    const ModelConfig& config() const { return config_; }
    int64_t context() const { return context_; }
    KvType kv_type() const { return kv_type_; }
    void reset();
    // A forward pass stopped in the middle of this state (its caches are partly updated);
    // cleared by reset() and copy_from().
    bool interrupted() const { return interrupted_; }
    // Copies the caches and position of `other` (same model and KV type; its position must fit
    // this state's context, which may differ) into this state: a snapshot can be compact.
    void copy_from(const State& other);
    // Bytes of the caches (what a snapshot holds): the main model's, and with speculation the
    // MTP head's KV cache and pending hidden state; excluding scratch and checkpoints.
    uint64_t cache_bytes() const;
    // Bytes of every buffer this state allocated: caches and scratch (not the speculation
    // buffers of enable_speculation).
    uint64_t allocated_bytes() const;

    // Speculative decoding (docs/speculative.md). Allocates the MTP head's own KV cache (one
    // full-attention layer over the same context) and what Qwen35Model::rollback needs after
    // a checkpointed forward of up to slots + 1 tokens (per DeltaNet layer: `slots` conv-state
    // checkpoints, one recurrent state, the delta rule's inputs). Idempotent for the same or
    // fewer slots.
    void enable_speculation(int64_t slots);
    bool speculation_enabled() const { return !mtp_kv_.empty(); }
    int64_t checkpoint_slots() const { return slots_; }
    // Tokens the MTP head's cache holds (its positions 0..mtp_position - 1), and truncation.
    int64_t mtp_position() const { return mtp_position_; }
    void set_mtp_position(int64_t p);
    // The head's pending input: the main model's final-normed hidden state at position - 1,
    // whose pair (with the token after it) the head has not run yet. A state holding it with
    // mtp_position == position - 1 is head-ready (mtp_ready): speculation can continue from it
    // (a prefix-cache snapshot of a speculating prompt, docs/speculative.md).
    void set_mtp_hidden(const float* hidden);  // [n_embd], of the state's last position
    const float* mtp_hidden() const { return mtp_hidden_.as<float>(); }
    bool mtp_ready() const {
        return speculation_enabled() && position_ > 0 && mtp_hidden_at_ == position_ - 1 &&
               mtp_position_ == position_ - 1;
    }
    void* mtp_keys() const { return mtp_kv_[0].as<void>(); }
    void* mtp_values() const { return mtp_kv_[1].as<void>(); }

    // Per full-attention layer (index into the config's full layers): K and V caches,
    // [n_head_kv, kv_rows(kv_type, context), head_dim], head_dim contiguous:
    // kv_row_bytes(kv_type, head_dim) per vector (f16, f32, or the int8 cache's groups of 16
    // positions, formats.h).
    void* keys(int64_t i) const { return kv_[2 * i].as<void>(); }
    void* values(int64_t i) const { return kv_[2 * i + 1].as<void>(); }
    // Per linear-attention layer: [conv_kernel - 1, conv_dim] and [n_v_head, dk, dv].
    float* conv(int64_t i) const { return conv_[i].as<float>(); }
    float* recurrent(int64_t i) const { return recurrent_[i].as<float>(); }

    Scratch& scratch() { return scratch_; }

private:
    friend class Qwen35Model;
    uint64_t main_cache_bytes() const;  // kv_, conv_, recurrent_

    ModelConfig config_;
    int64_t context_, batch_, position_ = 0;
    bool interrupted_ = false;
    KvType kv_type_;
    int threads_;
    std::vector<Buffer> kv_;         // 2 per full-attention layer
    std::vector<Buffer> conv_;       // 1 per linear-attention layer
    std::vector<Buffer> recurrent_;  // 1 per linear-attention layer
    // Speculation: the MTP head's K and V; per linear-attention layer, for the last checkpointed
    // forward, which ran `ckpt_tokens_` tokens (any other forward and a rollback clear it):
    // [slots, conv state], slot t = the conv state after its token t (1/40 of a recurrent
    // state); the recurrent state before it; and [slots + 1, conv_dim + 2 * n_v_head] the delta
    // rule's inputs per token (q | k | v after the conv and norms, beta, decay), so rollback
    // reruns the kept tokens' delta rule from that state instead of keeping a copy per token
    // (docs/speculative.md, "Checkpoints or replay").
    std::vector<Buffer> mtp_kv_;
    std::vector<Buffer> ckpt_conv_, pre_recurrent_, replay_in_;
    int64_t slots_ = 0, ckpt_tokens_ = 0, mtp_position_ = 0;
    Buffer mtp_hidden_;            // [n_embd] set_mtp_hidden's copy
    int64_t mtp_hidden_at_ = -1;   // the position it belongs to (-1: none)
    Scratch scratch_;
};

}  // namespace qe
