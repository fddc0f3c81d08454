// libFuzzer target: the format-2 index (format/index.h) as a reader meets
// it on disk. The input is the index's logical stream; the target seals it
// into checksummed blocks (so the fuzzer gets past the CRCs) and builds the
// commit record from the input's own header fields (so it gets past the
// agreement checks), then opens it, resolves items whole and by box, reads
// file records and the whole index. Nothing may crash, hang or allocate
// from an unchecked count; whatever ReadAll accepts passes Validate.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "format/index.h"
#include "format/manifest.h"

using namespace shardwise;

namespace {

std::uint64_t U64(const std::string& s, std::size_t at) {
  std::uint64_t v = 0;
  std::memcpy(&v, s.data() + at, 8);
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string logical(reinterpret_cast<const char*>(data), size);
  const std::string bytes = format::SealIndexBlocks(logical);
  if (bytes.empty()) return 0;
  Manifest rec;
  rec.format_version = 2;
  rec.name = "step-000000000001";
  rec.save_id = "fuzz";
  rec.checksum_block = 1 << 20;
  if (logical.size() >= 160) {  // agree with what the header claims
    rec.world_size = static_cast<std::int32_t>(U64(logical, 8) % (1u << 20));
    rec.checksum_block = U64(logical, 16);
    rec.index.files = U64(logical, 24);
    rec.index.items = U64(logical, 32);
    rec.index.chunks = U64(logical, 40);
    rec.index.file_bytes = U64(logical, 88);
    rec.save_id = std::string(logical.data() + 96, 64).c_str();
  }
  if (rec.checksum_block == 0) rec.checksum_block = 1 << 20;
  rec.index.size = bytes.size();
  auto reader = format::IndexReader::Open(
      [&bytes](std::uint64_t off, std::size_t len, char* dst) -> Status {
        if (off > bytes.size() || len > bytes.size() - off)
          return Corrupt("fuzz: index is truncated", "fuzz");
        std::memcpy(dst, bytes.data() + off, len);
        return Status::Ok();
      },
      rec, "fuzz/index.swi");
  if (!reader.ok()) return 0;
  auto& r = **reader;
  const std::size_t n = std::min<std::size_t>(r.items().size(), 32);
  for (std::size_t i = 0; i < n; ++i) {
    (void)r.Chunks(i);
    const auto& shape = r.items()[i].shape;
    std::vector<std::int64_t> off(shape.size()), len(shape.size());
    for (std::size_t d = 0; d < shape.size(); ++d) {
      off[d] = shape[d] / 3;
      len[d] = shape[d] - off[d];
    }
    (void)r.ChunksOverlapping(i, off, len);
  }
  for (std::uint32_t f = 0; f < 32; ++f) (void)r.File(f);
  auto all = r.ReadAll();
  if (all.ok() && !format::Validate(*all, "fuzz").ok()) __builtin_trap();
  return 0;
}
