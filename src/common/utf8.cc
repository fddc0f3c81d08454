#include "shardwise/utf8.h"

#include <cstdio>

namespace shardwise {

namespace {

// Length of the well-formed UTF-8 sequence starting at s[i], or 0.
std::size_t Utf8Length(std::string_view s, std::size_t i) {
  auto in = [](unsigned char c, unsigned lo, unsigned hi) { return c >= lo && c <= hi; };
  auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return 1;
  std::size_t n;
  unsigned lo = 0x80, hi = 0xBF;  // range of the second byte
  if (in(c, 0xC2, 0xDF)) n = 1;
  else if (c == 0xE0) n = 2, lo = 0xA0;
  else if (in(c, 0xE1, 0xEC) || in(c, 0xEE, 0xEF)) n = 2;
  else if (c == 0xED) n = 2, hi = 0x9F;
  else if (c == 0xF0) n = 3, lo = 0x90;
  else if (in(c, 0xF1, 0xF3)) n = 3;
  else if (c == 0xF4) n = 3, hi = 0x8F;
  else return 0;
  if (i + n >= s.size()) return 0;
  if (!in(static_cast<unsigned char>(s[i + 1]), lo, hi)) return 0;
  for (std::size_t k = 2; k <= n; ++k)
    if (!in(static_cast<unsigned char>(s[i + k]), 0x80, 0xBF)) return 0;
  return n + 1;
}

}  // namespace

bool ValidUtf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    std::size_t n = Utf8Length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string ToValidUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    std::size_t n = Utf8Length(s, i);
    if (n == 0) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", static_cast<unsigned char>(s[i]));
      out += buf;
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

}  // namespace shardwise
