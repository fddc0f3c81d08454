#include "format/merge.h"

#include <algorithm>
#include <atomic>
#include <string_view>
#include <unordered_map>

#include "common/parallel.h"
#include "format/manifest.h"

namespace shardwise::format {
namespace {

Status CheckPart(const RankPart& p, int rank, const Manifest& spec) {
  const Manifest& f = *p.header;
  if (f.save_id != spec.save_id || f.rank != rank || f.world_size != spec.world_size ||
      f.name != spec.name)
    return Corrupt(p.where + ": belongs to another save (save_id '" + f.save_id + "', rank " +
                       std::to_string(f.rank) + ", world size " + std::to_string(f.world_size) +
                       ")",
                   p.where);
  return Status::Ok();
}

// Where each part's items go: rank r's j-th item is merged item which[r][j],
// its chunks from number at[r][j] on; sums[r][j] counts the checksums before
// them.
struct ItemMap {
  std::vector<std::vector<std::uint32_t>> which;
  std::vector<std::vector<std::uint64_t>> at, sums;
  std::unordered_map<std::string_view, std::uint32_t> by_name;
  std::vector<std::uint64_t> chunks, crcs;  // per merged item
};

bool Same(const ItemView& a, const ItemView& b) {
  return a.kind == b.kind && a.dtype == b.dtype &&
         std::equal(a.shape.begin(), a.shape.end(), b.shape.begin(), b.shape.end());
}

Status Disagree(std::string_view name, const std::string& path) {
  return Corrupt("ranks disagree about item '" + std::string(name) +
                     "' (kind, dtype or global shape) in " + path,
                 path);
}

std::uint32_t AddItem(const ItemView& it, std::vector<ItemRecord>& items, ItemMap& map) {
  const auto g = static_cast<std::uint32_t>(items.size());
  ItemRecord& copy = items.emplace_back();
  copy.name = it.name, copy.kind = it.kind, copy.dtype = it.dtype;
  copy.shape.assign(it.shape.begin(), it.shape.end());
  map.chunks.push_back(0), map.crcs.push_back(0);
  map.by_name.emplace(it.name, g);  // the key points into the part, which stays put
  return g;
}

// Ranks usually list the same items in the same order. The items of the
// first rank that lists any are the reference: every rank is matched against
// it in parallel (position first, then name), counting its chunks and
// checksums; what it lacks is added afterwards, in rank order, and the
// chunk numbers are handed out in rank order too.
Status MapItems(std::span<const RankPart> parts, int threads, std::vector<ItemRecord>& items,
                const std::string& path, ItemMap& map) {
  const std::size_t R = parts.size();
  map.which.resize(R), map.at.resize(R), map.sums.resize(R);
  for (const RankPart& p : parts) {
    for (std::size_t j = 0; j < p.chunks->ItemCount(); ++j) AddItem(p.chunks->Item(j), items, map);
    if (!items.empty()) break;  // a part's names are distinct (ValidateSource)
  }
  std::atomic<std::size_t> bad{SIZE_MAX};
  ParallelFor(0, R, threads, [&](std::size_t r) {
    const ChunkSource& s = *parts[r].chunks;
    const std::size_t n = s.ItemCount();
    auto& which = map.which[r];
    auto &count = map.at[r], &crcs = map.sums[r];
    which.resize(n), count.resize(n), crcs.resize(n);
    for (std::size_t j = 0; j < n; ++j) {
      const ItemView it = s.Item(j);
      std::uint32_t g = UINT32_MAX;
      if (j < items.size() && items[j].name == it.name) {
        g = static_cast<std::uint32_t>(j);
      } else if (auto f = map.by_name.find(it.name); f != map.by_name.end()) {
        g = f->second;
      }
      if (g != UINT32_MAX && !Same(ViewOf(items[g]), it)) {
        for (std::size_t want = bad.load(); r < want && !bad.compare_exchange_weak(want, r);) {
        }
        return;
      }
      which[j] = g;
      count[j] = s.ChunkCount(j);
      crcs[j] = 0;
      for (std::size_t k = 0; k < count[j]; ++k) crcs[j] += s.Chunk(j, k).crc32c.size();
    }
  });
  for (std::size_t r = 0; r < R; ++r) {
    for (std::size_t j = 0; r == bad && j < parts[r].chunks->ItemCount(); ++j) {
      const ItemView it = parts[r].chunks->Item(j);
      auto f = map.by_name.find(it.name);
      if (f != map.by_name.end() && !Same(ViewOf(items[f->second]), it))
        return Disagree(it.name, path);
    }
    for (std::size_t j = 0; j < map.which[r].size(); ++j) {
      std::uint32_t& g = map.which[r][j];
      if (g == UINT32_MAX) {  // not in the reference
        const ItemView it = parts[r].chunks->Item(j);
        auto f = map.by_name.find(it.name);
        g = f != map.by_name.end() ? f->second : AddItem(it, items, map);
        if (!Same(ViewOf(items[g]), it)) return Disagree(it.name, path);
      }
      const std::uint64_t n = map.at[r][j], c = map.sums[r][j];
      map.at[r][j] = map.chunks[g], map.sums[r][j] = map.crcs[g];
      map.chunks[g] += n, map.crcs[g] += c;
    }
  }
  return Status::Ok();
}

}  // namespace

Result<MergedRanks> MergeRanks(std::span<const RankPart> parts, const Manifest& spec,
                               const std::string& path) {
  MergedRanks m;
  std::vector<std::uint32_t> file_base(parts.size(), 0);
  bool block_set = false;
  for (std::size_t r = 0; r < parts.size(); ++r) {
    const RankPart& p = parts[r];
    SW_RETURN_IF_ERROR(CheckPart(p, static_cast<int>(r), spec));
    file_base[r] = static_cast<std::uint32_t>(m.files_.size());
    if (p.header->files.empty() && p.chunks->ItemCount() == 0) continue;  // wrote nothing
    if (!block_set) {
      m.checksum_block_ = p.header->checksum_block;
      block_set = true;
    } else if (p.header->checksum_block != m.checksum_block_) {
      return Corrupt(p.where + ": checksum block size differs between ranks", p.where);
    }
    m.files_.insert(m.files_.end(), p.header->files.begin(), p.header->files.end());
  }
  SW_RETURN_IF_ERROR(ValidateFiles(m.files_, spec.world_size, path));
  // The name table's keys point into the parts' item names, which stay put.
  std::vector<ItemRecord> fields;
  // Threads only for a large merge (thousands of ranks): for a few, starting
  // them costs more than the work.
  std::size_t work = 0;
  for (const RankPart& p : parts) work += p.chunks->ItemCount();
  const int threads = ThreadsFor(work, 1 << 15);
  ItemMap map;
  SW_RETURN_IF_ERROR(MapItems(parts, threads, fields, path, map));
  m.items_.resize(fields.size());
  for (std::size_t g = 0; g < fields.size(); ++g) {
    auto& it = m.items_[g];
    it.fields = std::move(fields[g]);
    it.n = map.chunks[g];
    // Default-initialized: every element is written below.
    it.extents.reset(new MergedRanks::Extent[it.n]);
    it.dims.reset(new std::int64_t[it.n * 2 * it.fields.shape.size()]);
    it.crcs.reset(new std::uint32_t[map.crcs[g]]);
  }
  // Each rank's chunks go to the places MapItems gave them: ranks in
  // parallel, each reading its own memory in order.
  ParallelFor(0, parts.size(), threads, [&](std::size_t r) {
    const ChunkSource& s = *parts[r].chunks;
    for (std::size_t j = 0; j < map.which[r].size(); ++j) {
      MergedRanks::Merged& it = m.items_[map.which[r][j]];
      const std::size_t nd2 = 2 * it.fields.shape.size();
      std::uint64_t crc = map.sums[r][j];
      for (std::size_t k = 0, at = map.at[r][j]; k < s.ChunkCount(j); ++k, ++at) {
        const ChunkView v = s.Chunk(j, k);
        std::copy(v.offsets.begin(), v.offsets.end(), it.dims.get() + nd2 * at);
        std::copy(v.sizes.begin(), v.sizes.end(), it.dims.get() + nd2 * at + nd2 / 2);
        std::copy(v.crc32c.begin(), v.crc32c.end(), it.crcs.get() + crc);
        it.extents[at] = {v.offset, v.length, crc, v.file + file_base[r],
                          static_cast<std::uint32_t>(v.crc32c.size())};
        crc += v.crc32c.size();
      }
    }
  });
  // Every rank's chunks together: per item, distinct starts, and no two
  // chunks that share an element. (Whether they cover the shape is not a
  // rule of the commit: a rank's local-tier checkpoint holds its own shard.)
  // The first bad item in order is reported.
  std::vector<Tiling> tilings(m.items_.size());
  std::atomic<std::size_t> bad{SIZE_MAX};
  ParallelFor(0, m.items_.size(), threads, [&](std::size_t g) {
    if (DistinctStarts(m, g)) {
      tilings[g] = ItemTiling(m, g);
      if (!tilings[g].Refused()) return;
    }
    for (std::size_t want = bad.load(); g < want && !bad.compare_exchange_weak(want, g);) {
    }
  });
  if (bad == SIZE_MAX) return m;
  if (tilings[bad].Refused()) return TilingError(m, bad, tilings[bad], path);
  return Corrupt(path + ": item '" + m.items_[bad].fields.name +
                     "': two chunks start at the same offsets",
                 path);
}

}  // namespace shardwise::format
