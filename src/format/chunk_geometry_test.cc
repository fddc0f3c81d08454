// How chunks tile a box (format/chunk_geometry.h): exact tilings in rows,
// columns and grids pass; an element in two chunks or in none is named.
#include "format/chunk_geometry.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace shardwise::format
