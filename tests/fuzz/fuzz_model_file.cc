// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: bytes as a model file. The reader must reject every malformed file with
// qe::Error (never crash, hang or touch memory outside the map, which ASan/UBSan check); a file
// it accepts is loaded as a model and runs one token, so shapes and offsets that pass the
// checks are also safe to compute on. Built by tools/fuzz.sh (clang, -fsanitize=fuzzer).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "common.h"
#include "model/qwen35.h"

namespace {

// The bytes as a file the reader can open and map: an anonymous memory file (no disk I/O).
std::string as_file(const uint8_t* data, size_t size, int* fd) {
    *fd = memfd_create("qe-fuzz", 0);
    if (*fd < 0) return {};
    size_t done = 0;
    while (done < size) {
        const ssize_t n = write(*fd, data + done, size - done);
        if (n <= 0) break;
        done += size_t(n);
    }
    return "/proc/self/fd/" + std::to_string(*fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    int fd = -1;
    const std::string path = as_file(data, size, &fd);
    if (path.empty()) return 0;
    try {
        qe::ModelOptions options;
        options.isa = "ref";
        auto model = qe::Qwen35Model::load(path, options, /*verify=*/true);
        auto state = model->new_state(4, 2);
        std::vector<float> logits(size_t(model->config().vocab_size));
        const int32_t token = 0;
        model->forward(&token, 1, *state, logits.data(), false);
    } catch (const qe::Error&) {
        // rejected with the project's error: what a malformed file must get
    }
    close(fd);
    return 0;
}
