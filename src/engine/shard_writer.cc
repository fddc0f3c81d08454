#include "engine/shard_writer.h"

#include <fcntl.h>

#include <cstring>
#include <unordered_set>

#include "format/crc32c.h"
#include "format/manifest.h"
#include "format/shard_header.h"
#include "io/aligned_buffer.h"
#include "os/fault.h"
#include "os/posix.h"

namespace shardwise::engine {
namespace {

using io::AlignUp;

// A contiguous part of one extent placed in a unit. Pieces start on a
// checksum-block boundary of their extent, so every block lies in one unit.
struct Piece {
  std::uint32_t item;
  std::uint64_t begin;  // byte offset within the item
  std::uint64_t length;
};

struct Unit {
  std::uint64_t offset;  // file offset
  std::uint64_t length;  // aligned
  std::vector<Piece> pieces;
};

// Strict UTF-8 (RFC 3629: no overlongs, no surrogates), the same rule the
// manifest's JSON parser applies, so every name we write can be read back.
bool ValidUtf8(std::string_view s) {
  auto in = [](unsigned char c, unsigned lo, unsigned hi) { return c >= lo && c <= hi; };
  for (std::size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) { ++i; continue; }
    int n;
    unsigned lo = 0x80, hi = 0xBF;  // range of the second byte
    if (in(c, 0xC2, 0xDF)) n = 1;
    else if (c == 0xE0) { n = 2; lo = 0xA0; }
    else if (in(c, 0xE1, 0xEC) || in(c, 0xEE, 0xEF)) n = 2;
    else if (c == 0xED) { n = 2; hi = 0x9F; }
    else if (c == 0xF0) { n = 3; lo = 0x90; }
    else if (in(c, 0xF1, 0xF3)) n = 3;
    else if (c == 0xF4) { n = 3; hi = 0x8F; }
    else return false;
    if (i + n >= s.size()) return false;
    if (!in(static_cast<unsigned char>(s[i + 1]), lo, hi)) return false;
    for (int k = 2; k <= n; ++k)
      if (!in(static_cast<unsigned char>(s[i + k]), 0x80, 0xBF)) return false;
    i += n + 1;
  }
  return true;
}

}  // namespace

Status ValidateWriteItem(const WriteItem& it) {
  std::string n = "item '" + it.name + "'";
  if (it.name.empty()) return InvalidArgument("an item has an empty name");
  if (it.name.size() > format::kMaxNameBytes)
    return InvalidArgument(n + ": name longer than 4096 bytes");
  if (it.name.find('\0') != std::string::npos || !ValidUtf8(it.name))
    return InvalidArgument(n + ": name must be valid UTF-8 without NUL");
  if (it.global_shape.size() > static_cast<std::size_t>(format::kMaxDims))
    return InvalidArgument(n + ": more than 64 dimensions");
  std::size_t nd = it.global_shape.size();
  if (!it.chunk_offsets.empty() && it.chunk_offsets.size() != nd)
    return InvalidArgument(n + ": chunk_offsets has the wrong rank");
  if (!it.chunk_sizes.empty() && it.chunk_sizes.size() != nd)
    return InvalidArgument(n + ": chunk_sizes has the wrong rank");
  if (it.kind == ItemKind::kBytes && (it.dtype != DType::kUInt8 || nd != 1))
    return InvalidArgument(n + ": a bytes item must be uint8 with shape [n]");
  std::uint64_t vol = 1;
  for (std::size_t d = 0; d < nd; ++d) {
    std::int64_t off = it.chunk_offsets.empty() ? 0 : it.chunk_offsets[d];
    std::int64_t size = it.chunk_sizes.empty() ? it.global_shape[d] : it.chunk_sizes[d];
    std::int64_t end;
    if (it.global_shape[d] < 0 || off < 0 || size < 0 ||
        __builtin_add_overflow(off, size, &end) || end > it.global_shape[d])
      return InvalidArgument(n + ": chunk lies outside the global shape in dimension " +
                             std::to_string(d));
    if (__builtin_mul_overflow(vol, static_cast<std::uint64_t>(size), &vol))
      return InvalidArgument(n + ": size overflows");
  }
  std::uint64_t bytes;
  if (__builtin_mul_overflow(vol, DTypeSize(it.dtype), &bytes) || bytes != it.nbytes)
    return InvalidArgument(n + ": nbytes " + std::to_string(it.nbytes) +
                           " does not match shape and dtype");
  if (it.nbytes > 0 && it.data == nullptr) return InvalidArgument(n + ": data is null");
  return Status::Ok();
}

Result<ShardIndex> WriteShard(const std::string& path, std::int32_t rank,
                              const std::string& save_id,
                              std::span<const WriteItem> items,
                              const Options& options, io::IoBackend& backend,
                              bool direct_io) {
  double t0 = os::MonotonicSeconds();
  const std::uint64_t block = options.checksum_block_bytes;
  const std::uint64_t unit_max = options.io_unit_bytes;
  if (save_id.size() > format::kMaxSaveIdBytes)
    return InvalidArgument("save id longer than 64 bytes");

  // Plan: extents after the header, each 4 KiB-aligned.
  std::unordered_set<std::string_view> seen;
  std::vector<std::uint64_t> extent(items.size());
  std::uint64_t cursor = format::kShardHeaderBytes;
  for (std::size_t i = 0; i < items.size(); ++i) {
    SW_RETURN_IF_ERROR(ValidateWriteItem(items[i]));
    if (!seen.insert(items[i].name).second)
      return InvalidArgument("item '" + items[i].name + "' was added twice");
    extent[i] = cursor;
    cursor = AlignUp(cursor + items[i].nbytes);
  }
  const std::uint64_t file_size = cursor;

  // Cut into units. Large items get units of their own; small ones are
  // packed together so that a layer's biases and norms cost one write.
  std::vector<Unit> units;
  units.push_back({0, format::kShardHeaderBytes, {}});
  for (std::uint32_t i = 0; i < items.size(); ++i) {
    std::uint64_t len = items[i].nbytes;
    if (len == 0) continue;
    Unit& last = units.back();
    std::uint64_t end_if_packed = extent[i] + AlignUp(len) - last.offset;
    if (end_if_packed <= unit_max) {
      last.pieces.push_back({i, 0, len});
      last.length = end_if_packed;
      continue;
    }
    for (std::uint64_t b = 0; b < len; b += unit_max) {
      std::uint64_t l = std::min(unit_max, len - b);
      units.push_back({extent[i] + b, AlignUp(l), {{i, b, l}}});
    }
  }

  std::vector<std::vector<std::uint32_t>> crcs(items.size());
  for (std::size_t i = 0; i < items.size(); ++i)
    crcs[i].resize(format::BlockCount(items[i].nbytes, block));

  // Open the file; O_EXCL so that a rank never writes into a file that
  // another attempt created.
  int flags = O_WRONLY | O_CREAT | O_EXCL | (direct_io ? O_DIRECT : 0);
  SW_ASSIGN_OR_RETURN(os::File file, os::Open(path, flags, 0644));
  SW_RETURN_IF_ERROR(os::Fallocate(file.fd(), 0, file_size, path));

  format::ShardHeader header{rank, file_size, block, save_id};
  std::vector<io::IoUnit> io_units(units.size());
  for (std::size_t u = 0; u < units.size(); ++u)
    io_units[u] = {file.fd(), &path, units[u].offset,
                   static_cast<std::uint32_t>(units[u].length)};

  auto fill = [&](std::size_t u, std::byte* buf) -> Status {
    const Unit& unit = units[u];
    std::uint64_t pos = 0;  // bytes of buf filled so far
    if (unit.offset == 0) {
      format::EncodeShardHeader(header, buf);
      pos = format::kShardHeaderBytes;
    }
    for (const Piece& p : unit.pieces) {
      std::uint64_t at = extent[p.item] + p.begin - unit.offset;
      if (at > pos) std::memset(buf + pos, 0, at - pos);
      const auto* src = static_cast<const std::byte*>(items[p.item].data) + p.begin;
      for (std::uint64_t b = 0; b < p.length; b += block) {
        std::uint64_t l = std::min(block, p.length - b);
        crcs[p.item][(p.begin + b) / block] =
            format::Crc32cCopy(buf + at + b, src + b, l);
      }
      pos = at + p.length;
    }
    if (pos < unit.length) std::memset(buf + pos, 0, unit.length - pos);
    return Status::Ok();
  };
  SW_RETURN_IF_ERROR(backend.Write(io_units, fill));
  // The data is written; make it (and the file size) durable.
  SW_RETURN_IF_ERROR(os::Fsync(file.fd(), path));
  SW_RETURN_IF_ERROR(file.Close());
  os::CrashPoint("shard_written");

  ShardIndex index;
  index.file = {os::Basename(path), rank, file_size, std::string(backend.name()),
                direct_io};
  index.items.reserve(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    const WriteItem& w = items[i];
    ItemRecord r;
    r.name = w.name;
    r.kind = w.kind;
    r.dtype = w.dtype;
    r.shape = w.global_shape;
    ChunkRecord c;
    c.offsets = w.chunk_offsets.empty()
                    ? std::vector<std::int64_t>(w.global_shape.size(), 0)
                    : w.chunk_offsets;
    c.sizes = w.chunk_sizes.empty() ? w.global_shape : w.chunk_sizes;
    c.file = 0;
    c.offset = w.nbytes == 0 ? 0 : extent[i];
    c.length = w.nbytes;
    c.crc32c = std::move(crcs[i]);
    r.chunks.push_back(std::move(c));
    index.items.push_back(std::move(r));
  }
  index.seconds = os::MonotonicSeconds() - t0;
  return index;
}

}  // namespace shardwise::engine
