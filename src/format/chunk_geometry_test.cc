// How chunks tile a box (format/chunk_geometry.h): exact tilings in rows,
// columns and grids pass; an element in two chunks or in none is named.
#include "format/chunk_geometry.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace shardwise::format {
namespace {

using V = std::vector<std::int64_t>;
using P = Tiling::Problem;

struct Chunks {
  std::vector<V> offsets, sizes;
  void Add(V o, V s) {
    offsets.push_back(std::move(o));
    sizes.push_back(std::move(s));
  }
  Tiling Of(const V& box_offsets, const V& box_sizes) const {
    return CheckTiling(
        offsets.size(), [&](std::size_t k) { return Box{offsets[k], sizes[k]}; },
        {box_offsets, box_sizes});
  }
};

// An r x c grid of 4 x 4 tiles over an (4r) x (4c) tensor, listed in the
// given order (rows first, or columns first).
Chunks Grid(int r, int c, bool columns_first) {
  Chunks g;
  for (int a = 0; a < (columns_first ? c : r); ++a)
    for (int b = 0; b < (columns_first ? r : c); ++b) {
      const int i = columns_first ? b : a, j = columns_first ? a : b;
      g.Add({4 * i, 4 * j}, {4, 4});
    }
  return g;
}

TEST(CheckTiling, RowsColumnsAndGridsTile) {
  for (bool columns_first : {false, true}) {
    EXPECT_EQ(Grid(8, 1, columns_first).Of({0, 0}, {32, 4}).problem, P::kNone);  // rows
    EXPECT_EQ(Grid(1, 8, columns_first).Of({0, 0}, {4, 32}).problem, P::kNone);  // columns
    EXPECT_EQ(Grid(5, 7, columns_first).Of({0, 0}, {20, 28}).problem, P::kNone);
    // A box across tile borders is tiled by the parts inside it.
    EXPECT_EQ(Grid(5, 7, columns_first).Of({3, 5}, {9, 17}).problem, P::kNone);
  }
  Chunks scalar;
  scalar.Add({}, {});
  EXPECT_EQ(scalar.Of({}, {}).problem, P::kNone);
  Chunks empty;  // a tensor with no elements needs no chunk
  EXPECT_EQ(empty.Of({0, 0}, {0, 5}).problem, P::kNone);
}

TEST(CheckTiling, AnOverlapNamesBothChunks) {
  Chunks rows = Grid(4, 1, false);
  rows.offsets[2] = {5, 0};  // rows 5-8 reach into chunk 1's rows 4-7
  Tiling t = rows.Of({0, 0}, {16, 4});
  EXPECT_EQ(t.problem, P::kOverlap);
  EXPECT_EQ(t.first, 1u);
  EXPECT_EQ(t.second, 2u);
  // Column shards: the last one moved onto columns 1-4. Volumes still sum
  // to the tensor's, with columns 13-15 in no chunk: a sum of volumes alone
  // would have let this pass.
  Chunks columns = Grid(1, 4, true);
  columns.offsets[3] = {0, 1};
  t = columns.Of({0, 0}, {4, 16});
  EXPECT_EQ(t.problem, P::kOverlap);
  EXPECT_EQ(t.first, 0u);
  EXPECT_EQ(t.second, 3u);
  Chunks two_scalars;
  two_scalars.Add({}, {});
  two_scalars.Add({}, {});
  EXPECT_EQ(two_scalars.Of({}, {}).problem, P::kOverlap);
}

TEST(CheckTiling, AGapIsFound) {
  Chunks grid = Grid(3, 3, false);
  grid.offsets.erase(grid.offsets.begin() + 4);  // the middle tile
  grid.sizes.erase(grid.sizes.begin() + 4);
  EXPECT_EQ(grid.Of({0, 0}, {12, 12}).problem, P::kGap);
  // A box that misses the hole is still tiled.
  EXPECT_EQ(grid.Of({0, 0}, {4, 12}).problem, P::kNone);
  EXPECT_EQ(grid.Of({4, 4}, {1, 1}).problem, P::kGap);
  Chunks none;
  EXPECT_EQ(none.Of({}, {}).problem, P::kGap);  // a scalar with no chunk
}

// Thousands of row shards, as many ranks write them, in any order: the
// sweep finds the one overlap without comparing every pair.
TEST(CheckTiling, ManyShardsInAnyOrder) {
  Chunks rows;
  for (int k = 16383; k >= 0; --k) rows.Add({2 * k, 0}, {2, 8});
  EXPECT_EQ(rows.Of({0, 0}, {32768, 8}).problem, P::kNone);
  rows.sizes[100] = {3, 8};  // reaches one row into its neighbour
  EXPECT_EQ(rows.Of({0, 0}, {32768, 8}).problem, P::kOverlap);
}

// A large grid in any order takes the cell path: every chunk is one cell.
// Its one overlap, and its one gap, are found as in a small one.
TEST(CheckTiling, LargeGridsInAnyOrder) {
  Chunks grid = Grid(300, 300, false);  // 90,000 tiles
  Chunks shuffled;  // a fixed permutation: 7919 is prime to 90,000
  for (std::size_t k = 0; k < grid.offsets.size(); ++k) {
    const std::size_t from = k * 7919 % grid.offsets.size();
    shuffled.Add(grid.offsets[from], grid.sizes[from]);
  }
  ASSERT_EQ(shuffled.offsets[5], (V{4 * 131, 4 * 295}));  // not in the last column
  EXPECT_EQ(shuffled.Of({0, 0}, {1200, 1200}).problem, P::kNone);
  EXPECT_EQ(shuffled.Of({10, 30}, {500, 7}).problem, P::kNone);  // across tile borders
  Chunks wide = shuffled;
  wide.sizes[5] = {4, 8};  // reaches into its right neighbour
  const Tiling t = wide.Of({0, 0}, {1200, 1200});
  EXPECT_EQ(t.problem, P::kOverlap);
  EXPECT_TRUE(t.first == 5 || t.second == 5) << t.first << " " << t.second;
  Chunks holed = shuffled;
  holed.offsets.erase(holed.offsets.begin() + 77);
  holed.sizes.erase(holed.sizes.begin() + 77);
  EXPECT_EQ(holed.Of({0, 0}, {1200, 1200}).problem, P::kGap);
  // Uneven splits are a grid too (cuts need not be evenly spaced).
  Chunks uneven;
  for (std::int64_t r : {0, 3, 10})
    for (std::int64_t c : {0, 1, 9}) uneven.Add({r, c}, {r == 10 ? 2 : (r == 0 ? 3 : 7),
                                                         c == 9 ? 3 : (c == 0 ? 1 : 8)});
  EXPECT_EQ(uneven.Of({0, 0}, {12, 12}).problem, P::kNone);
}

// Row bands, each split into columns its own way: no grid, and each column
// position keeps one chunk of every band active. Any layout of two
// dimensions is decided in O(n log n), however many bands.
TEST(CheckTiling, RowBandsSplitUnevenly) {
  Chunks bands;
  const std::int64_t rows = 400, width = 6000;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t step = 60 + r % 13;  // a band's column width
    for (std::int64_t c = 0; c < width; c += step)
      bands.Add({r, c}, {1, std::min(step, width - c)});
  }
  EXPECT_EQ(bands.Of({0, 0}, {rows, width}).problem, P::kNone);
  Chunks wide = bands;
  wide.sizes[1000] = {2, wide.sizes[1000][1]};  // reaches into the band below
  EXPECT_EQ(wide.Of({0, 0}, {rows, width}).problem, P::kOverlap);
  Chunks layers;  // the same in three dimensions: layers, each banded its own way
  for (std::int64_t l = 0; l < 30; ++l)
    for (std::int64_t b = 0, step = 50 + l % 7; b < 3000; b += step)
      layers.Add({l, b, 0}, {1, std::min(step, 3000 - b), 5});
  EXPECT_EQ(layers.Of({0, 0, 0}, {30, 3000, 5}).problem, P::kNone);
  layers.sizes[100][0] = 2;  // into the next layer
  EXPECT_EQ(layers.Of({0, 0, 0}, {30, 3000, 5}).problem, P::kOverlap);
  Chunks staircase;  // each reaches the last row; columns keep them apart
  for (std::int64_t i = 0; i < 40000; ++i) staircase.Add({i, i}, {40000 - i, 1});
  EXPECT_EQ(staircase.Of({0, 0}, {40000, 40000}).problem, P::kGap);
  staircase.Add({39999, 39998}, {1, 2});  // its last row, two columns wide
  EXPECT_EQ(staircase.Of({0, 0}, {40000, 40000}).problem, P::kOverlap);
}

// Against counting every element: random boxes in small tensors of one to
// three dimensions, inside a random box, through every path (slabs, cells,
// the ordered sweep of two dimensions, the general sweep).
TEST(CheckTiling, AgreesWithCountingEveryElement) {
  std::uint64_t seed = 12345;
  auto next = [&](std::int64_t below) {  // a fixed LCG: the same cases everywhere
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<std::int64_t>((seed >> 33) % static_cast<std::uint64_t>(below));
  };
  for (int round = 0; round < 6000; ++round) {
    const std::size_t D = 1 + round % 3;
    // Large enough, with enough chunks, that most layouts are no grid of
    // few cells (then the sweeps decide); chunks small enough that many
    // layouts do not overlap.
    V shape(D);
    for (auto& s : shape) s = 1 + next(D == 3 ? 10 : 40);
    Chunks c;
    const std::int64_t n = next(25);
    for (std::int64_t k = 0; k < n; ++k) {
      V o(D), z(D);
      for (std::size_t d = 0; d < D; ++d) {
        o[d] = next(shape[d]);
        z[d] = 1 + next(std::min(shape[d] - o[d], std::max<std::int64_t>(1, shape[d] / 3)));
      }
      c.Add(o, z);
    }
    V bo(D, 0), bz = shape;  // mostly the whole tensor, else a box in it
    for (std::size_t d = 0; d < D && round % 3 == 0; ++d) {
      bo[d] = next(shape[d]);
      bz[d] = next(shape[d] - bo[d] + 1);
    }
    // Count each element of the box.
    bool overlap = false, gap = false;
    V at = bo;
    std::int64_t volume = 1;
    for (auto z : bz) volume *= z;
    for (std::int64_t e = 0; e < volume; ++e) {
      std::int64_t rest = e;
      for (std::size_t d = D; d-- > 0;) {
        at[d] = bo[d] + rest % bz[d];
        rest /= bz[d];
      }
      int hits = 0;
      for (std::size_t k = 0; k < c.offsets.size(); ++k) {
        bool in = true;
        for (std::size_t d = 0; d < D; ++d)
          in = in && at[d] >= c.offsets[k][d] && at[d] < c.offsets[k][d] + c.sizes[k][d];
        hits += in;
      }
      overlap = overlap || hits > 1;
      gap = gap || hits == 0;
    }
    const Tiling t = c.Of(bo, bz);
    const P want = overlap ? P::kOverlap : gap ? P::kGap : P::kNone;
    ASSERT_EQ(t.problem, want) << "round " << round;
  }
}

// Three dimensions: chunks laid out so that every one stays active along
// the swept dimension while the other two keep them apart (no grid: n^2
// cells) would take O(n^2) comparisons. A small such layout is decided; a
// large one is refused within the budget instead of comparing every pair.
Chunks Towers(std::int64_t n, std::int64_t m) {
  Chunks t;  // chunk i: from row i to the last, in cell (i / m, i % m) of the other two
  for (std::int64_t i = 0; i < n; ++i) t.Add({i, i / m, i % m}, {n - i, 1, 1});
  return t;
}

TEST(CheckTiling, AnIrregularLayoutIsDecidedOrRefusedInBoundedTime) {
  EXPECT_EQ(Towers(400, 20).Of({0, 0, 0}, {400, 20, 20}).problem, P::kGap);
  // 8e8 pairs: without the budget, kGap after them all
  EXPECT_EQ(Towers(40000, 200).Of({0, 0, 0}, {40000, 200, 200}).problem, P::kTooIrregular);
}

}  // namespace
}  // namespace shardwise::format
