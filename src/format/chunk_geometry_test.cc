// How chunks tile a box (format/chunk_geometry.h): exact tilings in rows,
// columns and grids pass; an element in two chunks or in none is named.
#include "format/chunk_geometry.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
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
  std::vector<std::size_t> order(grid.offsets.size());
  for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::shuffle(order.begin(), order.end(), std::mt19937(7));
  Chunks shuffled;
  for (std::size_t k : order) shuffled.Add(grid.offsets[k], grid.sizes[k]);
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

// Chunks that are no grid and keep every earlier chunk in the sweep (each
// reaches the end of the rows; the columns keep them apart): up to O(n^2)
// comparisons. A small such layout is decided; a large one is refused
// within the budget instead of comparing every pair.
TEST(CheckTiling, AnIrregularLayoutIsDecidedOrRefusedInBoundedTime) {
  auto staircase = [](std::int64_t n) {
    Chunks s;
    for (std::int64_t i = 0; i < n; ++i) s.Add({i, i}, {n - i, 1});
    return s;
  };
  EXPECT_EQ(staircase(200).Of({0, 0}, {200, 200}).problem, P::kGap);
  // 8e8 pairs: without the budget, kGap after them all
  EXPECT_EQ(staircase(40000).Of({0, 0}, {40000, 40000}).problem, P::kTooIrregular);
}

}  // namespace
}  // namespace shardwise::format
