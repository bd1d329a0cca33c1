// SPDX-License-Identifier: Apache-2.0
// Native timing driver for profiling the forward pass without Python (perf record, callgrind):
//   qe_bench MODEL.qe [threads] [isa] [prompt_tokens] [decode_tokens] [prefill_repetitions]
//   qe_bench --gemm FORMAT ROWS K M [isa] [repetitions]
//   qe_bench --delta [isa] [repetitions]
//   qe_bench --attention DEPTH TOKENS_PER_CALL [isa] [repetitions] [f16|q8|q4]
//   qe_bench --attention-step DEPTH [isa] [repetitions] [f16|q8|q4] [threads]
//   qe_bench --step MODEL.qe ISA[,ISA...] N[,N...] [steps] [context]
// Prints load time, prefill (best of the repetitions, each from a fresh state) and decode tokens/s,
// or one packed product's best time over the repetitions (single thread, random codes) in GOPS,
// or the delta rule's best time per head and token on the 0.8B shape (128 tokens, 16 heads),
// or prefill attention's best thread-CPU time per token and KV head for a 128-token chunk at
// DEPTH (a GQA group of 4 over one KV head of 256, f16, int8 or 4-bit cache, kernel calls of
// TOKENS_PER_CALL tokens).
// --attention-step times a 0.8B decode step's attention calls alone at DEPTH: 6 layers of 2 KV
// heads, each its own K and V arrays (805 MB at 64k, f16: more than a last-level cache, as in a
// step), the heads of a layer spread over the threads as the model does; prints the best wall
// time per step, the rate it reads the cache at, and a plain read of as many bytes beside it.
// --step times a serving step: forward_multi over N sequences decoding one token each (after
// `context` prompt tokens each, default 48), 1 thread, process CPU time per step, the tables and
// batch sizes alternating step by step so a busy machine slows them alike; prints each median and
// its ratio to the 1-sequence step (docs/serving.md, "Where a step's time goes"). Not
// a benchmark of record: `qwen-edge bench` is (JSON, repetitions, peers); this exists so profiles
// have symbols and no interpreter, and so kernel variants can be compared on a busy machine (best
// of many).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common.h"
#include "kernels/kernels.h"
#include "model/qwen35.h"
#include "model/state.h"
#include "runtime/buffer.h"
#include "runtime/membench.h"
#include "runtime/thread_pool.h"

namespace {

double process_cpu_seconds() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

int bench_gemm(int argc, char** argv) {
    qe::WeightFormat f;
    if (argc < 6 || !qe::parse_format(argv[2], &f) || !qe::is_quantized(f)) {
        std::fprintf(stderr, "usage: %s --gemm FORMAT ROWS K M [isa] [repetitions]\n", argv[0]);
        return 2;
    }
    const int64_t rows = std::atoll(argv[3]), k = std::atoll(argv[4]), m = std::atoll(argv[5]);
    const qe::KernelTable& kt = qe::select_table(argc > 6 ? argv[6] : "");
    const int reps = argc > 7 ? std::atoi(argv[7]) : 50;
    qe::PackedLayout layout;
    if (!qe::packed_layout(f, rows, k, &layout)) return 2;
    std::mt19937 rng(1);
    std::vector<uint8_t> bytes(layout.total_bytes);
    for (auto& b : bytes) b = uint8_t(rng() & 0x3f);  // small f16 scales and q4k factors
    const qe::PackedMatrix w = qe::PackedMatrix::view(f, layout, bytes.data());
    std::normal_distribution<float> normal;
    std::vector<float> x(m * k);
    for (auto& v : x) v = normal(rng);
    std::vector<qe::BlockQ8A> xq(m * k / qe::kBlockK);
    for (int64_t t = 0; t < m; ++t) kt.quantize_q8a(x.data() + t * k, xq.data() + t * k / 32, k);
    std::vector<float> y(m * layout.rows_padded);
    using Clock = std::chrono::steady_clock;
    double best = 1e30, best_cpu = 1e30;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = Clock::now();
        const double c0 = process_cpu_seconds();
        if (m == 1) {
            kt.gemv_q8a(w, xq.data(), y.data(), 0, w.groups);
        } else {
            kt.gemm_q8a(w, xq.data(), m, y.data(), layout.rows_padded, 0, w.groups);
        }
        best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
        best_cpu = std::min(best_cpu, process_cpu_seconds() - c0);
    }
    // CPU time beside wall time: on a shared machine a run that waited for a core is not
    // slower by CPU time (its cache may still have been disturbed).
    std::printf("%s %s [%lld, %lld] x %lld tokens: %.1f GOPS, %.1f GB/s of weights, %.3f ms "
                "(CPU %.3f ms; best of %d)\n",
                kt.tag, argv[2], (long long)rows, (long long)k, (long long)m,
                2.0 * rows * k * m / best / 1e9, layout.total_bytes / best / 1e9, best * 1e3,
                best_cpu * 1e3, reps);
    return 0;
}

// The gated delta rule of one layer's batch: 16 value heads, dk = dv = 128, 128 tokens.
int bench_delta(int argc, char** argv) {
    const qe::KernelTable& kt = qe::select_table(argc > 2 ? argv[2] : "");
    const int reps = argc > 3 ? std::atoi(argv[3]) : 10;
    const int64_t t = 128, heads = 16, dk = 128, dv = 128;
    const int64_t ldu = 3 * heads * dk;  // q | k | v of a token, as the model's conv output
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    std::vector<float> state(heads * dk * dv), u(t * ldu), o(t * heads * dv);
    std::vector<float> decay(t * heads, 0.95f), beta(t * heads, 0.5f);
    for (auto& v : u) v = 0.1f * normal(rng);
    using Clock = std::chrono::steady_clock;
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = Clock::now();
        for (int64_t m = 0; m < heads; ++m) {
            kt.delta_rule(state.data() + m * dk * dv, u.data() + m * dk,
                          u.data() + heads * dk + m * dk, u.data() + 2 * heads * dk + m * dv, ldu,
                          decay.data() + m, beta.data() + m, heads, o.data() + m * dv, heads * dv,
                          t, dk, dv);
        }
        best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::printf("%s delta_rule dk=dv=%lld: %.2f us per head and token (best of %d)\n", kt.tag,
                (long long)dk, best * 1e6 / double(t * heads), reps);
    return 0;
}

double thread_cpu_seconds() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// The benches' caches: f16, q8 (int8) or q4 (4-bit); false for another name.
bool parse_cache(const std::string& name, qe::KvType* type) {
    if (name == "f16") *type = qe::KvType::kF16;
    else if (name == "q8") *type = qe::KvType::kQ8;
    else if (name == "q4") *type = qe::KvType::kQ4;
    else return false;
    return true;
}

// n values (rows of d) as the model stores them (the integer caches in groups of 16 positions).
template <typename G>
std::vector<char> encode_groups(void (*quantize)(const float*, G*, int64_t, int64_t),
                                const float* x, int64_t n, int64_t d) {
    std::vector<char> out(size_t(qe::kv_groups(n / d, d)) * sizeof(G));
    quantize(x, reinterpret_cast<G*>(out.data()), n / d, d);
    return out;
}
std::vector<char> encode_cache(const qe::KernelTable& kt, qe::KvType type, bool key,
                               const float* x, int64_t n, int64_t d) {
    switch (type) {
        case qe::KvType::kQ8:
            return key ? encode_groups(qe::quantize_keys_q8, x, n, d)
                       : encode_groups(qe::quantize_values_q8, x, n, d);
        case qe::KvType::kQ4:
            return key ? encode_groups(qe::quantize_keys_q4, x, n, d)
                       : encode_groups(qe::quantize_values_q4, x, n, d);
        default: {
            std::vector<char> out(size_t(n) * sizeof(uint16_t));
            kt.cvt_f32_f16(x, reinterpret_cast<uint16_t*>(out.data()), n);
            return out;
        }
    }
}

// One attention call of `nt` tokens of a GQA group of 4 heads of d = 256 over a cache from
// encode_cache, as the model makes it.
void attend(const qe::KernelTable& kt, qe::KvType type, const float* q, int64_t nt, const char* k,
            const char* v, int64_t seen, float* scratch, float* out) {
    const int64_t group = 4, d = 256;
    switch (type) {
        case qe::KvType::kQ8:
            kt.attention_q8(q, d, group * d, group, nt, reinterpret_cast<const qe::KeyGroupQ8*>(k),
                            reinterpret_cast<const qe::ValueGroupQ8*>(v), seen, d, 0.0625f,
                            scratch, out, d, group * d);
            break;
        case qe::KvType::kQ4:
            kt.attention_q4(q, d, group * d, group, nt, reinterpret_cast<const qe::KeyGroupQ4*>(k),
                            reinterpret_cast<const qe::ValueGroupQ4*>(v), seen, d, 0.0625f,
                            scratch, out, d, group * d);
            break;
        default:
            kt.attention_f16(q, d, group * d, group, nt, reinterpret_cast<const uint16_t*>(k),
                             reinterpret_cast<const uint16_t*>(v), seen, d, 0.0625f, scratch, out,
                             d, group * d);
    }
}

int bench_attention(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s --attention DEPTH TOKENS_PER_CALL [isa] [reps] [f16|q8|q4]\n",
                     argv[0]);
        return 2;
    }
    const int64_t depth = std::atoll(argv[2]), per_call = std::atoll(argv[3]);
    const qe::KernelTable& kt = qe::select_table(argc > 4 ? argv[4] : "");
    const int reps = argc > 5 ? std::atoi(argv[5]) : 5;
    const std::string cache = argc > 6 ? argv[6] : "f16";
    qe::KvType type;
    if (!parse_cache(cache, &type)) {
        std::fprintf(stderr, "cache must be f16, q8 or q4, not %s\n", cache.c_str());
        return 2;
    }
    const int64_t chunk = 128, group = 4, d = 256, n = depth + chunk;
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    std::vector<float> q(chunk * group * d), out(q.size()), kf(n * d), vf(n * d);
    for (auto& x : q) x = normal(rng);
    for (auto& x : kf) x = normal(rng);
    for (auto& x : vf) x = normal(rng);
    const std::vector<char> k = encode_cache(kt, type, true, kf.data(), n * d, d);
    const std::vector<char> v = encode_cache(kt, type, false, vf.data(), n * d, d);
    std::vector<float> scratch(size_t(qe::attention_scratch(group * per_call, n)));
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const double c0 = thread_cpu_seconds();
        for (int64_t t = 0; t < chunk; t += per_call) {
            const int64_t nt = std::min(per_call, chunk - t), seen = depth + t + nt;
            attend(kt, type, q.data() + t * group * d, nt, k.data(), v.data(), seen,
                   scratch.data(), out.data() + t * group * d);
        }
        best = std::min(best, thread_cpu_seconds() - c0);
    }
    std::printf(
        "%s attention depth %lld, %s cache, %lld tokens per call: %.1f us per token and KV head "
        "(best of %d)\n",
        kt.tag, (long long)depth, cache.c_str(), (long long)per_call, best * 1e6 / double(chunk),
        reps);
    return 0;
}

int bench_attention_step(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s --attention-step DEPTH [isa] [reps] [f16|q8|q4] [threads]\n",
                     argv[0]);
        return 2;
    }
    const int64_t depth = std::atoll(argv[2]);
    const qe::KernelTable& kt = qe::select_table(argc > 3 ? argv[3] : "");
    const int reps = argc > 4 ? std::max(1, std::atoi(argv[4])) : 5;
    const std::string cache = argc > 5 ? argv[5] : "f16";
    const int threads = argc > 6 ? std::max(1, std::atoi(argv[6])) : 2;
    qe::KvType type;
    if (depth < 1 || !parse_cache(cache, &type)) {
        std::fprintf(stderr, "DEPTH must be >= 1 and the cache f16, q8 or q4\n");
        return 2;
    }
    const int64_t layers = 6, heads = 2, group = 4, d = 256;
    const size_t row = qe::kv_row_bytes(type, d);
    // One pool of random rows copied over every array: the values do not change the work.
    const int64_t pool_rows = std::min<int64_t>(depth, 4096);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    std::vector<float> pool_f(pool_rows * d), q(heads * group * d), out(q.size());
    for (auto& x : pool_f) x = normal(rng);
    for (auto& x : q) x = normal(rng);
    // As a state holds them: the int8 cache in whole groups (a pool of 4096 rows is 256).
    const std::vector<char> pool[2] = {
        encode_cache(kt, type, true, pool_f.data(), pool_rows * d, d),
        encode_cache(kt, type, false, pool_f.data(), pool_rows * d, d)};
    std::vector<qe::Buffer> kv;  // [layer][head][K, V]
    for (int64_t i = 0; i < layers * heads * 2; ++i) {
        kv.emplace_back(size_t(qe::kv_rows(type, depth)) * row);
        for (int64_t j = 0; j < depth; j += pool_rows) {
            const int64_t n = qe::kv_rows(type, std::min(pool_rows, depth - j));
            std::memcpy(kv.back().as<char>() + j * row, pool[i % 2].data(), size_t(n) * row);
        }
    }
    qe::ThreadPool tp(qe::ThreadPool::Options{threads, false, 100});
    const int64_t per_thread = qe::attention_scratch(group, depth);
    std::vector<float> scratch(size_t(threads * per_thread));
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int64_t l = 0; l < layers; ++l) {
            tp.for_each(heads, 1, [&](int64_t h0, int64_t h1, int thread) {
                for (int64_t h = h0; h < h1; ++h) {
                    attend(kt, type, q.data() + h * group * d, 1, kv[(l * heads + h) * 2].as<char>(),
                           kv[(l * heads + h) * 2 + 1].as<char>(), depth,
                           scratch.data() + thread * per_thread, out.data() + h * group * d);
                }
            });
        }
        best = std::min(
            best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    const double bytes = double(layers * heads * 2) * double(depth) * double(row);
    const double plain = qe::read_bandwidth_gbs(size_t(bytes), threads, 3);
    std::printf("%s attention step at depth %lld, %s cache, %d threads: %.2f ms, %.1f GB/s of "
                "cache (a plain read of %.0f MB: %.1f GB/s; best of %d)\n",
                kt.tag, (long long)depth, cache.c_str(), threads, best * 1e3, bytes / best / 1e9,
                bytes / 1e6, plain, reps);
    return 0;
}

std::vector<std::string> split_commas(const std::string& s) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start <= s.size()) {
        const size_t end = std::min(s.find(',', start), s.size());
        out.push_back(s.substr(start, end - start));
        start = end + 1;
    }
    return out;
}

int bench_step(int argc, char** argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s --step MODEL.qe ISA[,ISA...] N[,N...] [steps] [context]\n",
                     argv[0]);
        return 2;
    }
    const std::vector<std::string> isas = split_commas(argv[3]);
    std::vector<int64_t> counts;
    for (const std::string& n : split_commas(argv[4])) counts.push_back(std::atoll(n.c_str()));
    const int steps = argc > 5 ? std::max(1, std::atoi(argv[5])) : 20;
    const int64_t context = argc > 6 ? std::max<int64_t>(1, std::atoll(argv[6])) : 48;
    const int64_t n_max = *std::max_element(counts.begin(), counts.end());
    try {
        std::vector<std::unique_ptr<qe::Qwen35Model>> models;
        for (const std::string& isa : isas) {
            qe::ModelOptions opt;
            opt.isa = isa;
            models.push_back(qe::Qwen35Model::load(argv[2], opt));
        }
        const int64_t vocab = models[0]->config().vocab_size;
        std::mt19937 rng(0);
        std::vector<int32_t> prompt(context);
        // states[model][seq]: each sequence with its own random prompt, then one token a step.
        std::vector<std::vector<std::unique_ptr<qe::State>>> states(models.size());
        std::vector<float> logits(n_max * vocab);
        for (size_t i = 0; i < models.size(); ++i) {
            for (int64_t s = 0; s < n_max; ++s) {
                for (auto& t : prompt) t = int32_t(rng() % uint32_t(vocab));
                states[i].push_back(models[i]->new_state(context + steps + 2));
                models[i]->forward(prompt.data(), context, *states[i][s], nullptr, false);
            }
        }
        // Every (table, N) advances its first N states by one token per round; a state seen by
        // several N is advanced by each (context grows by at most counts.size() per round).
        std::vector<std::vector<std::vector<double>>> cpu(
            models.size(), std::vector<std::vector<double>>(counts.size()));
        std::vector<int32_t> tokens(n_max, 1);
        std::vector<qe::SeqStep> seqs(n_max);
        const int rounds = std::max(1, steps / int(counts.size()));
        for (int r = 0; r < rounds; ++r) {
            for (size_t i = 0; i < models.size(); ++i) {
                for (size_t c = 0; c < counts.size(); ++c) {
                    for (int64_t s = 0; s < counts[c]; ++s) {
                        tokens[s] = int32_t(rng() % uint32_t(vocab));
                        seqs[s] = {&tokens[s], 1, states[i][s].get(), logits.data() + s * vocab};
                    }
                    const double c0 = process_cpu_seconds();
                    models[i]->forward_multi(seqs.data(), counts[c]);
                    cpu[i][c].push_back(process_cpu_seconds() - c0);
                }
            }
        }
        for (size_t i = 0; i < models.size(); ++i) {
            double base = 0;
            for (size_t c = 0; c < counts.size(); ++c) {
                std::vector<double>& v = cpu[i][c];
                std::sort(v.begin(), v.end());
                const double med = v[v.size() / 2];
                if (counts[c] == 1) base = med;
                std::printf("%-12s %2lld sequences: %8.2f ms CPU per step (median of %zu)",
                            models[i]->kernels().tag, (long long)counts[c], med * 1e3, v.size());
                if (base > 0) std::printf(", %.2fx the 1-sequence step", med / base);
                std::printf("\n");
            }
        }
    } catch (const qe::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc > 1 && std::string(argv[1]) == "--attention") return bench_attention(argc, argv);
    if (argc > 1 && std::string(argv[1]) == "--attention-step")
        return bench_attention_step(argc, argv);
    if (argc > 1 && std::string(argv[1]) == "--gemm") return bench_gemm(argc, argv);
    if (argc > 1 && std::string(argv[1]) == "--delta") return bench_delta(argc, argv);
    if (argc > 1 && std::string(argv[1]) == "--step") return bench_step(argc, argv);
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.qe [threads] [isa] [prompt] [decode] [reps]\n",
                     argv[0]);
        return 2;
    }
    using Clock = std::chrono::steady_clock;
    auto secs = [](Clock::time_point a) {
        return std::chrono::duration<double>(Clock::now() - a).count();
    };
    qe::ModelOptions opt;
    opt.threads = argc > 2 ? std::atoi(argv[2]) : 1;
    opt.isa = argc > 3 ? argv[3] : "";
    const int64_t n_prompt = argc > 4 ? std::atoll(argv[4]) : 512;
    const int64_t n_decode = argc > 5 ? std::atoll(argv[5]) : 64;
    const int reps = argc > 6 ? std::max(1, std::atoi(argv[6])) : 1;
    try {
        auto t0 = Clock::now();
        auto model = qe::Qwen35Model::load(argv[1], opt);
        const double load = secs(t0);
        const int64_t vocab = model->config().vocab_size;
        std::mt19937 rng(0);
        std::vector<int32_t> prompt(n_prompt);
        for (auto& t : prompt) t = int32_t(rng() % uint32_t(vocab));
        std::vector<float> logits(vocab);
        std::unique_ptr<qe::State> state;
        double prefill = 1e30, prefill_cpu = 1e30;
        for (int r = 0; r < reps; ++r) {
            state = model->new_state(n_prompt + n_decode + 1);
            const double c0 = process_cpu_seconds();
            t0 = Clock::now();
            if (n_prompt > 0) model->forward(prompt.data(), n_prompt, *state, logits.data(), false);
            prefill = std::min(prefill, secs(t0));
            prefill_cpu = std::min(prefill_cpu, process_cpu_seconds() - c0);
        }
        t0 = Clock::now();
        int32_t tok = 1;
        for (int64_t i = 0; i < n_decode; ++i) {
            model->forward(&tok, 1, *state, logits.data(), false);
            tok = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        }
        const double decode = secs(t0);
        // Prefill per CPU-second of the process: on a shared machine it moves less with the
        // neighbours' load than wall time (pool workers sleep when idle, so waiting is free).
        std::printf(
            "isa %s threads %d load %.3f s prefill %.1f tok/s (%.1f tok per cpu-s) decode %.1f "
            "tok/s\n",
            model->kernels().tag, model->threads(), load, n_prompt / prefill,
            n_prompt / prefill_cpu, n_decode / decode);
    } catch (const qe::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
