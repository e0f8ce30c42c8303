// A minimal JSON reader for tests that inspect the Grafana dashboard. It
// builds a small tree and accepts standard JSON only; not for production.
//
//   absl::StatusOr<Json> dashboard = ParseJson(text);
//   for (const Json& panel : dashboard->Get("panels").array) ...
#pragma once

#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace tidepool::metrics::testing {

struct JsonMember;

struct Json {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> array;
  // A struct rather than std::pair: a pair of an incomplete Json is not
  // allowed in a vector (clang rejects it).
  std::vector<JsonMember> object;

  // The member `key` of an object, or nullptr.
  const Json* Find(std::string_view key) const;
  // The member `key`, or a null value when absent.
  const Json& Get(std::string_view key) const;
};

struct JsonMember {
  std::string key;
  Json value;
};

inline const Json* Json::Find(std::string_view key) const {
  for (const JsonMember& member : object) {
    if (member.key == key) return &member.value;
  }
  return nullptr;
}

inline const Json& Json::Get(std::string_view key) const {
  static const Json kNull;
  const Json* found = Find(key);
  return found != nullptr ? *found : kNull;
}

class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : text_(text) {}

  absl::StatusOr<Json> Parse() {
    Json value;
    if (!ParseValue(value)) return Error();
    SkipSpace();
    if (pos_ != text_.size()) return Error();
    return value;
  }

 private:
  absl::Status Error() const {
    return absl::InvalidArgumentError("JSON syntax error at offset " +
                                      std::to_string(pos_));
  }
  void SkipSpace() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\r' ||
            text_[pos_] == '\t')) {
      ++pos_;
    }
  }
  bool Consume(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }
  bool ParseValue(Json& out) {
    SkipSpace();
    if (pos_ >= text_.size()) return false;
    const char c = text_[pos_];
    if (c == '{') return ParseObject(out);
    if (c == '[') return ParseArray(out);
    if (c == '"') {
      out.kind = Json::Kind::kString;
      return ParseString(out.string);
    }
    if (Consume("true")) {
      out.kind = Json::Kind::kBool;
      out.boolean = true;
      return true;
    }
    if (Consume("false")) {
      out.kind = Json::Kind::kBool;
      return true;
    }
    if (Consume("null")) return true;
    const char* begin = text_.data() + pos_;
    char* end = nullptr;
    out.number = std::strtod(begin, &end);
    if (end == begin) return false;
    out.kind = Json::Kind::kNumber;
    pos_ += end - begin;
    return true;
  }
  bool ParseObject(Json& out) {
    out.kind = Json::Kind::kObject;
    ++pos_;
    SkipSpace();
    if (Consume("}")) return true;
    while (true) {
      SkipSpace();
      std::string key;
      if (pos_ >= text_.size() || text_[pos_] != '"' || !ParseString(key)) {
        return false;
      }
      SkipSpace();
      if (!Consume(":")) return false;
      Json value;
      if (!ParseValue(value)) return false;
      out.object.push_back({std::move(key), std::move(value)});
      SkipSpace();
      if (Consume("}")) return true;
      if (!Consume(",")) return false;
    }
  }
  bool ParseArray(Json& out) {
    out.kind = Json::Kind::kArray;
    ++pos_;
    SkipSpace();
    if (Consume("]")) return true;
    while (true) {
      Json value;
      if (!ParseValue(value)) return false;
      out.array.push_back(std::move(value));
      SkipSpace();
      if (Consume("]")) return true;
      if (!Consume(",")) return false;
    }
  }
  // Decodes escapes; \uXXXX becomes UTF-8 (surrogate pairs included).
  bool ParseString(std::string& out) {
    ++pos_;  // opening quote
    while (pos_ < text_.size()) {
      const char c = text_[pos_++];
      if (c == '"') return true;
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (pos_ >= text_.size()) return false;
      const char e = text_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out.push_back(e);
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'u': {
          unsigned code = 0;
          if (!ParseHex4(code)) return false;
          if (code >= 0xD800 && code < 0xDC00) {
            unsigned low = 0;
            if (!Consume("\\u") || !ParseHex4(low)) return false;
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          AppendUtf8(out, code);
          break;
        }
        default:
          return false;
      }
    }
    return false;
  }
  bool ParseHex4(unsigned& code) {
    if (pos_ + 4 > text_.size()) return false;
    for (int i = 0; i < 4; ++i) {
      const char h = text_[pos_++];
      code <<= 4;
      if (h >= '0' && h <= '9') {
        code |= h - '0';
      } else if (h >= 'a' && h <= 'f') {
        code |= h - 'a' + 10;
      } else if (h >= 'A' && h <= 'F') {
        code |= h - 'A' + 10;
      } else {
        return false;
      }
    }
    return true;
  }
  static void AppendUtf8(std::string& out, unsigned code) {
    if (code < 0x80) {
      out.push_back(static_cast<char>(code));
    } else if (code < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (code >> 6)));
      out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else if (code < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (code >> 12)));
      out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (code >> 18)));
      out.push_back(static_cast<char>(0x80 | ((code >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
    }
  }

  std::string_view text_;
  size_t pos_ = 0;
};

inline absl::StatusOr<Json> ParseJson(std::string_view text) {
  return JsonParser(text).Parse();
}

}  // namespace tidepool::metrics::testing
