#include "engine/shard_writer.h"

#include <fcntl.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <thread>

#include "common/parallel.h"
#include "engine/copy_count.h"
#include "format/chunk_geometry.h"
#include "format/crc32c.h"
#include "format/json_reader.h"
#include "format/manifest.h"
#include "format/shard_header.h"
#include "fs/recycle.h"
#include "io/aligned_buffer.h"
#include "os/fault.h"
#include "os/posix.h"
#include "shardwise/staging.h"
#include "shardwise/utf8.h"
#include "shardwise/names.h"

namespace shardwise::engine {

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
  // Omitted chunk_offsets mean zeros, omitted chunk_sizes the whole shape.
  // The geometry rule is format's (the one Validate applies to manifests);
  // its findings are reported in the writer's order: ranks, the bytes-item
  // rule, then bounds and size.
  static constexpr std::int64_t kZeros[format::kMaxDims] = {};
  using P = format::ChunkFit::Problem;
  const format::ChunkFit fit = format::FitChunk(
      it.global_shape,
      it.chunk_offsets.empty() ? std::span<const std::int64_t>(kZeros, nd)
                               : std::span<const std::int64_t>(it.chunk_offsets),
      it.chunk_sizes.empty() ? it.global_shape : it.chunk_sizes, DTypeSize(it.dtype));
  if (fit.problem == P::kOffsetsRank)
    return InvalidArgument(n + ": chunk_offsets has the wrong rank");
  if (fit.problem == P::kSizesRank) return InvalidArgument(n + ": chunk_sizes has the wrong rank");
  if (it.kind == ItemKind::kBytes && (it.dtype != DType::kUInt8 || nd != 1))
    return InvalidArgument(n + ": a bytes item must be uint8 with shape [n]");
  if (fit.problem == P::kOutside)
    return InvalidArgument(n + ": chunk lies outside the global shape in dimension " +
                           std::to_string(fit.dim));
  if (fit.problem == P::kVolumeOverflow) return InvalidArgument(n + ": size overflows");
  if (fit.problem == P::kBytesOverflow || fit.bytes != it.nbytes)
    return InvalidArgument(n + ": nbytes " + std::to_string(it.nbytes) +
                           " does not match shape and dtype");
  if (it.nbytes > 0 && it.data == nullptr) return InvalidArgument(n + ": data is null");
  return Status::Ok();
}

namespace {

// Splits items into at most `parts` contiguous groups of about equal bytes,
// at item boundaries: an item goes to the group its middle byte falls in.
// Returns each item's group (non-decreasing).
std::vector<std::uint32_t> PartitionItems(std::span<const WriteItem> items, int parts) {
  std::vector<std::uint32_t> group(items.size(), 0);
  if (parts <= 1) return group;
  std::uint64_t total = 0;
  for (const auto& it : items) total += it.nbytes;
  if (total == 0) return group;
  std::uint64_t acc = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const long double mid = static_cast<long double>(acc) + items[i].nbytes / 2.0L;
    auto g = static_cast<std::uint32_t>(mid * parts / static_cast<long double>(total));
    g = std::min<std::uint32_t>(g, static_cast<std::uint32_t>(parts - 1));
    group[i] = i == 0 ? g : std::max(g, group[i - 1]);
    acc += items[i].nbytes;
  }
  return group;
}

}  // namespace

namespace {

// Appends item i's units to the plan (the last unit is of its file).
void PlaceItem(ShardPlan& plan, std::uint32_t i, std::uint64_t len, Source from,
               const std::byte* mem, std::uint64_t unit_max, std::uint64_t base) {
  const std::uint64_t at = plan.extent[i];
  const std::uint32_t f = plan.item_file[i];
  // Whole-page units written from memory, cut at unit_max; `exact`: the
  // last one ends with the item instead of at a page boundary.
  auto from_memory = [&](std::uint64_t bytes, bool exact) {
    for (std::uint64_t b = 0; b < bytes; b += unit_max) {
      const std::uint64_t l = std::min(unit_max, bytes - b);
      plan.units.push_back({at + b, exact ? l : io::AlignUp(l), {{i, b, l, false}}, f,
                            base + at + b, mem + b});
    }
  };
  // Copied into filled units: packed into the previous one when it is a
  // filled unit with room, else in units of their own cut at unit_max.
  auto copied = [&](std::uint64_t begin, bool checksum) {
    Unit& last = plan.units.back();
    const std::uint64_t end_if_packed = at + io::AlignUp(len) - last.offset;
    if (!last.src && end_if_packed <= unit_max &&
        last.offset + last.length == at + begin) {
      last.pieces.push_back({i, begin, len - begin, checksum});
      last.length = end_if_packed;
      return;
    }
    for (std::uint64_t b = begin; b < len; b += unit_max) {
      const std::uint64_t l = std::min(unit_max, len - b);
      plan.units.push_back({at + b, io::AlignUp(l), {{i, b, l, checksum}}, f, base + at + b});
    }
  };
  switch (from) {
    case Source::kCopy:
      copied(0, true);
      return;
    case Source::kStaged: {
      // Staged items whose memory runs on from one another share a unit.
      Unit& last = plan.units.back();
      const std::uint64_t end_if_packed = at + io::AlignUp(len) - last.offset;
      if (last.src && last.src + last.length == mem && end_if_packed <= unit_max &&
          last.length % io::kAlignment == 0) {
        last.pieces.push_back({i, 0, len, false});
        last.length = end_if_packed;
        return;
      }
      from_memory(io::AlignUp(len), false);
      plan.units.back().pieces.back().length = len - (plan.units.back().pieces.back().begin);
      return;
    }
    case Source::kExact:
      from_memory(len, true);
      return;
    case Source::kPages: {
      const std::uint64_t body = io::AlignDown(len);
      from_memory(body, false);
      if (body < len) copied(body, false);  // the tail: copied, checksummed from memory
      return;
    }
  }
}

}  // namespace

Result<ShardPlan> PlanShard(std::span<const WriteItem> items, std::int32_t rank,
                            const std::string& save_id, const Options& options,
                            std::span<const Source> sources) {
  if (save_id.size() > format::kMaxSaveIdBytes)
    return InvalidArgument("save id longer than 64 bytes");
  if (!sources.empty() && sources.size() != items.size())
    return Status(StatusCode::kInternal, "PlanShard: one source per item");
  ShardPlan plan;
  plan.block = options.checksum_block_bytes;
  plan.rank = rank;
  plan.save_id = save_id;
  const std::uint64_t unit_max = options.io_unit_bytes;

  // A rank may hold several chunks of one item (distinct offsets), never the
  // same chunk twice.
  std::set<std::pair<std::string_view, std::vector<std::int64_t>>> seen;
  std::map<std::string_view, std::size_t> first_of;
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
  }

  // Part files: groups of whole items. Empty groups get no file.
  std::vector<std::uint32_t> group = PartitionItems(items, options.files_per_rank);
  std::uint32_t groups = items.empty() ? 1 : group.back() + 1;
  std::vector<std::uint32_t> file_of_group(groups, UINT32_MAX);
  std::vector<bool> used(groups, false);
  for (auto g : group) used[g] = true;
  std::uint32_t nfiles = 0;
  for (std::uint32_t g = 0; g < groups; ++g)
    if (used[g]) file_of_group[g] = nfiles++;
  if (nfiles == 0) nfiles = 1;  // no items: one file with just its header

  // Extents after each file's header, each 4 KiB-aligned.
  plan.extent.resize(items.size());
  plan.item_file.resize(items.size());
  plan.file_sizes.assign(nfiles, format::kShardHeaderBytes);
  for (std::size_t i = 0; i < items.size(); ++i) {
    std::uint32_t f = file_of_group[group[i]];
    plan.item_file[i] = f;
    plan.extent[i] = plan.file_sizes[f];
    plan.file_sizes[f] = io::AlignUp(plan.file_sizes[f] + items[i].nbytes);
  }

  // Units, file by file; the header unit is filled.
  std::uint64_t base = 0;
  for (std::uint32_t f = 0; f < nfiles; ++f) {
    plan.units.push_back({0, format::kShardHeaderBytes, {}, f, base});
    for (std::uint32_t i = 0; i < items.size(); ++i) {
      const std::uint64_t len = items[i].nbytes;
      if (len == 0 || plan.item_file[i] != f) continue;
      const Source from = sources.empty() ? Source::kCopy : sources[i];
      PlaceItem(plan, i, len, from, static_cast<const std::byte*>(items[i].data), unit_max,
                base);
    }
    base += plan.file_sizes[f];
  }
  plan.total_size = base;
  plan.crcs.resize(items.size());
  for (std::size_t i = 0; i < items.size(); ++i)
    plan.crcs[i].resize(format::BlockCount(items[i].nbytes, plan.block));
  return plan;
}

void EncodeHeader(const ShardPlan& plan, std::uint32_t file, std::byte* dst) {
  format::EncodeShardHeader({plan.rank, plan.file_sizes[file], plan.block, plan.save_id}, dst);
}

namespace {

// Walks unit u: header, then each piece (through `piece`), zeroing the gaps.
template <typename PieceFn>
void ForEachPiece(const ShardPlan& plan, std::size_t u, std::byte* dst, PieceFn piece) {
  const Unit& unit = plan.units[u];
  std::uint64_t pos = 0;
  if (unit.offset == 0) {
    EncodeHeader(plan, unit.file, dst);
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

std::uint64_t FillUnit(ShardPlan& plan, std::span<const WriteItem> items, std::size_t u,
                       std::byte* dst) {
  std::uint64_t copied = 0;
  ForEachPiece(plan, u, dst, [&](const Piece& p, std::byte* at) {
    const auto* src = static_cast<const std::byte*>(items[p.item].data) + p.begin;
    if (!p.checksum) {
      std::memcpy(at, src, p.length);  // checksummed from the item's memory
    } else {
      for (std::uint64_t b = 0; b < p.length; b += plan.block) {
        std::uint64_t l = std::min(plan.block, p.length - b);
        plan.crcs[p.item][(p.begin + b) / plan.block] = format::Crc32cCopy(at + b, src + b, l);
      }
    }
    // Serialized values (kBytes) are made for the save, not state copied.
    if (items[p.item].kind == ItemKind::kTensor) copied += p.length;
  });
  return copied;
}

namespace {

// Makes a recycled part file read as the new file will: its new size, and
// zeros wherever no unit writes (padding after items written byte for byte,
// and the end of the file).
Status ClearRecycled(const os::File& file, const ShardPlan& plan, std::uint32_t part) {
  const std::uint64_t size = plan.file_sizes[part];
  SW_RETURN_IF_ERROR(os::Ftruncate(file.fd(), size, file.path()));
  std::uint64_t at = 0;  // everything before is written by units or zeroed
  for (const Unit& u : plan.units) {  // by file, then ascending offset
    if (u.file != part) continue;
    if (u.offset > at) SW_RETURN_IF_ERROR(os::ZeroRange(file.fd(), at, u.offset - at, file.path()));
    at = std::max(at, u.offset + u.length);
  }
  if (size > at) SW_RETURN_IF_ERROR(os::ZeroRange(file.fd(), at, size - at, file.path()));
  return Status::Ok();
}

}  // namespace

Result<std::vector<os::File>> CreateShardFiles(const ShardTarget& target, const ShardPlan& plan) {
  // O_EXCL: a rank never writes into a file another attempt created.
  int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | (target.direct_io ? O_DIRECT : 0);
  const int nfiles = static_cast<int>(plan.file_sizes.size());
  std::vector<os::File> files;
  for (int p = 0; p < nfiles; ++p) {
    std::string path = names::ShardPartPath(target.path, static_cast<std::size_t>(p));
    os::File file;
    std::optional<os::File> recycled;
    // A Lustre layout is set as a file is created: a recycled file keeps
    // whatever layout it had.
    if (!target.recycle_root.empty() && !(target.placement && target.placement->fs().lustre))
      recycled = fs::TakeRecycled(target.recycle_root, path, plan.file_sizes[p], flags);
    if (recycled) {
      // Renamed into this save's staging directory (atomically, never over
      // an existing file): no other attempt has it.
      file = std::move(*recycled);
      SW_RETURN_IF_ERROR(ClearRecycled(file, plan, static_cast<std::uint32_t>(p)));
    } else if (target.placement) {
      SW_ASSIGN_OR_RETURN(file, target.placement->Create(path, flags, 0644, plan.file_sizes[p],
                                                        target.writers * nfiles));
    } else {
      SW_ASSIGN_OR_RETURN(file, os::Open(path, flags, 0644));
    }
    SW_RETURN_IF_ERROR(os::Fallocate(file.fd(), 0, plan.file_sizes[p], path));
    files.push_back(std::move(file));
  }
  return files;
}

ShardIndex MakeIndex(ShardPlan& plan, std::span<const WriteItem> items, const std::string& path,
                     std::string_view backend, bool direct_io) {
  ShardIndex index;
  for (std::size_t p = 0; p < plan.file_sizes.size(); ++p)
    index.files.push_back({os::Basename(names::ShardPartPath(path, p)), plan.rank, plan.file_sizes[p],
                           std::string(backend), direct_io});
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
    c.file = plan.item_file[i];
    c.offset = w.nbytes == 0 ? 0 : plan.extent[i];
    c.length = w.nbytes;
    c.crc32c = std::move(plan.crcs[i]);
    index.items[pos->second].chunks.push_back(std::move(c));
  }
  return index;
}

namespace {
// Items smaller than this are copied and packed with their neighbours: one
// write for a layer's biases and norms rather than one each.
constexpr std::uint64_t kOwnWritesMinBytes = 256 << 10;
}  // namespace

std::vector<Source> ChooseSources(std::span<const WriteItem> items, bool direct_io,
                                  std::vector<std::shared_ptr<StagingLease>>* leases) {
  std::vector<Source> sources(items.size(), Source::kCopy);
  for (std::size_t i = 0; i < items.size(); ++i) {
    const WriteItem& w = items[i];
    if (w.nbytes == 0) continue;
    const bool aligned = reinterpret_cast<std::uintptr_t>(w.data) % io::kAlignment == 0;
    if (aligned) {
      auto lease = StagingLease::Find(w.data, io::AlignUp(w.nbytes));
      if (lease && lease->IsStagedExtent(w.data, w.nbytes)) {
        sources[i] = Source::kStaged;
        if (std::find(leases->begin(), leases->end(), lease) == leases->end())
          leases->push_back(std::move(lease));
        continue;
      }
    }
    if (w.nbytes < kOwnWritesMinBytes) continue;
    if (!direct_io) sources[i] = Source::kExact;
    else if (aligned) sources[i] = Source::kPages;
  }
  return sources;
}

void ChecksumFromSource(ShardPlan& plan, std::span<const WriteItem> items,
                        std::span<const Source> sources, int threads) {
  struct Block {
    std::uint32_t item;
    std::uint64_t index;
  };
  std::vector<Block> blocks;
  for (std::uint32_t i = 0; i < items.size(); ++i)
    if (!sources.empty() && sources[i] != Source::kCopy)
      for (std::uint64_t b = 0; b < plan.crcs[i].size(); ++b) blocks.push_back({i, b});
  ParallelFor(0, blocks.size(), threads, [&](std::size_t k) {
    const Block& blk = blocks[k];
    const std::uint64_t off = blk.index * plan.block;
    const auto* data = static_cast<const std::byte*>(items[blk.item].data);
    plan.crcs[blk.item][blk.index] =
        format::Crc32c(data + off, std::min(plan.block, items[blk.item].nbytes - off));
  });
}

Result<ShardIndex> WriteShard(const ShardTarget& target, std::int32_t rank,
                              const std::string& save_id, std::span<const WriteItem> items,
                              const Options& options, io::IoBackend& backend,
                              const std::function<void()>& released) {
  double t0 = os::MonotonicSeconds();
  os::PausePoint("write_shard");
  const std::string& path = target.path;
  const bool direct_io = target.direct_io;
  std::vector<std::shared_ptr<StagingLease>> leases;  // held until written
  const std::vector<Source> sources = ChooseSources(items, direct_io, &leases);
  for (const auto& lease : leases) SW_RETURN_IF_ERROR(lease->WaitStaged());
  SW_ASSIGN_OR_RETURN(ShardPlan plan, PlanShard(items, rank, save_id, options, sources));
  SW_ASSIGN_OR_RETURN(std::vector<os::File> files, CreateShardFiles(target, plan));
  std::vector<io::IoUnit> io_units(plan.units.size());
  bool exact_ends = false;
  for (std::size_t u = 0; u < plan.units.size(); ++u) {
    const os::File& f = files[plan.units[u].file];
    io_units[u] = {f.fd(), &f.path(), plan.units[u].offset,
                   static_cast<std::uint32_t>(plan.units[u].length), plan.units[u].src};
    exact_ends = exact_ends || plan.units[u].length % io::kAlignment != 0;
  }
  // Items written from their memory are checksummed from it in a pass of
  // their own, on the rank's cores, while the writes run; copied items are
  // checksummed as they are copied. All part files' units go in one batch:
  // they are written in parallel.
  std::thread checksums(
      [&] { ChecksumFromSource(plan, items, sources, options.EffectiveThreads()); });
  std::atomic<std::uint64_t> copied{0};
  std::atomic<std::size_t> filled{0};
  bool any_direct = false;
  for (const Unit& u : plan.units) any_direct = any_direct || u.src;
  std::atomic<bool> told{false};
  auto release = [&] {
    if (released && !told.exchange(true)) released();
  };
  Status written = backend.Write(io_units, [&](std::size_t u, std::byte* buf) {
    if (!plan.units[u].src) copied.fetch_add(FillUnit(plan, items, u, buf));
    // Item memory is free once every unit is copied, unless some are
    // written from it (then once the writes and checksums are done).
    if (filled.fetch_add(1) + 1 == plan.units.size() && !any_direct) release();
    return Status::Ok();
  });
  checksums.join();
  release();
  SW_RETURN_IF_ERROR(written);
  AddCopiedStateBytes(copied.load());
  for (std::size_t p = 0; p < files.size(); ++p) {
    // A file whose last item was written byte for byte still gets its
    // padded size (fallocate gave it already where the filesystem has it).
    if (exact_ends) SW_RETURN_IF_ERROR(os::Ftruncate(files[p].fd(), plan.file_sizes[p],
                                                      files[p].path()));
    // The data is written; make it (and the file sizes) durable.
    SW_RETURN_IF_ERROR(os::Fsync(files[p].fd(), files[p].path()));
    SW_RETURN_IF_ERROR(files[p].Close());
  }
  os::CrashPoint("shard_written");
  ShardIndex index = MakeIndex(plan, items, path, backend.name(), direct_io);
  index.seconds = os::MonotonicSeconds() - t0;
  index.copied_bytes = copied.load();
  return index;
}

}  // namespace shardwise::engine
