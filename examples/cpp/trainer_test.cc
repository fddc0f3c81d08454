// Builds on examples/cpp/trainer.cc: an interrupted and resumed training run
// ends with exactly the state of an uninterrupted one.
#include <gtest/gtest.h>

#include "testing/test_util.h"

namespace shardwise {
namespace {

using testing::ProcResult;
using testing::RunProcess;
using testing::TempDir;

std::string Fingerprint(const std::string& out) {
  auto pos = out.find("fingerprint ");
  return pos == std::string::npos ? "" : out.substr(pos + 12, 16);
}

TEST(ExampleTrainer, ResumeIsExact) {
  TempDir a, b;
  ProcResult straight = RunProcess({SW_EXAMPLE_TRAINER, a.path(), "--steps", "60",
                                    "--save-every", "10"});
  ASSERT_EQ(straight.exit_code, 0) << straight.out;
  EXPECT_NE(straight.out.find("starting at step 0"), std::string::npos);
  ProcResult first = RunProcess({SW_EXAMPLE_TRAINER, b.path(), "--steps", "30",
                                 "--save-every", "10", "--keep-last", "2"});
  ASSERT_EQ(first.exit_code, 0) << first.out;
  ProcResult resumed = RunProcess({SW_EXAMPLE_TRAINER, b.path(), "--steps", "60",
                                   "--save-every", "10", "--keep-last", "2"});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.out;
  EXPECT_NE(resumed.out.find("resumed from step 30"), std::string::npos) << resumed.out;
  ASSERT_FALSE(Fingerprint(straight.out).empty());
  EXPECT_EQ(Fingerprint(straight.out), Fingerprint(resumed.out));
  // Retention kept two checkpoints.
  int committed = 0;
  auto entries = os::ListDir(b.path());
  ASSERT_TRUE(entries.ok());
  for (const auto& e : *entries)
    if (e.name.rfind("step-", 0) == 0) ++committed;
  EXPECT_EQ(committed, 2);
}

}  // namespace
}  // namespace shardwise
