#include "format/crc32c.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace shardwise::format {
namespace {

TEST(Crc32c, KnownVectors) {
  // RFC 3720 (iSCSI) check values.
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);
  std::vector<unsigned char> zeros(32, 0), ones(32, 0xFF), inc(32);
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<unsigned char>(i);
  EXPECT_EQ(Crc32c(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(inc.data(), 32), 0x46DD794Eu);
  EXPECT_EQ(Crc32c("", 0), 0u);
}

// Hardware, portable and fused-copy paths agree on every size and alignment,
// including sizes that cross the 3-stream threshold.
TEST(Crc32c, AllPathsAgree) {
  std::mt19937_64 rng(7);
  std::vector<unsigned char> data(3 * 8192 * 3 + 100);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  std::vector<std::size_t> sizes = {0, 1, 7, 8, 9, 63, 4096, 8191, 24575, 24576, 24577,
                                    3 * 24576 + 5};
  for (std::size_t offset : {0, 1, 3, 8}) {
    for (std::size_t n : sizes) {
      if (offset + n > data.size()) continue;
      Crc32cForcePortable(true);
      std::uint32_t portable = Crc32c(data.data() + offset, n);
      Crc32cForcePortable(false);
      std::uint32_t fast = Crc32c(data.data() + offset, n);
      std::vector<unsigned char> out(n + 1, 0);
      std::uint32_t fused = Crc32cCopy(out.data() + 1, data.data() + offset, n);
      EXPECT_EQ(portable, fast) << "n=" << n << " offset=" << offset;
      EXPECT_EQ(portable, fused) << "n=" << n << " offset=" << offset;
      EXPECT_EQ(0, std::memcmp(out.data() + 1, data.data() + offset, n));
    }
  }
}

TEST(Crc32c, Incremental) {
  std::string s = "The quick brown fox jumps over the lazy dog, twice and more.";
  std::uint32_t whole = Crc32c(s.data(), s.size());
  for (std::size_t cut = 0; cut <= s.size(); ++cut)
    EXPECT_EQ(Crc32c(s.data() + cut, s.size() - cut, Crc32c(s.data(), cut)), whole);
}

TEST(Crc32c, DetectsEverySingleBitFlip) {
  std::vector<unsigned char> data(1024);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<unsigned char>(i * 7);
  std::uint32_t base = Crc32c(data.data(), data.size());
  for (std::size_t i = 0; i < data.size(); i += 37)
    for (int bit = 0; bit < 8; ++bit) {
      data[i] ^= static_cast<unsigned char>(1 << bit);
      EXPECT_NE(Crc32c(data.data(), data.size()), base);
      data[i] ^= static_cast<unsigned char>(1 << bit);
    }
}

}  // namespace
}  // namespace shardwise::format
