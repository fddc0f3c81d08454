// Little-endian binary encoding shared by the rank index and the format-2
// index: LEB128 varints (zigzag for signed values), length-prefixed strings,
// fixed-width integers, and a bounds-checked cursor whose every failure is
// kCorrupt naming the file. Internal to src/format.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shardwise/status.h"

namespace shardwise::format::binary {

inline void PutVar(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>(v | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
inline void PutSigned(std::string& out, std::int64_t v) {
  PutVar(out, (static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63));
}
inline void PutStr(std::string& out, std::string_view s) {
  PutVar(out, s.size());
  out.append(s);
}
inline void PutU32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>(v >> (8 * i));
}
inline void PutDims(std::string& out, std::span<const std::int64_t> v) {
  for (std::int64_t x : v) PutSigned(out, x);
}

// A bounds-checked cursor; every read failure is kCorrupt naming `where_`.
class Cursor {
 public:
  Cursor(std::string_view data, const std::string& where, const char* what)
      : data_(data), where_(where), what_(what) {}
  Status Bad(const std::string& what) const {
    return Corrupt(where_ + ": " + what_ + " " + what + " (at byte " + std::to_string(pos_) + ")",
                   where_);
  }
  Result<std::uint64_t> Var(std::uint64_t max = UINT64_MAX) {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return Bad("is truncated");
      const auto b = static_cast<std::uint8_t>(data_[pos_++]);
      v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) {
        if (v > max) return Bad("holds a value out of range");
        return v;
      }
    }
    return Bad("holds an overlong number");
  }
  // Unchecked-style reads for inner loops: on failure they return 0 and the
  // cursor remembers the first failure, which Failed() reports. No Result
  // per value.
  std::uint64_t VarOr0(std::uint64_t max = UINT64_MAX) {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64 && pos_ < data_.size(); shift += 7) {
      const auto b = static_cast<std::uint8_t>(data_[pos_++]);
      v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v <= max ? v : Fail("holds a value out of range");
    }
    return Fail(pos_ >= data_.size() ? "is truncated" : "holds an overlong number");
  }
  std::int64_t SignedOr0() {
    const std::uint64_t z = VarOr0();
    return static_cast<std::int64_t>((z >> 1) ^ (~(z & 1) + 1));
  }
  std::uint32_t U32Or0() {
    if (data_.size() - pos_ < 4) return static_cast<std::uint32_t>(Fail("is truncated"));
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i)
      v |= static_cast<std::uint32_t>(static_cast<std::uint8_t>(data_[pos_++])) << (8 * i);
    return v;
  }
  bool failed() const { return failure_ != nullptr; }
  Status Failed() const {
    return Corrupt(where_ + ": " + what_ + " " + failure_ + " (at byte " +
                       std::to_string(failure_pos_) + ")",
                   where_);
  }

  Result<std::int64_t> Signed() {
    SW_ASSIGN_OR_RETURN(std::uint64_t z, Var());
    return static_cast<std::int64_t>((z >> 1) ^ (~(z & 1) + 1));
  }
  Result<std::string> Str(std::size_t max) {
    SW_ASSIGN_OR_RETURN(std::string_view v, View(max));
    return std::string(v);
  }
  // A string's bytes where they lie: valid while the data is.
  Result<std::string_view> View(std::size_t max) {
    SW_ASSIGN_OR_RETURN(std::uint64_t n, Var(max));
    if (n > data_.size() - pos_) return Bad("is truncated");
    std::string_view s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  Result<std::uint32_t> U32() {
    if (data_.size() - pos_ < 4) return Bad("is truncated");
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i)
      v |= static_cast<std::uint32_t>(static_cast<std::uint8_t>(data_[pos_++])) << (8 * i);
    return v;
  }
  Result<std::vector<std::int64_t>> Dims(std::size_t n) {
    std::vector<std::int64_t> v(n);
    for (auto& x : v) {
      SW_ASSIGN_OR_RETURN(x, Signed());
    }
    return v;
  }
  // A count of things of at least `min_bytes` each: never more than what is left.
  Result<std::size_t> Count(std::size_t min_bytes) {
    SW_ASSIGN_OR_RETURN(std::uint64_t n, Var());
    if (n > (data_.size() - pos_) / std::max<std::size_t>(min_bytes, 1))
      return Bad("declares more entries than it holds");
    return static_cast<std::size_t>(n);
  }
  std::size_t left() const { return data_.size() - pos_; }

 private:
  std::uint64_t Fail(const char* why) {
    if (!failure_) failure_ = why, failure_pos_ = pos_;
    pos_ = data_.size();  // every later read fails too
    return 0;
  }
  const char* failure_ = nullptr;
  std::size_t failure_pos_ = 0;
  std::string_view data_;
  const std::string& where_;
  const char* what_;
  std::size_t pos_ = 0;
};

inline void PutU64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out += static_cast<char>(v >> (8 * i));
}
inline std::uint64_t GetU64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(static_cast<std::uint8_t>(p[i])) << (8 * i);
  return v;
}
inline std::uint32_t GetU32(const char* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(static_cast<std::uint8_t>(p[i])) << (8 * i);
  return v;
}

}  // namespace shardwise::format::binary
