// libFuzzer target: the manifest/fragment parser and validator.
// Input: the text of a manifest. It is parsed as is, and (when it looks like
// a JSON object) sealed first, so that mutated inputs get past the
// self-checksum and reach the parser and the validator.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "format/manifest.h"

using namespace shardwise;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  for (std::string_view kind : {format::kManifestKind, format::kFragmentKind}) {
    (void)format::Parse(text, kind, "fuzz/manifest.json");
    // "{...}" without a trailer: seal it so the checksum matches.
    std::string body(text);
    while (!body.empty() && (body.back() == '\n' || body.back() == ' ')) body.pop_back();
    if (body.size() >= 2 && body.front() == '{' && body.back() == '}') {
      body.pop_back();  // Seal appends ,"self_crc32c":"..."} to the open object
      std::string sealed = format::Seal(body);
      auto m = format::Parse(sealed, kind, "fuzz/manifest.json");
      if (m.ok()) {
        // Whatever parses must serialize and parse back to an equal manifest.
        std::string again = format::Serialize(*m, kind);
        auto m2 = format::Parse(again, kind, "fuzz/again.json");
        if (!m2.ok() || format::Serialize(*m2, kind) != again) __builtin_trap();
      }
    }
  }
  return 0;
}
