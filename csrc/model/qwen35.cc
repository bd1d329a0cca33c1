// SPDX-License-Identifier: Apache-2.0
#include "model/qwen35.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"

namespace qe {

// ---- loading -----------------------------------------------------------------------------------

namespace {

constexpr float kL2NormEps = 1e-6f;  // the q/k l2-norm epsilon is fixed (docs/model.md §4.8 step 5)

std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

class Loader {
public:
    Loader(const TensorMap& tensors, const KernelTable& kt) : tensors_(tensors), kt_(kt) {}

    const TensorView& get(const std::string& name, const std::vector<int64_t>& shape) const {
        auto it = tensors_.find(name);
        QE_CHECK(it != tensors_.end(), "tensor '", name, "' is missing");
        const TensorView& t = it->second;
        QE_CHECK(t.shape == shape, "tensor '", name, "': expected shape ", shape_str(shape),
                 ", found ", shape_str(t.shape));
        QE_CHECK(t.data != nullptr, "tensor '", name, "' has no data");
        return t;
    }

    // A [rows, k] weight matrix in any format.
    Matrix matrix(const std::string& name, int64_t rows, int64_t k) const {
        const TensorView& t = get(name, {rows, k});
        Matrix m;
        m.format = t.format;
        m.rows = rows;
        m.k = k;
        if (is_quantized(t.format)) {
            PackedLayout layout;
            QE_CHECK(packed_layout(t.format, rows, k, &layout), "tensor '", name,
                     "': ", format_name(t.format), " needs k a multiple of ", kBlockK, ", found ",
                     k);
            QE_CHECK(t.size == layout.total_bytes, "tensor '", name, "': ", format_name(t.format),
                     " ", shape_str(t.shape), " takes ", layout.total_bytes, " bytes, found ",
                     t.size);
            m.packed = PackedMatrix::view(t.format, layout, t.data);
        } else {
            check_plain_size(name, t, uint64_t(rows) * uint64_t(k));
            m.data = t.data;
        }
        return m;
    }

    // A small float tensor of n elements (any shape with that many), widened to float32.
    std::vector<float> vec(const std::string& name, const std::vector<int64_t>& shape) const {
        const TensorView& t = get(name, shape);
        uint64_t n = 1;
        for (int64_t d : shape) n *= uint64_t(d);
        QE_CHECK(!is_quantized(t.format), "tensor '", name, "': format ", format_name(t.format),
                 " is not allowed for a vector (only f32, f16, bf16)");
        check_plain_size(name, t, n);
        std::vector<float> out(n);
        switch (t.format) {
            case WeightFormat::kF32:
                std::memcpy(out.data(), t.data, n * 4);
                break;
            case WeightFormat::kF16:
                kt_.cvt_f16_f32(reinterpret_cast<const uint16_t*>(t.data), out.data(), n);
                break;
            default:
                kt_.cvt_bf16_f32(reinterpret_cast<const uint16_t*>(t.data), out.data(), n);
                break;
        }
        return out;
    }

    std::vector<float> norm_1p(const std::string& name, int64_t n) const {
        std::vector<float> w = vec(name, {n});
        for (float& v : w) v = 1.0f + v;
        return w;
    }

private:
    static void check_plain_size(const std::string& name, const TensorView& t, uint64_t n) {
        uint64_t bytes = 0;
        QE_CHECK(plain_bytes(t.format, n, &bytes) && bytes == t.size, "tensor '", name,
                 "': ", format_name(t.format), " ", shape_str(t.shape), " takes ", bytes,
                 " bytes, found ", t.size);
    }
    const TensorMap& tensors_;
    const KernelTable& kt_;
};

}  // namespace

Qwen35Model::Qwen35Model(const ModelConfig& config, const TensorMap& tensors,
                         std::shared_ptr<const void> keepalive, const ModelOptions& options)
    : config_(config),
      kt_(select_table(options.isa)),
      pool_(ThreadPool::Options{options.threads, options.pin, options.spin_us}),
      keepalive_(std::move(keepalive)) {
    const ModelConfig& c = config_;
    const Loader ld(tensors, kt_);
    const int64_t E = c.n_embd;
    embed_ = ld.matrix("embed_tokens.weight", c.vocab_size, E);
    lm_head_ = c.tie_word_embeddings ? embed_ : ld.matrix("lm_head.weight", c.vocab_size, E);
    final_norm_ = ld.norm_1p("norm.weight", E);

    // The norms and MLP of a decoder layer, and a full-attention mixer.
    auto load_common = [&](const std::string& p, Layer& L) {
        L.attn_norm = ld.norm_1p(p + "input_layernorm.weight", E);
        L.ffn_norm = ld.norm_1p(p + "post_attention_layernorm.weight", E);
        L.gate = ld.matrix(p + "mlp.gate_proj.weight", c.n_ff, E);
        L.up = ld.matrix(p + "mlp.up_proj.weight", c.n_ff, E);
        L.down = ld.matrix(p + "mlp.down_proj.weight", E, c.n_ff);
    };
    auto load_attention = [&](const std::string& p, Layer& L) {
        const std::string a = p + "self_attn.";
        const int64_t hd = c.head_dim;
        L.wq = ld.matrix(a + "q_proj.weight", 2 * c.n_head * hd, E);
        L.wk = ld.matrix(a + "k_proj.weight", c.n_head_kv * hd, E);
        L.wv = ld.matrix(a + "v_proj.weight", c.n_head_kv * hd, E);
        L.wo = ld.matrix(a + "o_proj.weight", E, c.n_head * hd);
        L.q_norm = ld.norm_1p(a + "q_norm.weight", hd);
        L.k_norm = ld.norm_1p(a + "k_norm.weight", hd);
    };
    int64_t n_full = 0, n_lin = 0;
    for (int64_t i = 0; i < c.n_layer; ++i) {
        const std::string p = "layers." + std::to_string(i) + ".";
        Layer L;
        L.full = c.layer_types[i] == LayerType::kFull;
        load_common(p, L);
        if (L.full) {
            load_attention(p, L);
            L.index = n_full++;
        } else {
            const std::string a = p + "linear_attn.";
            const int64_t nv = c.n_v_head, cd = c.conv_dim(), kw = c.conv_kernel;
            L.qkv = ld.matrix(a + "in_proj_qkv.weight", cd, E);
            L.z = ld.matrix(a + "in_proj_z.weight", c.value_dim(), E);
            L.b = ld.matrix(a + "in_proj_b.weight", nv, E);
            L.a = ld.matrix(a + "in_proj_a.weight", nv, E);
            L.out = ld.matrix(a + "out_proj.weight", E, c.value_dim());
            const std::vector<float> taps = ld.vec(a + "conv1d.weight", {cd, 1, kw});
            L.conv_w.resize(taps.size());
            for (int64_t ch = 0; ch < cd; ++ch) {
                for (int64_t j = 0; j < kw; ++j) L.conv_w[j * cd + ch] = taps[ch * kw + j];
            }
            L.dt_bias = ld.vec(a + "dt_bias", {nv});
            L.neg_a = ld.vec(a + "A_log", {nv});
            for (float& v : L.neg_a) v = -std::exp(v);
            L.gdn_norm = ld.vec(a + "norm.weight", {c.v_head_dim});
            L.index = n_lin++;
        }
        layers_.push_back(std::move(L));
    }
    // The MTP head (docs/model.md §5): present when its fc is; then every tensor must be.
    has_mtp_ = tensors.count("mtp.fc.weight") != 0;
    if (has_mtp_) {
        mtp_fc_ = ld.matrix("mtp.fc.weight", E, 2 * E);
        mtp_norm_emb_ = ld.norm_1p("mtp.pre_fc_norm_embedding.weight", E);
        mtp_norm_hidden_ = ld.norm_1p("mtp.pre_fc_norm_hidden.weight", E);
        mtp_norm_ = ld.norm_1p("mtp.norm.weight", E);
        mtp_layer_.full = true;
        load_common("mtp.layers.0.", mtp_layer_);
        load_attention("mtp.layers.0.", mtp_layer_);
    }

    // inv_freq[f] = 1 / theta^(2f / n_rot) in float32, as transformers computes it
    // (docs/model.md §4.7).
    const int64_t half = c.rotary_dim() / 2;
    inv_freq_.resize(half);
    eps_ = float(c.rms_norm_eps);
    for (int64_t f = 0; f < half; ++f) {
        const float e = float(2 * f) / float(c.rotary_dim());
        inv_freq_[f] = 1.0f / std::pow(float(c.rope_theta), e);
    }
}

std::unique_ptr<Qwen35Model> Qwen35Model::load(const std::string& path, const ModelOptions& options,
                                               bool verify) {
    std::shared_ptr<const ModelFile> file(ModelFile::open(path, verify));
    TensorMap map;
    for (const TensorEntry& t : file->tensors()) {
        map[t.name] = TensorView{t.format, t.shape, t.data, t.size};
    }
    std::unique_ptr<Qwen35Model> model;
    try {
        model = std::make_unique<Qwen35Model>(file->config(), map, file, options);
    } catch (const Error& e) {
        throw Error(path + ": " + e.what());
    }
    model->file_ = std::move(file);
    return model;
}

std::unique_ptr<State> Qwen35Model::new_state(int64_t context, int64_t batch, KvType kv) const {
    return std::make_unique<State>(config_, context, batch, kv, pool_.size());
}

uint64_t Qwen35Model::decode_weight_bytes() const {
    uint64_t n = lm_head_.bytes() + embed_.bytes() / uint64_t(config_.vocab_size);
    for (const Layer& L : layers_) {
        for (const Matrix* m : {&L.gate, &L.up, &L.down, &L.wq, &L.wk, &L.wv, &L.wo, &L.qkv, &L.z,
                                &L.b, &L.a, &L.out}) {
            if (m->rows > 0) n += m->bytes();
        }
    }
    return n;
}

int64_t Qwen35Model::draft_rows(int64_t rows) const {
    if (rows <= 0 || rows >= config_.vocab_size) return config_.vocab_size;
    return std::min(config_.vocab_size, (rows + kRowPack - 1) / kRowPack * kRowPack);
}

uint64_t Qwen35Model::mtp_weight_bytes(int64_t rows) const {
    if (!has_mtp_) return 0;
    const Layer& L = mtp_layer_;
    uint64_t n = mtp_fc_.bytes() + embed_.bytes() / uint64_t(config_.vocab_size);
    for (const Matrix* m : {&L.gate, &L.up, &L.down, &L.wq, &L.wk, &L.wv, &L.wo}) n += m->bytes();
    return n + lm_head_.bytes() / uint64_t(config_.vocab_size) * uint64_t(draft_rows(rows));
}

// ---- forward -----------------------------------------------------------------------------------

void Qwen35Model::check_tokens(const int32_t* tokens, int64_t n, const State& state) const {
    if (stopping()) throw Interrupted("forward: the model is stopping");
    QE_CHECK(!state.interrupted_,
             "forward: this state was interrupted in the middle of a forward pass; reset it");
    QE_CHECK(n >= 1, "forward: no tokens");
    QE_CHECK(state.config_.n_layer == config_.n_layer && state.config_.n_embd == config_.n_embd &&
                 state.threads_ == pool_.size(),
             "forward: the state was made by another model");
    for (int64_t t = 0; t < n; ++t) {
        QE_CHECK(tokens[t] >= 0 && tokens[t] < config_.vocab_size, "forward: token id ", tokens[t],
                 " at index ", t, " is outside the vocabulary [0, ", config_.vocab_size, ")");
    }
    if (state.position_ + n > state.context_) {
        throw ContextLengthError(std::to_string(state.position_) + " + " + std::to_string(n) +
                                 " tokens exceed the context of " + std::to_string(state.context_) +
                                 " tokens");
    }
}

void Qwen35Model::forward(const int32_t* tokens, int64_t n, State& state, float* logits,
                          bool all_logits, const StopFn& stop, float* hidden, bool checkpoint) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_tokens(tokens, n, state);
    if (checkpoint) {
        QE_CHECK(n - 1 <= state.slots_, "forward: a checkpointed forward of ", n,
                 " tokens needs ", n - 1, " checkpoint slots, the state has ", state.slots_,
                 " (State::enable_speculation)");
    }
    state.ckpt_tokens_ = 0;
    const int64_t batch = state.batch_;
    for (int64_t i = 0; i < n; i += batch) {
        const int64_t m = std::min(batch, n - i);
        float* out = nullptr;
        if (logits != nullptr) {
            if (all_logits) {
                out = logits + i * config_.vocab_size;
            } else if (i + m == n) {
                out = logits;
            }
        }
        run_batch(tokens + i, m, state, out, all_logits, stop,
                  hidden ? hidden + i * config_.n_embd : nullptr, checkpoint);
    }
    if (checkpoint) state.ckpt_tokens_ = n;
}

void Qwen35Model::fill_rope(const Rows& rows, Scratch& s) const {
    // RoPE cos/sin rows of each token's position, [n, 2, half], shared by every attention
    // layer: theta = float(p) * inv_freq[f] in float32 as transformers; cos/sin correctly
    // rounded (via double).
    const int64_t half = int64_t(inv_freq_.size());
    float* rope = s.rope.as<float>();
    for (int64_t t = 0; t < rows.n; ++t) {
        const Seg& g = rows.segs[rows.seg[t]];
        const float pos = float(g.pos0 + t - g.row0);
        for (int64_t f = 0; f < half; ++f) {
            const float theta = pos * inv_freq_[f];
            rope[t * 2 * half + f] = float(std::cos(double(theta)));
            rope[t * 2 * half + half + f] = float(std::sin(double(theta)));
        }
    }
}

void Qwen35Model::begin_layers(const Rows& rows, Scratch& s, const float* norm) {
    fill_rope(rows, s);
    const int64_t E = config_.n_embd;
    const float* h = s.h.as<float>();
    float* x = s.x.as<float>();
    for_tokens(rows.n, [&](int64_t t0, int64_t t1) {
        kt_.rms_norm(h + t0 * E, norm, x + t0 * E, t1 - t0, E, eps_);
    });
}

void Qwen35Model::add_norm(int64_t n, Scratch& s, const float* norm) {
    const int64_t E = config_.n_embd;
    float* h = s.h.as<float>();
    const float* mix = s.mix.as<float>();
    float* x = s.x.as<float>();
    for_tokens(n, [&](int64_t t0, int64_t t1) {
        for (int64_t i = t0 * E; i < t1 * E; ++i) h[i] += mix[i];
        kt_.rms_norm(h + t0 * E, norm, x + t0 * E, t1 - t0, E, eps_);
    });
}

void Qwen35Model::check_stop(const Rows& rows, const StopFn& stop) {
    if (stopping() || (stop && stop())) {
        for (int64_t i = 0; i < rows.count; ++i) rows.segs[i].state->interrupted_ = true;
        throw Interrupted("forward: interrupted");
    }
}

void Qwen35Model::forward_multi(const SeqStep* seqs, int64_t count) {
    std::lock_guard<std::mutex> lock(mutex_);
    QE_CHECK(count >= 1, "forward_multi: no sequences");
    int64_t rows = 0;
    for (int64_t i = 0; i < count; ++i) {
        QE_CHECK(seqs[i].state != nullptr, "forward_multi: sequence ", i, " has no state");
        for (int64_t j = 0; j < i; ++j) {
            QE_CHECK(seqs[j].state != seqs[i].state, "forward_multi: sequences ", j, " and ", i,
                     " share a state");
        }
        check_tokens(seqs[i].tokens, seqs[i].n, *seqs[i].state);
        rows += seqs[i].n;
    }
    QE_CHECK(rows <= 4096, "forward_multi: ", rows, " tokens in one step (at most 4096)");
    const int64_t E = config_.n_embd, V = config_.vocab_size;
    if (multi_.batch < rows) {
        // Attention scores live in each state's own scratch, so context 1 here.
        const StateSizes z = State::sizes_for(config_, 1, rows, KvType::kF16, pool_.size());
        alloc_scratch(multi_, z, rows);
    }
    multi_tokens_.resize(size_t(rows));
    multi_seg_.resize(size_t(rows));
    multi_segs_.clear();
    int64_t row = 0, wanted = 0;
    for (int64_t i = 0; i < count; ++i) {
        const SeqStep& q = seqs[i];
        multi_segs_.push_back(Seg{q.state, row, q.n, q.state->position_, false});
        q.state->ckpt_tokens_ = 0;  // its last checkpoints no longer match its caches
        std::copy(q.tokens, q.tokens + q.n, multi_tokens_.begin() + row);
        std::fill(multi_seg_.begin() + row, multi_seg_.begin() + row + q.n, int32_t(i));
        row += q.n;
        wanted += q.logits != nullptr;
    }
    const Rows r{multi_segs_.data(), count, rows, multi_seg_.data()};
    run_rows(multi_tokens_.data(), r, multi_, {});
    if (wanted == 0) return;

    // The last row of every sequence that wants logits, gathered into h (free after the final
    // norm), through the LM head at once, then out to each caller's buffer.
    float* x = multi_.x.as<float>();
    float* last = multi_.h.as<float>();
    int64_t k = 0;
    for (const Seg& g : multi_segs_) {
        if (seqs[&g - multi_segs_.data()].logits == nullptr) continue;
        std::memcpy(last + k * E, x + (g.row0 + g.n - 1) * E, size_t(E) * sizeof(float));
        ++k;
    }
    const uint64_t bytes = uint64_t(wanted) * uint64_t(V) * sizeof(float);
    if (multi_logits_.size() < bytes) multi_logits_ = Buffer(bytes);
    float* out = multi_logits_.as<float>();
    linear(kt_, pool_, last, E, wanted, multi_.xq.as<BlockQ8A>(), {{&lm_head_, out, V}});
    k = 0;
    for (int64_t i = 0; i < count; ++i) {
        if (seqs[i].logits == nullptr) continue;
        std::memcpy(seqs[i].logits, out + k * V, size_t(V) * sizeof(float));
        ++k;
    }
}

void Qwen35Model::run_batch(const int32_t* tokens, int64_t n, State& state, float* logits,
                            bool all, const StopFn& stop, float* hidden, bool checkpoint) {
    const ModelConfig& c = config_;
    const int64_t E = c.n_embd;
    Scratch& s = state.scratch_;
    const Seg seg{&state, 0, n, state.position_, false};
    if (int64_t(single_seg_.size()) < n) single_seg_.assign(size_t(state.batch_), 0);
    run_rows(tokens, Rows{&seg, 1, n, single_seg_.data()}, s, stop, checkpoint);
    if (hidden != nullptr) std::memcpy(hidden, s.x.as<float>(), size_t(n * E) * sizeof(float));
    if (logits == nullptr) return;

    // x holds the final norm of every token now.
    const float* x = s.x.as<float>();
    BlockQ8A* xq = s.xq.as<BlockQ8A>();
    if (all) {
        linear(kt_, pool_, x, E, n, xq, {{&lm_head_, logits, c.vocab_size}});
    } else {
        linear(kt_, pool_, x + (n - 1) * E, E, 1, xq, {{&lm_head_, logits, c.vocab_size}});
    }
}

void Qwen35Model::run_rows(const int32_t* tokens, const Rows& rows, Scratch& s,
                           const StopFn& stop, bool checkpoint) {
    const ModelConfig& c = config_;
    const int64_t E = c.n_embd, n = rows.n;
    float* h = s.h.as<float>();      // [n, E]
    float* x = s.x.as<float>();      // [n, E]
    float* mix = s.mix.as<float>();  // [n, E]

    for_tokens(n, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) embedding_row(kt_, embed_, tokens[t], h + t * E);
    });
    begin_layers(rows, s, layers_[0].attn_norm.data());
    for (size_t l = 0; l < layers_.size(); ++l) {
        // Between layers, never inside one: the pool's workers are idle here, so stopping
        // leaves no job half run.
        check_stop(rows, stop);
        const Layer& L = layers_[l];
        if (L.full) {
            attention_block(L, x, rows, s, mix);
        } else {
            delta_net_block(L, x, rows, s, mix, checkpoint);
        }
        add_norm(n, s, L.ffn_norm.data());
        mlp_block(L, x, n, s, mix);
        add_norm(n, s,
                 l + 1 < layers_.size() ? layers_[l + 1].attn_norm.data() : final_norm_.data());
    }
    for (int64_t i = 0; i < rows.count; ++i) rows.segs[i].state->position_ += rows.segs[i].n;
}

void Qwen35Model::attention_block(const Layer& L, const float* x, const Rows& rows, Scratch& s,
                                  float* out) {
    const ModelConfig& c = config_;
    const int64_t E = c.n_embd, nh = c.n_head, nkv = c.n_head_kv, hd = c.head_dim;
    const int64_t group = nh / nkv, n = rows.n;
    float* proj = s.proj.as<float>();    // [n, nh, 2, hd]: per head q then gate
    float* kv = s.kv.as<float>();        // [n, 2, nkv, hd]: keys then values
    float* q = s.conv.as<float>();       // [n, nh, hd]
    float* gate = s.gate.as<float>();    // [n, nh, hd]
    float* heads = s.heads.as<float>();  // [n, nh, hd]
    BlockQ8A* xq = s.xq.as<BlockQ8A>();

    linear(kt_, pool_, x, E, n, xq,
           {{&L.wq, proj, 2 * nh * hd},
            {&L.wk, kv, 2 * nkv * hd},
            {&L.wv, kv + nkv * hd, 2 * nkv * hd}});
    // Per token: split q and gate, q/k norms, RoPE with the token's position (cos/sin rows
    // from the pass's table), then append keys and values to its sequence's cache.
    const int64_t half = c.rotary_dim() / 2;
    const float* rope_table = s.rope.as<float>();  // filled by fill_rope
    // The layer's K/V cache of a segment's state, or the state's MTP slot (mtp_batch).
    auto keys_of = [&](const Seg& g) {
        return g.mtp ? g.state->mtp_keys() : g.state->keys(L.index);
    };
    auto values_of = [&](const Seg& g) {
        return g.mtp ? g.state->mtp_values() : g.state->values(L.index);
    };
    // One key or value vector as position `at` of a head's cache (`head`), in the cache's
    // element type (the integer caches' into their groups, formats.h).
    auto store_kv = [&](KvType kv_type, bool key, const float* src, char* head, int64_t at) {
        char* dst = head + at * int64_t(kv_row_bytes(kv_type, hd));
        switch (kv_type) {
            case KvType::kF16:
                kt_.cvt_f32_f16(src, reinterpret_cast<uint16_t*>(dst), hd);
                break;
            case KvType::kF32:
                std::memcpy(dst, src, size_t(hd) * sizeof(float));
                break;
            case KvType::kQ8:
                if (key) {
                    store_key_q8(src, reinterpret_cast<KeyGroupQ8*>(head), at, hd);
                } else {
                    store_value_q8(src, reinterpret_cast<ValueGroupQ8*>(head), at, hd);
                }
                break;
            case KvType::kQ4:
                if (key) {
                    store_key_q4(src, reinterpret_cast<KeyGroupQ4*>(head), at, hd);
                } else {
                    store_value_q4(src, reinterpret_cast<ValueGroupQ4*>(head), at, hd);
                }
                break;
        }
    };
    for_tokens(n, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            for (int64_t hh = 0; hh < nh; ++hh) {
                const float* src = proj + (t * nh + hh) * 2 * hd;
                std::memcpy(q + (t * nh + hh) * hd, src, hd * sizeof(float));
                std::memcpy(gate + (t * nh + hh) * hd, src + hd, hd * sizeof(float));
            }
            const float* cos_t = rope_table + t * 2 * half;
            const float* sin_t = cos_t + half;
            float* kt = kv + t * 2 * nkv * hd;
            const float* vt = kt + nkv * hd;
            kt_.rms_norm(q + t * nh * hd, L.q_norm.data(), q + t * nh * hd, nh, hd, eps_);
            kt_.rms_norm(kt, L.k_norm.data(), kt, nkv, hd, eps_);
            kt_.rope(q + t * nh * hd, nh, hd, cos_t, sin_t, half);
            kt_.rope(kt, nkv, hd, cos_t, sin_t, half);
            const Seg& g = rows.segs[rows.seg[t]];
            const State& st = *g.state;
            const auto head = int64_t(kv_head_bytes(st.kv_type_, st.context_, hd));
            char* kcache = static_cast<char*>(keys_of(g));
            char* vcache = static_cast<char*>(values_of(g));
            const int64_t at = g.pos0 + t - g.row0;
            for (int64_t j = 0; j < nkv; ++j) {
                store_kv(st.kv_type_, true, kt + j * hd, kcache + j * head, at);
                store_kv(st.kv_type_, false, vt + j * hd, vcache + j * head, at);
            }
        }
    });

    // Causal attention: a token at position p of its sequence sees that sequence's positions
    // [0, p]. One item = (block of kAttentionTokens rows, kv head): each run of the block's rows
    // that belong to one sequence (consecutive positions) goes to the kernel in one call with
    // the `group` query heads per token, so the kernel reads each K/V tile once for several
    // tokens; scores go to the thread's scratch in the sequence's state.
    const float scale = 1.0f / std::sqrt(float(hd));
    const int64_t blocks = (n + kAttentionTokens - 1) / kAttentionTokens;
    pool_.for_each(blocks * nkv, 1, [&](int64_t i0, int64_t i1, int thread) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t b = i / nkv, j = i % nkv;
            const int64_t b1 = std::min(n, (b + 1) * kAttentionTokens);
            for (int64_t t = b * kAttentionTokens, t1; t < b1; t = t1) {
                for (t1 = t + 1; t1 < b1 && rows.seg[t1] == rows.seg[t];) ++t1;
                const Seg& g = rows.segs[rows.seg[t]];
                State& st = *g.state;
                const int64_t ctx = st.context_, nt = t1 - t;
                const auto head = int64_t(kv_head_bytes(st.kv_type_, ctx, hd));
                float* scratch = st.scratch_.scores.as<float>() +
                                 int64_t(thread) * attention_scratch(group * kAttentionTokens, ctx);
                const float* qi = q + (t * nh + j * group) * hd;
                float* oi = heads + (t * nh + j * group) * hd;
                const char* kc = static_cast<const char*>(keys_of(g)) + j * head;
                const char* vc = static_cast<const char*>(values_of(g)) + j * head;
                const int64_t len = g.pos0 + t1 - 1 - g.row0 + 1;  // the last token's
                switch (st.kv_type_) {
                    case KvType::kF16:
                        kt_.attention_f16(qi, hd, nh * hd, group, nt,
                                          reinterpret_cast<const uint16_t*>(kc),
                                          reinterpret_cast<const uint16_t*>(vc), len, hd, scale,
                                          scratch, oi, hd, nh * hd);
                        break;
                    case KvType::kF32:
                        kt_.attention_f32(qi, hd, nh * hd, group, nt,
                                          reinterpret_cast<const float*>(kc),
                                          reinterpret_cast<const float*>(vc), len, hd, scale,
                                          scratch, oi, hd, nh * hd);
                        break;
                    case KvType::kQ8:
                        kt_.attention_q8(qi, hd, nh * hd, group, nt,
                                         reinterpret_cast<const KeyGroupQ8*>(kc),
                                         reinterpret_cast<const ValueGroupQ8*>(vc), len, hd, scale,
                                         scratch, oi, hd, nh * hd);
                        break;
                    case KvType::kQ4:
                        kt_.attention_q4(qi, hd, nh * hd, group, nt,
                                         reinterpret_cast<const KeyGroupQ4*>(kc),
                                         reinterpret_cast<const ValueGroupQ4*>(vc), len, hd, scale,
                                         scratch, oi, hd, nh * hd);
                        break;
                }
            }
        }
    });
    for_tokens(n, [&](int64_t t0, int64_t t1) {
        kt_.sigmoid_mul(heads + t0 * nh * hd, gate + t0 * nh * hd, heads + t0 * nh * hd,
                        (t1 - t0) * nh * hd);
    });
    linear(kt_, pool_, heads, nh * hd, n, xq, {{&L.wo, out, E}});
}

void Qwen35Model::delta_net_block(const Layer& L, const float* x, const Rows& rows, Scratch& s,
                                  float* out, bool checkpoint) {
    const ModelConfig& c = config_;
    const int64_t n = rows.n;
    // Checkpoints are one sequence's (speculative decoding), never a multi-sequence step's.
    QE_CHECK(!checkpoint || rows.count == 1, "forward: a checkpointed pass has one sequence");
    const int64_t E = c.n_embd, nk = c.n_k_head, nv = c.n_v_head;
    const int64_t dk = c.k_head_dim, dv = c.v_head_dim;
    const int64_t cd = c.conv_dim(), kd = c.key_dim(), vd = c.value_dim();
    float* u = s.proj.as<float>();       // [n, conv_dim] pre-conv q | k | v
    float* z = s.gate.as<float>();       // [n, value_dim]
    float* b = s.ab.as<float>();         // [n, nv] b, then beta
    float* a = b + s.batch * nv;         // [n, nv] a, then the decay exp(g)
    float* conv = s.conv.as<float>();    // [n, conv_dim] post-conv q | k | v
    float* heads = s.heads.as<float>();  // [n, value_dim]
    BlockQ8A* xq = s.xq.as<BlockQ8A>();

    linear(kt_, pool_, x, E, n, xq, {{&L.qkv, u, cd}, {&L.z, z, vd}, {&L.b, b, nv}, {&L.a, a, nv}});
    // Per sequence, over its own conv state; channels are independent: slices for a prompt,
    // one call per sequence when each decodes one token. Item = (sequence, channel slice).
    // Checkpointed (one sequence): token by token (the same arithmetic), the conv state kept
    // after each of the first n - 1 tokens in its slot.
    const int64_t kw1 = c.conv_kernel - 1;
    const int64_t width = n == rows.count ? cd : 256;
    const int64_t slices = (cd + width - 1) / width;
    pool_.for_each(rows.count * slices, 1, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) {
            const Seg& g = rows.segs[i / slices];
            const int64_t c0 = (i % slices) * width, c1 = std::min(cd, c0 + width);
            const int64_t at = g.row0 * cd + c0;
            float* conv_state = g.state->conv(L.index);
            if (!checkpoint) {
                kt_.conv1d_silu(L.conv_w.data() + c0, conv_state + c0, cd, u + at, cd, conv + at,
                                cd, g.n, c1 - c0, c.conv_kernel);
                continue;
            }
            float* slots = g.state->ckpt_conv_[L.index].as<float>();
            for (int64_t t = 0; t < n; ++t) {
                kt_.conv1d_silu(L.conv_w.data() + c0, conv_state + c0, cd, u + t * cd + c0, cd,
                                conv + t * cd + c0, cd, 1, c1 - c0, c.conv_kernel);
                if (t + 1 == n) break;
                for (int64_t j = 0; j < kw1; ++j) {
                    std::memcpy(slots + (t * kw1 + j) * cd + c0, conv_state + j * cd + c0,
                                size_t(c1 - c0) * sizeof(float));
                }
            }
        }
    });

    // Gates in float32 (docs/model.md §4.8 step 4, §8): beta = sigmoid(b), g = -exp(A_log) *
    // softplus(a + dt_bias) with PyTorch's threshold 20; the delta rule takes exp(g).
    const float q_scale = 1.0f / std::sqrt(float(dk));
    for_tokens(n, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            for (int64_t m = 0; m < nv; ++m) {
                float& bm = b[t * nv + m];
                float& am = a[t * nv + m];
                bm = 1.0f / (1.0f + std::exp(-bm));
                const float sp_in = am + L.dt_bias[m];
                const float sp = sp_in > 20.0f ? sp_in : std::log1p(std::exp(sp_in));
                am = std::exp(L.neg_a[m] * sp);
            }
            float* ct = conv + t * cd;
            kt_.l2_norm(ct, ct, nk, dk, dk, kL2NormEps, q_scale);
            kt_.l2_norm(ct + kd, ct + kd, nk, dk, dk, kL2NormEps, 1.0f);
        }
    });

    // Value head m reads q/k head m / r (grouped, docs/model.md §4.8 step 6). Item = (sequence,
    // value head) over that sequence's rows and recurrent state.
    const int64_t r = nv / nk;
    QE_DCHECK(!checkpoint || rows.segs[0].state->slots_ >= n - 1);
    if (checkpoint) {  // rollback's inputs: each token's q | k | v, beta, decay
        const int64_t rw = cd + 2 * nv;
        float* in = rows.segs[0].state->replay_in_[L.index].as<float>();
        for (int64_t t = 0; t < n; ++t) {
            std::memcpy(in + t * rw, conv + t * cd, size_t(cd) * sizeof(float));
            std::memcpy(in + t * rw + cd, b + t * nv, size_t(nv) * sizeof(float));
            std::memcpy(in + t * rw + cd + nv, a + t * nv, size_t(nv) * sizeof(float));
        }
    }
    pool_.for_each(rows.count * nv, 1, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) {
            const Seg& g = rows.segs[i / nv];
            const int64_t m = i % nv, hk = m / r;
            float* rec = g.state->recurrent(L.index);
            if (checkpoint) {  // rollback's start: the state before the forward
                std::memcpy(g.state->pre_recurrent_[L.index].as<float>() + m * dk * dv,
                            rec + m * dk * dv, size_t(dk * dv) * sizeof(float));
            }
            const float* ct = conv + g.row0 * cd;
            kt_.delta_rule(rec + m * dk * dv, ct + hk * dk, ct + kd + hk * dk,
                           ct + 2 * kd + m * dv, cd, a + g.row0 * nv + m, b + g.row0 * nv + m, nv,
                           heads + g.row0 * vd + m * dv, vd, g.n, dk, dv);
        }
    });
    for_tokens(n, [&](int64_t t0, int64_t t1) {
        kt_.rms_norm_gated(heads + t0 * vd, L.gdn_norm.data(), z + t0 * vd, heads + t0 * vd,
                           (t1 - t0) * nv, dv, eps_);
    });
    linear(kt_, pool_, heads, vd, n, xq, {{&L.out, out, E}});
}

void Qwen35Model::mlp_block(const Layer& L, const float* x, int64_t n, Scratch& s, float* out) {
    const ModelConfig& c = config_;
    float* g = s.ff.as<float>();       // [n, n_ff]
    float* up = g + s.batch * c.n_ff;  // [n, n_ff]
    BlockQ8A* xq = s.xq.as<BlockQ8A>();
    linear(kt_, pool_, x, c.n_embd, n, xq, {{&L.gate, g, c.n_ff}, {&L.up, up, c.n_ff}});
    for_tokens(n, [&](int64_t t0, int64_t t1) {
        kt_.silu_mul(g + t0 * c.n_ff, up + t0 * c.n_ff, g + t0 * c.n_ff, (t1 - t0) * c.n_ff);
    });
    linear(kt_, pool_, g, c.n_ff, n, xq, {{&L.down, out, c.n_embd}});
}

void Qwen35Model::rollback(State& st, int64_t n) {
    if (n == 0) return;
    QE_CHECK(n > 0 && n < st.ckpt_tokens_, "rollback: ", n,
             " tokens is not covered by the last checkpointed forward (which can undo 0..",
             st.ckpt_tokens_ > 0 ? st.ckpt_tokens_ - 1 : 0, ")");
    std::lock_guard<std::mutex> lock(mutex_);
    const ModelConfig& c = config_;
    const int64_t kept = st.ckpt_tokens_ - n, slot = kept - 1;  // after the last kept token
    for (size_t i = 0; i < st.conv_.size(); ++i) {
        const size_t cb = st.conv_[i].size();
        std::memcpy(st.conv_[i].as<void>(), st.ckpt_conv_[i].as<char>() + size_t(slot) * cb, cb);
    }
    // The kept tokens' delta rule over the state before the forward, which then becomes the
    // state (the output rows are scratch): the forward's arithmetic, token for token.
    const int64_t nv = c.n_v_head, dk = c.k_head_dim, dv = c.v_head_dim;
    const int64_t cd = c.conv_dim(), kd = c.key_dim(), vd = c.value_dim(), rw = cd + 2 * nv;
    const int64_t r = nv / c.n_k_head;
    float* heads = st.scratch_.heads.as<float>();
    for (size_t i = 0; i < st.recurrent_.size(); ++i) {
        float* pre = st.pre_recurrent_[i].as<float>();
        const float* in = st.replay_in_[i].as<float>();
        pool_.for_each(nv, 1, [&](int64_t m0, int64_t m1, int) {
            for (int64_t m = m0; m < m1; ++m) {
                const int64_t hk = m / r;
                kt_.delta_rule(pre + m * dk * dv, in + hk * dk, in + kd + hk * dk,
                               in + 2 * kd + m * dv, rw, in + cd + nv + m, in + cd + m, rw,
                               heads + m * dv, vd, kept, dk, dv);
            }
        });
        std::swap(st.recurrent_[i], st.pre_recurrent_[i]);
    }
    st.position_ -= n;
    st.ckpt_tokens_ = 0;  // the state before the forward is used up
    if (st.mtp_hidden_at_ >= st.position_) st.mtp_hidden_at_ = -1;  // of an undone token
}

// ---- the MTP head ------------------------------------------------------------------------------

void Qwen35Model::mtp_forward(const int32_t* tokens, const float* hidden, int64_t n, State& state,
                              float* logits, int64_t rows, float* hidden_out) {
    std::lock_guard<std::mutex> lock(mutex_);
    const ModelConfig& c = config_;
    const int64_t E = c.n_embd;
    QE_CHECK(has_mtp_, "mtp_forward: the model has no MTP head (export with --mtp)");
    QE_CHECK(state.speculation_enabled(),
             "mtp_forward: the state has no MTP cache (State::enable_speculation)");
    QE_CHECK(state.config_.n_layer == c.n_layer && state.config_.n_embd == E &&
                 state.threads_ == pool_.size(),
             "mtp_forward: the state was made by another model");
    QE_CHECK(n >= 1, "mtp_forward: no tokens");
    for (int64_t t = 0; t < n; ++t) {
        QE_CHECK(tokens[t] >= 0 && tokens[t] < c.vocab_size, "mtp_forward: token id ", tokens[t],
                 " at index ", t, " is outside the vocabulary [0, ", c.vocab_size, ")");
    }
    if (state.mtp_position_ + n > state.context_) {
        throw ContextLengthError("MTP head: " + std::to_string(state.mtp_position_) + " + " +
                                 std::to_string(n) + " tokens exceed the context of " +
                                 std::to_string(state.context_) + " tokens");
    }
    for (int64_t i = 0; i < n; i += state.batch_) {
        const int64_t m = std::min(state.batch_, n - i);
        const bool last = i + m == n;
        mtp_batch(tokens + i, hidden + i * E, m, state, last ? logits : nullptr, rows,
                  last ? hidden_out : nullptr);
    }
}

void Qwen35Model::mtp_batch(const int32_t* tokens, const float* hidden, int64_t n, State& state,
                            float* logits, int64_t rows, float* hidden_out) {
    const ModelConfig& c = config_;
    const int64_t E = c.n_embd;
    Scratch& s = state.scratch_;
    float* h = s.h.as<float>();
    float* x = s.x.as<float>();
    float* mix = s.mix.as<float>();
    float* cat = s.mtp_in.as<float>();  // [n, 2E]: normed embedding, then normed hidden
    BlockQ8A* xq = s.xq.as<BlockQ8A>();
    const Layer& L = mtp_layer_;
    for_tokens(n, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            embedding_row(kt_, embed_, tokens[t], h + t * E);
            kt_.rms_norm(h + t * E, mtp_norm_emb_.data(), cat + t * 2 * E, 1, E, eps_);
            kt_.rms_norm(hidden + t * E, mtp_norm_hidden_.data(), cat + t * 2 * E + E, 1, E,
                         eps_);
        }
    });
    linear(kt_, pool_, cat, 2 * E, n, xq, {{&mtp_fc_, h, E}});
    // One decoder layer (docs/model.md §4.5) at the MTP cache's positions, in its K/V slot.
    const Seg seg{&state, 0, n, state.mtp_position_, true};
    if (int64_t(single_seg_.size()) < n) single_seg_.assign(size_t(state.batch_), 0);
    const Rows one{&seg, 1, n, single_seg_.data()};
    begin_layers(one, s, L.attn_norm.data());
    attention_block(L, x, one, s, mix);
    add_norm(n, s, L.ffn_norm.data());
    mlp_block(L, x, n, s, mix);
    add_norm(n, s, mtp_norm_.data());
    state.mtp_position_ += n;
    const float* last = x + (n - 1) * E;
    if (hidden_out != nullptr) std::memcpy(hidden_out, last, size_t(E) * sizeof(float));
    if (logits == nullptr) return;
    // The shared LM head, or its first rows: a prefix of the rows is a prefix of the packed
    // row groups (and of a plain matrix), so the view needs no copy.
    Matrix head = lm_head_;
    const int64_t r = draft_rows(rows);
    if (r < head.rows) {
        head.rows = r;
        if (head.quantized()) {
            head.packed.rows = r;
            head.packed.rows_padded = r;
            head.packed.groups = r / kRowPack;
        }
    }
    linear(kt_, pool_, last, E, 1, xq, {{&head, logits, r}});
}

}  // namespace qe
