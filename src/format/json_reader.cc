#include "format/json_reader.h"

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace shardwise::format {

bool JsonReader::Fail(const char* why) {
  if (err_.empty()) err_ = std::string(why) + " at byte " + std::to_string(p_);
  return false;
}

void JsonReader::Ws() {
  while (p_ < t_.size() && (t_[p_] == ' ' || t_[p_] == '\n' || t_[p_] == '\r' || t_[p_] == '\t'))
    ++p_;
}

JsonReader::Kind JsonReader::Peek() {
  Ws();
  if (p_ >= t_.size()) return Kind::kInvalid;
  switch (t_[p_]) {
    case '{': return Kind::kObject;
    case '[': return Kind::kArray;
    case '"': return Kind::kString;
    case 't':
    case 'f': return Kind::kBool;
    case 'n': return Kind::kNull;
    default:
      return (t_[p_] == '-' || (t_[p_] >= '0' && t_[p_] <= '9')) ? Kind::kNumber : Kind::kInvalid;
  }
}

bool JsonReader::BeginObject() {
  Ws();
  if (p_ >= t_.size() || t_[p_] != '{') return Fail("expected '{'");
  ++p_;
  return true;
}

// Between members of an object or elements of an array: the closing
// character ends it, otherwise a comma must separate (except before the
// first).
JsonReader::Step JsonReader::Separator(char close, bool* first) {
  Ws();
  if (p_ < t_.size() && t_[p_] == close) {
    ++p_;
    return Step::kDone;
  }
  if (!*first) {
    if (p_ >= t_.size() || t_[p_] != ',')
      return Fail(close == '}' ? "expected ',' or '}'" : "expected ',' or ']'"), Step::kError;
    ++p_;
    Ws();
  }
  *first = false;
  return Step::kItem;
}

JsonReader::Step JsonReader::Key(bool* first, std::string* key) {
  Step s = Separator('}', first);
  if (s != Step::kItem) return s;
  if (!String(key)) return Step::kError;
  Ws();
  if (p_ >= t_.size() || t_[p_] != ':') return Fail("expected ':'"), Step::kError;
  ++p_;
  return Step::kItem;
}

bool JsonReader::BeginArray() {
  Ws();
  if (p_ >= t_.size() || t_[p_] != '[') return Fail("expected '['");
  ++p_;
  return true;
}

JsonReader::Step JsonReader::Element(bool* first) { return Separator(']', first); }

bool JsonReader::Literal(std::string_view word) {
  Ws();
  if (t_.substr(p_, word.size()) != word) return Fail("unexpected characters");
  p_ += word.size();
  return true;
}

bool JsonReader::ReadNull() { return Literal("null"); }

bool JsonReader::ReadBool(bool* out) {
  Ws();
  if (p_ < t_.size() && t_[p_] == 't') return *out = true, Literal("true");
  return *out = false, Literal("false");
}

bool JsonReader::Hex4(std::uint32_t* out) {
  if (p_ + 4 > t_.size()) return Fail("short \\u escape");
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    char c = t_[p_++];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= static_cast<std::uint32_t>(c - '0');
    else if (c >= 'a' && c <= 'f') v |= static_cast<std::uint32_t>(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= static_cast<std::uint32_t>(c - 'A' + 10);
    else return Fail("bad \\u escape");
  }
  *out = v;
  return true;
}

bool JsonReader::String(std::string* out) {
  Ws();
  if (p_ >= t_.size() || t_[p_] != '"') return Fail("expected a string");
  ++p_;
  const std::size_t start = p_;
  while (p_ < t_.size() && t_[p_] != '"' && t_[p_] != '\\') {
    if (static_cast<unsigned char>(t_[p_]) < 0x20) return Fail("control character in string");
    ++p_;
  }
  if (out) out->assign(t_.data() + start, p_ - start);
  while (p_ < t_.size() && t_[p_] != '"') {
    char c = t_[p_++];
    if (static_cast<unsigned char>(c) < 0x20) return Fail("control character in string");
    if (c != '\\') {
      if (out) *out += c;
      continue;
    }
    if (p_ >= t_.size()) break;
    char e = t_[p_++];
    char plain = e == '"' ? '"' : e == '\\' ? '\\' : e == '/' ? '/' : e == 'b' ? '\b'
               : e == 'f' ? '\f' : e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' : 0;
    if (plain) {
      if (out) *out += plain;
      continue;
    }
    if (e != 'u') return Fail("bad escape");
    std::uint32_t cp;
    if (!Hex4(&cp)) return false;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      std::uint32_t lo;
      if (t_.substr(p_, 2) != "\\u") return Fail("lone surrogate");
      p_ += 2;
      if (!Hex4(&lo) || lo < 0xDC00 || lo > 0xDFFF) return Fail("lone surrogate");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
      return Fail("lone surrogate");
    }
    if (!out) continue;
    if (cp < 0x80) {
      *out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      *out += static_cast<char>(0xC0 | (cp >> 6));
      *out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      *out += static_cast<char>(0xE0 | (cp >> 12));
      *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      *out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      *out += static_cast<char>(0xF0 | (cp >> 18));
      *out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      *out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  if (p_ >= t_.size()) return Fail("unterminated string");
  ++p_;
  return true;
}

bool JsonReader::ReadNumber(Number* n) {
  Ws();
  const std::size_t start = p_;
  if (p_ < t_.size() && t_[p_] == '-') ++p_;
  auto digit = [&] { return p_ < t_.size() && t_[p_] >= '0' && t_[p_] <= '9'; };
  if (!digit()) return Fail("expected a value");
  if (t_[p_] == '0' && p_ + 1 < t_.size() && t_[p_ + 1] >= '0' && t_[p_ + 1] <= '9')
    return Fail("leading zero");
  while (digit()) ++p_;
  bool integer = true;
  if (p_ < t_.size() && t_[p_] == '.') {
    integer = false;
    ++p_;
    if (!digit()) return Fail("bad number");
    while (digit()) ++p_;
  }
  if (p_ < t_.size() && (t_[p_] == 'e' || t_[p_] == 'E')) {
    integer = false;
    ++p_;
    if (p_ < t_.size() && (t_[p_] == '+' || t_[p_] == '-')) ++p_;
    if (!digit()) return Fail("bad number");
    while (digit()) ++p_;
  }
  const char* b = t_.data() + start;
  const char* e = t_.data() + p_;
  *n = Number{};
  n->negative = *b == '-';
  if (integer) {
    auto r = n->negative ? std::from_chars(b, e, n->i) : std::from_chars(b, e, n->u);
    if (r.ec == std::errc() && r.ptr == e) {
      n->integer = true;
      n->d = n->negative ? static_cast<double>(n->i) : static_cast<double>(n->u);
      return true;
    }
  }
  n->d = std::strtod(std::string(b, e).c_str(), nullptr);  // beyond 64 bits: a double
  return true;
}

bool JsonReader::Skip() { return Raw(nullptr); }

bool JsonReader::Raw(std::string_view* out) {
  Ws();
  const std::size_t start = p_;
  // Iterative: a stack of "in object" flags, bounded by kMaxDepth.
  std::vector<bool> stack;
  std::vector<bool> firsts;
  while (true) {
    Kind k = Peek();
    switch (k) {
      case Kind::kObject:
      case Kind::kArray:
        if (static_cast<int>(stack.size()) >= kMaxDepth) return Fail("nesting deeper than 256");
        ++p_;
        stack.push_back(k == Kind::kObject);
        firsts.push_back(true);
        break;
      case Kind::kString:
        if (!String(nullptr)) return false;
        break;
      case Kind::kNumber: {
        Number n;
        if (!ReadNumber(&n)) return false;
        break;
      }
      case Kind::kBool: {
        bool b;
        if (!ReadBool(&b)) return false;
        break;
      }
      case Kind::kNull:
        if (!ReadNull()) return false;
        break;
      case Kind::kInvalid:
        return Fail("expected a value");
    }
    // After a value (or an opened container): close containers / find the
    // next member.
    while (!stack.empty()) {
      bool first = firsts.back();
      Step s = stack.back() ? Key(&first, nullptr) : Element(&first);
      firsts.back() = first;
      if (s == Step::kError) return false;
      if (s == Step::kItem) break;  // a member value follows
      stack.pop_back();
      firsts.pop_back();
    }
    if (stack.empty()) break;
  }
  if (out) *out = t_.substr(start, p_ - start);
  return true;
}

bool JsonReader::AtEnd() {
  Ws();
  return p_ == t_.size();
}

}  // namespace shardwise::format
