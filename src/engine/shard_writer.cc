#include "engine/shard_writer.h"

#include <fcntl.h>

#include <cstring>
#include <map>
#include <set>

#include "format/crc32c.h"
#include "format/json_reader.h"
#include "format/manifest.h"
#include "format/shard_header.h"
#include "io/aligned_buffer.h"
#include "os/fault.h"
#include "os/posix.h"

namespace shardwise::engine {
namespace {

using io::AlignUp;

}  // namespace

Status ValidateWriteItem(const WriteItem& it) {
  std::string n = "item '" + it.name + "'";
  if (it.name.empty()) return InvalidArgument("an item has an empty name");
  if (it.name.size() > format::kMaxNameBytes)
    return InvalidArgument(n + ": name longer than 4096 bytes");
  if (it.name.find('\0') != std::string::npos || !format::ValidUtf8(it.name))
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

Result<ShardPlan> PlanShard(std::span<const WriteItem> items, std::int32_t rank,
                            const std::string& save_id, const Options& options) {
  if (save_id.size() > format::kMaxSaveIdBytes)
    return InvalidArgument("save id longer than 64 bytes");
  ShardPlan plan;
  plan.block = options.checksum_block_bytes;
  plan.rank = rank;
  plan.save_id = save_id;
  const std::uint64_t unit_max = options.io_unit_bytes;

  // Extents after the header, each 4 KiB-aligned.
  // A rank may hold several chunks of one item (distinct offsets), never the
  // same chunk twice.
  std::set<std::pair<std::string_view, std::vector<std::int64_t>>> seen;
  std::map<std::string_view, std::size_t> first_of;
  plan.extent.resize(items.size());
  std::uint64_t cursor = format::kShardHeaderBytes;
  for (std::size_t i = 0; i < items.size(); ++i) {
    SW_RETURN_IF_ERROR(ValidateWriteItem(items[i]));
    if (!seen.insert({items[i].name, items[i].chunk_offsets}).second)
      return InvalidArgument("item '" + items[i].name + "' was added twice");
    if (auto [it, fresh] = first_of.try_emplace(items[i].name, i); !fresh) {
      const WriteItem& a = items[it->second];
      if (a.dtype != items[i].dtype || a.kind != items[i].kind ||
          a.global_shape != items[i].global_shape)
        return InvalidArgument("chunks of item '" + items[i].name +
                               "' disagree about dtype, kind or global shape");
    }
    plan.extent[i] = cursor;
    cursor = AlignUp(cursor + items[i].nbytes);
  }
  plan.file_size = cursor;

  // Large items get units of their own; small ones are packed together so
  // that a layer's biases and norms cost one write.
  plan.units.push_back({0, format::kShardHeaderBytes, {}});
  for (std::uint32_t i = 0; i < items.size(); ++i) {
    std::uint64_t len = items[i].nbytes;
    if (len == 0) continue;
    Unit& last = plan.units.back();
    std::uint64_t end_if_packed = plan.extent[i] + AlignUp(len) - last.offset;
    if (end_if_packed <= unit_max) {
      last.pieces.push_back({i, 0, len});
      last.length = end_if_packed;
      continue;
    }
    for (std::uint64_t b = 0; b < len; b += unit_max) {
      std::uint64_t l = std::min(unit_max, len - b);
      plan.units.push_back({plan.extent[i] + b, AlignUp(l), {{i, b, l}}});
    }
  }
  plan.crcs.resize(items.size());
  for (std::size_t i = 0; i < items.size(); ++i)
    plan.crcs[i].resize(format::BlockCount(items[i].nbytes, plan.block));
  return plan;
}

namespace {

// Walks unit u: header, then each piece (through `piece`), zeroing the gaps.
template <typename PieceFn>
void ForEachPiece(const ShardPlan& plan, std::size_t u, std::byte* dst, PieceFn piece) {
  const Unit& unit = plan.units[u];
  std::uint64_t pos = 0;
  if (unit.offset == 0) {
    format::EncodeShardHeader({plan.rank, plan.file_size, plan.block, plan.save_id}, dst);
    pos = format::kShardHeaderBytes;
  }
  for (const Piece& p : unit.pieces) {
    std::uint64_t at = plan.extent[p.item] + p.begin - unit.offset;
    if (at > pos) std::memset(dst + pos, 0, at - pos);
    piece(p, dst + at);
    pos = at + p.length;
  }
  if (pos < unit.length) std::memset(dst + pos, 0, unit.length - pos);
}

}  // namespace

void StageUnit(const ShardPlan& plan, std::span<const WriteItem> items, std::size_t u,
               std::byte* dst) {
  ForEachPiece(plan, u, dst, [&](const Piece& p, std::byte* at) {
    std::memcpy(at, static_cast<const std::byte*>(items[p.item].data) + p.begin, p.length);
  });
}

void ChecksumUnit(ShardPlan& plan, std::size_t u, const std::byte* image) {
  const Unit& unit = plan.units[u];
  for (const Piece& p : unit.pieces) {
    const std::byte* at = image + (plan.extent[p.item] + p.begin - unit.offset);
    for (std::uint64_t b = 0; b < p.length; b += plan.block) {
      std::uint64_t l = std::min(plan.block, p.length - b);
      plan.crcs[p.item][(p.begin + b) / plan.block] = format::Crc32c(at + b, l);
    }
  }
}

void FillUnit(ShardPlan& plan, std::span<const WriteItem> items, std::size_t u, std::byte* dst) {
  ForEachPiece(plan, u, dst, [&](const Piece& p, std::byte* at) {
    const auto* src = static_cast<const std::byte*>(items[p.item].data) + p.begin;
    for (std::uint64_t b = 0; b < p.length; b += plan.block) {
      std::uint64_t l = std::min(plan.block, p.length - b);
      plan.crcs[p.item][(p.begin + b) / plan.block] = format::Crc32cCopy(at + b, src + b, l);
    }
  });
}

Result<os::File> CreateShardFile(const ShardTarget& target, const ShardPlan& plan) {
  // O_EXCL: a rank never writes into a file another attempt created.
  int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | (target.direct_io ? O_DIRECT : 0);
  os::File file;
  if (target.placement) {
    SW_ASSIGN_OR_RETURN(file, target.placement->Create(target.path, flags, 0644, plan.file_size,
                                                      target.writers));
  } else {
    SW_ASSIGN_OR_RETURN(file, os::Open(target.path, flags, 0644));
  }
  SW_RETURN_IF_ERROR(os::Fallocate(file.fd(), 0, plan.file_size, target.path));
  return file;
}

ShardIndex MakeIndex(ShardPlan& plan, std::span<const WriteItem> items, const std::string& path,
                     std::string_view backend, bool direct_io) {
  ShardIndex index;
  index.file = {os::Basename(path), plan.rank, plan.file_size, std::string(backend), direct_io};
  std::map<std::string_view, std::size_t> by_name;  // chunks of one item share a record
  for (std::size_t i = 0; i < items.size(); ++i) {
    const WriteItem& w = items[i];
    auto [pos, fresh] = by_name.try_emplace(w.name, index.items.size());
    if (fresh) {
      ItemRecord r;
      r.name = w.name;
      r.kind = w.kind;
      r.dtype = w.dtype;
      r.shape = w.global_shape;
      index.items.push_back(std::move(r));
    }
    ChunkRecord c;
    c.offsets = w.chunk_offsets.empty() ? std::vector<std::int64_t>(w.global_shape.size(), 0)
                                        : w.chunk_offsets;
    c.sizes = w.chunk_sizes.empty() ? w.global_shape : w.chunk_sizes;
    c.file = 0;
    c.offset = w.nbytes == 0 ? 0 : plan.extent[i];
    c.length = w.nbytes;
    c.crc32c = std::move(plan.crcs[i]);
    index.items[pos->second].chunks.push_back(std::move(c));
  }
  return index;
}

Result<ShardIndex> WriteShard(const ShardTarget& target, std::int32_t rank,
                              const std::string& save_id, std::span<const WriteItem> items,
                              const Options& options, io::IoBackend& backend) {
  double t0 = os::MonotonicSeconds();
  const std::string& path = target.path;
  const bool direct_io = target.direct_io;
  SW_ASSIGN_OR_RETURN(ShardPlan plan, PlanShard(items, rank, save_id, options));
  SW_ASSIGN_OR_RETURN(os::File file, CreateShardFile(target, plan));
  std::vector<io::IoUnit> io_units(plan.units.size());
  for (std::size_t u = 0; u < plan.units.size(); ++u)
    io_units[u] = {file.fd(), &path, plan.units[u].offset,
                   static_cast<std::uint32_t>(plan.units[u].length)};
  SW_RETURN_IF_ERROR(backend.Write(io_units, [&](std::size_t u, std::byte* buf) {
    FillUnit(plan, items, u, buf);
    return Status::Ok();
  }));
  // The data is written; make it (and the file size) durable.
  SW_RETURN_IF_ERROR(os::Fsync(file.fd(), path));
  SW_RETURN_IF_ERROR(file.Close());
  os::CrashPoint("shard_written");
  ShardIndex index = MakeIndex(plan, items, path, backend.name(), direct_io);
  index.seconds = os::MonotonicSeconds() - t0;
  return index;
}

}  // namespace shardwise::engine
