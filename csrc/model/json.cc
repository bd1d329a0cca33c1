// SPDX-License-Identifier: Apache-2.0
#include "model/json.h"

#include <charconv>
#include <cmath>

#include "common.h"

namespace qe {

class JsonParser {
public:
    explicit JsonParser(std::string_view text) : s_(text) {}

    Json parse_document() {
        Json v = parse_value(0);
        skip_ws();
        if (pos_ != s_.size()) fail("unexpected data after the JSON value");
        return v;
    }

private:
    static constexpr int kMaxDepth = 64;
    std::string_view s_;
    size_t pos_ = 0;

    [[noreturn]] void fail(const char* what) const {
        detail::fail(__FILE__, __LINE__, "invalid JSON at byte ", pos_, ": ", what);
    }

    void skip_ws() {
        while (pos_ < s_.size() &&
               (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
            ++pos_;
    }

    bool consume(std::string_view word) {
        if (s_.substr(pos_, word.size()) != word) return false;
        pos_ += word.size();
        return true;
    }

    Json parse_value(int depth) {
        if (depth > kMaxDepth) fail("nesting too deep");
        skip_ws();
        if (pos_ >= s_.size()) fail("unexpected end of input");
        Json v;
        const char c = s_[pos_];
        if (c == '{') {
            v.type_ = Json::Type::kObject;
            ++pos_;
            skip_ws();
            if (pos_ < s_.size() && s_[pos_] == '}') {
                ++pos_;
                return v;
            }
            while (true) {
                skip_ws();
                if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a string key");
                std::string key = parse_string();
                skip_ws();
                if (pos_ >= s_.size() || s_[pos_] != ':') fail("expected ':'");
                ++pos_;
                Json member = parse_value(depth + 1);
                if (!v.object_.emplace(std::move(key), std::move(member)).second)
                    fail("duplicate object key");
                skip_ws();
                if (pos_ < s_.size() && s_[pos_] == ',') {
                    ++pos_;
                    continue;
                }
                if (pos_ < s_.size() && s_[pos_] == '}') {
                    ++pos_;
                    return v;
                }
                fail("expected ',' or '}'");
            }
        }
        if (c == '[') {
            v.type_ = Json::Type::kArray;
            ++pos_;
            skip_ws();
            if (pos_ < s_.size() && s_[pos_] == ']') {
                ++pos_;
                return v;
            }
            while (true) {
                v.array_.push_back(parse_value(depth + 1));
                skip_ws();
                if (pos_ < s_.size() && s_[pos_] == ',') {
                    ++pos_;
                    continue;
                }
                if (pos_ < s_.size() && s_[pos_] == ']') {
                    ++pos_;
                    return v;
                }
                fail("expected ',' or ']'");
            }
        }
        if (c == '"') {
            v.type_ = Json::Type::kString;
            v.string_ = parse_string();
            return v;
        }
        if (consume("true") || consume("false")) {
            v.type_ = Json::Type::kBool;
            v.bool_ = c == 't';
            return v;
        }
        if (consume("null")) return v;
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
        fail("unexpected character");
    }

    Json parse_number() {
        // Validate the RFC 8259 grammar first, then convert the exact span.
        const size_t start = pos_;
        bool fractional = false;
        if (s_[pos_] == '-') ++pos_;
        if (pos_ >= s_.size()) fail("bad number");
        if (s_[pos_] == '0') {
            ++pos_;
        } else if (s_[pos_] >= '1' && s_[pos_] <= '9') {
            while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
        } else {
            fail("bad number");
        }
        if (pos_ < s_.size() && s_[pos_] == '.') {
            fractional = true;
            ++pos_;
            const size_t digits = pos_;
            while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
            if (pos_ == digits) fail("bad number");
        }
        if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
            fractional = true;
            ++pos_;
            if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
            const size_t digits = pos_;
            while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
            if (pos_ == digits) fail("bad number");
        }
        const char* first = s_.data() + start;
        const char* last = s_.data() + pos_;
        Json v;
        v.type_ = Json::Type::kNumber;
        if (!fractional) {
            const auto r = std::from_chars(first, last, v.integer_);
            if (r.ec == std::errc() && r.ptr == last) {
                v.is_integer_ = true;
                v.number_ = double(v.integer_);
                return v;
            }
        }
        const auto r = std::from_chars(first, last, v.number_);
        if (r.ec != std::errc() || r.ptr != last || !std::isfinite(v.number_))
            fail("number out of range");
        return v;
    }

    static void append_utf8(std::string& out, uint32_t cp) {
        if (cp < 0x80) {
            out += char(cp);
        } else if (cp < 0x800) {
            out += char(0xc0 | (cp >> 6));
            out += char(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            out += char(0xe0 | (cp >> 12));
            out += char(0x80 | ((cp >> 6) & 0x3f));
            out += char(0x80 | (cp & 0x3f));
        } else {
            out += char(0xf0 | (cp >> 18));
            out += char(0x80 | ((cp >> 12) & 0x3f));
            out += char(0x80 | ((cp >> 6) & 0x3f));
            out += char(0x80 | (cp & 0x3f));
        }
    }

    uint32_t parse_hex4() {
        if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
        uint32_t v = 0;
        for (int i = 0; i < 4; ++i) {
            const char h = s_[pos_++];
            v <<= 4;
            if (h >= '0' && h <= '9') v |= uint32_t(h - '0');
            else if (h >= 'a' && h <= 'f') v |= uint32_t(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') v |= uint32_t(h - 'A' + 10);
            else fail("bad \\u escape");
        }
        return v;
    }

    // Length of a valid UTF-8 sequence starting at pos_, or 0.
    size_t utf8_length() const {
        const auto b = [&](size_t i) { return uint8_t(s_[pos_ + i]); };
        const uint8_t c = b(0);
        size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
        if (c >= 0xf5 || n == 0 || pos_ + n > s_.size()) return 0;
        for (size_t i = 1; i < n; ++i)
            if ((b(i) & 0xc0) != 0x80) return 0;
        if (n == 3 && ((c == 0xe0 && b(1) < 0xa0) || (c == 0xed && b(1) >= 0xa0))) return 0;
        if (n == 4 && ((c == 0xf0 && b(1) < 0x90) || (c == 0xf4 && b(1) >= 0x90))) return 0;
        return n;
    }

    std::string parse_string() {
        ++pos_;  // opening quote
        std::string out;
        while (true) {
            if (pos_ >= s_.size()) fail("unterminated string");
            const uint8_t c = uint8_t(s_[pos_]);
            if (c == '"') {
                ++pos_;
                return out;
            }
            if (c < 0x20) fail("control character in string");
            if (c == '\\') {
                ++pos_;
                if (pos_ >= s_.size()) fail("unterminated string");
                const char e = s_[pos_++];
                switch (e) {
                    case '"': out += '"'; break;
                    case '\\': out += '\\'; break;
                    case '/': out += '/'; break;
                    case 'b': out += '\b'; break;
                    case 'f': out += '\f'; break;
                    case 'n': out += '\n'; break;
                    case 'r': out += '\r'; break;
                    case 't': out += '\t'; break;
                    case 'u': {
                        uint32_t cp = parse_hex4();
                        if (cp >= 0xd800 && cp < 0xdc00) {  // high surrogate: needs a low one
                            if (!consume("\\u")) fail("lone surrogate");
                            const uint32_t lo = parse_hex4();
                            if (lo < 0xdc00 || lo >= 0xe000) fail("lone surrogate");
                            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                        } else if (cp >= 0xdc00 && cp < 0xe000) {
                            fail("lone surrogate");
                        }
                        append_utf8(out, cp);
                        break;
                    }
                    default: fail("bad escape");
                }
                continue;
            }
            if (c < 0x80) {
                out += char(c);
                ++pos_;
                continue;
            }
            const size_t n = utf8_length();
            if (n == 0) fail("invalid UTF-8");
            out.append(s_.data() + pos_, n);
            pos_ += n;
        }
    }
};

Json Json::parse(std::string_view text) { return JsonParser(text).parse_document(); }

const Json* Json::find(const std::string& key) const {
    if (type_ != Type::kObject) return nullptr;
    const auto it = object_.find(key);
    return it == object_.end() ? nullptr : &it->second;
}

const char* json_type_name(Json::Type t) {
    switch (t) {
        case Json::Type::kNull: return "null";
        case Json::Type::kBool: return "a boolean";
        case Json::Type::kNumber: return "a number";
        case Json::Type::kString: return "a string";
        case Json::Type::kArray: return "an array";
        case Json::Type::kObject: return "an object";
    }
    return "?";
}

}  // namespace qe
