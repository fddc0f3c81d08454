#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <optional>
#include <span>

#include "common/parallel.h"
#include "format/chunk_geometry.h"
#include "format/crc32c.h"
#include "format/index.h"
#include "format/manifest.h"
#include "format/shard_header.h"
#include "fs/io_mode.h"
#include "io/aligned_buffer.h"
#include "io/backend.h"
#include "os/posix.h"
#include "shardwise/reader.h"
#include "shardwise/names.h"

namespace shardwise {
namespace {

// A contiguous byte run of a read: `len` bytes from chunk byte `src` to
// destination byte `dst`. Runs of one request ascend in `src`.
struct Run {
  std::uint64_t src, dst, len;
};

// A unit of I/O: consecutive checksum blocks of one chunk.
struct ReadUnit {
  std::size_t request;        // index into the request list (or chunk list)
  const ItemRecord* item;
  std::size_t chunk;
  std::uint64_t first_block;
  std::uint64_t nblocks;
  bool in_place = false;      // read straight into the destination
};

std::string Dims(const std::vector<std::int64_t>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

// Enumerates the runs copying box (o, L) of a chunk of shape S into a
// row-major destination of shape D at position p.
std::vector<Run> MakeRuns(const std::vector<std::int64_t>& S,
                          const std::vector<std::int64_t>& o,
                          const std::vector<std::int64_t>& L,
                          const std::vector<std::int64_t>& D,
                          const std::vector<std::int64_t>& p, std::uint64_t esize) {
  const std::size_t n = S.size();
  std::vector<Run> runs;
  for (std::int64_t l : L)
    if (l == 0) return runs;
  if (n == 0) return {{0, 0, esize}};
  // Strides in elements.
  std::vector<std::uint64_t> ss(n), ds(n);
  ss[n - 1] = ds[n - 1] = 1;
  for (std::size_t d = n - 1; d > 0; --d) {
    ss[d - 1] = ss[d] * static_cast<std::uint64_t>(S[d]);
    ds[d - 1] = ds[d] * static_cast<std::uint64_t>(D[d]);
  }
  // Merge trailing dims where both sides are contiguous.
  std::size_t k = n - 1;
  std::uint64_t run_elems = static_cast<std::uint64_t>(L[k]);
  while (k > 0 && L[k] == S[k] && L[k] == D[k]) {
    --k;
    run_elems *= static_cast<std::uint64_t>(L[k]);
  }
  std::vector<std::int64_t> idx(k, 0);
  while (true) {
    std::uint64_t s = 0, t = 0;
    for (std::size_t d = 0; d < k; ++d) {
      s += static_cast<std::uint64_t>(o[d] + idx[d]) * ss[d];
      t += static_cast<std::uint64_t>(p[d] + idx[d]) * ds[d];
    }
    s += static_cast<std::uint64_t>(o[k]) * ss[k];
    t += static_cast<std::uint64_t>(p[k]) * ds[k];
    runs.push_back({s * esize, t * esize, run_elems * esize});
    std::size_t d = k;
    while (d > 0) {
      --d;
      if (++idx[d] < L[d]) break;
      idx[d] = 0;
      if (d == 0) return runs;
    }
    if (k == 0) return runs;
  }
}

}  // namespace

struct CheckpointReader::Impl {
  std::string dir;
  Options options;
  Manifest manifest;  // format 2: the commit record until LoadAll
  std::unique_ptr<io::IoBackend> backend;
  bool direct_io = false;
  // Shard files, opened when first needed. A checkpoint of thousands of
  // ranks has thousands of files: at most max_open stay open; beyond that
  // the idle ones (no read in progress uses them: pins 0) are closed, and
  // opened (and checked) again if needed again.
  std::mutex mu;  // the members below
  std::vector<std::optional<os::File>> files;
  std::vector<Status> file_status;  // result of the last open
  std::vector<bool> opened;         // opened and checked (file_status says how)
  std::vector<std::uint32_t> pins;  // reads in progress that use the file
  std::deque<std::uint32_t> open_order;  // open files, oldest first
  std::size_t max_open = 0;
  // Format 2: the index, and what was resolved from it (records live as
  // long as the reader; Read accepts only items handed out here).
  std::mutex index_mu;
  std::optional<os::File> index_file;
  std::unique_ptr<format::IndexReader> index;
  std::vector<std::optional<FileRecord>> file_recs;
  std::unordered_map<std::string, const ItemRecord*> whole_items;
  std::deque<ItemRecord> resolved;
  std::unordered_set<const ItemRecord*> known;
  std::uint64_t manifest_bytes = 0;
  // LoadAll ran: manifest.files and items are complete, and never change
  // again. Set (release) after they are written; readers that see it
  // (acquire) read them without a lock, others go through the index.
  std::atomic<bool> loaded{false};

  std::size_t FileCount() const {
    return index && !loaded ? file_recs.size() : manifest.files.size();
  }

  // File record f: from the manifest, or resolved from the index once.
  const FileRecord& FileRec(std::uint32_t f) {
    if (!index || loaded) return manifest.files[f];
    std::lock_guard lock(index_mu);
    if (!file_recs[f]) {
      auto rec = index->File(f);
      // A record that cannot be read names the file by its number; opening
      // it then fails with the index's error.
      FileRecord unreadable;
      unreadable.name = "(index record " + std::to_string(f) + ")";
      file_recs[f] = rec.ok() ? *rec : unreadable;
    }
    return *file_recs[f];
  }

  std::string FilePath(std::uint32_t f) { return os::JoinPath(dir, FileRec(f).name); }

  // Format 2: the items named, resolved from the index (whole, or the
  // chunks overlapping a box).
  Result<const ItemRecord*> Resolve(std::string_view name, const std::vector<std::int64_t>* offsets,
                                    const std::vector<std::int64_t>* sizes);
  // Resolve's lookup, without keeping the record: index_mu held by the
  // caller; lookups of several items may run at once under it.
  Result<ItemRecord> LookUp(std::string_view name, const std::vector<std::int64_t>* offsets,
                            const std::vector<std::int64_t>* sizes);
  // Keeps a looked-up record for the reader's life; index_mu held.
  const ItemRecord* Keep(ItemRecord rec, bool whole) {
    const ItemRecord* out = &resolved.emplace_back(std::move(rec));
    known.insert(out);
    if (whole) whole_items.emplace(out->name, out);
    return out;
  }

  bool Known(const ItemRecord* it) {
    std::lock_guard lock(index_mu);
    return known.count(it) != 0;
  }

  Status OpenIndex() {
    const std::string path = os::JoinPath(dir, names::kIndex);
    auto file = os::Open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
    if (!file.ok()) {
      if (file.status().err() == ENOENT)
        return Corrupt(path + ": missing (manifest.json is format 2 and names it)", path);
      if (file.status().err() == ELOOP)
        return Corrupt(path + ": is a symbolic link; refusing to follow it", path);
      return file.status();
    }
    SW_ASSIGN_OR_RETURN(const struct stat st, os::Fstat(file->fd(), path));
    if (!S_ISREG(st.st_mode)) return Corrupt(path + ": not a regular file", path);
    // A regular file: reads block as usual (Lustre would take O_NONBLOCK
    // for non-blocking lock requests).
    SW_RETURN_IF_ERROR(os::ClearNonBlocking(file->fd(), path));
    if (static_cast<std::uint64_t>(st.st_size) != manifest.index.size)
      return Corrupt(path + ": size is " + std::to_string(st.st_size) +
                         " bytes, manifest.json says " + std::to_string(manifest.index.size),
                     path);
    index_file = std::move(*file);
    const int fd = index_file->fd();
    SW_ASSIGN_OR_RETURN(index, format::IndexReader::Open(
                                   [fd, path](std::uint64_t off, std::size_t len, char* dst) {
                                     return os::PreadAll(fd, dst, len, off, path);
                                   },
                                   manifest, path));
    file_recs.resize(manifest.index.files);
    return Status::Ok();
  }

  // Opens file f (once, until it is closed as idle) and checks its type,
  // size and header; on success it stays open, pinned, until Unpin(f).
  Status PinFile(std::uint32_t f) {
    std::lock_guard lock(mu);
    if (!opened[f]) {
      if (open_order.size() >= max_open) CloseIdle();
      opened[f] = true;
      file_status[f] = OpenAndCheck(f);
      if (file_status[f].ok()) open_order.push_back(f);
    }
    if (file_status[f].ok()) ++pins[f];
    return file_status[f];
  }

  void Unpin(std::uint32_t f) {
    std::lock_guard lock(mu);
    --pins[f];
  }

  // The files one read (or one step of a verify) uses, pinned until it ends.
  struct Pins {
    Impl& m;
    std::vector<std::uint32_t> held;
    ~Pins() {
      for (std::uint32_t f : held) m.Unpin(f);
    }
    Status Pin(std::uint32_t f) {
      SW_RETURN_IF_ERROR(m.PinFile(f));
      held.push_back(f);
      return Status::Ok();
    }
  };

  // With mu held: closes idle files, oldest first, down to half the cap
  // (so that a scan of many files closes in batches, not one per open).
  void CloseIdle() {
    std::deque<std::uint32_t> keep;
    std::size_t left = open_order.size();
    for (std::uint32_t f : open_order) {
      if (pins[f] == 0 && left > max_open / 2) {
        files[f].reset();
        opened[f] = false;
        --left;
      } else {
        keep.push_back(f);
      }
    }
    open_order.swap(keep);
  }

  Status OpenAndCheck(std::uint32_t f) {
    if (index && !loaded) {
      std::lock_guard lock(index_mu);
      SW_ASSIGN_OR_RETURN(FileRecord r, index->File(f));
      file_recs[f] = std::move(r);
    }
    const FileRecord& rec = FileRec(f);
    std::string path = FilePath(f);
    // O_NOFOLLOW: a shard that is a symlink (maybe pointing outside the
    // checkpoint) is refused. O_NONBLOCK: opening a FIFO must not hang.
    // O_DIRECT is switched on after the type check: opening a FIFO or device
    // with it fails with EINVAL before we could say what is wrong.
    auto file = os::Open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
    if (!file.ok()) {
      if (file.status().err() == ELOOP)
        return Corrupt(path + ": is a symbolic link; shard files must be regular files",
                       path);
      if (file.status().err() == ENOENT)
        return Corrupt(path + ": missing (the manifest lists it)", path);
      return file.status();
    }
    SW_ASSIGN_OR_RETURN(const struct stat st, os::Fstat(file->fd(), path));
    if (!S_ISREG(st.st_mode)) return Corrupt(path + ": not a regular file", path);
    SW_RETURN_IF_ERROR(os::ClearNonBlocking(file->fd(), path));  // as for the index
    SW_RETURN_IF_ERROR(os::SetDirectIo(file->fd(), direct_io, path));
    if (static_cast<std::uint64_t>(st.st_size) != rec.size)
      return Corrupt(path + ": size is " + std::to_string(st.st_size) +
                         " bytes, the manifest says " + std::to_string(rec.size) +
                         (static_cast<std::uint64_t>(st.st_size) < rec.size
                              ? " (truncated)"
                              : " (extra bytes)"),
                     path);
    if (rec.size < format::kShardHeaderBytes)
      return Corrupt(path + ": too small for a shard header", path);
    io::AlignedBuffer hdr(format::kShardHeaderBytes);
    SW_RETURN_IF_ERROR(os::PreadAll(file->fd(), hdr.data(), format::kShardHeaderBytes, 0, path));
    SW_ASSIGN_OR_RETURN(format::ShardHeader h, format::DecodeShardHeader(hdr.data(), path));
    if (h.rank != rec.rank)
      return Corrupt(path + ": header says rank " + std::to_string(h.rank) +
                         ", the manifest says " + std::to_string(rec.rank),
                     path);
    if (h.save_id != manifest.save_id)
      return Corrupt(path + ": written by save attempt '" + h.save_id +
                         "', the manifest belongs to '" + manifest.save_id + "'",
                     path);
    if (h.file_size != rec.size || h.checksum_block != manifest.checksum_block)
      return Corrupt(path + ": header disagrees with the manifest (size or block size)",
                     path);
    files[f] = std::move(*file);
    return Status::Ok();
  }

  Status Mismatch(const ItemRecord& it, std::size_t c, std::uint64_t block,
                  std::uint32_t stored, std::uint32_t actual) {
    const ChunkRecord& ch = it.chunks[c];
    char buf[64];
    std::snprintf(buf, sizeof buf, "stored %08" PRIx32 ", computed %08" PRIx32, stored, actual);
    std::string path = FilePath(ch.file);
    return Corrupt("checksum mismatch in item '" + it.name + "' (chunk at offsets " +
                       Dims(ch.offsets) + "): file " + path + ", bytes " +
                       std::to_string(ch.offset + block * manifest.checksum_block) +
                       "..+" +
                       std::to_string(std::min(manifest.checksum_block,
                                               ch.length - block * manifest.checksum_block)) +
                       " (" + buf + ")",
                   path);
  }

  // Adds units covering blocks [b0, b1] of a chunk.
  void AddUnits(std::size_t req, const ItemRecord* it, std::size_t c, std::uint64_t b0,
                std::uint64_t b1, std::vector<ReadUnit>& out,
                std::vector<io::IoUnit>& io_units) {
    const ChunkRecord& ch = it->chunks[c];
    const std::uint64_t B = manifest.checksum_block;
    const std::uint64_t per_unit = std::max<std::uint64_t>(1, options.io_unit_bytes / B);
    for (std::uint64_t b = b0; b <= b1; b += per_unit) {
      std::uint64_t nb = std::min(per_unit, b1 - b + 1);
      std::uint64_t bytes = std::min(nb * B, ch.length - b * B);
      out.push_back({req, it, c, b, nb});
      io_units.push_back({files[ch.file]->fd(), nullptr, ch.offset + b * B,
                          static_cast<std::uint32_t>(io::AlignUp(bytes))});
    }
  }

  void FixPaths(std::vector<ReadUnit>& units, std::vector<io::IoUnit>& io_units,
                std::vector<std::string>& paths) {
    paths.resize(FileCount());
    for (std::size_t u = 0; u < units.size(); ++u) {
      std::uint32_t f = units[u].item->chunks[units[u].chunk].file;
      if (paths[f].empty()) paths[f] = FilePath(f);
      io_units[u].path = &paths[f];
    }
  }

  // Buffered reads need no alignment: a unit whose bytes land in one
  // contiguous run of the destination is read straight into it and
  // checked there (no copy out of an I/O buffer).
  void ReadInPlace(std::vector<ReadUnit>& units, std::vector<io::IoUnit>& io_units,
                   const std::vector<std::vector<Run>>& runs,
                   std::span<const ReadRequest> requests) const {
    const std::uint64_t B = manifest.checksum_block;
    for (std::size_t k = 0; k < units.size(); ++k) {
      ReadUnit& u = units[k];
      const ChunkRecord& ch = u.item->chunks[u.chunk];
      const std::uint64_t lo = u.first_block * B;
      const std::uint64_t hi = std::min((u.first_block + u.nblocks) * B, ch.length);
      const auto& rs = runs[u.request];
      auto it = std::upper_bound(rs.begin(), rs.end(), lo,
                                 [](std::uint64_t v, const Run& r) { return v < r.src + r.len; });
      if (it == rs.end() || it->src > lo || it->src + it->len < hi) continue;
      u.in_place = true;
      io_units[k].dst = static_cast<std::byte*>(requests[u.request].dst) + it->dst + (lo - it->src);
      io_units[k].length = static_cast<std::uint32_t>(hi - lo);
    }
  }

  // Checks unit u's blocks in `buf`: with `runs`, copying each into `dst`
  // on the way; without, where they are (verify, or a read in place, which
  // has no padding to check).
  Status CheckBlocks(const ReadUnit& u, const std::byte* buf, const std::vector<Run>* runs,
                     std::byte* dst, bool padding = true) {
    const ChunkRecord& ch = u.item->chunks[u.chunk];
    const std::uint64_t B = manifest.checksum_block;
    for (std::uint64_t k = 0; k < u.nblocks; ++k) {
      std::uint64_t b = u.first_block + k;
      std::uint64_t lo = b * B, len = std::min(B, ch.length - lo), hi = lo + len;
      const std::byte* src = buf + k * B;
      std::uint32_t stored = ch.crc32c[b];
      if (!runs) {
        std::uint32_t actual = format::Crc32c(src, len);
        if (actual != stored) return Mismatch(*u.item, u.chunk, b, stored, actual);
        // Verification also checks the zero padding after the chunk's last
        // block, so a flipped byte anywhere in a file we wrote is found.
        if (padding && k + 1 == u.nblocks && hi == ch.length) {
          std::uint64_t pad = io::AlignUp(ch.offset + hi) - (ch.offset + hi);
          for (std::uint64_t i = 0; i < pad; ++i)
            if (src[len + i] != std::byte{0})
              return Corrupt("non-zero padding after item '" + u.item->name + "' in file " +
                                 FilePath(ch.file) + " at byte " +
                                 std::to_string(ch.offset + hi + i),
                             FilePath(ch.file));
        }
        continue;
      }
      // First run ending after lo.
      auto it = std::upper_bound(runs->begin(), runs->end(), lo,
                                 [](std::uint64_t v, const Run& r) { return v < r.src + r.len; });
      if (it != runs->end() && it->src <= lo && it->src + it->len >= hi) {
        // One run covers the block: copy and check in one pass.
        std::uint32_t actual = format::Crc32cCopy(dst + it->dst + (lo - it->src), src, len);
        if (actual != stored) return Mismatch(*u.item, u.chunk, b, stored, actual);
        continue;
      }
      std::uint32_t actual = format::Crc32c(src, len);
      if (actual != stored) return Mismatch(*u.item, u.chunk, b, stored, actual);
      for (; it != runs->end() && it->src < hi; ++it) {
        std::uint64_t a = std::max(lo, it->src), e = std::min(hi, it->src + it->len);
        if (a < e) std::memcpy(dst + it->dst + (a - it->src), src + (a - lo), e - a);
      }
    }
    return Status::Ok();
  }
};

CheckpointReader::CheckpointReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CheckpointReader::~CheckpointReader() = default;

const Manifest& CheckpointReader::manifest() const { return impl_->manifest; }
const std::string& CheckpointReader::dir() const { return impl_->dir; }
std::string_view CheckpointReader::backend_name() const { return impl_->backend->name(); }

Status CheckpointReader::LoadAll() {
  Impl& m = *impl_;
  std::lock_guard lock(m.index_mu);
  if (!m.index || m.loaded) return Status::Ok();
  SW_ASSIGN_OR_RETURN(Manifest all, m.index->ReadAll());
  // Items resolved before stay valid: they live in `resolved`.
  m.manifest.files = std::move(all.files);
  m.manifest.items = std::move(all.items);
  for (const auto& it : m.manifest.items) m.known.insert(&it);
  m.loaded = true;
  return Status::Ok();
}

Result<std::string> CheckpointReader::ManifestJson() {
  SW_RETURN_IF_ERROR(LoadAll());
  Manifest copy = impl_->manifest;
  copy.format_version = 1;  // the schema that lists files and items
  return format::Serialize(copy, format::kManifestKind);
}

const std::vector<ItemRecord>& CheckpointReader::ItemHeaders() const {
  return impl_->index ? impl_->index->items() : impl_->manifest.items;
}

namespace {

// No two of the item's chunks share an element of the box (the whole shape
// when offsets is null). A read fills its destination from the chunks: an
// element in two is damage to report rather than to leave as the last write
// made it. (Whether every element lies in a chunk is asked where a whole
// tensor is read, ReadItem: a checkpoint may hold part of an item, as a
// rank's local-tier checkpoint holds its own shard.)
Status CheckTiles(const ItemRecord& it, const std::vector<std::int64_t>* offsets,
                  const std::vector<std::int64_t>* sizes, const std::string& dir) {
  const std::vector<std::int64_t> origin(it.shape.size(), 0);
  const format::Box box = offsets ? format::Box{*offsets, *sizes} : format::Box{origin, it.shape};
  const format::Tiling t = format::CheckTiling(
      it.chunks.size(),
      [&](std::size_t k) { return format::Box{it.chunks[k].offsets, it.chunks[k].sizes}; }, box);
  const std::string what = "item '" + it.name + "' in " + dir;
  if (t.problem == format::Tiling::Problem::kOverlap)
    return Corrupt(what + ": its chunks at offsets " + Dims(it.chunks[t.first].offsets) + " and " +
                       Dims(it.chunks[t.second].offsets) + " overlap", dir);
  if (t.problem == format::Tiling::Problem::kTooIrregular)
    return Corrupt(what + ": its " + std::to_string(it.chunks.size()) +
                       " chunks are neither a grid nor few enough to check for overlaps",
                   dir);
  return Status::Ok();
}

}  // namespace

Result<const ItemRecord*> CheckpointReader::Impl::Resolve(std::string_view name,
                                                          const std::vector<std::int64_t>* offsets,
                                                          const std::vector<std::int64_t>* sizes) {
  std::lock_guard lock(index_mu);
  if (!offsets)
    if (auto hit = whole_items.find(std::string(name)); hit != whole_items.end()) return hit->second;
  SW_ASSIGN_OR_RETURN(ItemRecord rec, LookUp(name, offsets, sizes));
  return Keep(std::move(rec), !offsets);
}

Result<ItemRecord> CheckpointReader::Impl::LookUp(std::string_view name,
                                                  const std::vector<std::int64_t>* offsets,
                                                  const std::vector<std::int64_t>* sizes) {
  const std::size_t i = index->Find(name);
  if (i == index->items().size()) return NotFound("no item '" + std::string(name) + "' in " + dir);
  ItemRecord rec = index->items()[i];
  if (offsets) {
    SW_ASSIGN_OR_RETURN(rec.chunks, index->ChunksOverlapping(i, *offsets, *sizes));
  } else {
    SW_ASSIGN_OR_RETURN(rec.chunks, index->Chunks(i));
  }
  SW_RETURN_IF_ERROR(CheckTiles(rec, offsets, sizes, dir));
  return rec;
}

std::vector<Result<const ItemRecord*>> CheckpointReader::ItemParts(
    std::span<const PartQuery> queries) {
  std::vector<Result<const ItemRecord*>> out;
  out.reserve(queries.size());
  if (!impl_->index) {
    for (const PartQuery& q : queries) out.push_back(Item(q.name));
    return out;
  }
  Impl& m = *impl_;
  std::lock_guard lock(m.index_mu);
  std::vector<Result<ItemRecord>> found(queries.size(), Status(StatusCode::kInternal, "unread"));
  // The lookups wait on reads of index blocks far more than on the CPU
  // (a cold index on a parallel filesystem is a round trip per block):
  // many in flight, whatever the core count. 64 against 16 took a cold
  // lookup of 200 items at 16,384 ranks from 22-29 ms to 19-21 ms here
  // (docs/PERFORMANCE.md).
  ParallelFor(0, queries.size(), static_cast<int>(std::min<std::size_t>(queries.size(), 64)),
              [&](std::size_t k) {
                found[k] = m.LookUp(queries[k].name, &queries[k].offsets, &queries[k].sizes);
              });
  for (auto& f : found)
    out.push_back(f.ok() ? Result<const ItemRecord*>(m.Keep(std::move(*f), false))
                         : Result<const ItemRecord*>(f.status()));
  return out;
}

Result<const ItemRecord*> CheckpointReader::Item(std::string_view name) {
  if (!impl_->index) {
    const ItemRecord* it = impl_->manifest.FindItem(name);
    if (!it) return NotFound("no item '" + std::string(name) + "' in " + impl_->dir);
    return it;  // Parse refused overlapping chunks
  }
  return impl_->Resolve(name, nullptr, nullptr);
}

Result<const ItemRecord*> CheckpointReader::ItemPart(std::string_view name,
                                                     const std::vector<std::int64_t>& offsets,
                                                     const std::vector<std::int64_t>& sizes) {
  if (!impl_->index) return Item(name);
  return impl_->Resolve(name, &offsets, &sizes);
}

std::uint64_t CheckpointReader::metadata_bytes_read() const {
  // No lock: the index is set at Open and counts atomically, so asking
  // never waits for an ItemParts batch.
  return impl_->manifest_bytes + (impl_->index ? impl_->index->bytes_read() : 0);
}

Result<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(const std::string& dir,
                                                                 const Options& options) {
  SW_RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  impl->options = options;
  std::string mpath = os::JoinPath(dir, names::kManifest);
  auto text = os::ReadSmallFile(mpath, format::kMaxManifestBytes);
  if (!text.ok()) {
    if (text.status().err() == ENOENT)
      return NotFound(dir + " is not a committed checkpoint (no manifest.json)", dir);
    if (text.status().err() == ELOOP)
      return Corrupt(mpath + ": is a symbolic link; refusing to follow it", mpath);
    return text.status();
  }
  SW_ASSIGN_OR_RETURN(impl->manifest, format::Parse(*text, format::kManifestKind, mpath));
  impl->manifest_bytes = text->size();
  // A read unit holds whole checksum blocks: the I/O buffers must hold the
  // checkpoint's block (written with a larger io_unit than this reader's).
  impl->options.io_unit_bytes =
      std::max(impl->options.io_unit_bytes, impl->manifest.checksum_block);
  SW_ASSIGN_OR_RETURN(impl->backend, io::MakeIoBackend(impl->options));
  // Reads use O_DIRECT where the root's I/O mode says so (where it works,
  // but not on memory filesystems), so verification sees the storage and
  // not the page cache. Deciding it writes nothing (fs::ReadModeFor).
  SW_ASSIGN_OR_RETURN(fs::IoMode mode, fs::ReadModeFor(os::Dirname(dir), mpath, options));
  impl->direct_io = mode.direct_reads;
  if (impl->manifest.format_version >= 2) SW_RETURN_IF_ERROR(impl->OpenIndex());
  std::size_t nf = impl->FileCount();
  impl->files.resize(nf);
  impl->file_status.resize(nf);
  impl->opened.assign(nf, false);
  impl->pins.assign(nf, 0);
  // Half of what the process may open, so that the application keeps the
  // rest (RLIMIT_NOFILE's soft limit is 1024 on many systems).
  struct rlimit lim {};
  const rlim_t cur = ::getrlimit(RLIMIT_NOFILE, &lim) == 0 ? lim.rlim_cur : 1024;
  impl->max_open = static_cast<std::size_t>(
      std::clamp<rlim_t>(cur == RLIM_INFINITY ? 65536 : cur / 2, 8, 65536));
  return std::unique_ptr<CheckpointReader>(new CheckpointReader(std::move(impl)));
}

Status CheckpointReader::Read(std::span<const ReadRequest> requests) {
  Impl& m = *impl_;
  // Format 1: the manifest's items, which never change. Format 2: the items
  // handed out (LoadAll may replace manifest.items meanwhile; it adds them).
  const auto& items = m.manifest.items;
  auto ours = [&](const ItemRecord* it) {
    if (!it) return false;
    if (m.index) return m.Known(it);
    return it >= items.data() && it < items.data() + items.size();
  };
  for (std::size_t r = 0; r < requests.size(); ++r) {
    const ReadRequest& q = requests[r];
    if (!ours(q.item))
      return InvalidArgument("read request " + std::to_string(r) +
                             ": item does not belong to this checkpoint");
    if (q.chunk >= q.item->chunks.size())
      return InvalidArgument("read of item '" + q.item->name + "': no such chunk");
  }
  // In groups that keep at most half the files that may stay open in use at
  // once: a read of an item saved by thousands of ranks (or of a whole
  // checkpoint) must not run out of file descriptors.
  std::unordered_set<std::uint32_t> files;
  std::size_t start = 0;
  for (std::size_t r = 0; r < requests.size(); ++r) {
    const std::uint32_t f = requests[r].item->chunks[requests[r].chunk].file;
    if (!files.count(f) && files.size() >= std::max<std::size_t>(1, m.max_open / 2)) {
      SW_RETURN_IF_ERROR(ReadGroup(requests.subspan(start, r - start)));
      start = r;
      files.clear();
    }
    files.insert(f);
  }
  return ReadGroup(requests.subspan(start));
}

Status CheckpointReader::ReadGroup(std::span<const ReadRequest> requests) {
  Impl& m = *impl_;
  Impl::Pins pins{m, {}};
  std::vector<std::vector<Run>> runs(requests.size());
  std::vector<ReadUnit> units;
  std::vector<io::IoUnit> io_units;
  for (std::size_t r = 0; r < requests.size(); ++r) {
    const ReadRequest& q = requests[r];
    const ItemRecord& it = *q.item;
    std::string what = "read of item '" + it.name + "'";
    const ChunkRecord& ch = it.chunks[q.chunk];
    const std::size_t n = ch.sizes.size();
    std::vector<std::int64_t> o = q.offsets.empty() ? std::vector<std::int64_t>(n, 0) : q.offsets;
    std::vector<std::int64_t> L = q.lengths.empty() ? ch.sizes : q.lengths;
    std::vector<std::int64_t> D = q.dst_shape.empty() ? L : q.dst_shape;
    std::vector<std::int64_t> p =
        q.dst_offsets.empty() ? std::vector<std::int64_t>(n, 0) : q.dst_offsets;
    if (o.size() != n || L.size() != n || D.size() != n || p.size() != n)
      return InvalidArgument(what + ": offsets, lengths and destination must have rank " +
                             std::to_string(n));
    for (std::size_t d = 0; d < n; ++d) {
      // Compared without adding: offsets near INT64_MAX must not wrap past
      // the checks (the caller's values, e.g. from Python).
      if (o[d] < 0 || L[d] < 0 || L[d] > ch.sizes[d] || o[d] > ch.sizes[d] - L[d])
        return InvalidArgument(what + ": box " + Dims(o) + "+" + Dims(L) +
                               " lies outside the chunk " + Dims(ch.sizes));
      if (p[d] < 0 || D[d] < 0 || L[d] > D[d] || p[d] > D[d] - L[d])
        return InvalidArgument(what + ": box does not fit the destination " + Dims(D));
    }
    std::uint64_t esize = DTypeSize(it.dtype);
    auto dvol = format::Volume(D);
    std::uint64_t need = 0;
    if (!dvol || __builtin_mul_overflow(*dvol, esize, &need))
      return InvalidArgument(what + ": destination shape " + Dims(D) + " is too large");
    if (need != q.dst_bytes)
      return InvalidArgument(what + ": destination holds " + std::to_string(q.dst_bytes) +
                             " bytes, its shape " + Dims(D) + " needs " + std::to_string(need));
    if (q.dst_bytes > 0 && !q.dst) return InvalidArgument(what + ": destination is null");
    runs[r] = MakeRuns(ch.sizes, o, L, D, p, esize);
    if (runs[r].empty()) continue;
    SW_RETURN_IF_ERROR(pins.Pin(ch.file));
    std::uint64_t lo = runs[r].front().src;
    std::uint64_t hi = runs[r].back().src + runs[r].back().len;
    const std::uint64_t B = m.manifest.checksum_block;
    m.AddUnits(r, &it, q.chunk, lo / B, (hi - 1) / B, units, io_units);
  }
  std::vector<std::string> paths;
  m.FixPaths(units, io_units, paths);
  if (!m.direct_io) m.ReadInPlace(units, io_units, runs, requests);
  return m.backend->Read(io_units, [&](std::size_t u, std::byte* buf) {
    const ReadUnit& ru = units[u];
    if (ru.in_place) return m.CheckBlocks(ru, buf, nullptr, nullptr, /*padding=*/false);
    return m.CheckBlocks(ru, buf, &runs[ru.request],
                         static_cast<std::byte*>(requests[ru.request].dst));
  });
}

Status CheckpointReader::ReadItem(std::string_view name, void* dst, std::uint64_t dst_bytes) {
  // Its chunks fit the tensor and do not overlap (checked as the manifest
  // was read, or as the item was resolved from the index): they cover it
  // exactly when their volumes add up to its.
  SW_ASSIGN_OR_RETURN(const ItemRecord* it, Item(name));
  std::uint64_t covered = 0;
  for (const ChunkRecord& c : it->chunks) covered += format::Volume(c.sizes).value_or(0);
  if (covered != format::Volume(it->shape).value_or(0))
    return Corrupt("item '" + it->name + "' in " + impl_->dir +
                       ": its chunks do not cover the whole tensor",
                   impl_->dir);
  std::vector<ReadRequest> reqs;
  for (std::size_t c = 0; c < it->chunks.size(); ++c) {
    ReadRequest q;
    q.item = it;
    q.chunk = c;
    q.dst = dst;
    q.dst_bytes = dst_bytes;
    q.dst_shape = it->shape;
    q.dst_offsets = it->chunks[c].offsets;
    reqs.push_back(std::move(q));
  }
  return Read(reqs);
}

Status CheckpointReader::CheckFiles() {
  for (std::uint32_t f = 0; f < impl_->FileCount(); ++f) {
    Impl::Pins pins{*impl_, {}};
    SW_RETURN_IF_ERROR(pins.Pin(f));
  }
  return Status::Ok();
}

namespace {

// Runs `check` over every unit of one file whose bytes are in memory (a copy
// just written), in parallel: the checksum pass of Install, without reading
// the file back.
template <typename Check>
Status CheckInMemory(const CheckpointReader::FileBytes& copy, const std::string& fname,
                     const std::string& path, std::span<const io::IoUnit> io_units,
                     Check&& check) {
  auto it = std::find_if(copy.begin(), copy.end(), [&](const auto& f) { return f.first == fname; });
  if (it == copy.end()) return Corrupt("not in the copy being installed: " + path, path);
  const std::string_view bytes = it->second;
  for (const io::IoUnit& u : io_units)
    if (u.offset > bytes.size() || u.length > bytes.size() - u.offset)
      return Corrupt(path + ": the copy holds " + std::to_string(bytes.size()) +
                         " bytes, its extents reach byte " + std::to_string(u.offset + u.length),
                     path);
  const auto* base = reinterpret_cast<const std::byte*>(bytes.data());
  std::mutex mu;
  Status first;
  ParallelFor(0, io_units.size(), ThreadsFor(bytes.size(), 64ull << 20), [&](std::size_t u) {
    Status s = check(u, base + io_units[u].offset);
    if (s.ok()) return;
    std::lock_guard lock(mu);
    if (first.ok()) first = std::move(s);
  });
  return first;
}

}  // namespace

Result<VerifyReport> CheckpointReader::Verify(const ProgressFn& progress) {
  return VerifyFrom(progress, nullptr);
}

Result<VerifyReport> CheckpointReader::VerifyCopy(const FileBytes& files) {
  return VerifyFrom({}, &files);
}

Result<VerifyReport> CheckpointReader::VerifyFrom(const ProgressFn& progress,
                                                  const FileBytes* copy) {
  Impl& m = *impl_;
  VerifyReport report;
  if (Status s = LoadAll(); !s.ok()) {
    // The index is part of the checkpoint: report it as its problem.
    report.files_checked = 1;
    report.problems.push_back({std::string(names::kIndex), s});
    return report;
  }
  const std::uint64_t total = m.manifest.TotalBytes();
  std::atomic<std::uint64_t> done{0};
  std::mutex progress_mu;
  // Group chunks by file so each file is verified (and reported) on its own.
  std::vector<std::vector<std::pair<const ItemRecord*, std::size_t>>> by_file(
      m.manifest.files.size());
  for (const auto& it : m.manifest.items)
    for (std::size_t c = 0; c < it.chunks.size(); ++c)
      if (it.chunks[c].length > 0) by_file[it.chunks[c].file].push_back({&it, c});
  for (std::uint32_t f = 0; f < m.manifest.files.size(); ++f) {
    const std::string& fname = m.manifest.files[f].name;
    report.files_checked++;
    Impl::Pins pins{m, {}};  // open while this file is checked
    Status s = pins.Pin(f);
    if (!s.ok()) {
      report.problems.push_back({fname, s});
      done += m.manifest.files[f].size;
      continue;
    }
    std::vector<ReadUnit> units;
    std::vector<io::IoUnit> io_units;
    const std::uint64_t B = m.manifest.checksum_block;
    for (auto [it, c] : by_file[f])
      m.AddUnits(0, it, c, 0, (it->chunks[c].length - 1) / B, units, io_units);
    std::vector<std::string> paths;
    m.FixPaths(units, io_units, paths);
    auto check = [&](std::size_t u, const std::byte* buf) -> Status {
      SW_RETURN_IF_ERROR(m.CheckBlocks(units[u], buf, nullptr, nullptr));
      std::uint64_t d = done += io_units[u].length;
      if (progress) {
        std::lock_guard lock(progress_mu);
        progress(d, total);
      }
      return Status::Ok();
    };
    s = copy ? CheckInMemory(*copy, fname, m.FilePath(f), io_units, check)
             : m.backend->Read(io_units, check);
    std::uint64_t file_bytes = 0;
    for (const auto& u : io_units) file_bytes += u.length;
    report.bytes_checked += file_bytes;
    if (!s.ok()) report.problems.push_back({fname, s});
  }
  if (progress) progress(total, total);
  return report;
}

}  // namespace shardwise
