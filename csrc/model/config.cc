// SPDX-License-Identifier: Apache-2.0
#include "model/config.h"

#include <cmath>

#include "common.h"

namespace qe {
namespace {

// Upper bound for any single dimension: far above real models, low enough that products of a
// few dims cannot overflow 64 bits.
constexpr int64_t kMaxDim = int64_t{1} << 24;
constexpr int64_t kMaxLayers = 4096;  // qwen_edge/formats/config.py MAX_LAYERS

int64_t get_dim(const Json& c, const char* key, const std::string& where) {
    const Json* v = c.find(key);
    QE_CHECK(v != nullptr, where, ": config has no '", key, "'");
    QE_CHECK(v->is_integer() && v->as_int() > 0 && v->as_int() <= kMaxDim, where, ": config '",
             key, "' must be an integer in 1..", kMaxDim);
    return v->as_int();
}

double get_positive(const Json& c, const char* key, double fallback, const std::string& where) {
    const Json* v = c.find(key);
    if (v == nullptr) return fallback;
    QE_CHECK(v->is_number() && std::isfinite(v->as_double()) && v->as_double() > 0, where,
             ": config '", key, "' must be a positive finite number");
    return v->as_double();
}

}  // namespace

ModelConfig ModelConfig::from_json(const Json& c, const std::string& where) {
    QE_CHECK(c.is_object(), where, ": 'config' must be an object");
    // Every key changes the math, so an unknown one (a typo, a newer exporter) is an error
    // rather than a silently used default (qwen_edge.config.ModelConfig.from_dict agrees).
    static const char* const kKnown[] = {
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "linear_num_key_heads",
        "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
        "linear_conv_kernel_dim", "layer_types", "rms_norm_eps", "rope_theta",
        "partial_rotary_factor", "tie_word_embeddings", "max_position_embeddings",
        "eos_token_id", "mtp_num_hidden_layers"};
    for (const auto& [key, value] : c.as_object()) {
        bool known = false;
        for (const char* k : kKnown) known = known || key == k;
        QE_CHECK(known, where, ": config has an unknown field '", key, "'");
    }
    ModelConfig m;
    m.vocab_size = get_dim(c, "vocab_size", where);
    m.n_embd = get_dim(c, "hidden_size", where);
    m.n_ff = get_dim(c, "intermediate_size", where);
    m.n_layer = get_dim(c, "num_hidden_layers", where);
    QE_CHECK(m.n_layer <= kMaxLayers, where, ": config 'num_hidden_layers' must be at most ",
             kMaxLayers, ", got ", m.n_layer);
    m.n_head = get_dim(c, "num_attention_heads", where);
    m.n_head_kv = get_dim(c, "num_key_value_heads", where);
    m.head_dim = get_dim(c, "head_dim", where);
    m.n_k_head = get_dim(c, "linear_num_key_heads", where);
    m.n_v_head = get_dim(c, "linear_num_value_heads", where);
    m.k_head_dim = get_dim(c, "linear_key_head_dim", where);
    m.v_head_dim = get_dim(c, "linear_value_head_dim", where);
    m.conv_kernel = get_dim(c, "linear_conv_kernel_dim", where);
    m.rms_norm_eps = get_positive(c, "rms_norm_eps", 1e-6, where);
    m.rope_theta = get_positive(c, "rope_theta", 1e7, where);
    m.partial_rotary_factor = get_positive(c, "partial_rotary_factor", 0.25, where);
    // Checked before rotary_dim() converts head_dim x factor to an integer (a float out of
    // int64's range would be undefined behaviour).
    QE_CHECK(m.partial_rotary_factor <= 1.0, where,
             ": config 'partial_rotary_factor' must be in (0, 1], got ", m.partial_rotary_factor);
    m.max_position = get_dim(c, "max_position_embeddings", where);
    if (const Json* t = c.find("tie_word_embeddings")) {
        QE_CHECK(t->is_bool(), where, ": config 'tie_word_embeddings' must be a boolean");
        m.tie_word_embeddings = t->as_bool();
    }
    const Json* types = c.find("layer_types");
    QE_CHECK(types != nullptr && types->is_array(), where, ": config 'layer_types' must be a list");
    QE_CHECK(int64_t(types->as_array().size()) == m.n_layer, where, ": config 'layer_types' has ",
             types->as_array().size(), " entries, num_hidden_layers is ", m.n_layer);
    for (const Json& t : types->as_array()) {
        QE_CHECK(t.is_string() &&
                     (t.as_string() == "linear_attention" || t.as_string() == "full_attention"),
                 where, ": config 'layer_types' entries must be 'linear_attention' or "
                        "'full_attention'");
        m.layer_types.push_back(t.as_string() == "full_attention" ? LayerType::kFull
                                                                  : LayerType::kLinear);
    }
    if (const Json* eos = c.find("eos_token_id")) {
        QE_CHECK(eos->is_array(), where, ": config 'eos_token_id' must be a list");
        for (const Json& e : eos->as_array()) {
            QE_CHECK(e.is_integer() && e.as_int() >= 0, where,
                     ": config 'eos_token_id' entries must be non-negative integers");
            m.eos_token_ids.push_back(e.as_int());
        }
    }
    QE_CHECK(m.n_head % m.n_head_kv == 0, where, ": num_attention_heads (", m.n_head,
             ") is not a multiple of num_key_value_heads (", m.n_head_kv, ")");
    QE_CHECK(m.n_v_head % m.n_k_head == 0, where, ": linear_num_value_heads (", m.n_v_head,
             ") is not a multiple of linear_num_key_heads (", m.n_k_head, ")");
    const int64_t rot = m.rotary_dim();
    QE_CHECK(rot > 0 && rot % 2 == 0 && rot <= m.head_dim, where,
             ": partial_rotary_factor x head_dim gives ", rot,
             " rotary dims; need an even number in 2..head_dim");
    return m;
}

std::map<std::string, std::vector<int64_t>> ModelConfig::text_tensor_shapes() const {
    std::map<std::string, std::vector<int64_t>> s;
    const int64_t H = n_embd;
    s["embed_tokens.weight"] = {vocab_size, H};
    for (int64_t i = 0; i < n_layer; ++i) {
        const std::string p = "layers." + std::to_string(i) + ".";
        s[p + "input_layernorm.weight"] = {H};
        s[p + "post_attention_layernorm.weight"] = {H};
        s[p + "mlp.gate_proj.weight"] = {n_ff, H};
        s[p + "mlp.up_proj.weight"] = {n_ff, H};
        s[p + "mlp.down_proj.weight"] = {H, n_ff};
        if (layer_types[i] == LayerType::kLinear) {
            const std::string a = p + "linear_attn.";
            s[a + "in_proj_qkv.weight"] = {conv_dim(), H};
            s[a + "in_proj_z.weight"] = {value_dim(), H};
            s[a + "in_proj_b.weight"] = {n_v_head, H};
            s[a + "in_proj_a.weight"] = {n_v_head, H};
            s[a + "conv1d.weight"] = {conv_dim(), 1, conv_kernel};
            s[a + "dt_bias"] = {n_v_head};
            s[a + "A_log"] = {n_v_head};
            s[a + "norm.weight"] = {v_head_dim};
            s[a + "out_proj.weight"] = {H, value_dim()};
        } else {
            const std::string a = p + "self_attn.";
            s[a + "q_proj.weight"] = {2 * n_head * head_dim, H};
            s[a + "k_proj.weight"] = {n_head_kv * head_dim, H};
            s[a + "v_proj.weight"] = {n_head_kv * head_dim, H};
            s[a + "o_proj.weight"] = {H, n_head * head_dim};
            s[a + "q_norm.weight"] = {head_dim};
            s[a + "k_norm.weight"] = {head_dim};
        }
    }
    s["norm.weight"] = {H};
    if (!tie_word_embeddings) s["lm_head.weight"] = {vocab_size, H};
    return s;
}

}  // namespace qe
