// SPDX-License-Identifier: Apache-2.0
// The whole forward pass natively, on a small random model built in memory (packed q4k/q6k/q8g32
// matrices and f32/f16/bf16 ones): every table this CPU supports against `ref` (NMSE bound),
// and the invariants bit for bit: prompt at once == token by token, 1 == 2 == 3 threads,
// snapshot/restore. Also the thread pool itself. Runs natively and under qemu (ARM tables).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "common.h"
#include "dispatch.h"
#include "model/json.h"
#include "model/qwen35.h"
#include "runtime/thread_pool.h"

namespace {

const char* kConfig =
    R"({"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16,
        "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4, "rms_norm_eps": 1e-6,
        "rope_theta": 10000000.0, "partial_rotary_factor": 0.25, "tie_word_embeddings": false,
        "max_position_embeddings": 4096, "eos_token_id": [0],
        "layer_types": ["linear_attention", "full_attention", "linear_attention",
                        "full_attention"]})";

// Random weights: packed matrices from random codes and small scales, plain ones from normals
// scaled by 1/sqrt(fan-in), norms near 0 (they are 1 + w), A_log and dt_bias in range.
struct RandomModel {
    qe::ModelConfig config;
    std::vector<std::vector<uint8_t>> storage;
    qe::TensorMap tensors;

    RandomModel() {
        config = qe::ModelConfig::from_json(qe::Json::parse(kConfig), "test");
        std::mt19937 rng(7);
        std::normal_distribution<float> normal;
        int i = 0;
        // The text tensors, then the MTP head's (docs/model.md §5), named as in the file.
        std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
        for (const auto& entry : config.text_tensor_shapes()) shapes.push_back(entry);
        const int64_t H = config.n_embd;
        shapes.push_back({"mtp.fc.weight", {H, 2 * H}});
        for (const char* norm : {"mtp.pre_fc_norm_embedding.weight",
                                 "mtp.pre_fc_norm_hidden.weight", "mtp.norm.weight"}) {
            shapes.push_back({norm, {H}});
        }
        for (const auto& [name, shape] : config.text_tensor_shapes()) {
            if (name.rfind("layers.1.", 0) == 0) {  // layer 1 is a full-attention layer
                shapes.push_back({"mtp.layers.0." + name.substr(9), shape});
            }
        }
        for (const auto& [name, shape] : shapes) {
            ++i;
            qe::TensorView view;
            view.shape = shape;
            uint64_t numel = 1;
            for (int64_t d : shape) numel *= uint64_t(d);
            const bool matrix = shape.size() == 2 && shape[1] % 32 == 0;
            std::vector<uint8_t> bytes;
            if (matrix && i % 3 != 0) {
                view.format = i % 5 == 1 ? qe::WeightFormat::kQ6k
                              : i % 2    ? qe::WeightFormat::kQ4k
                                         : qe::WeightFormat::kQ8g32;
                qe::PackedLayout layout;
                qe::packed_layout(view.format, shape[0], shape[1], &layout);
                bytes.resize(layout.total_bytes);
                for (uint64_t b = 0; b < layout.scales_offset; ++b) bytes[b] = uint8_t(rng());
                const int64_t records = layout.groups * layout.blocks;
                const float fan = 1.0f / std::sqrt(float(shape[1]));
                if (view.format == qe::WeightFormat::kQ4k) {
                    for (int64_t r = 0; r < records * 16; ++r)
                        bytes[layout.scales_offset + r] = uint8_t(rng() % 64);
                    float* rp = reinterpret_cast<float*>(bytes.data() + layout.row_params_offset);
                    for (int64_t r = 0; r < layout.groups * 16; ++r) rp[r] = 0.02f * fan;
                } else if (view.format == qe::WeightFormat::kQ6k) {
                    for (int64_t r = 0; r < records * 8; ++r)
                        bytes[layout.scales_offset + r] = uint8_t(rng() % 128 - 64);  // i8
                    float* rp = reinterpret_cast<float*>(bytes.data() + layout.row_params_offset);
                    for (int64_t r = 0; r < layout.groups * 8; ++r) rp[r] = 0.01f * fan;
                } else {
                    std::vector<float> d(records * 8, fan / 64.0f);
                    std::vector<uint16_t> h(d.size());
                    qe::select_table("ref").cvt_f32_f16(d.data(), h.data(), int64_t(d.size()));
                    std::memcpy(bytes.data() + layout.scales_offset, h.data(), h.size() * 2);
                }
            } else {
                std::vector<float> v(numel);
                const float scale =
                    shape.size() == 2 ? 1.0f / std::sqrt(float(shape.back())) : 0.1f;
                for (auto& x : v) x = scale * normal(rng);
                if (name.find("A_log") != std::string::npos) {
                    for (auto& x : v) x = std::log(0.5f + std::fabs(x));
                }
                if (name.find("linear_attn.norm") != std::string::npos) {
                    for (auto& x : v) x += 1.0f;
                }
                const int kind = matrix ? i % 3 : 0;  // some matrices in f16 / bf16
                if (kind == 0 || !matrix) {
                    view.format = qe::WeightFormat::kF32;
                    bytes.resize(numel * 4);
                    std::memcpy(bytes.data(), v.data(), bytes.size());
                } else {
                    view.format = qe::WeightFormat::kF16;
                    std::vector<uint16_t> h(numel);
                    qe::select_table("ref").cvt_f32_f16(v.data(), h.data(), int64_t(numel));
                    bytes.resize(numel * 2);
                    std::memcpy(bytes.data(), h.data(), bytes.size());
                }
            }
            storage.push_back(std::move(bytes));
            view.data = storage.back().data();
            view.size = storage.back().size();
            tensors[name] = view;
        }
    }

    std::unique_ptr<qe::Qwen35Model> build(const std::string& isa, int threads,
                                           bool mtp = true) const {
        qe::ModelOptions o;
        o.isa = isa;
        o.threads = threads;
        qe::TensorMap map = tensors;
        if (!mtp) {
            for (auto it = map.begin(); it != map.end();) {
                it = it->first.rfind("mtp.", 0) == 0 ? map.erase(it) : std::next(it);
            }
        }
        return std::make_unique<qe::Qwen35Model>(config, map, nullptr, o);
    }
};

const RandomModel& random_model() {
    static const RandomModel m;
    return m;
}

std::vector<int32_t> prompt(int n) {
    std::vector<int32_t> ids(n);
    for (int i = 0; i < n; ++i) ids[i] = int32_t((i * 37 + 11) % 300);
    return ids;
}

// Logits of every position, the prompt at once (batches of `batch` tokens).
std::vector<float> all_logits(qe::Qwen35Model& m, const std::vector<int32_t>& ids,
                              int64_t batch = 8) {
    auto state = m.new_state(64, batch);
    std::vector<float> out(ids.size() * 300);
    m.forward(ids.data(), int64_t(ids.size()), *state, out.data(), true);
    return out;
}

double nmse(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0, mean = 0;
    for (float v : b) mean += v;
    mean /= double(b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
        den += (double(b[i]) - mean) * (double(b[i]) - mean);
    }
    return num / den;
}

}  // namespace

QE_TEST(thread_pool_runs_every_item_once) {
    // spin 0: workers sleep between jobs, so the caller often runs their shares itself
    for (auto [threads, spin] : {std::pair<int, int>{1, 50}, {2, 50}, {3, 0}, {5, 50}, {2, 0}}) {
        qe::ThreadPool pool({threads, false, spin});
        EXPECT_TRUE(pool.size() == threads);
        std::vector<std::atomic<int>> hits(1000);
        for (int rep = 0; rep < 20; ++rep) {
            pool.for_each(1000, 7, [&](int64_t a, int64_t b, int thread) {
                EXPECT_TRUE(thread >= 0 && thread < threads);
                for (int64_t i = a; i < b; ++i) hits[i]++;
            });
            std::atomic<int> calls{0};
            pool.run([&](int thread, int n) {
                EXPECT_TRUE(n == threads && thread >= 0 && thread < n);
                calls++;
            });
            EXPECT_TRUE(calls == threads);
        }
        for (auto& h : hits) EXPECT_TRUE(h == 20);
        int64_t total = 0;
        for (int t = 0; t < threads; ++t) {
            int64_t b, e;
            qe::ThreadPool::split(10, t, threads, &b, &e);
            total += e - b;
        }
        EXPECT_TRUE(total == 10);
    }
}

QE_TEST(thread_pool_active_threads_change_between_jobs) {
    // The power governor lowers and raises the active threads between forward passes: every
    // job is split over exactly the active ones, and parked workers come back.
    for (int spin : {0, 50}) {
        qe::ThreadPool pool({4, false, spin});
        for (int active : {4, 1, 2, 0, 9, 3, 4}) {
            pool.set_active(active);
            const int want = active < 1 ? 1 : active > 4 ? 4 : active;
            EXPECT_TRUE(pool.active() == want);
            for (int rep = 0; rep < 20; ++rep) {
                std::atomic<int> calls{0};
                pool.run([&](int thread, int n) {
                    EXPECT_TRUE(n == want && thread >= 0 && thread < n);
                    calls++;
                });
                EXPECT_TRUE(calls == want);
                std::atomic<int> items{0};
                pool.for_each(100, 3, [&](int64_t a, int64_t b, int thread) {
                    EXPECT_TRUE(thread < want);
                    items += int(b - a);
                });
                EXPECT_TRUE(items == 100);
            }
        }
    }
}

QE_TEST(forward_is_bitwise_equal_after_set_active_threads) {
    const RandomModel& rm = random_model();
    const auto ids = prompt(21);
    auto ref = rm.build("ref", 1);
    const auto whole = all_logits(*ref, ids, 8);
    auto m = rm.build("ref", 3);
    for (int active : {1, 2, 3}) {
        m->set_active_threads(active);
        EXPECT_TRUE(m->active_threads() == active && m->threads() == 3);
        EXPECT_TRUE(all_logits(*m, ids, 5) == whole);
    }
}

QE_TEST(forward_tables_agree_with_ref) {
    const RandomModel& rm = random_model();
    const auto ids = prompt(20);
    auto ref = rm.build("ref", 1);
    const auto want = all_logits(*ref, ids);
    // (a plain loop: GCC 12's aarch64 vectorizer dies on an fmax reduction from float to double)
    float scale = 0.0f;
    for (float v : want) scale = std::max(scale, std::fabs(v));
    EXPECT_TRUE(std::isfinite(scale) && scale > 1e-3f);
    for (const auto* t : qe::supported_tables()) {
        auto m = rm.build(t->tag, 2);
        const double e = nmse(all_logits(*m, ids), want);
        std::printf("  table %s: logits nmse vs ref %.3g\n", t->tag, e);
        EXPECT_TRUE(e < 1e-5);
    }
}

QE_TEST(forward_invariants_are_bitwise) {
    const RandomModel& rm = random_model();
    const auto ids = prompt(21);
    for (const auto* t : qe::supported_tables()) {
        auto m1 = rm.build(t->tag, 1);
        const auto whole = all_logits(*m1, ids, 8);
        for (int threads : {2, 3}) {
            auto m = rm.build(t->tag, threads);
            EXPECT_TRUE(all_logits(*m, ids, 5) == whole);
        }
        // token by token, then snapshot / restore mid-way
        auto state = m1->new_state(64, 4);
        std::vector<float> step(300), steps;
        std::unique_ptr<qe::State> snapshot;
        for (size_t i = 0; i < ids.size(); ++i) {
            if (i == 10) snapshot = std::make_unique<qe::State>(*state);
            m1->forward(&ids[i], 1, *state, step.data(), false);
            steps.insert(steps.end(), step.begin(), step.end());
        }
        EXPECT_TRUE(steps == whole);
        EXPECT_TRUE(snapshot->position() == 10);
        std::vector<float> rest((ids.size() - 10) * 300);
        m1->forward(ids.data() + 10, int64_t(ids.size() - 10), *snapshot, rest.data(), true);
        EXPECT_TRUE(std::equal(rest.begin(), rest.end(), whole.begin() + 10 * 300));
        state->copy_from(*snapshot);
        EXPECT_TRUE(state->position() == int64_t(ids.size()));
    }
}

// A multi-sequence step gives every sequence the bits of running it alone: sequences with
// different histories, one prefilling a chunk while the others decode, in several steps; also
// with a compact snapshot (a state of a smaller context) restored into a full one.
QE_TEST(forward_multi_equals_one_by_one) {
    const RandomModel& rm = random_model();
    const auto ids = prompt(40);
    for (const auto* t : qe::supported_tables()) {
        for (int threads : {1, 3}) {
            auto m = rm.build(t->tag, threads);
            // histories of 5, 0 and 12 tokens; the steps' token counts per sequence
            const int64_t history[3] = {5, 0, 12};
            const int64_t steps[3][3] = {{1, 7, 1}, {1, 1, 1}, {3, 1, 1}};
            std::vector<std::unique_ptr<qe::State>> alone, multi;
            for (int64_t h : history) {
                alone.push_back(m->new_state(64, 4));
                multi.push_back(m->new_state(64, 4));
                if (h > 0) {
                    m->forward(ids.data() + h, h, *alone.back(), nullptr, false);
                    m->forward(ids.data() + h, h, *multi.back(), nullptr, false);
                }
            }
            int64_t used[3] = {0, 0, 0};
            for (const auto& step : steps) {
                std::vector<float> want(3 * 300), got(3 * 300, -1.0f);
                qe::SeqStep seqs[3];
                for (int i = 0; i < 3; ++i) {
                    const int32_t* tok = ids.data() + 20 + 3 * i + used[i];
                    m->forward(tok, step[i], *alone[i], want.data() + i * 300, false);
                    // the middle sequence asks for no logits on its first (prefill) step
                    const bool none = i == 1 && used[i] == 0;
                    seqs[i] = qe::SeqStep{tok, step[i], multi[i].get(),
                                          none ? nullptr : got.data() + i * 300};
                    if (none) std::fill(want.begin() + 300, want.begin() + 600, -1.0f);
                    used[i] += step[i];
                }
                m->forward_multi(seqs, 3);
                EXPECT_TRUE(got == want);
            }
            for (int i = 0; i < 3; ++i) {
                EXPECT_TRUE(multi[i]->position() == alone[i]->position());
                // a compact snapshot restores into a full state and continues identically
                auto compact = m->new_state(multi[i]->position(), 1);
                compact->copy_from(*multi[i]);
                auto back = m->new_state(64, 4);
                back->copy_from(*compact);
                std::vector<float> a(300), b(300);
                m->forward(ids.data() + 2, 1, *back, a.data(), false);
                m->forward(ids.data() + 2, 1, *alone[i], b.data(), false);
                EXPECT_TRUE(a == b);
            }
        }
    }
}

QE_TEST(forward_multi_rejects_bad_input) {
    const RandomModel& rm = random_model();
    auto m = rm.build("ref", 1);
    auto a = m->new_state(8, 4), b = m->new_state(8, 4);
    const std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6};
    m->forward(ids.data(), 6, *a, nullptr, false);
    std::vector<float> out(600);
    // a fits, b does not: neither changes
    qe::SeqStep seqs[2] = {{ids.data(), 3, b.get(), out.data()}, {ids.data(), 3, a.get(), nullptr}};
    bool context_error = false;
    try {
        m->forward_multi(seqs, 2);
    } catch (const qe::ContextLengthError&) {
        context_error = true;
    }
    EXPECT_TRUE(context_error && a->position() == 6 && b->position() == 0);
    qe::SeqStep twice[2] = {{ids.data(), 1, b.get(), nullptr}, {ids.data(), 1, b.get(), nullptr}};
    bool shared_error = false;
    try {
        m->forward_multi(twice, 2);
    } catch (const qe::Error& e) {
        shared_error = std::string(e.what()).find("share a state") != std::string::npos;
    }
    EXPECT_TRUE(shared_error && b->position() == 0);
}

QE_TEST(forward_rejects_bad_input) {
    const RandomModel& rm = random_model();
    auto m = rm.build("ref", 1);
    auto state = m->new_state(8, 4);
    std::vector<float> out(300);
    const std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6};
    m->forward(ids.data(), 6, *state, out.data(), false);
    bool context_error = false;
    try {
        m->forward(ids.data(), 3, *state, out.data(), false);
    } catch (const qe::ContextLengthError&) {
        context_error = true;
    }
    EXPECT_TRUE(context_error && state->position() == 6);
    const int32_t bad = 300;
    bool token_error = false;
    try {
        m->forward(&bad, 1, *state, out.data(), false);
    } catch (const qe::Error&) {
        token_error = true;
    }
    EXPECT_TRUE(token_error && state->position() == 6);
    qe::TensorMap missing = rm.tensors;
    missing.erase("layers.2.mlp.down_proj.weight");
    bool missing_error = false;
    try {
        qe::Qwen35Model bad_model(rm.config, missing, nullptr, qe::ModelOptions{});
    } catch (const qe::Error& e) {
        missing_error = std::string(e.what()).find("down_proj") != std::string::npos;
    }
    EXPECT_TRUE(missing_error);
}

// The caches of two states, byte for byte (KV rows up to the position, conv, recurrent).
static bool same_caches(const qe::State& a, const qe::State& b, const qe::ModelConfig& c) {
    if (a.position() != b.position()) return false;
    const size_t row = qe::kv_row_bytes(a.kv_type(), c.head_dim);
    int64_t n_full = 0, n_lin = 0;
    for (auto t : c.layer_types) (t == qe::LayerType::kFull ? n_full : n_lin)++;
    for (int64_t i = 0; i < n_full; ++i) {
        for (int64_t h = 0; h < c.n_head_kv; ++h) {
            const size_t off = size_t(h) * size_t(a.context()) * row;
            const size_t len = size_t(a.position()) * row;
            if (std::memcmp(static_cast<char*>(a.keys(i)) + off,
                            static_cast<char*>(b.keys(i)) + off, len) != 0 ||
                std::memcmp(static_cast<char*>(a.values(i)) + off,
                            static_cast<char*>(b.values(i)) + off, len) != 0) {
                return false;
            }
        }
    }
    const size_t conv = size_t((c.conv_kernel - 1) * c.conv_dim()) * 4;
    const size_t rec = size_t(c.n_v_head * c.k_head_dim * c.v_head_dim) * 4;
    for (int64_t i = 0; i < n_lin; ++i) {
        if (std::memcmp(a.conv(i), b.conv(i), conv) != 0 ||
            std::memcmp(a.recurrent(i), b.recurrent(i), rec) != 0) {
            return false;
        }
    }
    return true;
}

QE_TEST(rollback_equals_never_running_the_tokens) {
    // A checkpointed forward of 6 tokens rolled back by r leaves the caches of the plain
    // forward of 6 - r tokens, bit for bit (the kept tokens' delta rule is rerun from the state
    // before it), and the continuation's logits are the plain ones.
    const RandomModel& rm = random_model();
    const auto ids = prompt(21);
    for (const auto* t : qe::supported_tables()) {
        auto m = rm.build(t->tag, 2);
        const auto whole = all_logits(*m, ids, 8);
        for (int r : {0, 1, 3, 5}) {
            auto spec = m->new_state(64, 8);
            spec->enable_speculation(7);
            std::vector<float> out(300 * 21);
            m->forward(ids.data(), 10, *spec, out.data(), false);
            m->forward(ids.data() + 10, 6, *spec, out.data(), true, {}, nullptr, true);
            // the checkpointed forward's logits are the plain ones
            EXPECT_TRUE(std::equal(out.begin(), out.begin() + 6 * 300, whole.begin() + 10 * 300));
            m->rollback(*spec, r);
            EXPECT_TRUE(spec->position() == 16 - r);
            auto plain = m->new_state(64, 8);
            m->forward(ids.data(), 16 - r, *plain, out.data(), false);
            EXPECT_TRUE(same_caches(*spec, *plain, rm.config));
            const int64_t rest = 21 - (16 - r);
            m->forward(ids.data() + 16 - r, rest, *spec, out.data(), true);
            EXPECT_TRUE(std::equal(out.begin(), out.begin() + rest * 300,
                                   whole.begin() + (16 - r) * 300));
        }
        // a rollback of none leaves one possible; one rollback uses the forward up; beyond the
        // checkpoints is an error
        auto s = m->new_state(64, 8);
        s->enable_speculation(4);
        std::vector<float> out(300 * 5);
        m->forward(ids.data(), 5, *s, out.data(), true, {}, nullptr, true);
        m->rollback(*s, 0);
        m->rollback(*s, 3);
        auto plain = m->new_state(64, 8);
        m->forward(ids.data(), 2, *plain, out.data(), false);
        EXPECT_TRUE(same_caches(*s, *plain, rm.config));
        bool refused = false;
        try {
            m->rollback(*s, 1);
        } catch (const qe::Error&) {
            refused = true;
        }
        EXPECT_TRUE(refused && s->position() == 2);
        refused = false;
        try {
            m->forward(ids.data(), 6, *s, out.data(), true, {}, nullptr, true);  // 5 slots needed
        } catch (const qe::Error&) {
            refused = true;
        }
        EXPECT_TRUE(refused && s->position() == 2);
    }
}

QE_TEST(forward_multi_drops_the_checkpoints) {
    // A multi-sequence step after a checkpointed forward: the checkpoints no longer describe the
    // state, so a rollback is refused.
    const RandomModel& rm = random_model();
    const auto ids = prompt(8);
    auto m = rm.build("ref", 2);
    auto s = m->new_state(64, 8);
    s->enable_speculation(4);
    std::vector<float> out(300 * 5);
    m->forward(ids.data(), 5, *s, out.data(), true, {}, nullptr, true);
    const qe::SeqStep step{ids.data() + 5, 1, s.get(), out.data()};
    m->forward_multi(&step, 1);
    bool refused = false;
    try {
        m->rollback(*s, 1);
    } catch (const qe::Error&) {
        refused = true;
    }
    EXPECT_TRUE(refused && s->position() == 6);
}

// Draft logits over all rows for every prefix of `ids` fed as pairs (hidden of t, ids[t + 1]).
static std::vector<float> mtp_logits(qe::Qwen35Model& m, const std::vector<int32_t>& ids, int split) {
    const int64_t E = m.config().n_embd, n = int64_t(ids.size()) - 1;
    auto state = m.new_state(64, 8);
    state->enable_speculation(2);
    std::vector<float> hidden(ids.size() * E), out(ids.size() * 300), logits;
    m.forward(ids.data(), int64_t(ids.size()), *state, out.data(), true, {}, hidden.data());
    std::vector<float> step(300), h(E);
    for (int64_t t = 0; t < n;) {
        const int64_t len = t == 0 ? split : 1;  // a batch of pairs, then one at a time
        m.mtp_forward(ids.data() + t + 1, hidden.data() + t * E, len, *state, step.data(), 0,
                      h.data());
        t += len;
        logits.insert(logits.end(), step.begin(), step.end());
    }
    EXPECT_TRUE(state->mtp_position() == n);
    return logits;
}

QE_TEST(mtp_head_tables_agree_and_batches_are_bitwise) {
    const RandomModel& rm = random_model();
    const auto ids = prompt(13);
    auto ref = rm.build("ref", 1);
    EXPECT_TRUE(ref->has_mtp() && !rm.build("ref", 1, false)->has_mtp());
    const auto want = mtp_logits(*ref, ids, 1);
    for (const auto* t : qe::supported_tables()) {
        auto m = rm.build(t->tag, 2);
        const auto got = mtp_logits(*m, ids, 1);
        const double e = nmse(got, want);
        std::printf("  table %s: mtp logits nmse vs ref %.3g\n", t->tag, e);
        EXPECT_TRUE(e < 1e-5);
        // 5 pairs in one call give the bits of the last of 5 single calls
        const auto batched = mtp_logits(*m, ids, 5);
        EXPECT_TRUE(std::equal(batched.begin(), batched.end(), got.begin() + 4 * 300));
        // a draft over the first rows is a prefix of the full draft
        const int64_t E = m->config().n_embd;
        auto state = m->new_state(64, 8);
        state->enable_speculation(1);
        std::vector<float> hidden(ids.size() * E), out(300), full(300), part(300), h(E);
        m->forward(ids.data(), 3, *state, out.data(), false, {}, hidden.data());
        auto copy = std::make_unique<qe::State>(*state);
        m->mtp_forward(ids.data() + 1, hidden.data(), 2, *state, full.data(), 0, h.data());
        EXPECT_TRUE(m->draft_rows(61) == 64);
        m->mtp_forward(ids.data() + 1, hidden.data(), 2, *copy, part.data(), 61, h.data());
        EXPECT_TRUE(std::equal(part.begin(), part.begin() + 64, full.begin()));
        copy->set_mtp_position(1);
        EXPECT_TRUE(copy->mtp_position() == 1);
    }
    // a model without the head refuses to draft
    auto plain = rm.build("ref", 1, false);
    auto state = plain->new_state(8, 4);
    state->enable_speculation(1);
    std::vector<float> h(64), out(300);
    bool refused = false;
    try {
        plain->mtp_forward(ids.data(), h.data(), 1, *state, out.data(), 0, h.data());
    } catch (const qe::Error&) {
        refused = true;
    }
    EXPECT_TRUE(refused);
}

QE_TEST(forward_stops_between_layers) {
    const RandomModel& rm = random_model();
    auto m = rm.build("ref", 2);
    auto state = m->new_state(16, 4);
    std::vector<float> out(300), want(300);
    const std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6};
    // Asked once per layer: stopping at the second call leaves a pass half done.
    int calls = 0;
    const qe::Qwen35Model::StopFn stop = [&calls] { return ++calls == 2; };
    bool interrupted = false;
    try {
        m->forward(ids.data(), 6, *state, out.data(), false, stop);
    } catch (const qe::Interrupted&) {
        interrupted = true;
    }
    EXPECT_TRUE(interrupted && calls == 2 && state->interrupted());
    bool refused = false;
    try {
        m->forward(ids.data(), 1, *state, out.data(), false);
    } catch (const qe::Error& e) {
        refused = std::string(e.what()).find("reset it") != std::string::npos;
    }
    EXPECT_TRUE(refused);
    // After a reset the same tokens give what a fresh state gives.
    state->reset();
    EXPECT_TRUE(!state->interrupted());
    m->forward(ids.data(), 6, *state, out.data(), false);
    auto fresh = m->new_state(16, 4);
    m->forward(ids.data(), 6, *fresh, want.data(), false);
    EXPECT_TRUE(out == want);
    // stop_all(): every later pass throws at once, the state untouched.
    m->stop_all();
    auto other = m->new_state(16, 4);
    bool stopped = false;
    try {
        m->forward(ids.data(), 6, *other, out.data(), false);
    } catch (const qe::Interrupted&) {
        stopped = true;
    }
    EXPECT_TRUE(stopped && other->position() == 0 && !other->interrupted());
}
