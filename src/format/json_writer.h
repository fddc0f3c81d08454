// The few JSON-writing helpers the manifest serializer needs. Output is
// appended to a caller's string so that a manifest of a million chunks is
// built in one buffer, without a JSON tree.
#pragma once

#include <charconv>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace shardwise::format {

// Appends `s` as a JSON string literal: quotes, backslashes and control
// characters escaped; other bytes copied as they are (callers pass UTF-8).
void AppendEscaped(std::string& out, std::string_view s);

// Appends `v` with `decimals` digits after the point ("%.*f").
void AppendFixed(std::string& out, double v, int decimals);

// Appends an integer in decimal.
template <typename T>
void AppendInt(std::string& out, T v) {
  char buf[24];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, p);
}

// Appends a JSON array of integers ("[1,2,3]").
template <typename T>
void AppendIntArray(std::string& out, const std::vector<T>& v) {
  out += '[';
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out += ',';
    AppendInt(out, v[i]);
  }
  out += ']';
}

}  // namespace shardwise::format
