// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: bytes as the model file header's JSON, then its "config" object as a
// ModelConfig and the tensor shapes it implies. Every bad input must be a qe::Error; ASan/UBSan
// catch overflows and out-of-range conversions (a float config value cast to an integer).
#include <cstdint>
#include <string_view>

#include "common.h"
#include "model/config.h"
#include "model/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const qe::Json doc =
            qe::Json::parse(std::string_view(reinterpret_cast<const char*>(data), size));
        const qe::Json* config = doc.is_object() ? doc.find("config") : nullptr;
        const qe::ModelConfig c = qe::ModelConfig::from_json(config ? *config : doc, "fuzz");
        (void)c.text_tensor_shapes();
    } catch (const qe::Error&) {
    }
    return 0;
}
