// The semantic rules of docs/format.md that do not need the JSON: names,
// chunk geometry, extents inside their files, overlaps, embedded JSON.
// Parse applies them to what it read; writers apply them before sealing.
#include <algorithm>
#include <functional>
#include <optional>

#include "format/chunk_geometry.h"
#include "format/chunk_source.h"
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

// A name of `names` that appears twice, if any: open addressing over one
// table, no allocation per name (the gathered commit validates thousands of
// rank indexes of hundreds of items each).
std::optional<std::string_view> FirstRepeat(const std::vector<std::string_view>& names) {
  std::size_t cap = 16;
  while (cap < 2 * names.size()) cap *= 2;
  std::vector<std::uint32_t> slots(cap, 0);  // 1 + index into names, or 0
  const std::hash<std::string_view> hash;
  for (std::size_t i = 0; i < names.size(); ++i) {
    for (std::size_t h = hash(names[i]) & (cap - 1);; h = (h + 1) & (cap - 1)) {
      if (slots[h] == 0) {
        slots[h] = static_cast<std::uint32_t>(i + 1);
        break;
      }
      if (names[slots[h] - 1] == names[i]) return names[i];
    }
  }
  return std::nullopt;
}

}  // namespace

Status ValidateFiles(const std::vector<FileRecord>& files, std::int32_t world_size,
                     const std::string& path) {
  std::vector<std::string_view> file_names(files.size());
  for (std::size_t i = 0; i < files.size(); ++i) file_names[i] = files[i].name;
  if (auto rep = FirstRepeat(file_names))
    return Bad(path, "file '" + std::string(*rep) + "' is listed twice");
  for (const FileRecord& f : files) {
    // The parser checks this too; a manifest built otherwise (a decoded rank
    // index) must not name a path outside the checkpoint either.
    if (!names::IsSafeName(f.name))
      return Bad(path, "file '" + f.name +
                           "' is not a plain file name inside the checkpoint (no '/', no "
                           "'..', no leading '.')");
    if (f.name == names::kManifest) return Bad(path, "a data file may not be named manifest.json");
    if (f.rank >= world_size)
      return Bad(path, "file '" + f.name + "' has rank " + std::to_string(f.rank) +
                           " but world_size is " + std::to_string(world_size));
  }
  return Status::Ok();
}

namespace {

// Records chunk c's extent once its own rules hold.
Status ValidateChunk(const ChunkSource& s, std::size_t i, std::size_t c,
                     std::uint64_t checksum_block, const std::string& path,
                     FileExtents& per_file) {
  const ItemView it = s.Item(i);
  const ChunkView ch = s.Chunk(i, c);
  if (ch.file >= s.Files().size())
    return Bad(path, "item '" + std::string(it.name) + "' chunk " + std::to_string(c) +
                         ": file index out of range");
  SW_RETURN_IF_ERROR(
      ValidateChunkRecord(it, c, ch, s.Files()[ch.file], checksum_block, path));
  if (ch.length > 0) per_file[ch.file].push_back({ch.offset, ch.offset + ch.length, i});
  return Status::Ok();
}

// The chunks' extents within each file do not overlap.
Status CheckOverlaps(const ChunkSource& s, FileExtents& per_file, const std::string& path) {
  for (std::size_t f = 0; f < per_file.size(); ++f) {
    auto& v = per_file[f];
    auto by_begin = [](const Extent& a, const Extent& b) { return a.begin < b.begin; };
    // A writer lays a file's chunks out in order: usually nothing to sort.
    if (!std::is_sorted(v.begin(), v.end(), by_begin)) std::sort(v.begin(), v.end(), by_begin);
    for (std::size_t k = 1; k < v.size(); ++k)
      if (v[k].begin < v[k - 1].end)
        return Bad(path, "extents of items '" + std::string(s.Item(v[k - 1].item).name) +
                             "' and '" + std::string(s.Item(v[k].item).name) + "' overlap in file '" +
                             s.Files()[f].name + "'");
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

std::optional<std::uint64_t> Volume(std::span<const std::int64_t> shape) {
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
Status ValidateChunkRecord(const ItemView& it, std::size_t c, const ChunkView& ch,
                           const FileRecord& file, std::uint64_t checksum_block,
                           const std::string& path) {
  // Names for messages are built only on error: there may be a million.
  auto bad = [&](const std::string& what) {
    return Bad(path, "item '" + std::string(it.name) + "' chunk " + std::to_string(c) + ": " +
                         what);
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

Status ValidateItemHeader(const ItemView& it, const std::string& path) {
  auto iname = [&] { return "item '" + std::string(it.name) + "'"; };
  if (it.name.empty() || it.name.size() > kMaxNameBytes)
    return Bad(path, "item name must not be empty or longer than 4096 bytes");
  if (it.kind == ItemKind::kBytes && (it.dtype != DType::kUInt8 || it.shape.size() != 1))
    return Bad(path, iname() + ": a bytes item must be uint8 with a 1-d shape");
  if (it.shape.size() > static_cast<std::size_t>(kMaxDims))
    return Bad(path, iname() + ": shape exceeds the limit 64 dimensions");
  if (!Volume(it.shape)) return Bad(path, iname() + ": shape volume overflows");
  return Status::Ok();
}

// No two chunks of item i start at the same offsets. Chunks usually arrive
// in ascending order of their offsets (ranks report row slices in rank
// order): then one pass says so. Otherwise they are sorted, not hashed: no
// allocation per chunk.
bool DistinctStarts(const ChunkSource& s, std::size_t i) {
  const std::size_t n = s.ChunkCount(i);
  auto less = [](std::span<const std::int64_t> a, std::span<const std::int64_t> b) {
    return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end());
  };
  bool ascending = true;
  for (std::size_t k = 1; k < n && ascending; ++k)
    ascending = less(s.Chunk(i, k - 1).offsets, s.Chunk(i, k).offsets);
  if (ascending) return true;
  std::vector<std::span<const std::int64_t>> starts(n);
  for (std::size_t k = 0; k < n; ++k) starts[k] = s.Chunk(i, k).offsets;
  std::sort(starts.begin(), starts.end(), less);
  for (std::size_t k = 1; k < n; ++k)
    if (!less(starts[k - 1], starts[k])) return false;
  return true;
}

Tiling ItemTiling(const ChunkSource& s, std::size_t i) {
  const ItemView it = s.Item(i);
  const std::vector<std::int64_t> origin(it.shape.size(), 0);
  return CheckTiling(
      s.ChunkCount(i),
      [&](std::size_t k) {
        const ChunkView ch = s.Chunk(i, k);
        return Box{ch.offsets, ch.sizes};
      },
      {origin, it.shape});
}

Status TilingError(const ChunkSource& s, std::size_t i, const Tiling& t, const std::string& path) {
  const std::string name(s.Item(i).name);
  if (t.problem == Tiling::Problem::kOverlap)
    return Bad(path, "item '" + name + "': chunks " + std::to_string(t.first) + " and " +
                         std::to_string(t.second) + " overlap");
  if (t.problem == Tiling::Problem::kGap)
    return Bad(path, "item '" + name + "': its chunks do not cover its shape");
  if (t.problem == Tiling::Problem::kTooIrregular)
    return Bad(path, "item '" + name + "': its " + std::to_string(s.ChunkCount(i)) +
                         " chunks are neither a grid nor few enough to check for overlaps");
  return Status::Ok();
}

Status ValidateSource(const ChunkSource& s, std::int32_t world_size,
                      std::uint64_t checksum_block, const std::string& path) {
  SW_RETURN_IF_ERROR(ValidateFiles(s.Files(), world_size, path));
  std::vector<std::string_view> item_names(s.ItemCount());
  for (std::size_t i = 0; i < item_names.size(); ++i) item_names[i] = s.Item(i).name;
  if (auto rep = FirstRepeat(item_names))
    return Bad(path, "item '" + std::string(*rep) + "' is listed twice");
  FileExtents per_file(s.Files().size());
  for (std::size_t i = 0; i < s.ItemCount(); ++i) {
    const ItemView it = s.Item(i);
    auto iname = [&] { return "item '" + std::string(it.name) + "'"; };
    SW_RETURN_IF_ERROR(ValidateItemHeader(it, path));
    for (std::size_t c = 0; c < s.ChunkCount(i); ++c)
      SW_RETURN_IF_ERROR(ValidateChunk(s, i, c, checksum_block, path, per_file));
    if (!DistinctStarts(s, i)) return Bad(path, iname() + ": two chunks start at the same offsets");
    if (s.ChunkCount(i) < 2) continue;  // the common case of a rank's part
    if (Tiling t = ItemTiling(s, i); t.Refused()) return TilingError(s, i, t, path);
  }
  return CheckOverlaps(s, per_file, path);
}

Status Validate(const Manifest& m, const std::string& path) {
  if (!m.name.empty() && !names::IsSafeName(m.name))
    return Bad(path, "name '" + m.name + "' is not a safe directory name");
  SW_RETURN_IF_ERROR(ValidateSource(ManifestSource(m), m.world_size, m.checksum_block, path));
  return ValidateEmbeddedJson(m, path);
}

}  // namespace shardwise::format
