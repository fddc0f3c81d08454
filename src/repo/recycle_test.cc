// Recycled files (Options::recycle_files): retention keeps a removed
// checkpoint's files, the next save or install overwrites them in place,
// and what it leaves is byte for byte what a new file would hold.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "os/posix.h"
#include "shardwise/names.h"
#include "shardwise/shardwise.h"
#include "testing/holds.h"
#include "testing/test_util.h"

namespace shardwise {
namespace {

using testing::Holds;
using testing::OwnedItems;
using testing::TempDir;

const std::string kShard = "rank-00000.shard";

std::string StepName(std::int64_t step) {
  std::string digits = std::to_string(step);
  return "step-" + std::string(12 - digits.size(), '0') + digits;
}

// Items of 256 KiB or more are written byte for byte under buffered I/O,
// so the padding after an odd-sized one is never written; small ones are
// packed. `scale` makes the shard longer.
OwnedItems State(std::uint64_t seed, std::int64_t scale) {
  OwnedItems it;
  it.Add("big", DType::kUInt8, {300001 * scale}, seed);
  it.Add("odd", DType::kFloat32, {77}, seed + 1);
  it.Add("mid", DType::kUInt8, {262147}, seed + 2);
  return it;
}

ino_t Inode(const std::string& path) {
  auto st = os::Stat(path);
  return st.ok() ? st->st_ino : 0;
}

std::vector<std::string> Committed(Repository& repo) {
  std::vector<std::string> out;
  auto list = repo.List();
  if (list.ok())
    for (const auto& c : *list)
      if (c.state == CheckpointInfo::State::kCommitted) out.push_back(c.name);
  return out;
}

std::size_t BinFiles(const TempDir& dir) {
  auto entries = os::ListDir(dir / std::string(names::kRecycleDir));
  return entries.ok() ? entries->size() : 0;
}

class Recycle : public ::testing::TestWithParam<DirectIoMode> {
 protected:
  void SetUp() override {
    if (const std::string why = testing::RecyclingUnavailable(probe_); !why.empty())
      GTEST_SKIP() << why;
  }
  TempDir probe_;
  std::unique_ptr<Repository> Open(const TempDir& dir, bool recycle) {
    Options o;
    o.recycle_files = recycle;
    o.direct_io = GetParam();
    o.poll_interval_s = 0.005;
    auto r = Repository::Open(dir.path(), o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(*r) : nullptr;
  }
  static void Save(Repository& repo, std::int64_t step, const OwnedItems& state) {
    SaveSpec spec;
    spec.step = step;
    spec.save_id = "id" + std::to_string(step);
    auto r = repo.Save(spec, state.items);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  // Saves steps 1 and 2 (larger than later ones, with other bytes), then
  // retention keeps step 2 only: step 1's files go to the bin. Returns the
  // inode of step 1's shard.
  ino_t RetireOne(Repository& repo, const TempDir& dir) {
    Save(repo, 1, State(1, 4));
    const ino_t old = Inode(dir / StepName(1) + "/" + kShard);
    Save(repo, 2, State(2, 4));
    GcOptions gc;
    gc.keep_last = 1;
    EXPECT_TRUE(repo.Gc(gc).ok());
    EXPECT_FALSE(os::Exists(dir / StepName(1)));
    EXPECT_EQ(BinFiles(dir), 1u);  // the shard; not the manifest or the index
    return old;
  }
};

TEST_P(Recycle, TheNextSaveOverwritesARetiredFileAsANewFileWouldBe) {
  TempDir dir, fresh_dir;
  auto repo = Open(dir, true);
  auto fresh = Open(fresh_dir, false);
  ASSERT_TRUE(repo && fresh);
  const ino_t old = RetireOne(*repo, dir);
  ASSERT_NE(old, 0u);
  const OwnedItems state = State(3, 1);
  Save(*repo, 3, state);
  Save(*fresh, 3, state);
  const std::string shard = dir / StepName(3) + "/" + kShard;
  EXPECT_EQ(Inode(shard), old);  // the retired file, overwritten in place
  EXPECT_TRUE(Holds(*repo, StepName(3), state));
  auto reader = repo->OpenCheckpoint(StepName(3));
  ASSERT_TRUE(reader.ok());
  EXPECT_TRUE((*reader)->Verify()->problems.empty());
  // Padding and the end are zero, the size is the new one: the same bytes
  // as the same save into a new file.
  EXPECT_EQ(testing::ReadAll(shard), testing::ReadAll(fresh_dir / StepName(3) + "/" + kShard));
}

TEST_P(Recycle, AnInstallOverwritesARetiredFile) {
  TempDir dir, source_dir;
  auto repo = Open(dir, true);
  auto source = Open(source_dir, false);
  ASSERT_TRUE(repo && source);
  const ino_t old = RetireOne(*repo, dir);
  const OwnedItems state = State(5, 1);
  Save(*source, 5, state);
  const std::string name = StepName(5);
  auto entries = os::ListDir(source_dir / name);
  ASSERT_TRUE(entries.ok());
  std::vector<std::pair<std::string, std::string>> owned;
  for (const auto& e : *entries)
    owned.emplace_back(e.name, testing::ReadAll(source_dir / name + "/" + e.name));
  std::vector<std::pair<std::string, std::string_view>> views;
  for (const auto& [f, d] : owned) views.emplace_back(f, d);
  ASSERT_TRUE(repo->Install(name, views).ok());
  EXPECT_EQ(Inode(dir / name + "/" + kShard), old);
  EXPECT_TRUE(Holds(*repo, name, state));
  for (const auto& [f, d] : owned) EXPECT_EQ(testing::ReadAll(dir / name + "/" + f), d) << f;
}

TEST_P(Recycle, OffMeansRetentionUnlinksAndGcEmptiesAnOldBin) {
  TempDir dir;
  auto repo = Open(dir, false);
  ASSERT_TRUE(repo);
  Save(*repo, 1, State(1, 1));
  Save(*repo, 2, State(2, 1));
  GcOptions gc;
  gc.keep_last = 1;
  ASSERT_TRUE(repo->Gc(gc).ok());
  const std::string bin = dir / std::string(names::kRecycleDir);
  EXPECT_FALSE(os::Exists(bin));
  // A bin from when recycling was on: gc without it removes the bin.
  TempDir other;
  RetireOne(*Open(other, true), other);
  const std::string old_bin = other / std::string(names::kRecycleDir);
  ASSERT_TRUE(os::Exists(old_bin));
  auto off = Open(other, false);
  GcOptions dry;
  dry.dry_run = true;
  auto report = off->Gc(dry);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->removed_staging, std::vector<std::string>{".recycle"});
  EXPECT_TRUE(os::Exists(old_bin));  // a dry run
  ASSERT_TRUE(off->Gc({}).ok());
  EXPECT_FALSE(os::Exists(old_bin));
  EXPECT_EQ(Committed(*off), std::vector<std::string>{StepName(2)});
}

TEST_P(Recycle, AFileSomeoneHasOpenOrMappedIsNotOverwritten) {
  for (const bool mapped : {false, true}) {
    TempDir dir;
    auto repo = Open(dir, true);
    ASSERT_TRUE(repo);
    Save(*repo, 1, State(1, 4));
    const std::string shard = dir / StepName(1) + "/" + kShard;
    const std::string before = testing::ReadAll(shard);
    // A reader of step 1 (a verify, a load in another process) opened its
    // shard before retention removed it.
    auto reader = os::Open(shard, O_RDONLY);
    ASSERT_TRUE(reader.ok());
    void* map = nullptr;
    if (mapped) {
      map = ::mmap(nullptr, before.size(), PROT_READ, MAP_SHARED, reader->fd(), 0);
      ASSERT_NE(map, MAP_FAILED);
      ASSERT_TRUE(reader->Close().ok());
    }
    Save(*repo, 2, State(2, 4));
    GcOptions gc;
    gc.keep_last = 1;
    ASSERT_TRUE(repo->Gc(gc).ok());
    const OwnedItems state = State(3, 4);
    Save(*repo, 3, state);  // takes nothing: a new file
    EXPECT_TRUE(Holds(*repo, StepName(3), state));
    std::string seen(before.size(), '\0');
    if (mapped) {
      std::memcpy(seen.data(), map, before.size());
      ::munmap(map, before.size());
    } else {
      ASSERT_TRUE(os::PreadAll(reader->fd(), seen.data(), seen.size(), 0, shard).ok());
    }
    EXPECT_EQ(seen, before) << (mapped ? "mapped" : "open");  // the reader's bytes are intact
    EXPECT_EQ(BinFiles(dir), 0u);  // refused, and unlinked
  }
}

TEST_P(Recycle, AFileWithAnotherHardLinkIsNeitherBinnedNorOverwritten) {
  TempDir dir, backup;
  auto repo = Open(dir, true);
  ASSERT_TRUE(repo);
  Save(*repo, 1, State(1, 4));
  const std::string shard = dir / StepName(1) + "/" + kShard;
  const std::string before = testing::ReadAll(shard);
  const std::string copy = backup / "copy.shard";  // as `cp -al` makes
  ASSERT_EQ(::link(shard.c_str(), copy.c_str()), 0);
  Save(*repo, 2, State(2, 4));
  GcOptions gc;
  gc.keep_last = 1;
  ASSERT_TRUE(repo->Gc(gc).ok());
  EXPECT_EQ(BinFiles(dir), 0u);
  Save(*repo, 3, State(3, 4));
  EXPECT_EQ(testing::ReadAll(copy), before);
}

TEST_P(Recycle, ABinThatIsALinkOrAFileIsLeftAloneAndSavesGoOn) {
  for (const bool link : {true, false}) {
    TempDir dir, elsewhere;
    auto repo = Open(dir, true);
    ASSERT_TRUE(repo);
    const std::string victim = elsewhere / "rank-00000.shard";
    ASSERT_TRUE(os::WriteFileAtomic(victim, std::string(3 << 20, 'v')).ok());
    const std::string bin = dir / std::string(names::kRecycleDir);
    if (link) ASSERT_EQ(::symlink(elsewhere.path().c_str(), bin.c_str()), 0);
    else ASSERT_TRUE(os::WriteFileAtomic(bin, "not a directory").ok());
    Save(*repo, 1, State(1, 4));
    Save(*repo, 2, State(2, 4));
    GcOptions gc;
    gc.keep_last = 1;
    ASSERT_TRUE(repo->Gc(gc).ok()) << (link ? "link" : "file");
    const OwnedItems state = State(3, 1);
    Save(*repo, 3, state);
    EXPECT_TRUE(Holds(*repo, StepName(3), state));
    EXPECT_EQ(testing::ReadAll(victim), std::string(3 << 20, 'v'));
    auto entries = os::ListDir(elsewhere.path());
    ASSERT_TRUE(entries.ok());
    EXPECT_EQ(entries->size(), 1u);  // nothing moved into the link's target
  }
}

INSTANTIATE_TEST_SUITE_P(IoModes, Recycle,
                         ::testing::Values(DirectIoMode::kOff, DirectIoMode::kAuto));

}  // namespace
}  // namespace shardwise
