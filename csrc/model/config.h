// SPDX-License-Identifier: Apache-2.0
// The Qwen3.5 text-model configuration as the native runtime sees it: parsed from the model
// file header's "config" object (HF text_config key names, see qwen_edge/config.py, whose
// checks this mirrors) and validated before any size derived from it is used.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/json.h"

namespace qe {

enum class LayerType : uint8_t { kLinear, kFull };

struct ModelConfig {
    int64_t vocab_size = 0;           // vocab_size
    int64_t n_embd = 0;               // hidden_size
    int64_t n_ff = 0;                 // intermediate_size
    int64_t n_layer = 0;              // num_hidden_layers
    int64_t n_head = 0;               // num_attention_heads
    int64_t n_head_kv = 0;            // num_key_value_heads
    int64_t head_dim = 0;             // head_dim
    int64_t n_k_head = 0;             // linear_num_key_heads
    int64_t n_v_head = 0;             // linear_num_value_heads
    int64_t k_head_dim = 0;           // linear_key_head_dim
    int64_t v_head_dim = 0;           // linear_value_head_dim
    int64_t conv_kernel = 0;          // linear_conv_kernel_dim
    double rms_norm_eps = 1e-6;       // rms_norm_eps
    double rope_theta = 1e7;          // rope_theta
    double partial_rotary_factor = 0.25;
    bool tie_word_embeddings = false;
    int64_t max_position = 0;         // max_position_embeddings
    std::vector<LayerType> layer_types;
    std::vector<int64_t> eos_token_ids;

    int64_t rotary_dim() const { return int64_t(double(head_dim) * partial_rotary_factor); }
    int64_t key_dim() const { return n_k_head * k_head_dim; }
    int64_t value_dim() const { return n_v_head * v_head_dim; }
    int64_t conv_dim() const { return 2 * key_dim() + value_dim(); }

    // Parses and validates; throws qe::Error naming `where` and the field.
    static ModelConfig from_json(const Json& config, const std::string& where);

    // Every text tensor and its shape (names without the HF prefixes), as
    // qwen_edge.config.ModelConfig.text_tensor_shapes().
    std::map<std::string, std::vector<int64_t>> text_tensor_shapes() const;
};

}  // namespace qe
