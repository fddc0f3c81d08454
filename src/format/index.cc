#include "format/index.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "common/parallel.h"
#include "format/binary.h"
#include "format/crc32c.h"
#include "format/manifest.h"
#include "os/posix.h"
#include "shardwise/names.h"

namespace shardwise::format {
namespace {

using binary::Cursor;
using binary::GetU32;
using binary::GetU64;
using binary::PutDims;
using binary::PutStr;
using binary::PutVar;

constexpr char kMagic[8] = {'S', 'W', 'I', 'N', 'D', 'E', 'X', '2'};
constexpr std::size_t kHeaderBytes = 160;
constexpr std::size_t kSaveIdBytes = 64;
constexpr std::size_t kFileRecordBytes = 24;
constexpr std::size_t kCacheBlocks = 256;
constexpr std::size_t kChunksPerThread = 1 << 15;  // below this, threads cost more than they save
enum : std::uint8_t { kThreads = 0, kUring = 1, kOtherBackend = 2 };

std::size_t RecordBytes(std::size_t ndim) { return 16 * ndim + 32; }

std::int64_t SortKey(std::span<const std::int64_t> offsets, std::size_t sd) {
  return offsets.empty() ? 0 : offsets[sd];
}
std::int64_t SortKey(const ChunkRecord& c, std::size_t sd) { return SortKey(c.offsets, sd); }

// The dimension whose offsets change most often from one chunk to the next
// (in the order the ranks reported them): the one the chunks are spread
// along, so that sorting by it makes a box lookup touch few records. O(n).
std::size_t SortDim(const ChunkSource& s, std::size_t i) {
  const std::size_t nd = s.Item(i).shape.size(), n = s.ChunkCount(i);
  if (nd <= 1 || n <= 1) return 0;
  std::vector<std::size_t> changes(nd, 0);
  auto prev = s.Chunk(i, 0).offsets;
  for (std::size_t c = 1; c < n; ++c) {
    const auto cur = s.Chunk(i, c).offsets;
    for (std::size_t d = 0; d < nd; ++d) changes[d] += cur[d] != prev[d];
    prev = cur;
  }
  std::size_t best = 0;
  for (std::size_t d = 1; d < nd; ++d)
    if (changes[d] > changes[best]) best = d;
  return best;
}

// rank-NNNNN.shard is part 0, rank-NNNNN.partP.shard is part P.
std::string ShardName(std::int32_t rank, std::uint32_t part) {
  return names::ShardPartPath(names::RankFileName(rank, names::RankFile::kShard), part);
}

Result<std::uint32_t> PartOf(const FileRecord& f) {
  const std::string base = names::RankFileName(f.rank, names::RankFile::kShard);
  if (f.name == base) return 0u;
  const std::string stem = base.substr(0, base.size() - names::kShardExt.size()) + ".part";
  if (f.name.rfind(stem, 0) == 0) {
    std::uint32_t part = 0;
    for (std::size_t i = stem.size(); i < f.name.size() && part < (1u << 24); ++i) {
      if (f.name[i] < '0' || f.name[i] > '9') break;
      part = part * 10 + static_cast<std::uint32_t>(f.name[i] - '0');
    }
    if (ShardName(f.rank, part) == f.name) return part;
  }
  return InvalidArgument("file '" + f.name + "' is not named as rank " + std::to_string(f.rank) +
                         "'s shard; format 2 records only shard files it can name");
}

// Little-endian stores into a buffer sized in advance.
struct Writer {
  char* p;
  void U64(std::uint64_t v) {
    for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
    p += 8;
  }
  void U32(std::uint32_t v) {
    for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
    p += 4;
  }
};

// Stores at logical offsets of the index straight into its on-disk form:
// 4092 bytes of the stream per 4096-byte block, whose last 4 bytes (the
// block's checksum) SealBlocks fills once every byte is in place. Writers
// of different ranges may run at once.
struct BlockWriter {
  char* base;         // the on-disk form
  std::uint64_t off;  // logical offset of the next byte
  void Bytes(const char* src, std::size_t n) {
    while (n > 0) {
      const std::uint64_t within = off % kIndexPayloadBytes;
      const std::size_t take = std::min<std::uint64_t>(n, kIndexPayloadBytes - within);
      std::memcpy(base + off / kIndexPayloadBytes * kIndexBlockBytes + within, src, take);
      src += take, n -= take, off += take;
    }
  }
};

// Fills the checksum of every block of out[0, size) (a multiple of 4096
// bytes).
void SealBlocks(char* out, std::size_t size) {
  const std::size_t blocks = size / kIndexBlockBytes;
  constexpr std::size_t kBlocksPerTask = 1024;  // 4 MiB
  ParallelFor(0, (blocks + kBlocksPerTask - 1) / kBlocksPerTask, AvailableCpus(),
              [&](std::size_t t) {
                for (std::size_t b = t * kBlocksPerTask;
                     b < std::min(blocks, (t + 1) * kBlocksPerTask); ++b) {
                  char* blk = out + b * kIndexBlockBytes;
                  const std::uint32_t crc = Crc32c(blk, kIndexPayloadBytes);
                  for (int i = 0; i < 4; ++i)
                    blk[kIndexPayloadBytes + i] = static_cast<char>(crc >> (8 * i));
                }
              });
}

std::size_t PhysicalBytes(std::uint64_t logical) {
  return (logical + kIndexPayloadBytes - 1) / kIndexPayloadBytes * kIndexBlockBytes;
}

// How one item is laid out: its sort dimension and record order.
struct ItemPlan {
  std::size_t sort_dim = 0;
  std::vector<std::uint32_t> order;  // empty: the chunks are in order already
  std::int64_t max_extent = 0;
  std::uint64_t crcs = 0;      // checksums of its chunks
  std::uint64_t body_off = 0;  // where its fence (or records) start in the body
  std::uint64_t crc_first = 0; // its first checksum's number
};

std::uint64_t FenceBytes(std::uint64_t n) {
  return n > kIndexFenceStride ? (n + kIndexFenceStride - 1) / kIndexFenceStride * 8 : 0;
}

// Item i's sort dimension, record order, largest extent and checksum count.
void PlanItem(const ChunkSource& s, std::size_t i, ItemPlan& p) {
  const std::size_t sd = p.sort_dim = SortDim(s, i), n = s.ChunkCount(i);
  auto less = [&](const ChunkView& a, const ChunkView& b) {
    const auto ka = SortKey(a.offsets, sd), kb = SortKey(b.offsets, sd);
    return ka != kb ? ka < kb
                    : std::lexicographical_compare(a.offsets.begin(), a.offsets.end(),
                                                   b.offsets.begin(), b.offsets.end());
  };
  bool sorted = true;
  for (std::size_t c = 0; c < n; ++c) {
    const ChunkView v = s.Chunk(i, c);
    if (!v.sizes.empty()) p.max_extent = std::max(p.max_extent, v.sizes[sd]);
    p.crcs += v.crc32c.size();
    if (c > 0 && sorted) sorted = !less(v, s.Chunk(i, c - 1));
  }
  if (sorted) return;
  p.order.resize(n);
  for (std::size_t c = 0; c < n; ++c) p.order[c] = static_cast<std::uint32_t>(c);
  std::stable_sort(p.order.begin(), p.order.end(), [&](std::uint32_t a, std::uint32_t b) {
    return less(s.Chunk(i, a), s.Chunk(i, b));
  });
}

// Plans every item (in parallel) and writes the items table; returns the
// body's size.
std::uint64_t PlanItems(const ChunkSource& s, int threads, std::vector<ItemPlan>& plans,
                        std::string& table) {
  plans.resize(s.ItemCount());
  ParallelFor(0, plans.size(), threads, [&](std::size_t i) { PlanItem(s, i, plans[i]); });
  std::uint64_t body = 0, crcs = 0;
  for (std::size_t i = 0; i < plans.size(); ++i) {
    const ItemView it = s.Item(i);
    ItemPlan& p = plans[i];
    const std::size_t n = s.ChunkCount(i);
    p.body_off = body;
    p.crc_first = crcs;
    crcs += p.crcs;
    PutStr(table, it.name);
    PutVar(table, static_cast<std::uint64_t>(it.kind));
    PutVar(table, static_cast<std::uint64_t>(it.dtype));
    PutVar(table, it.shape.size());
    PutDims(table, it.shape);
    PutVar(table, n);
    PutVar(table, p.sort_dim);
    PutVar(table, static_cast<std::uint64_t>(p.max_extent));
    PutVar(table, body);
    body += FenceBytes(n) + n * RecordBytes(it.shape.size());
  }
  return body;
}

// Writes item i's fence and records at logical offset `body` + its own,
// and its checksums at `crcs` + its own.
void WriteItem(const ChunkSource& s, std::size_t i, const ItemPlan& p, char* out,
               std::uint64_t body, std::uint64_t crcs) {
  const std::size_t n = s.ChunkCount(i);
  auto at = [&](std::size_t k) { return s.Chunk(i, p.order.empty() ? k : p.order[k]); };
  std::uint64_t crc_next = p.crc_first;
  BlockWriter to{out, body + p.body_off}, to_crc{out, crcs + 4 * p.crc_first};
  char buf[16 * kMaxDims + 32];
  if (n > kIndexFenceStride)
    for (std::size_t k = 0; k < n; k += kIndexFenceStride) {
      Writer w{buf};
      w.U64(static_cast<std::uint64_t>(SortKey(at(k).offsets, p.sort_dim)));
      to.Bytes(buf, 8);
    }
  for (std::size_t k = 0; k < n; ++k) {
    const ChunkView c = at(k);
    Writer w{buf};
    for (std::int64_t v : c.offsets) w.U64(static_cast<std::uint64_t>(v));
    for (std::int64_t v : c.sizes) w.U64(static_cast<std::uint64_t>(v));
    w.U32(c.file);
    w.U32(0);
    w.U64(c.offset);
    w.U64(c.length);
    w.U64(crc_next);
    to.Bytes(buf, static_cast<std::size_t>(w.p - buf));
    crc_next += c.crc32c.size();
    for (std::size_t first = 0; first < c.crc32c.size(); first += 16) {
      w = Writer{buf};
      for (std::size_t j = first; j < std::min(first + 16, c.crc32c.size()); ++j)
        w.U32(c.crc32c[j]);
      to_crc.Bytes(buf, static_cast<std::size_t>(w.p - buf));
    }
  }
}

}  // namespace

// Cuts the logical stream into 4092-byte pieces, each sealed by its CRC32C.
std::string SealIndexBlocks(std::string_view logical) {
  std::string out(PhysicalBytes(logical.size()), '\0');
  BlockWriter{out.data(), 0}.Bytes(logical.data(), logical.size());
  SealBlocks(out.data(), out.size());
  return out;
}

Result<IndexImage> IndexImage::Zeroed(std::size_t bytes) {
  IndexImage image;
  if (bytes == 0) return image;
  // 4 KiB pages: huge pages cut the faults (0.19 s against 0.23 s to
  // encode 213 MiB) but, advised per commit, their allocation stalled on
  // compaction for over a second in one run of four.
  SW_ASSIGN_OR_RETURN(void* p, os::MapAnonymous(bytes, /*huge_pages=*/false));
  image.data_ = static_cast<char*>(p);
  image.size_ = bytes;
  return image;
}

IndexImage::IndexImage(IndexImage&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

IndexImage& IndexImage::operator=(IndexImage&& o) noexcept {
  if (this != &o) {
    if (data_) os::Unmap(data_, size_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

IndexImage::~IndexImage() {
  if (data_) os::Unmap(data_, size_);
}

Result<IndexImage> EncodeIndex(const Manifest& m, IndexRef* ref) {
  return EncodeIndex(ManifestSource(m), m, ref);
}

Result<IndexImage> EncodeIndex(const ChunkSource& src, const Manifest& header, IndexRef* ref) {
  std::uint64_t chunks = 0, ncrcs = 0, file_bytes = 0;
  for (std::size_t i = 0; i < src.ItemCount(); ++i) chunks += src.ChunkCount(i);
  const int threads = ThreadsFor(chunks, kChunksPerThread);
  std::vector<ItemPlan> plans;
  std::string table;
  const std::uint64_t body = PlanItems(src, threads, plans, table);
  for (const ItemPlan& p : plans) ncrcs += p.crcs;
  const std::vector<FileRecord>& files = src.Files();
  const std::uint64_t body_off = kHeaderBytes + table.size();
  const std::uint64_t files_off = body_off + body;
  const std::uint64_t crcs_off = files_off + kFileRecordBytes * files.size();
  SW_ASSIGN_OR_RETURN(IndexImage out, IndexImage::Zeroed(PhysicalBytes(crcs_off + 4 * ncrcs)));
  // File records.
  BlockWriter to{out.data(), files_off};
  for (const FileRecord& f : files) {
    SW_ASSIGN_OR_RETURN(std::uint32_t part, PartOf(f));
    char rec[kFileRecordBytes] = {};
    Writer w{rec};
    w.U32(static_cast<std::uint32_t>(f.rank));
    w.U32(part);
    w.U64(f.size);
    *w.p++ = static_cast<char>(f.backend == "threads" ? kThreads
                               : f.backend == "uring" ? kUring
                                                      : kOtherBackend);
    *w.p++ = static_cast<char>(f.direct_io ? 1 : 0);
    to.Bytes(rec, sizeof rec);
    file_bytes += f.size;
  }
  ParallelFor(0, plans.size(), threads, [&](std::size_t i) {
    WriteItem(src, i, plans[i], out.data(), body_off, crcs_off);
  });
  // Header and items table.
  char head[kHeaderBytes] = {};
  std::memcpy(head, kMagic, sizeof kMagic);
  Writer w{head + sizeof kMagic};
  for (std::uint64_t v : {static_cast<std::uint64_t>(header.world_size), header.checksum_block,
                          static_cast<std::uint64_t>(files.size()),
                          static_cast<std::uint64_t>(plans.size()), chunks, ncrcs,
                          static_cast<std::uint64_t>(kHeaderBytes),
                          static_cast<std::uint64_t>(table.size()), files_off, crcs_off,
                          file_bytes})
    w.U64(v);
  std::memcpy(w.p, header.save_id.data(), std::min(header.save_id.size(), kSaveIdBytes));
  BlockWriter{out.data(), 0}.Bytes(head, sizeof head);
  BlockWriter{out.data(), kHeaderBytes}.Bytes(table.data(), table.size());
  SealBlocks(out.data(), out.size());
  *ref = {out.size(), files.size(), plans.size(), chunks, file_bytes};
  return out;
}

// ---------------------------------------------------------------------------

struct IndexReader::Impl {
  struct Entry {
    std::uint64_t n = 0;        // chunks
    std::size_t sort_dim = 0;
    std::int64_t max_extent = 0;
    std::uint64_t fence = 0;    // logical offset of the fence (or the records)
    std::uint64_t records = 0;  // logical offset of the first record
  };

  IndexReadFn read_fn;
  std::string path;
  Manifest commit;  // header fields, for checks and ReadAll
  std::uint64_t logical = 0, physical = 0, files_off = 0, crcs_off = 0, ncrcs = 0;
  std::vector<ItemRecord> items;
  std::vector<Entry> entries;
  std::unordered_map<std::string_view, std::size_t> by_name;
  // Lookups of items (Chunks, ChunksOverlapping, File) may run on several
  // threads at once: the caches below are theirs to share, under `mu`.
  std::mutex mu;
  std::unordered_map<std::uint64_t, std::string> cache;  // verified blocks
  std::unordered_map<std::uint32_t, FileRecord> files;
  std::string whole;  // the whole logical stream, once ReadAll loaded it
  std::atomic<std::uint64_t> bytes_read{0};

  Status Bad(const std::string& what) const { return Corrupt(path + ": " + what, path); }

  // Reads physical blocks [b0, b1) into `dst` and checks each.
  Status ReadBlocks(std::uint64_t b0, std::uint64_t b1, char* dst) {
    SW_RETURN_IF_ERROR(read_fn(b0 * kIndexBlockBytes, (b1 - b0) * kIndexBlockBytes, dst));
    bytes_read += (b1 - b0) * kIndexBlockBytes;
    for (std::uint64_t b = b0; b < b1; ++b) {
      const char* p = dst + (b - b0) * kIndexBlockBytes;
      if (Crc32c(p, kIndexPayloadBytes) != GetU32(p + kIndexPayloadBytes))
        return Bad("index block " + std::to_string(b) + " (bytes " +
                   std::to_string(b * kIndexBlockBytes) + "..+4096) fails its checksum");
    }
    return Status::Ok();
  }

  // Logical bytes [off, off + len): small reads go through a cache of
  // verified blocks, large ones are one read.
  Status Load(std::uint64_t off, std::uint64_t len, std::string* out) {
    if (off > logical || len > logical - off)
      return Bad("index refers to bytes " + std::to_string(off) + "..+" + std::to_string(len) +
                 " past its end (" + std::to_string(logical) + " bytes)");
    out->clear();
    if (len == 0) return Status::Ok();
    if (!whole.empty()) {
      out->assign(whole.data() + off, len);
      return Status::Ok();
    }
    const std::uint64_t b0 = off / kIndexPayloadBytes, b1 = (off + len - 1) / kIndexPayloadBytes + 1;
    if (b1 - b0 > 2) return LoadLarge(off, len, b0, b1, out);
    out->resize(len);
    std::uint64_t done = 0;
    for (std::uint64_t b = b0; b < b1; ++b) {
      const std::uint64_t within = b == b0 ? off % kIndexPayloadBytes : 0;
      const std::uint64_t take = std::min<std::uint64_t>(kIndexPayloadBytes - within, len - done);
      SW_RETURN_IF_ERROR(CachedBlock(b, within, take, out->data() + done));
      done += take;
    }
    return Status::Ok();
  }

  // A large read, in pieces of at most kLoadPieceBlocks blocks, each
  // checked before its bytes are kept: memory follows verified bytes, not
  // the lengths a header declares (a forged header over a sparse file
  // fails at its first block of zeros, having allocated one piece).
  Status LoadLarge(std::uint64_t off, std::uint64_t len, std::uint64_t b0, std::uint64_t b1,
                   std::string* out) {
    constexpr std::uint64_t kLoadPieceBlocks = 4096;  // 16 MiB
    out->reserve(std::min<std::uint64_t>(len, kLoadPieceBlocks * kIndexPayloadBytes));
    std::string piece;
    for (std::uint64_t p0 = b0; p0 < b1; p0 += kLoadPieceBlocks) {
      const std::uint64_t p1 = std::min(b1, p0 + kLoadPieceBlocks);
      piece.resize((p1 - p0) * kIndexBlockBytes);
      SW_RETURN_IF_ERROR(ReadBlocks(p0, p1, piece.data()));
      for (std::uint64_t b = p0; b < p1; ++b) {
        const std::uint64_t within = b == b0 ? off % kIndexPayloadBytes : 0;
        const std::uint64_t take =
            std::min<std::uint64_t>(kIndexPayloadBytes - within, len - out->size());
        out->append(piece.data() + (b - p0) * kIndexBlockBytes + within, take);
      }
    }
    return Status::Ok();
  }

  // Copies [within, within + take) of block b's payload into dst, reading
  // and checking the block first where the cache does not hold it. The read
  // runs outside the lock: lookups on other threads read theirs meanwhile.
  Status CachedBlock(std::uint64_t b, std::uint64_t within, std::uint64_t take, char* dst) {
    {
      std::lock_guard lock(mu);
      if (auto it = cache.find(b); it != cache.end()) {
        std::memcpy(dst, it->second.data() + within, take);
        return Status::Ok();
      }
    }
    std::string fresh(kIndexBlockBytes, '\0');
    SW_RETURN_IF_ERROR(ReadBlocks(b, b + 1, fresh.data()));
    std::memcpy(dst, fresh.data() + within, take);
    std::lock_guard lock(mu);
    if (cache.size() >= kCacheBlocks) cache.clear();
    cache.emplace(b, std::move(fresh));
    return Status::Ok();
  }

  Status OpenHeader();
  Status OpenItems(std::uint64_t items_off, std::uint64_t items_bytes, std::uint64_t body_end);
  Result<ChunkRecord> DecodeRecord(std::size_t i, const char* p, std::uint64_t* crc_first);
  Result<std::vector<ChunkRecord>> Records(std::size_t i, std::uint64_t first, std::uint64_t count,
                                           std::vector<std::uint64_t>* firsts);
  Status Finish(std::size_t i, std::vector<ChunkRecord>& chunks,
                const std::vector<std::uint64_t>& firsts, const std::vector<std::uint64_t>& numbers);
  Status LoadCrcs(const ItemRecord& it, std::vector<ChunkRecord>& chunks,
                  const std::vector<std::uint64_t>& firsts);
  Result<FileRecord> File(std::uint32_t f);
};

Status IndexReader::Impl::OpenHeader() {
  const IndexRef& ref = commit.index;
  if (ref.size % kIndexBlockBytes != 0 || ref.size < kIndexBlockBytes || ref.size > kMaxIndexBytes)
    return Bad("index size " + std::to_string(ref.size) + " is not a positive multiple of 4096");
  physical = ref.size;
  logical = physical / kIndexBlockBytes * kIndexPayloadBytes;
  std::string h;
  SW_RETURN_IF_ERROR(Load(0, kHeaderBytes, &h));
  if (std::memcmp(h.data(), kMagic, sizeof kMagic) != 0) return Bad("index has no SWINDEX2 magic");
  std::uint64_t v[11];
  for (int k = 0; k < 11; ++k) v[k] = GetU64(h.data() + 8 + 8 * k);
  std::string id(h.data() + 96, kSaveIdBytes);
  id.resize(std::strlen(id.c_str()));
  if (id != commit.save_id)
    return Bad("index belongs to save attempt '" + id + "', the manifest to '" + commit.save_id +
               "'");
  if (v[0] != static_cast<std::uint64_t>(commit.world_size) || v[1] != commit.checksum_block ||
      v[2] != ref.files || v[3] != ref.items || v[4] != ref.chunks || v[10] != ref.file_bytes)
    return Bad("index header disagrees with manifest.json (world size, block size or counts)");
  ncrcs = v[5];
  files_off = v[8];
  crcs_off = v[9];
  const std::uint64_t items_off = v[6], items_bytes = v[7];
  if (items_off != kHeaderBytes || items_bytes > logical || files_off > logical ||
      files_off < items_off + items_bytes || ref.files > (logical - files_off) / kFileRecordBytes ||
      crcs_off != files_off + ref.files * kFileRecordBytes || ncrcs > (logical - crcs_off) / 4 ||
      (logical - crcs_off - ncrcs * 4) >= kIndexPayloadBytes)
    return Bad("index header's section offsets do not fit the file");
  return OpenItems(items_off, items_bytes, files_off);
}

Status IndexReader::Impl::OpenItems(std::uint64_t items_off, std::uint64_t items_bytes,
                                    std::uint64_t body_end) {
  std::string table;
  SW_RETURN_IF_ERROR(Load(items_off, items_bytes, &table));
  Cursor c(table, path, "index items table");
  const std::uint64_t body = items_off + items_bytes;
  if (commit.index.items > items_bytes) return Bad("index declares more items than it holds");
  items.resize(commit.index.items);
  entries.resize(items.size());
  std::uint64_t chunks = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    ItemRecord& it = items[i];
    Entry& e = entries[i];
    SW_ASSIGN_OR_RETURN(it.name, c.Str(kMaxNameBytes));
    SW_ASSIGN_OR_RETURN(std::uint64_t kind, c.Var(1));
    it.kind = static_cast<ItemKind>(kind);
    SW_ASSIGN_OR_RETURN(std::uint64_t dtype, c.Var(static_cast<std::uint64_t>(DType::kFloat8E5M2)));
    it.dtype = static_cast<DType>(dtype);
    SW_ASSIGN_OR_RETURN(std::uint64_t ndim, c.Var(kMaxDims));
    SW_ASSIGN_OR_RETURN(it.shape, c.Dims(ndim));
    SW_ASSIGN_OR_RETURN(e.n, c.Var(commit.index.chunks));
    SW_ASSIGN_OR_RETURN(e.sort_dim, c.Var(ndim == 0 ? 0 : ndim - 1));
    SW_ASSIGN_OR_RETURN(std::uint64_t max_extent, c.Var(INT64_MAX));
    e.max_extent = static_cast<std::int64_t>(max_extent);
    SW_ASSIGN_OR_RETURN(std::uint64_t rel, c.Var(body_end));
    SW_RETURN_IF_ERROR(ValidateItemHeader(ViewOf(it), path));
    if (!by_name.emplace(it.name, i).second) return Bad("item '" + it.name + "' is listed twice");
    const std::uint64_t fence = e.n > kIndexFenceStride
                                    ? (e.n + kIndexFenceStride - 1) / kIndexFenceStride * 8
                                    : 0;
    e.fence = body + rel;
    e.records = e.fence + fence;
    const std::uint64_t rb = RecordBytes(ndim);
    if (e.fence > body_end || e.records > body_end || e.n > (body_end - e.records) / rb)
      return Bad("item '" + it.name + "': its records lie outside the index body");
    chunks += e.n;
  }
  if (c.left() != 0) return Bad("index items table has trailing bytes");
  if (chunks != commit.index.chunks) return Bad("index items hold " + std::to_string(chunks) +
                                                " chunks, the header says " +
                                                std::to_string(commit.index.chunks));
  // by_name holds views into items' names: items is never resized again.
  return Status::Ok();
}

Result<FileRecord> IndexReader::Impl::File(std::uint32_t f) {
  {
    std::lock_guard lock(mu);
    if (auto it = files.find(f); it != files.end()) return it->second;
  }
  if (f >= commit.index.files)
    return Bad("index refers to file " + std::to_string(f) + " of " +
               std::to_string(commit.index.files));
  std::string r;
  SW_RETURN_IF_ERROR(Load(files_off + std::uint64_t{f} * kFileRecordBytes, kFileRecordBytes, &r));
  FileRecord rec;
  const std::uint32_t rank = GetU32(r.data()), part = GetU32(r.data() + 4);
  rec.size = GetU64(r.data() + 8);
  const auto backend = static_cast<std::uint8_t>(r[16]), direct = static_cast<std::uint8_t>(r[17]);
  if (rank >= static_cast<std::uint32_t>(commit.world_size) || part >= (1u << 24) ||
      rec.size > kMaxFileBytes || backend > kOtherBackend || direct > 1)
    return Bad("index file record " + std::to_string(f) + " is out of range");
  rec.rank = static_cast<std::int32_t>(rank);
  rec.name = ShardName(rec.rank, part);
  rec.backend = backend == kThreads ? "threads" : backend == kUring ? "uring" : "other";
  rec.direct_io = direct == 1;
  std::lock_guard lock(mu);
  files.emplace(f, rec);
  return rec;
}

Result<ChunkRecord> IndexReader::Impl::DecodeRecord(std::size_t i, const char* p,
                                                    std::uint64_t* crc_first) {
  const std::size_t n = items[i].shape.size();
  ChunkRecord ch;
  ch.offsets.resize(n);
  ch.sizes.resize(n);
  for (std::size_t d = 0; d < n; ++d) ch.offsets[d] = static_cast<std::int64_t>(GetU64(p + 8 * d));
  for (std::size_t d = 0; d < n; ++d)
    ch.sizes[d] = static_cast<std::int64_t>(GetU64(p + 8 * (n + d)));
  p += 16 * n;
  ch.file = GetU32(p);
  ch.offset = GetU64(p + 8);
  ch.length = GetU64(p + 16);
  *crc_first = GetU64(p + 24);
  return ch;
}

// Records [first, first + count) of item i, decoded and checked for order;
// `firsts` receives each one's first checksum index.
Result<std::vector<ChunkRecord>> IndexReader::Impl::Records(std::size_t i, std::uint64_t first,
                                                            std::uint64_t count,
                                                            std::vector<std::uint64_t>* firsts) {
  const ItemRecord& it = items[i];
  const Entry& e = entries[i];
  const std::size_t rb = RecordBytes(it.shape.size());
  std::string raw;
  SW_RETURN_IF_ERROR(Load(e.records + first * rb, count * rb, &raw));
  std::vector<ChunkRecord> out(count);
  firsts->resize(count);
  for (std::uint64_t k = 0; k < count; ++k) {
    SW_ASSIGN_OR_RETURN(out[k], DecodeRecord(i, raw.data() + k * rb, &(*firsts)[k]));
    if (k > 0) {
      const auto ka = SortKey(out[k - 1], e.sort_dim), kb = SortKey(out[k], e.sort_dim);
      if (ka > kb || (ka == kb && !(out[k - 1].offsets < out[k].offsets)))
        return Bad("item '" + it.name + "': chunk records are not sorted (or two start at the "
                   "same offsets)");
    }
    if (!out[k].sizes.empty() && out[k].sizes[e.sort_dim] > e.max_extent)
      return Bad("item '" + it.name + "': a chunk is larger than the item's recorded extent");
  }
  return out;
}

// Loads the checksums of `chunks` (records of item i numbered from `number`
// on, for messages) and checks each against the rules of a chunk.
Status IndexReader::Impl::Finish(std::size_t i, std::vector<ChunkRecord>& chunks,
                                 const std::vector<std::uint64_t>& firsts,
                                 const std::vector<std::uint64_t>& numbers) {
  const ItemRecord& it = items[i];
  SW_RETURN_IF_ERROR(LoadCrcs(it, chunks, firsts));
  for (std::size_t k = 0; k < chunks.size(); ++k) {
    if (chunks[k].file >= commit.index.files)
      return Bad("item '" + it.name + "' chunk " + std::to_string(numbers[k]) +
                 ": file index out of range");
    SW_ASSIGN_OR_RETURN(FileRecord file, File(chunks[k].file));
    SW_RETURN_IF_ERROR(
        ValidateChunkRecord(ViewOf(it), numbers[k], ViewOf(chunks[k]), file, commit.checksum_block,
                            path));
  }
  return Status::Ok();
}

Status IndexReader::Impl::LoadCrcs(const ItemRecord& it, std::vector<ChunkRecord>& chunks,
                                   const std::vector<std::uint64_t>& firsts) {
  std::uint64_t lo = UINT64_MAX, hi = 0, need = 0;
  for (std::size_t k = 0; k < chunks.size(); ++k) {
    const std::uint64_t n = BlockCount(chunks[k].length, commit.checksum_block);
    if (firsts[k] > ncrcs || n > ncrcs - firsts[k])
      return Bad("item '" + it.name + "': a chunk's checksums lie outside the index");
    lo = std::min(lo, firsts[k]);
    hi = std::max(hi, firsts[k] + n);
    need += n;
  }
  if (need == 0) return Status::Ok();
  std::string raw;
  const bool together = hi - lo <= need + 1024;  // as written: one run
  if (together) SW_RETURN_IF_ERROR(Load(crcs_off + lo * 4, (hi - lo) * 4, &raw));
  for (std::size_t k = 0; k < chunks.size(); ++k) {
    const std::uint64_t n = BlockCount(chunks[k].length, commit.checksum_block);
    std::uint64_t base = firsts[k] - lo;
    if (!together) {
      SW_RETURN_IF_ERROR(Load(crcs_off + firsts[k] * 4, n * 4, &raw));
      base = 0;
    }
    chunks[k].crc32c.resize(n);
    for (std::uint64_t b = 0; b < n; ++b) chunks[k].crc32c[b] = GetU32(raw.data() + (base + b) * 4);
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------

IndexReader::IndexReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
IndexReader::~IndexReader() = default;

Result<std::unique_ptr<IndexReader>> IndexReader::Open(IndexReadFn read, const Manifest& commit,
                                                       const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->read_fn = std::move(read);
  impl->path = path;
  impl->commit = commit;
  impl->commit.items.clear();
  impl->commit.files.clear();
  SW_RETURN_IF_ERROR(impl->OpenHeader());
  return std::unique_ptr<IndexReader>(new IndexReader(std::move(impl)));
}

const std::vector<ItemRecord>& IndexReader::items() const { return impl_->items; }

std::size_t IndexReader::Find(std::string_view name) const {
  auto it = impl_->by_name.find(name);
  return it == impl_->by_name.end() ? impl_->items.size() : it->second;
}

Result<std::vector<ChunkRecord>> IndexReader::Chunks(std::size_t i) {
  if (i >= impl_->items.size()) return InvalidArgument("no item " + std::to_string(i));
  std::vector<std::uint64_t> firsts, numbers(impl_->entries[i].n);
  SW_ASSIGN_OR_RETURN(auto chunks, impl_->Records(i, 0, impl_->entries[i].n, &firsts));
  for (std::uint64_t k = 0; k < numbers.size(); ++k) numbers[k] = k;
  SW_RETURN_IF_ERROR(impl_->Finish(i, chunks, firsts, numbers));
  return chunks;
}

Result<std::vector<ChunkRecord>> IndexReader::ChunksOverlapping(
    std::size_t i, const std::vector<std::int64_t>& offsets,
    const std::vector<std::int64_t>& sizes) {
  Impl& m = *impl_;
  if (i >= m.items.size()) return InvalidArgument("no item " + std::to_string(i));
  const ItemRecord& it = m.items[i];
  const Impl::Entry& e = m.entries[i];
  if (offsets.size() != it.shape.size() || sizes.size() != it.shape.size())
    return InvalidArgument("box of item '" + it.name + "' must have " +
                           std::to_string(it.shape.size()) + " dimensions");
  for (std::size_t d = 0; d < offsets.size(); ++d)
    if (offsets[d] < 0 || sizes[d] < 0 || offsets[d] > it.shape[d] - sizes[d])
      return InvalidArgument("box of item '" + it.name + "' lies outside its shape");
  // Records are not validated yet here: one whose end overflows is kept,
  // and Finish rejects it.
  auto overlaps = [&](const ChunkRecord& c) {
    for (std::size_t d = 0; d < offsets.size(); ++d) {
      std::int64_t end;
      if (__builtin_add_overflow(c.offsets[d], c.sizes[d], &end)) return true;
      if (c.offsets[d] >= offsets[d] + sizes[d] || end <= offsets[d]) return false;
    }
    return true;
  };
  std::uint64_t start = 0;  // first record that may overlap
  const std::size_t sd = e.sort_dim;
  const std::int64_t lo = offsets.empty() ? 0 : offsets[sd] - e.max_extent + 1;
  const std::int64_t hi = offsets.empty() ? 1 : offsets[sd] + sizes[sd];
  if (e.n > kIndexFenceStride) {
    const std::uint64_t nf = (e.n + kIndexFenceStride - 1) / kIndexFenceStride;
    std::string fence;
    SW_RETURN_IF_ERROR(m.Load(e.fence, nf * 8, &fence));
    std::uint64_t g = 0;  // the last group whose first key is below lo
    for (std::uint64_t k = 0; k < nf; ++k) {
      const auto key = static_cast<std::int64_t>(GetU64(fence.data() + 8 * k));
      if (k > 0 && key < static_cast<std::int64_t>(GetU64(fence.data() + 8 * (k - 1))))
        return m.Bad("item '" + it.name + "': its fence is not sorted");
      if (key < lo) g = k;
    }
    start = g * kIndexFenceStride;
  }
  // Only the chunks kept have their checksums and files read.
  std::vector<ChunkRecord> out;
  std::vector<std::uint64_t> firsts, numbers, group_firsts;
  for (std::uint64_t at = start; at < e.n; at += kIndexFenceStride) {
    const std::uint64_t count = std::min<std::uint64_t>(kIndexFenceStride, e.n - at);
    SW_ASSIGN_OR_RETURN(auto group, m.Records(i, at, count, &group_firsts));
    bool past = false;
    for (std::uint64_t k = 0; k < count; ++k) {
      if (SortKey(group[k], sd) >= hi && !offsets.empty()) {
        past = true;
        break;
      }
      if (!overlaps(group[k])) continue;
      out.push_back(std::move(group[k]));
      firsts.push_back(group_firsts[k]);
      numbers.push_back(at + k);
    }
    if (past) break;
  }
  SW_RETURN_IF_ERROR(m.Finish(i, out, firsts, numbers));
  return out;
}

Result<FileRecord> IndexReader::File(std::uint32_t f) { return impl_->File(f); }

Result<Manifest> IndexReader::ReadAll() {
  Impl& m = *impl_;
  if (m.whole.empty()) {
    std::string phys(m.physical, '\0');
    SW_RETURN_IF_ERROR(m.ReadBlocks(0, m.physical / kIndexBlockBytes, phys.data()));
    std::string logical(m.logical, '\0');
    for (std::uint64_t b = 0; b < m.physical / kIndexBlockBytes; ++b)
      std::memcpy(logical.data() + b * kIndexPayloadBytes, phys.data() + b * kIndexBlockBytes,
                  kIndexPayloadBytes);
    m.whole = std::move(logical);
  }
  Manifest out = m.commit;
  out.files.resize(m.commit.index.files);
  for (std::uint32_t f = 0; f < out.files.size(); ++f) {
    SW_ASSIGN_OR_RETURN(out.files[f], m.File(f));
  }
  out.items = m.items;
  for (std::size_t i = 0; i < out.items.size(); ++i) {
    SW_ASSIGN_OR_RETURN(out.items[i].chunks, Chunks(i));
  }
  SW_RETURN_IF_ERROR(Validate(out, m.path));
  return out;
}

std::uint64_t IndexReader::bytes_read() const { return impl_->bytes_read.load(); }

}  // namespace shardwise::format
