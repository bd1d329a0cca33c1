// SPDX-License-Identifier: Apache-2.0
// Hyper-parameters of the Qwen3.5 text decoder (spec §1), read from the model file's header
// ("config": HF text_config key names, see qwen_edge/config.py). Short dimension names are
// defined once here, each with its HF key.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qe {

struct Qwen35Config {
    int64_t n_vocab = 0;          // vocab_size
    int64_t n_embd = 0;           // hidden_size
    int64_t n_ff = 0;             // intermediate_size
    int64_t n_layer = 0;          // num_hidden_layers
    int64_t n_head = 0;           // num_attention_heads
    int64_t n_head_kv = 0;        // num_key_value_heads
    int64_t head_dim = 0;         // head_dim
    int64_t n_lin_head_k = 0;     // linear_num_key_heads
    int64_t n_lin_head_v = 0;     // linear_num_value_heads
    int64_t lin_head_dim_k = 0;   // linear_key_head_dim
    int64_t lin_head_dim_v = 0;   // linear_value_head_dim
    int64_t lin_conv_kernel = 0;  // linear_conv_kernel_dim
    std::vector<uint8_t> layer_full;  // layer_types: 1 = full_attention, 0 = linear_attention
    float rms_norm_eps = 1e-6f;       // rms_norm_eps
    float rope_theta = 1e7f;          // rope_parameters.rope_theta
    float partial_rotary_factor = 0.25f;  // rope_parameters.partial_rotary_factor
    bool tie_word_embeddings = false;     // tie_word_embeddings
    int64_t max_position_embeddings = 262144;  // max_position_embeddings

    // Derived sizes (spec §1.2).
    int64_t n_rot() const { return int64_t(float(head_dim) * partial_rotary_factor); }
    int64_t key_dim() const { return n_lin_head_k * lin_head_dim_k; }
    int64_t value_dim() const { return n_lin_head_v * lin_head_dim_v; }
    int64_t conv_dim() const { return 2 * key_dim() + value_dim(); }
    int64_t n_full() const;    // full-attention layers
    int64_t n_linear() const;  // linear-attention layers

    // Throws qe::Error naming the field if a value is out of range or inconsistent; the bounds
    // keep every derived size far from overflow, so a hostile header cannot wrap arithmetic.
    void validate() const;
};

}  // namespace qe
