// A streaming (pull) JSON reader: the manifest parser walks the text and fills
// its structs directly, with no tree in between. Strict RFC 8259 syntax; UTF-8
// is checked once over the whole text by the caller. Skipping and capturing
// nested values is iterative with a depth limit, so hostile input cannot
// exhaust the stack.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace shardwise::format {

class JsonReader {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject, kInvalid };
  enum class Step { kItem, kDone, kError };

  struct Number {
    bool integer = false;   // no fraction or exponent, and fits 64 bits
    bool negative = false;
    std::uint64_t u = 0;    // magnitude when integer and not negative
    std::int64_t i = 0;     // value when integer and negative
    double d = 0;
  };

  static constexpr int kMaxDepth = 256;

  explicit JsonReader(std::string_view text) : t_(text) {}

  // The kind of the next value (after white space); consumes nothing.
  Kind Peek();
  // Objects: Begin, then Key() until kDone (key may be null: skipped).
  // Arrays: Begin, then Element().
  bool BeginObject();
  Step Key(bool* first, std::string* key);
  bool BeginArray();
  Step Element(bool* first);
  bool String(std::string* out);
  bool ReadNumber(Number* out);
  bool ReadBool(bool* out);
  bool ReadNull();
  // Skips any value; Raw also returns its exact text.
  bool Skip();
  bool Raw(std::string_view* out);
  // Only white space is left.
  bool AtEnd();

  const std::string& error() const { return err_; }
  std::size_t pos() const { return p_; }

 private:
  bool Fail(const char* why);
  Step Separator(char close, bool* first);
  void Ws();
  bool Literal(std::string_view word);
  bool Hex4(std::uint32_t* out);

  std::string_view t_;
  std::size_t p_ = 0;
  std::string err_;
};

}  // namespace shardwise::format
