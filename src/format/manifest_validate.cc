// The semantic rules of docs/format.md that do not need the JSON: names,
// chunk geometry, extents inside their files, overlaps, embedded JSON.
// Parse applies them to what it read; writers apply them before sealing.
#include <algorithm>
#include <unordered_set>

#include "format/chunk_geometry.h"
#include "format/json_reader.h"
#include "format/manifest.h"
#include "shardwise/utf8.h"
#include "shardwise/names.h"

namespace shardwise::format {

namespace {

Status Bad(const std::string& path, const std::string& what) {
  return Corrupt(path + ": " + what, path);
}

// A chunk's bytes in one file, to check bounds and overlaps.
struct Extent {
  std::uint64_t begin, end;
  std::size_t item;
};
using FileExtents = std::vector<std::vector<Extent>>;  // per file index

Status ValidateFiles(const Manifest& m, const std::string& path) {
  std::unordered_set<std::string_view> file_names;
  for (const FileRecord& f : m.files) {
    // The parser checks this too; a manifest built otherwise (a decoded rank
    // index) must not name a path outside the checkpoint either.
    if (!names::IsSafeName(f.name))
      return Bad(path, "file '" + f.name +
                           "' is not a plain file name inside the checkpoint (no '/', no "
                           "'..', no leading '.')");
    if (!file_names.insert(f.name).second)
      return Bad(path, "file '" + f.name + "' is listed twice");
    if (f.name == names::kManifest) return Bad(path, "a data file may not be named manifest.json");
    if (f.rank >= m.world_size)
      return Bad(path, "file '" + f.name + "' has rank " + std::to_string(f.rank) +
                           " but world_size is " + std::to_string(m.world_size));
  }
  return Status::Ok();
}

// Records chunk c's extent once its own rules hold.
Status ValidateChunk(const Manifest& m, std::size_t i, std::size_t c, const std::string& path,
                     FileExtents& per_file) {
  const ItemRecord& it = m.items[i];
  const ChunkRecord& ch = it.chunks[c];
  if (ch.file >= m.files.size())
    return Bad(path, "item '" + it.name + "' chunk " + std::to_string(c) +
                         ": file index out of range");
  SW_RETURN_IF_ERROR(ValidateChunkRecord(it, c, ch, m.files[ch.file], m.checksum_block, path));
  if (ch.length > 0) per_file[ch.file].push_back({ch.offset, ch.offset + ch.length, i});
  return Status::Ok();
}

// No two chunks of an item start at the same offsets (sorted, not hashed:
// no allocation per chunk). `starts` is scratch space reused across items.
bool DistinctStarts(const ItemRecord& it, std::vector<const std::vector<std::int64_t>*>& starts) {
  if (it.chunks.size() <= 1) return true;
  starts.clear();
  for (const auto& ch : it.chunks) starts.push_back(&ch.offsets);
  std::sort(starts.begin(), starts.end(), [](auto* a, auto* b) { return *a < *b; });
  for (std::size_t k = 1; k < starts.size(); ++k)
    if (*starts[k] == *starts[k - 1]) return false;
  return true;
}

// The chunks' extents within each file do not overlap.
Status CheckOverlaps(const Manifest& m, FileExtents& per_file, const std::string& path) {
  for (std::size_t f = 0; f < per_file.size(); ++f) {
    auto& v = per_file[f];
    std::sort(v.begin(), v.end(),
              [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
    for (std::size_t k = 1; k < v.size(); ++k)
      if (v[k].begin < v[k - 1].end)
        return Bad(path, "extents of items '" + m.items[v[k - 1].item].name + "' and '" +
                             m.items[v[k].item].name + "' overlap in file '" + m.files[f].name +
                             "'");
  }
  return Status::Ok();
}

// user_json and dcp_json come from callers too: they must be valid JSON (an
// object, for user) so that the manifest stays valid.
Status ValidateEmbeddedJson(const Manifest& m, const std::string& path) {
  if (!m.user_json.empty()) {
    JsonReader u(m.user_json);
    if (!ValidUtf8(m.user_json) || u.Peek() != JsonReader::Kind::kObject || !u.Skip() ||
        !u.AtEnd())
      return Bad(path, "user metadata must be a JSON object");
  }
  if (!m.dcp_json.empty()) {
    JsonReader d(m.dcp_json);
    if (!ValidUtf8(m.dcp_json) || !d.Skip() || !d.AtEnd())
      return Bad(path, "dcp metadata must be valid JSON");
  }
  return Status::Ok();
}

}  // namespace

std::uint64_t BlockCount(std::uint64_t length, std::uint64_t block) {
  return (length + block - 1) / block;
}

std::optional<std::uint64_t> Volume(const std::vector<std::int64_t>& shape) {
  std::uint64_t v = 1;
  for (std::int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (__builtin_mul_overflow(v, static_cast<std::uint64_t>(d), &v))
      return std::nullopt;
  }
  return v;
}

// Where the chunk lies in its tensor (the rule the writer applies too, see
// chunk_geometry.h), then where it lies in its file.
Status ValidateChunkRecord(const ItemRecord& it, std::size_t c, const ChunkRecord& ch,
                           const FileRecord& file, std::uint64_t checksum_block,
                           const std::string& path) {
  // Names for messages are built only on error: there may be a million.
  auto bad = [&](const std::string& what) {
    return Bad(path, "item '" + it.name + "' chunk " + std::to_string(c) + ": " + what);
  };
  using P = ChunkFit::Problem;
  const ChunkFit fit = FitChunk(it.shape, ch.offsets, ch.sizes, DTypeSize(it.dtype));
  switch (fit.problem) {
    case P::kNone:
      break;
    case P::kOffsetsRank:
    case P::kSizesRank:
      return bad("offsets/sizes do not match the item's rank " + std::to_string(it.shape.size()));
    case P::kOutside:
      return bad("dimension " + std::to_string(fit.dim) + " lies outside the global shape");
    case P::kVolumeOverflow:
    case P::kBytesOverflow:
      return bad("size overflows");
  }
  if (fit.bytes != ch.length)
    return bad("length " + std::to_string(ch.length) + " does not match its shape and dtype (" +
               std::to_string(fit.bytes) + " bytes)");
  if (ch.offset % 4096 != 0)
    return bad("file offset " + std::to_string(ch.offset) + " is not 4096-aligned");
  std::uint64_t end;
  if (__builtin_add_overflow(ch.offset, ch.length, &end) || end > file.size)
    return bad("extent [" + std::to_string(ch.offset) + ", +" + std::to_string(ch.length) +
               ") lies outside file '" + file.name + "' of " + std::to_string(file.size) +
               " bytes");
  if (ch.length > 0 && ch.offset < 4096) return bad("extent overlaps the shard header");
  const std::uint64_t blocks = BlockCount(ch.length, checksum_block);
  if (ch.crc32c.size() != blocks)
    return bad("has " + std::to_string(ch.crc32c.size()) + " checksums, expected " +
               std::to_string(blocks));
  return Status::Ok();
}

Status ValidateItemHeader(const ItemRecord& it, const std::string& path) {
  auto iname = [&] { return "item '" + it.name + "'"; };
  if (it.name.empty() || it.name.size() > kMaxNameBytes)
    return Bad(path, "item name must not be empty or longer than 4096 bytes");
  if (it.kind == ItemKind::kBytes && (it.dtype != DType::kUInt8 || it.shape.size() != 1))
    return Bad(path, iname() + ": a bytes item must be uint8 with a 1-d shape");
  if (it.shape.size() > static_cast<std::size_t>(kMaxDims))
    return Bad(path, iname() + ": shape exceeds the limit 64 dimensions");
  if (!Volume(it.shape)) return Bad(path, iname() + ": shape volume overflows");
  return Status::Ok();
}

Status Validate(const Manifest& m, const std::string& path) {
  if (!m.name.empty() && !names::IsSafeName(m.name))
    return Bad(path, "name '" + m.name + "' is not a safe directory name");
  SW_RETURN_IF_ERROR(ValidateFiles(m, path));
  std::unordered_set<std::string_view> item_names;
  item_names.reserve(m.items.size());
  FileExtents per_file(m.files.size());
  std::vector<const std::vector<std::int64_t>*> starts;  // reused per item
  for (std::size_t i = 0; i < m.items.size(); ++i) {
    const ItemRecord& it = m.items[i];
    auto iname = [&] { return "item '" + it.name + "'"; };
    if (!item_names.insert(it.name).second) return Bad(path, iname() + " is listed twice");
    SW_RETURN_IF_ERROR(ValidateItemHeader(it, path));
    for (std::size_t c = 0; c < it.chunks.size(); ++c)
      SW_RETURN_IF_ERROR(ValidateChunk(m, i, c, path, per_file));
    if (!DistinctStarts(it, starts))
      return Bad(path, iname() + ": two chunks start at the same offsets");
  }
  SW_RETURN_IF_ERROR(CheckOverlaps(m, per_file, path));
  return ValidateEmbeddedJson(m, path);
}

}  // namespace shardwise::format
