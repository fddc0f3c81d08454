// The soak (src/testing/soak.cc) in its short form: many async saves with
// retention, no growth in memory, descriptors or threads.
#include <gtest/gtest.h>

#include "testing/test_util.h"

namespace shardwise {
namespace {

TEST(Soak, ShortRunLeaksNothing) {
  testing::TempDir dir;
  auto r = testing::RunProcess({SW_SOAK, "--dir", dir.path(), "--saves", "40", "--size", "8MiB",
                                "--warmup", "10", "--keep-last", "3"});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("\"ok\": true"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"kept\": 3"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace shardwise

namespace shardwise {
namespace {

// The crash torture (src/testing/torture.cc) in its short form; the long run
// is in docs/RELIABILITY.md.
TEST(Torture, ShortRandomizedRunKeepsEveryInvariant) {
  testing::TempDir dir;
  const char* seed = std::getenv("SHARDWISE_TORTURE_SEED");
  auto r = testing::RunProcess({SW_TORTURE, "--dir", dir / "root", "--trials", "40", "--seed",
                                seed ? seed : "20261129", "--size", "512KiB"});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("\"invariant_failures\": 0"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace shardwise
