#include "format/chunk_geometry.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <optional>
#include <queue>

namespace shardwise::format {

ChunkFit FitChunk(std::span<const std::int64_t> shape, std::span<const std::int64_t> offsets,
                  std::span<const std::int64_t> sizes, std::uint32_t element_size) {
  using P = ChunkFit::Problem;
  if (offsets.size() != shape.size()) return {P::kOffsetsRank};
  if (sizes.size() != shape.size()) return {P::kSizesRank};
  // Bounds first, for every dimension: a chunk outside its tensor is the
  // more telling error when its sizes are absurd as well.
  for (std::size_t d = 0; d < shape.size(); ++d) {
    std::int64_t end;
    if (shape[d] < 0 || offsets[d] < 0 || sizes[d] < 0 ||
        __builtin_add_overflow(offsets[d], sizes[d], &end) || end > shape[d])
      return {P::kOutside, d};
  }
  std::uint64_t volume = 1;
  for (std::int64_t s : sizes)
    if (__builtin_mul_overflow(volume, static_cast<std::uint64_t>(s), &volume))
      return {P::kVolumeOverflow};
  std::uint64_t bytes;
  if (__builtin_mul_overflow(volume, static_cast<std::uint64_t>(element_size), &bytes))
    return {P::kBytesOverflow};
  return {P::kNone, 0, bytes};
}

namespace {

// The chunks' parts inside the box, as [lo, hi) per dimension; empty parts
// are left out.
struct Parts {
  std::size_t dims = 0;
  std::vector<std::size_t> chunk;  // which chunk each part comes from
  std::vector<std::int64_t> lo, hi;  // dims per part
  // Summed over the parts (each lies in the box, whose volume fits 64 bits;
  // the sum overflows only where parts overlap, which is found first).
  std::uint64_t volume = 0;

  const std::int64_t* Lo(std::size_t p) const { return lo.data() + p * dims; }
  const std::int64_t* Hi(std::size_t p) const { return hi.data() + p * dims; }
  bool Overlap(std::size_t a, std::size_t b) const {
    for (std::size_t d = 0; d < dims; ++d)
      if (Lo(a)[d] >= Hi(b)[d] || Lo(b)[d] >= Hi(a)[d]) return false;
    return true;
  }
};

using ChunkAt = std::function<Box(std::size_t)>;

Parts Clip(std::size_t n, const ChunkAt& chunk, Box box) {
  Parts p;
  p.dims = box.offsets.size();
  for (std::size_t c = 0; c < n; ++c) {
    const Box ch = chunk(c);
    const std::size_t at = p.lo.size();
    std::uint64_t v = 1;
    for (std::size_t d = 0; d < p.dims && v > 0; ++d) {
      // Chunks fit their tensor: no sum below overflows.
      const std::int64_t lo = std::max(ch.offsets[d], box.offsets[d]);
      const std::int64_t hi = std::min(ch.offsets[d] + ch.sizes[d], box.offsets[d] + box.sizes[d]);
      v = lo < hi ? v * static_cast<std::uint64_t>(hi - lo) : 0;
      p.lo.push_back(lo);
      p.hi.push_back(hi);
    }
    if (v == 0) {
      p.lo.resize(at);
      p.hi.resize(at);
      continue;
    }
    p.chunk.push_back(c);
    p.volume += v;
  }
  return p;
}

// The dimension to sweep: the one with the most distinct starts, so that
// the fewest parts are active at once (a grid of r x c tiles keeps
// min(r, c) of them).
std::size_t SweepDim(const Parts& parts) {
  const std::size_t n = parts.chunk.size();
  std::size_t best = 0, most = 0;
  std::vector<std::int64_t> starts(n);
  for (std::size_t d = 0; d < parts.dims; ++d) {
    for (std::size_t p = 0; p < n; ++p) starts[p] = parts.Lo(p)[d];
    std::sort(starts.begin(), starts.end());
    const auto distinct =
        static_cast<std::size_t>(std::unique(starts.begin(), starts.end()) - starts.begin());
    if (distinct > most) best = d, most = distinct;
  }
  return best;
}

// The common case, without allocating: every chunk spans the box in every
// dimension but one, the same for all (row or column shards), and the chunks
// come in order along it. Then the tiling is a question about intervals.
// Empty when the chunks are not like that (the general sweep decides).
std::optional<Tiling> Slabs(std::size_t n, const ChunkAt& chunk, Box box) {
  using P = Tiling::Problem;
  const std::size_t D = box.offsets.size();
  // Chunk c's part in dimension d, [lo, hi); empty when lo >= hi.
  auto part = [&](const Box& ch, std::size_t d) {
    return std::pair{std::max(ch.offsets[d], box.offsets[d]),
                     std::min(ch.offsets[d] + ch.sizes[d], box.offsets[d] + box.sizes[d])};
  };
  auto empty = [&](const Box& ch) {
    for (std::size_t d = 0; d < D; ++d)
      if (auto [lo, hi] = part(ch, d); lo >= hi) return true;
    return false;
  };
  // The one dimension in which chunks may not span the box (D: none does).
  std::size_t dim = D;
  for (std::size_t c = 0; c < n; ++c) {
    const Box ch = chunk(c);
    if (empty(ch)) continue;
    for (std::size_t d = 0; d < D; ++d) {
      if (part(ch, d) == std::pair{box.offsets[d], box.offsets[d] + box.sizes[d]}) continue;
      if (dim != D && dim != d) return std::nullopt;
      dim = d;
    }
  }
  std::uint64_t volume = 1;
  for (std::int64_t s : box.sizes) volume *= static_cast<std::uint64_t>(s);
  // Along `dim`, each part an interval; the parts must come in order.
  std::int64_t prev_lo = 0, reach = 0;
  std::size_t prev = n;  // none yet
  std::uint64_t covered = 0;
  for (std::size_t c = 0; c < n; ++c) {
    const Box ch = chunk(c);
    if (empty(ch)) continue;
    const auto [a, b] = dim == D ? std::pair<std::int64_t, std::int64_t>{0, 1} : part(ch, dim);
    if (prev != n) {
      if (a < prev_lo) return std::nullopt;                // out of order
      if (a < reach) return Tiling{P::kOverlap, prev, c};  // both span the rest
    }
    prev = c, prev_lo = a, reach = b;
    covered += static_cast<std::uint64_t>(b - a);
  }
  if (volume == 0) return Tiling{};
  const std::uint64_t want = dim == D ? 1 : static_cast<std::uint64_t>(box.sizes[dim]);
  return covered == want ? Tiling{} : Tiling{P::kGap};
}

// The overlap of parts a and b, as CheckTiling reports it.
Tiling Overlapping(const Parts& parts, std::size_t a, std::size_t b) {
  return {Tiling::Problem::kOverlap, std::min(parts.chunk[a], parts.chunk[b]),
          std::max(parts.chunk[a], parts.chunk[b])};
}

// Grid layouts (every product of per-dimension splits, as DTensor shards
// and their resharded reads make): the parts' bounds cut the box into
// cells, and each part covers a block of them. When there are few cells
// per part, marking each part's cells finds an overlap in time linear in
// the cells, whatever the layout's shape. Empty when the cells would be
// too many (an irregular layout; the sweep decides).
std::optional<Tiling> Cells(const Parts& parts) {
  const std::size_t n = parts.chunk.size(), D = parts.dims;
  if (D == 0 || n < 2) return std::nullopt;
  const std::uint64_t limit = 4 * static_cast<std::uint64_t>(n) + 64;
  std::vector<std::vector<std::int64_t>> cuts(D);
  std::uint64_t cells = 1;
  for (std::size_t d = 0; d < D; ++d) {
    cuts[d].reserve(2 * n);
    for (std::size_t p = 0; p < n; ++p) {
      cuts[d].push_back(parts.Lo(p)[d]);
      cuts[d].push_back(parts.Hi(p)[d]);
    }
    std::sort(cuts[d].begin(), cuts[d].end());
    cuts[d].erase(std::unique(cuts[d].begin(), cuts[d].end()), cuts[d].end());
    cells *= cuts[d].size() - 1;  // parts are not empty: two cuts at least
    if (cells > limit) return std::nullopt;
  }
  auto at = [&](std::size_t d, std::int64_t v) {
    return static_cast<std::uint64_t>(std::lower_bound(cuts[d].begin(), cuts[d].end(), v) -
                                      cuts[d].begin());
  };
  std::vector<std::uint32_t> owner(cells, 0);  // 1 + the part that covers it, or 0
  std::vector<std::uint64_t> lo(D), hi(D), i(D);
  for (std::size_t p = 0; p < n; ++p) {
    for (std::size_t d = 0; d < D; ++d) {
      lo[d] = i[d] = at(d, parts.Lo(p)[d]);
      hi[d] = at(d, parts.Hi(p)[d]);
    }
    // Every cell of the block lo..hi, the last dimension fastest.
    for (;;) {
      std::uint64_t cell = 0;
      for (std::size_t d = 0; d < D; ++d) cell = cell * (cuts[d].size() - 1) + i[d];
      if (owner[cell] != 0) return Overlapping(parts, owner[cell] - 1, p);
      owner[cell] = static_cast<std::uint32_t>(p + 1);
      std::size_t d = D;
      while (d > 0 && ++i[d - 1] == hi[d - 1]) {
        i[d - 1] = lo[d - 1];
        --d;
      }
      if (d == 0) break;
    }
  }
  return Tiling{};  // no overlap; the caller compares volumes for a gap
}

// Two dimensions, any layout, O(n log n): the parts active at the sweep line
// all reach across it, so (no overlap found so far) they are disjoint in the
// other dimension, and kept in order there. A new part can then overlap an
// active one only if it overlaps the last one that starts before its end.
Tiling Sweep2(const Parts& parts, const std::vector<std::size_t>& order, std::size_t sd) {
  const std::size_t e = 1 - sd;
  std::map<std::int64_t, std::size_t> active;  // start in e -> part (starts differ)
  using Reach = std::pair<std::int64_t, std::size_t>;  // end in sd, part
  std::priority_queue<Reach, std::vector<Reach>, std::greater<>> ends;
  for (std::size_t p : order) {
    for (const std::int64_t at = parts.Lo(p)[sd]; !ends.empty() && ends.top().first <= at;
         ends.pop())
      active.erase(parts.Lo(ends.top().second)[e]);
    const auto after = active.lower_bound(parts.Hi(p)[e]);  // first to start at p's end
    if (after != active.begin()) {
      const std::size_t a = std::prev(after)->second;
      if (parts.Hi(a)[e] > parts.Lo(p)[e]) return Overlapping(parts, a, p);
    }
    active.emplace(parts.Lo(p)[e], p);
    ends.push({parts.Hi(p)[sd], p});
  }
  return {};
}

// What the sweep may compare before it gives up on a layout: legitimate
// layouts take the paths above, or few comparisons here.
std::uint64_t SweepBudget(std::size_t n) { return 64 * static_cast<std::uint64_t>(n) + (1u << 24); }

}  // namespace

Tiling CheckTiling(std::size_t n, const std::function<Box(std::size_t)>& chunk, Box box) {
  using P = Tiling::Problem;
  if (auto fast = Slabs(n, chunk, box)) return *fast;
  const Parts parts = Clip(n, chunk, box);
  n = parts.chunk.size();
  const std::size_t D = parts.dims;
  std::uint64_t want = 1;
  for (std::int64_t s : box.sizes) want *= static_cast<std::uint64_t>(s);
  const Tiling gap = parts.volume == want ? Tiling{} : Tiling{P::kGap};
  if (auto grid = Cells(parts)) return grid->problem == P::kNone ? gap : *grid;
  const std::size_t sd = SweepDim(parts);
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  auto start = [&](std::size_t p) { return D ? parts.Lo(p)[sd] : 0; };
  auto by_start = [&](std::size_t a, std::size_t b) { return start(a) < start(b); };
  if (!std::is_sorted(order.begin(), order.end(), by_start))
    std::stable_sort(order.begin(), order.end(), by_start);
  if (D == 2) {
    const Tiling t = Sweep2(parts, order, sd);
    return t.problem == P::kNone ? gap : t;
  }
  std::vector<std::size_t> active;  // parts whose reach in sd passes the sweep
  std::uint64_t budget = SweepBudget(n);
  for (std::size_t p : order) {
    if (D)
      std::erase_if(active, [&](std::size_t a) { return parts.Hi(a)[sd] <= start(p); });
    if (active.size() > budget) return {P::kTooIrregular};
    budget -= active.size();
    for (std::size_t a : active)
      if (parts.Overlap(a, p)) return Overlapping(parts, a, p);
    active.push_back(p);
  }
  return gap;
}

}  // namespace shardwise::format
