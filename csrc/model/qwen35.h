// SPDX-License-Identifier: Apache-2.0
// The Qwen3.5 text decoder (docs/model.md §4): embedding, 3:1 gated DeltaNet / gated full-attention
// layers with SwiGLU MLPs, final norm, tied or separate LM head. Weights are used in place
// (usually from the model file's read-only mmap); only small vectors are converted at load:
// zero-centred norm weights become 1 + w, A_log becomes -exp(A_log), the conv taps are
// transposed to [kernel, channels], all as float32 (docs/model.md §8).
//
// One forward pass handles a batch of tokens (a prompt, or one token when decoding) and
// continues a State. Batches longer than the state's batch size are split; the math is the
// same either way (the delta rule runs token by token inside each batch).
//
// A multi-sequence step (forward_multi) runs several states at once, each with its own new
// tokens (one when decoding, a chunk of a prompt when prefilling): the rows of every sequence
// form one activation matrix, so each weight matrix is read once for all of them (the W4A8 /
// W8A8 gemm), while the convolution, the delta rule and attention run per sequence on its own
// state. Every per-row operation is the same whatever the rows around it, so each sequence gets
// the bits it would get alone.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dispatch.h"
#include "model/config.h"
#include "model/model_file.h"
#include "model/state.h"
#include "ops/linear.h"
#include "runtime/thread_pool.h"

namespace qe {

// A tensor as stored: format, logical shape (PyTorch [out, in] for matrices) and its bytes.
struct TensorView {
    WeightFormat format = WeightFormat::kF32;
    std::vector<int64_t> shape;
    const uint8_t* data = nullptr;
    uint64_t size = 0;
};
using TensorMap = std::map<std::string, TensorView>;

// One sequence of a multi-sequence step: tokens[0, n) after what `state` holds; `logits`
// receives the last position's float [vocab_size] logits, or is null for none.
struct SeqStep {
    const int32_t* tokens = nullptr;
    int64_t n = 0;
    State* state = nullptr;
    float* logits = nullptr;
};

struct ModelOptions {
    int threads = 1;
    bool pin = false;
    int spin_us = 100;
    std::string isa;  // kernel table tag; empty: QWEN_EDGE_ISA or the best for this CPU
};

class Qwen35Model {
public:
    // Checks every tensor's presence, format, shape and byte size against `config` (throws
    // qe::Error naming the tensor). `keepalive` owns the memory the views point into.
    Qwen35Model(const ModelConfig& config, const TensorMap& tensors,
                std::shared_ptr<const void> keepalive, const ModelOptions& options);

    // Maps and validates a model file (model/model_file.h; `verify` also checks every CRC) and
    // builds the model on the mapping: weights are used in place, load costs the header.
    static std::unique_ptr<Qwen35Model> load(const std::string& path, const ModelOptions& options,
                                             bool verify = false);
    // The file the model was loaded from, or null when it was built from a TensorMap.
    const ModelFile* file() const { return file_.get(); }

    const ModelConfig& config() const { return config_; }
    const KernelTable& kernels() const { return kt_; }
    int threads() const { return pool_.size(); }
    // Threads the next forward passes use (1..threads()); the power governor lowers it. States
    // stay valid: their per-thread scratch is sized for threads().
    int active_threads() const { return pool_.active(); }
    void set_active_threads(int n) { pool_.set_active(n); }

    // A new zeroed state for `context` tokens (>= 1) processing at most `batch` tokens per pass.
    std::unique_ptr<State> new_state(int64_t context, int64_t batch = 128,
                                     KvType kv = KvType::kF16) const;

    // Asked between layers whether to stop the pass (e.g. a signal is pending); empty: never.
    using StopFn = std::function<bool()>;

    // Runs tokens[0, n) (ids < vocab_size) after what `state` holds. logits: float [vocab_size] for
    // the last position, or [n, vocab_size] when all_logits; null computes no logits. Throws
    // ContextLengthError (state unchanged) if the tokens do not fit. Serialized per model.
    // Throws Interrupted between two layers once `stop` returns true or stop_all() was called;
    // the state is then marked interrupted, and a forward on it throws until it is reset.
    // hidden: null, or float [n, n_embd] for every token's final-normed hidden state (the MTP
    // head's input). checkpoint: keep what rollback needs to undo up to n - 1 of the tokens
    // (needs State::enable_speculation with at least n - 1 slots).
    void forward(const int32_t* tokens, int64_t n, State& state, float* logits, bool all_logits,
                 const StopFn& stop = {}, float* hidden = nullptr, bool checkpoint = false);

    // Undoes the last n tokens of the state's last checkpointed forward (0 <= n < its tokens),
    // as if they had never run: the KV caches truncate, the conv states come back from the
    // checkpoint after the last kept token, the recurrent states by rerunning the kept tokens'
    // delta rule from the state before the forward. Once per forward (n = 0 leaves it
    // possible). Throws if no checkpointed forward covers them.
    void rollback(State& state, int64_t n);

    // Makes every running and later forward pass throw Interrupted at its next layer boundary
    // (for shutting down: the embedding process can then join its threads before the core goes).
    void stop_all() { stopping_.store(true, std::memory_order_relaxed); }
    bool stopping() const { return stopping_.load(std::memory_order_relaxed); }

    // One step over several sequences (distinct states, each n >= 1, at most 4096 rows in all):
    // the result for each equals forward(tokens, n, state, logits, false) alone, bit for bit.
    // Checks every sequence before running any (ContextLengthError or Error; no state
    // changes). Serialized per model with forward.
    void forward_multi(const SeqStep* seqs, int64_t count);

    // The MTP head (docs/model.md §5) over n pairs (hidden[t], tokens[t]) at the MTP cache's
    // next positions: hidden [n, n_embd] final-normed hidden states (of the main model or of
    // the head's previous step), tokens the ids that followed them. Appends to the state's MTP
    // cache. logits: float [rows] of the last pair's draft over the first `rows` rows of the
    // LM head (rows <= 0 or >= vocab_size: all; otherwise rounded up to a multiple of 8);
    // hidden_out: null or float [n_embd], the last pair's normed output (the next step's
    // hidden). Needs has_mtp() and State::enable_speculation.
    void mtp_forward(const int32_t* tokens, const float* hidden, int64_t n, State& state,
                     float* logits, int64_t rows, float* hidden_out);
    bool has_mtp() const { return has_mtp_; }
    // The LM-head rows a draft over `rows` rows computes (see mtp_forward).
    int64_t draft_rows(int64_t rows) const;
    // Bytes of weights one MTP draft step reads (the head's layer, fc, `rows` LM-head rows).
    uint64_t mtp_weight_bytes(int64_t rows) const;

    // Bytes of weights one decode step reads (all layers and the LM head; one embedding row).
    uint64_t decode_weight_bytes() const;

private:
    struct Layer {
        bool full = false;
        std::vector<float> attn_norm, ffn_norm;  // [n_embd], 1 + w
        Matrix gate, up, down;                   // MLP
        // full attention
        Matrix wq, wk, wv, wo;              // q_proj rows interleave [q_h | gate_h] per head
        std::vector<float> q_norm, k_norm;  // [head_dim], 1 + w
        // gated DeltaNet
        Matrix qkv, z, b, a, out;
        std::vector<float> conv_w;    // [conv_kernel, conv_dim], channels contiguous
        std::vector<float> dt_bias;   // [n_v_head]
        std::vector<float> neg_a;     // [n_v_head], -exp(A_log)
        std::vector<float> gdn_norm;  // [v_head_dim], used as is (no 1 +)
        int64_t index = 0;            // among the layers of its kind (state slot)
    };

    // The rows [row0, row0 + n) of a pass belong to `state`, whose position was pos0 (of the
    // MTP cache when mtp: its attention reads and appends the state's MTP K/V slot).
    struct Seg {
        State* state;
        int64_t row0, n, pos0;
        bool mtp = false;
    };
    // Rows of one pass: its sequences and, per row, the index of its sequence.
    struct Rows {
        const Seg* segs;
        int64_t count;       // sequences
        int64_t n;           // rows in all
        const int32_t* seg;  // [n]
    };

    void check_tokens(const int32_t* tokens, int64_t n, const State& state) const;
    // Runs the rows through every layer (scratch `s`, sized for rows.n) up to the final norm,
    // left in s.x, and advances every state. Checks `stop` before every layer. checkpoint: keep
    // what rollback needs after each row but the last (one sequence only).
    void run_rows(const int32_t* tokens, const Rows& rows, Scratch& s, const StopFn& stop,
                  bool checkpoint = false);
    void run_batch(const int32_t* tokens, int64_t n, State& state, float* logits, bool all,
                   const StopFn& stop, float* hidden, bool checkpoint);
    void mtp_batch(const int32_t* tokens, const float* hidden, int64_t n, State& state,
                   float* logits, int64_t rows, float* hidden_out);
    // Cos/sin rows of each row's position (its segment's pos0 onwards) into s.rope.
    void fill_rope(const Rows& rows, Scratch& s) const;
    // The start of a decoder stack (the main layers, the MTP layer) over the rows whose input
    // is in s.h: their RoPE rows (fill_rope), then s.x = rmsnorm(s.h) with `norm`.
    void begin_layers(const Rows& rows, Scratch& s, const float* norm);
    // Between blocks: s.h += s.mix, then s.x = rmsnorm(s.h) with `norm`, per token.
    void add_norm(int64_t n, Scratch& s, const float* norm);
    // Throws Interrupted (marking every state of the rows) if the pass should stop here.
    void check_stop(const Rows& rows, const StopFn& stop);
    // Appends to each segment's K/V cache of `layer` (the MTP slot for an mtp segment).
    void attention_block(const Layer& layer, const float* x, const Rows& rows, Scratch& s,
                         float* out);
    void delta_net_block(const Layer& layer, const float* x, const Rows& rows, Scratch& s,
                         float* out, bool checkpoint);
    void mlp_block(const Layer& layer, const float* x, int64_t n, Scratch& s, float* out);
    // fn(t0, t1) over the tokens [0, n): split over the threads for a prompt, inline for one
    // token (a decode step has nothing to share out but the matrix products).
    template <typename Fn>
    void for_tokens(int64_t n, Fn&& fn) {
        if (n < 4 || pool_.size() == 1) {
            fn(int64_t{0}, n);
            return;
        }
        const int64_t chunk = (n + 4 * pool_.size() - 1) / (4 * pool_.size());
        pool_.for_each(n, chunk, [&](int64_t t0, int64_t t1, int) { fn(t0, t1); });
    }

    ModelConfig config_;
    const KernelTable& kt_;
    ThreadPool pool_;
    std::shared_ptr<const void> keepalive_;
    std::shared_ptr<const ModelFile> file_;
    std::vector<Layer> layers_;
    Matrix embed_, lm_head_;
    std::vector<float> final_norm_;  // [n_embd], 1 + w
    // The MTP head (mtp.*), when the model file stores it.
    bool has_mtp_ = false;
    Layer mtp_layer_;
    Matrix mtp_fc_;                                          // [n_embd, 2 * n_embd]
    std::vector<float> mtp_norm_emb_, mtp_norm_hidden_, mtp_norm_;  // [n_embd], 1 + w
    std::vector<float> inv_freq_;    // [rotary_dim / 2]
    float eps_ = 1e-6f;              // rms_norm_eps
    std::mutex mutex_;
    // forward_multi's scratch, grown to the most rows a step has had, and its row index.
    Scratch multi_;
    Buffer multi_logits_;
    std::vector<int32_t> multi_tokens_, multi_seg_, single_seg_;
    std::vector<Seg> multi_segs_;
    std::atomic<bool> stopping_{false};
};

}  // namespace qe
