// UTF-8 checks for names and messages: item names must be valid UTF-8,
// and messages that quote untrusted bytes (file names, damaged files) are
// made printable before they reach a user or another language.
#pragma once

#include <string>
#include <string_view>

namespace shardwise {

// Strict UTF-8 (RFC 3629: no overlongs, no surrogates).
bool ValidUtf8(std::string_view s);
// `s` with every byte that is not part of well-formed UTF-8 written as \xNN.
std::string ToValidUtf8(std::string_view s);

}  // namespace shardwise
