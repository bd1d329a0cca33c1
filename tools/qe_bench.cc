// SPDX-License-Identifier: Apache-2.0
// Native timing driver for profiling the forward pass without Python (perf record, callgrind):
//   qe_bench MODEL.qe [threads] [isa] [prompt_tokens] [decode_tokens]
// Prints load time, prefill and decode tokens/s. Not a benchmark of record: `qwen-edge bench`
// is (JSON, repetitions, peers); this exists so profiles have symbols and no interpreter.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "common.h"
#include "model/qwen35.h"

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.qe [threads] [isa] [prompt] [decode]\n", argv[0]);
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
    try {
        auto t0 = Clock::now();
        auto model = qe::Qwen35Model::load(argv[1], opt);
        const double load = secs(t0);
        const int64_t vocab = model->config().vocab_size;
        std::mt19937 rng(0);
        std::vector<int32_t> prompt(n_prompt);
        for (auto& t : prompt) t = int32_t(rng() % uint32_t(vocab));
        std::vector<float> logits(vocab);
        auto state = model->new_state(n_prompt + n_decode + 1);
        t0 = Clock::now();
        if (n_prompt > 0) model->forward(prompt.data(), n_prompt, *state, logits.data(), false);
        const double prefill = secs(t0);
        t0 = Clock::now();
        int32_t tok = 1;
        for (int64_t i = 0; i < n_decode; ++i) {
            model->forward(&tok, 1, *state, logits.data(), false);
            tok = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        }
        const double decode = secs(t0);
        std::printf("isa %s threads %d load %.3f s prefill %.1f tok/s decode %.1f tok/s\n",
                    model->kernels().tag, model->threads(), load, n_prompt / prefill,
                    n_decode / decode);
    } catch (const qe::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
