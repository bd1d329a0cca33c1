// SPDX-License-Identifier: Apache-2.0
// A small strict JSON parser for the model file header (RFC 8259: no comments, no trailing
// commas, the whole input must be one value). The input is untrusted: nesting depth is bounded,
// every error is a qe::Error naming the byte offset, and nothing is read past the end.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace qe {

class Json {
public:
    enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

    Json() = default;
    static Json parse(std::string_view text);  // throws qe::Error

    Type type() const { return type_; }
    bool is_null() const { return type_ == Type::kNull; }
    bool is_bool() const { return type_ == Type::kBool; }
    bool is_number() const { return type_ == Type::kNumber; }
    bool is_string() const { return type_ == Type::kString; }
    bool is_array() const { return type_ == Type::kArray; }
    bool is_object() const { return type_ == Type::kObject; }
    // True for a number that is an integer exactly representable as int64.
    bool is_integer() const { return type_ == Type::kNumber && is_integer_; }

    bool as_bool() const { return bool_; }
    double as_double() const { return number_; }
    int64_t as_int() const { return integer_; }
    const std::string& as_string() const { return string_; }
    const std::vector<Json>& as_array() const { return array_; }
    const std::map<std::string, Json>& as_object() const { return object_; }

    // Member of an object, or nullptr if absent (or this is not an object).
    const Json* find(const std::string& key) const;

private:
    friend class JsonParser;
    Type type_ = Type::kNull;
    bool bool_ = false;
    bool is_integer_ = false;
    double number_ = 0.0;
    int64_t integer_ = 0;
    std::string string_;
    std::vector<Json> array_;
    std::map<std::string, Json> object_;
};

const char* json_type_name(Json::Type t);

}  // namespace qe
