// The repository: commit protocol, listing, latest, replace, retention, gc,
// multi-process saves, and a failed syscall at every step of a commit.
#include "shardwise/repository.h"
#include "shardwise/reader.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include "fs/io_mode.h"
#include "os/fault.h"
#include "os/posix.h"
#include "repo/listing.h"
#include "shardwise/shardwise.h"
#include "testing/test_util.h"
#include "shardwise/names.h"

namespace shardwise {
namespace {

using testing::OwnedItems;
using testing::TempDir;

OwnedItems Items(std::uint64_t seed) {
  OwnedItems it;
  it.Add("w", DType::kFloat32, {64, 33}, seed);
  it.Add("b", DType::kFloat32, {33}, seed + 1);
  return it;
}

std::vector<std::string> Committed(Repository& repo) {
  std::vector<std::string> out;
  auto list = repo.List();
  EXPECT_TRUE(list.ok());
  for (const auto& c : *list)
    if (c.state == CheckpointInfo::State::kCommitted) out.push_back(c.name);
  return out;
}

int StagingCount(Repository& repo) {
  int n = 0;
  auto list = repo.List();
  for (const auto& c : *list)
    if (c.state == CheckpointInfo::State::kStaging || c.state == CheckpointInfo::State::kLeftover)
      ++n;
  return n;
}

// Reads item "w" and compares it with the data of `seed`.
bool Holds(Repository& repo, const std::string& name, std::uint64_t seed) {
  auto reader = repo.OpenCheckpoint(name);
  if (!reader.ok()) return false;
  OwnedItems want = Items(seed);
  for (const auto& w : want.items) {
    std::vector<std::byte> back(w.nbytes);
    if (!(*reader)->ReadItem(w.name, back.data(), back.size()).ok()) return false;
    if (std::memcmp(back.data(), w.data, w.nbytes) != 0) return false;
  }
  auto report = (*reader)->Verify();
  return report.ok() && report->problems.empty();
}

class RepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Options o;
    o.poll_interval_s = 0.005;
    auto r = Repository::Open(dir_.path(), o);
    ASSERT_TRUE(r.ok());
    repo_ = std::move(*r);
  }
  void TearDown() override { os::ClearFaults(); }
  Result<CommitResult> Save(std::int64_t step, std::uint64_t seed, bool replace = false) {
    OwnedItems it = Items(seed);
    SaveSpec spec;
    spec.step = step;
    spec.replace = replace;
    return repo_->Save(spec, it.items);
  }
  TempDir dir_;
  std::unique_ptr<Repository> repo_;
};

// Format 1 (SHARDWISE_FORMAT_VERSION=1) and format 2 checkpoints side by
// side in one root: both load, verify and list; only format 2 has an index,
// and its reader reads one item's records, not the whole index.
TEST_F(RepositoryTest, BothFormatsLoadVerifyAndList) {
  for (int version : {1, 2}) {
    Options o;
    o.format_version = version;
    auto repo = Repository::Open(dir_.path(), o);
    ASSERT_TRUE(repo.ok());
    OwnedItems it = Items(version);
    for (int i = 0; i < 300; ++i) it.Add("extra." + std::to_string(i), DType::kInt32, {8}, i);
    SaveSpec spec;
    spec.step = version;
    ASSERT_TRUE((*repo)->Save(spec, it.items).ok());
  }
  const std::string v1 = dir_ / "step-000000000001", v2 = dir_ / "step-000000000002";
  EXPECT_FALSE(os::Exists(v1 + "/index.swi"));
  EXPECT_TRUE(os::Exists(v2 + "/index.swi"));
  EXPECT_NE(testing::ReadAll(v1 + "/manifest.json").find("\"files\":["), std::string::npos);
  EXPECT_EQ(testing::ReadAll(v2 + "/manifest.json").find("\"files\":["), std::string::npos);
  for (int version : {1, 2}) {
    const std::string name = Repository::StepName(version);
    EXPECT_TRUE(Holds(*repo_, name, version)) << name;
    auto reader = repo_->OpenCheckpoint(name);
    ASSERT_TRUE(reader.ok());
    EXPECT_EQ((*reader)->manifest().format_version, version);
    EXPECT_EQ((*reader)->ItemHeaders().size(), 302u);
    ASSERT_NE(testing::FindItem(**reader, "extra.7"), nullptr);
    if (version == 2) {
      // The commit record, plus a handful of index blocks.
      EXPECT_LT((*reader)->metadata_bytes_read(),
                testing::ReadAll(v2 + "/manifest.json").size() + 16 * 4096);
    }
    auto json = (*reader)->ManifestJson();
    ASSERT_TRUE(json.ok());
    EXPECT_NE(json->find("\"extra.299\""), std::string::npos);
  }
  auto list = repo_->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  for (const auto& c : *list) {
    EXPECT_EQ(c.items, 302u) << c.name;
    EXPECT_GT(c.bytes, 0u);
  }
}

// A checkpoint written with checksum blocks larger than a reader's I/O unit
// (16 MiB blocks, read with the default 8 MiB unit) reads and verifies, with
// both backends, O_DIRECT on and off: the reader's buffers hold a block.
TEST_F(RepositoryTest, BlocksLargerThanTheReadersIoUnitRead) {
  Options w;
  w.checksum_block_bytes = w.io_unit_bytes = 16ull << 20;
  auto writer = Repository::Open(dir_.path(), w);
  ASSERT_TRUE(writer.ok());
  OwnedItems it;
  it.Add("w", DType::kFloat32, {(20 << 20) / 4 + 3}, 7);
  SaveSpec spec;
  spec.step = 1;
  ASSERT_TRUE((*writer)->Save(spec, it.items).ok());
  for (auto backend : {IoBackendKind::kThreads, IoBackendKind::kUring})
    for (auto direct : {DirectIoMode::kOn, DirectIoMode::kOff}) {
      Options r;
      r.io_backend = backend;
      r.direct_io = direct;
      auto repo = Repository::Open(dir_.path(), r);
      ASSERT_TRUE(repo.ok());
      auto reader = (*repo)->OpenCheckpoint(Repository::StepName(1));
      if (!reader.ok() && backend == IoBackendKind::kUring &&
          reader.status().code() == StatusCode::kUnavailable)
        continue;  // no io_uring here
      ASSERT_TRUE(reader.ok()) << reader.status().ToString();
      std::vector<std::byte> back(it.items[0].nbytes);
      Status st = (*reader)->ReadItem("w", back.data(), back.size());
      ASSERT_TRUE(st.ok()) << st.ToString();
      EXPECT_EQ(std::memcmp(back.data(), it.items[0].data, back.size()), 0);
      auto report = (*reader)->Verify();
      ASSERT_TRUE(report.ok());
      EXPECT_TRUE(report->problems.empty());
    }
}

// A checkpoint named as a step's is that step's (the DCP idiom passes the
// directory, not the step): listing, `latest` and retention order by it.
TEST_F(RepositoryTest, AStepNameGivesTheStep) {
  EXPECT_EQ(Repository::StepOfName("step-000000001000"), 1000);
  EXPECT_EQ(Repository::StepOfName("step-1234567890123"), 1234567890123);
  for (const char* other : {"step-1000", "step-0000000001000", "step-", "step-00000000100x",
                            "Step-000000001000", "step-000000001000.bak", "x"})
    EXPECT_EQ(Repository::StepOfName(other), std::nullopt) << other;
  ASSERT_TRUE(Save(1000, 1).ok());
  OwnedItems it = Items(2);
  SaveSpec named;
  named.name = "step-000000001200";  // no step given
  ASSERT_TRUE(repo_->Save(named, it.items).ok());
  SaveSpec plain;
  plain.name = "step-1100";  // not StepName's form: no step
  ASSERT_TRUE(repo_->Save(plain, it.items).ok());
  std::map<std::string, std::int64_t> steps;
  auto list = repo_->List();
  ASSERT_TRUE(list.ok());
  for (const auto& c : *list) steps[c.name] = c.step;
  EXPECT_EQ(steps["step-000000001200"], 1200);
  EXPECT_EQ(steps["step-1100"], -1);
  EXPECT_EQ(**repo_->Latest(), "step-000000001200");
  SaveSpec wrong;
  wrong.name = "step-000000001300";
  wrong.step = 1301;
  Status st = repo_->Save(wrong, it.items).status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("is the name of step 1300, but the save's step is 1301"),
            std::string::npos)
      << st.message();
}

TEST_F(RepositoryTest, SaveListLatest) {
  ASSERT_TRUE(Save(10, 1).ok());
  ASSERT_TRUE(Save(20, 2).ok());
  EXPECT_EQ(Committed(*repo_), (std::vector<std::string>{"step-000000000010", "step-000000000020"}));
  EXPECT_EQ(**repo_->Latest(), "step-000000000020");
  EXPECT_EQ(testing::ReadAll(dir_ / "latest"), "step-000000000020\n");
  EXPECT_TRUE(Holds(*repo_, "step-000000000010", 1));
  EXPECT_TRUE(Holds(*repo_, "step-000000000020", 2));
  // The committed directory holds the manifest, the index and the shards,
  // nothing else.
  auto entries = os::ListDir(dir_ / "step-000000000020");
  ASSERT_TRUE(entries.ok());
  EXPECT_EQ(entries->size(), 3u);
  EXPECT_EQ(StagingCount(*repo_), 0);
}

// One Repository, saves from several threads at once (two async saves in
// flight, as Python's DCP path has them): each save gets its own I/O
// backend, and every checkpoint holds its own bytes.
TEST_F(RepositoryTest, ConcurrentSavesThroughOneRepository) {
  constexpr int kSaves = 4;
  std::vector<OwnedItems> items;
  for (int i = 0; i < kSaves; ++i) {
    items.push_back(OwnedItems());
    items.back().Add("w", DType::kFloat32, {512, 512}, 100 + i);  // 1 MiB each
  }
  std::vector<Status> got(kSaves);
  std::vector<std::thread> threads;
  for (int i = 0; i < kSaves; ++i)
    threads.emplace_back([&, i] {
      SaveSpec spec;
      spec.step = i + 1;
      auto r = repo_->Save(spec, items[i].items);
      got[i] = r.ok() ? Status::Ok() : r.status();
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < kSaves; ++i) {
    ASSERT_TRUE(got[i].ok()) << got[i].ToString();
    auto reader = repo_->OpenCheckpoint(Repository::StepName(i + 1));
    ASSERT_TRUE(reader.ok());
    std::vector<std::byte> back(items[i].items[0].nbytes);
    ASSERT_TRUE((*reader)->ReadItem("w", back.data(), back.size()).ok());
    EXPECT_EQ(std::memcmp(back.data(), items[i].items[0].data, back.size()), 0) << i;
  }
}

// Delete: the checkpoint vanishes, `latest` moves back first, and what is
// not a committed checkpoint is refused.
TEST_F(RepositoryTest, DeleteMovesLatestBack) {
  ASSERT_TRUE(Save(1, 1).ok());
  ASSERT_TRUE(Save(2, 2).ok());
  ASSERT_TRUE(repo_->Delete("step-000000000002").ok());
  EXPECT_EQ(Committed(*repo_), std::vector<std::string>{"step-000000000001"});
  auto latest = os::ReadSmallFile(dir_ / "latest", 4096);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(*latest, "step-000000000001\n");
  EXPECT_EQ(repo_->Delete("step-000000000002").code(), StatusCode::kNotFound);
  EXPECT_EQ(repo_->Delete("../etc").code(), StatusCode::kNotFound);
  ASSERT_TRUE(repo_->Delete("step-000000000001").ok());
  EXPECT_FALSE(os::Exists(dir_ / "latest"));  // nothing left to name
  EXPECT_EQ(StagingCount(*repo_), 0);
}

// A checkpoint whose manifest does not check out is left for an operator to
// look at, unless the caller asks for it to go (discard_after does).
TEST_F(RepositoryTest, DeletesADamagedCheckpointOnlyWhenAskedTo) {
  ASSERT_TRUE(Save(1, 1).ok());
  ASSERT_TRUE(Save(2, 2).ok());
  testing::WriteAll(dir_ / "step-000000000002/manifest.json", "{torn");
  const Status refused = repo_->Delete("step-000000000002");
  EXPECT_EQ(refused.code(), StatusCode::kCorrupt);
  EXPECT_NE(refused.message().find("remove it by hand"), std::string::npos) << refused.message();
  EXPECT_TRUE(os::Exists(dir_ / "step-000000000002"));
  ASSERT_TRUE(repo_->Delete("step-000000000002", /*damaged_too=*/true).ok());
  EXPECT_FALSE(os::Exists(dir_ / "step-000000000002"));
  EXPECT_EQ(*os::ReadSmallFile(dir_ / "latest", 4096), "step-000000000001\n");  // moved back
  EXPECT_EQ(Committed(*repo_), std::vector<std::string>{"step-000000000001"});
  EXPECT_EQ(repo_->Delete("step-000000000001", true).code(), StatusCode::kOk);
  EXPECT_EQ(repo_->Delete("step-000000000003", true).code(), StatusCode::kNotFound);
  EXPECT_EQ(StagingCount(*repo_), 0);
}

// A copy of a committed checkpoint (its files, as a partner node sends them)
// installed in another root: whole and verified, or nothing.
TEST_F(RepositoryTest, InstallsAVerifiedCopyOrNothing) {
  ASSERT_TRUE(Save(1, 7).ok());
  const std::string name = "step-000000000001";
  auto entries = os::ListDir(dir_ / name);
  ASSERT_TRUE(entries.ok());
  std::vector<std::pair<std::string, std::string>> owned;
  for (const auto& e : *entries) {
    auto data = os::ReadSmallFile(os::JoinPath(dir_ / name, e.name), 1 << 30);
    ASSERT_TRUE(data.ok()) << e.name;
    owned.emplace_back(e.name, std::move(*data));
  }
  auto views = [&] {
    std::vector<std::pair<std::string, std::string_view>> v;
    for (const auto& [f, d] : owned) v.emplace_back(f, d);
    return v;
  };
  TempDir other;
  auto replica = Repository::Open(other.path(), {});
  ASSERT_TRUE(replica.ok());
  ASSERT_TRUE((*replica)->Install(name, views()).ok());
  EXPECT_TRUE(Holds(**replica, name, 7));
  EXPECT_EQ((*replica)->Install(name, views()).code(), StatusCode::kAlreadyExists);

  // One flipped byte in a shard's data: refused, and nothing is left.
  auto shard = std::find_if(owned.begin(), owned.end(),
                            [](const auto& f) { return f.first.ends_with(".shard"); });
  ASSERT_NE(shard, owned.end());
  shard->second[shard->second.size() - 1] ^= 0x40;
  Status st = (*replica)->Install("step-000000000002", views());
  EXPECT_EQ(st.code(), StatusCode::kCorrupt) << st.ToString();
  EXPECT_NE(st.message().find(shard->first), std::string::npos) << st.message();
  EXPECT_EQ(Committed(**replica), std::vector<std::string>{name});
  EXPECT_EQ(StagingCount(**replica), 0);

  // A flipped byte inside the data (not the padding), and a copy cut short:
  // the checksums run over the bytes being installed.
  shard->second[shard->second.size() - 1] ^= 0x40;
  shard->second[shard->second.size() / 2] ^= 0x01;
  st = (*replica)->Install("step-000000000002", views());
  EXPECT_EQ(st.code(), StatusCode::kCorrupt) << st.ToString();
  EXPECT_NE(st.message().find("checksum"), std::string::npos) << st.message();
  shard->second[shard->second.size() / 2] ^= 0x01;
  std::string whole = shard->second;
  shard->second.resize(whole.size() - 4096);
  st = (*replica)->Install("step-000000000002", views());
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find(shard->first), std::string::npos) << st.message();
  shard->second = whole;
  EXPECT_EQ(Committed(**replica), std::vector<std::string>{name});

  // VerifyCopy checks the bytes it is given, not the files: the intact
  // directory with a damaged copy in memory has a problem in that file.
  auto reader = CheckpointReader::Open(dir_ / name, {});
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  auto report = (*reader)->VerifyCopy(views());
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->problems.empty());
  EXPECT_GT(report->bytes_checked, 0u);
  shard->second[shard->second.size() / 2] ^= 0x01;
  report = (*reader)->VerifyCopy(views());
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->problems.size(), 1u);
  EXPECT_EQ(report->problems[0].file, shard->first);
  shard->second[shard->second.size() / 2] ^= 0x01;
  auto without = views();
  std::erase_if(without, [&](const auto& f) { return f.first == shard->first; });
  report = (*reader)->VerifyCopy(without);
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->problems.size(), 1u);
  EXPECT_NE(report->problems[0].status.message().find("not in the copy"), std::string::npos);
  reader->reset();
  EXPECT_EQ(StagingCount(**replica), 0);

  // Names that could leave the root, or nothing at all.
  EXPECT_EQ((*replica)->Install("../x", views()).code(), StatusCode::kInvalidArgument);
  auto bad = views();
  bad[0].first = "../manifest.json";
  EXPECT_EQ((*replica)->Install("step-000000000003", bad).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*replica)->Install("step-000000000003", {}).code(), StatusCode::kInvalidArgument);
}

// A gathered save of 3 ranks in this process (as DCP's collective gives the
// coordinator every rank's index): ranks 0 and 2 write item "w<rank>",
// rank 1 writes nothing and sends no index.
Result<CommitResult> SaveGathered(Repository& repo, std::int64_t step, std::uint64_t seed,
                                  std::vector<std::string>* indexes_out = nullptr) {
  SaveSpec spec;
  spec.step = step;
  spec.world_size = 3;
  spec.save_id = "g" + std::to_string(step);
  spec.gathered = true;
  std::vector<std::string> indexes(3);
  for (int r : {0, 2}) {
    OwnedItems it;
    it.Add("w" + std::to_string(r), DType::kFloat32, {64, 33}, seed + r);
    spec.rank = r;
    SW_ASSIGN_OR_RETURN(RankResult rr, repo.WriteRank(spec, it.items));
    indexes[r] = rr.index;
  }
  if (indexes_out) *indexes_out = indexes;
  spec.rank = 0;
  return repo.CommitGathered(spec, indexes);
}

bool HoldsGathered(Repository& repo, const std::string& name, std::uint64_t seed) {
  auto reader = repo.OpenCheckpoint(name);
  if (!reader.ok() || (*reader)->ItemHeaders().size() != 2) return false;
  for (int r : {0, 2}) {
    OwnedItems want;
    want.Add("w" + std::to_string(r), DType::kFloat32, {64, 33}, seed + r);
    std::vector<std::byte> back(want.items[0].nbytes);
    if (!(*reader)->ReadItem(want.items[0].name, back.data(), back.size()).ok()) return false;
    if (std::memcmp(back.data(), want.items[0].data, back.size()) != 0) return false;
  }
  auto report = (*reader)->Verify();
  return report.ok() && report->problems.empty();
}

// Step 1 of a gathered save of `world` ranks.
SaveSpec GatheredSpec(int world, const std::string& save_id) {
  SaveSpec spec;
  spec.step = 1;
  spec.world_size = world;
  spec.save_id = save_id;
  spec.gathered = true;
  return spec;
}

// ItemParts: many lookups at once (in parallel threads over one index
// reader) give what ItemPart gives one at a time; a failed lookup's status
// stands in its place; the chunks found read back.
TEST_F(RepositoryTest, ItemPartsLookUpManyBoxesAtOnce) {
  constexpr int kRanks = 96, kItems = 24, kRows = 2;  // 96 chunks an item: a fence
  SaveSpec spec = GatheredSpec(kRanks, "parts");
  std::vector<std::string> indexes(kRanks);
  for (int r = 0; r < kRanks; ++r) {
    OwnedItems it;
    for (int i = 0; i < kItems; ++i)
      it.Add("layer." + std::to_string(i), DType::kInt16, {kRanks * kRows, 3}, 1000 * i + r,
             {r * kRows, 0}, {kRows, 3});
    spec.rank = r;
    auto rr = repo_->WriteRank(spec, it.items);
    ASSERT_TRUE(rr.ok()) << rr.status().ToString();
    indexes[r] = rr->index;
  }
  spec.rank = 0;
  ASSERT_TRUE(repo_->CommitGathered(spec, indexes).ok());
  auto reader = repo_->OpenCheckpoint("step-000000000001");
  ASSERT_TRUE(reader.ok());
  std::vector<CheckpointReader::PartQuery> queries;
  for (int i = 0; i < kItems; ++i)  // rows of ranks i+1 .. i+3
    queries.push_back({"layer." + std::to_string(i), {(i + 1) * kRows + 1, 0}, {2 * kRows, 3}});
  queries.push_back({"no.such.item", {0, 0}, {1, 1}});
  queries.push_back({"layer.0", {kRanks * kRows, 0}, {1, 3}});  // outside the shape
  auto many = (*reader)->ItemParts(queries);
  ASSERT_EQ(many.size(), queries.size());
  auto one = repo_->OpenCheckpoint("step-000000000001");
  ASSERT_TRUE(one.ok());
  for (int i = 0; i < kItems; ++i) {
    ASSERT_TRUE(many[i].ok()) << many[i].status().ToString();
    auto single = (*one)->ItemPart(queries[i].name, queries[i].offsets, queries[i].sizes);
    ASSERT_TRUE(single.ok());
    ASSERT_EQ((*many[i])->chunks.size(), 3u) << i;
    ASSERT_EQ((*single)->chunks.size(), 3u) << i;
    for (std::size_t k = 0; k < 3; ++k)
      EXPECT_TRUE(testing::SameChunk((*many[i])->chunks[k], (*single)->chunks[k])) << i;
    // The middle chunk is rank i+2's: it reads back as that rank wrote it.
    OwnedItems want;
    want.Add("x", DType::kInt16, {kRows, 3}, 1000 * i + i + 2);
    std::vector<std::byte> back(want.items[0].nbytes);
    ReadRequest q;
    q.item = *many[i];
    q.chunk = 1;
    q.dst = back.data();
    q.dst_bytes = back.size();
    ASSERT_TRUE((*reader)->Read({&q, 1}).ok());
    EXPECT_EQ(std::memcmp(back.data(), want.items[0].data, back.size()), 0) << i;
  }
  EXPECT_EQ(many[kItems].status().code(), StatusCode::kNotFound);
  EXPECT_EQ(many[kItems + 1].status().code(), StatusCode::kInvalidArgument);
}

// The gathered commit: no fragment files, nothing awaited; damaged or
// foreign indexes are refused naming the rank.
TEST_F(RepositoryTest, GatheredCommitWritesNoFragments) {
  std::vector<std::string> idx;
  auto c = SaveGathered(*repo_, 1, 10, &idx);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->latest_updated);
  EXPECT_TRUE(HoldsGathered(*repo_, "step-000000000001", 10));
  EXPECT_TRUE(idx[1].empty());
  EXPECT_FALSE(idx[0].empty());
  auto entries = os::ListDir(dir_ / "step-000000000001");
  ASSERT_TRUE(entries.ok());
  std::vector<std::string> files;
  for (const auto& e : *entries) files.push_back(e.name);
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"index.swi", "manifest.json", "rank-00000.shard",
                                             "rank-00002.shard"}));

  // Rank 2's index damaged in transit, from another save, or missing a file.
  SaveSpec spec;
  spec.step = 2;
  spec.world_size = 3;
  spec.save_id = "bad2";
  spec.gathered = true;
  std::vector<std::string> indexes(3);
  for (int r : {0, 2}) {
    spec.rank = r;
    OwnedItems mine = r == 0 ? Items(3) : OwnedItems();
    if (r == 2) mine.Add("c", DType::kInt32, {8}, 5);
    auto rr = repo_->WriteRank(spec, mine.items);
    ASSERT_TRUE(rr.ok()) << rr.status().ToString();
    indexes[r] = rr->index;
  }
  spec.rank = 0;
  auto damaged = indexes;
  damaged[2][damaged[2].size() / 2] ^= 1;
  auto d = repo_->CommitGathered(spec, damaged);
  EXPECT_EQ(d.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(d.status().message().find("rank 2's index"), std::string::npos) << d.status().message();
  auto foreign = indexes;
  foreign[2] = idx[2];  // the first save's
  auto f = repo_->CommitGathered(spec, foreign);
  EXPECT_EQ(f.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(f.status().message().find("belongs to another save"), std::string::npos);
  EXPECT_EQ(repo_->CommitGathered(spec, std::vector<std::string>(2)).status().code(),
            StatusCode::kInvalidArgument);
  auto ok = repo_->CommitGathered(spec, indexes);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_TRUE(Holds(*repo_, "step-000000000002", 3));
}

// replace swaps a checkpoint for the new one; what is not a checkpoint (a
// directory of other things, such as a root given as a checkpoint's name; a
// file; a link) is never replaced, replace or not, and is left as it was.
TEST_F(RepositoryTest, ReplaceNeverRemovesWhatIsNotACheckpoint) {
  ASSERT_TRUE(os::Mkdir(dir_ / "other", 0755, false).ok());
  testing::WriteAll(dir_ / "other/keep.txt", "keep");
  testing::WriteAll(dir_ / "file", "keep");
  ASSERT_EQ(::symlink("other", (dir_ / "link").c_str()), 0);
  OwnedItems it = Items(1);
  for (const char* name : {"other", "file", "link"}) {
    for (bool replace : {false, true}) {
      SaveSpec spec;
      spec.name = name;
      spec.replace = replace;
      auto r = repo_->Save(spec, it.items);
      ASSERT_EQ(r.status().code(), StatusCode::kAlreadyExists) << name;
      EXPECT_NE(r.status().message().find("is not a checkpoint"), std::string::npos)
          << r.status().message();
    }
  }
  EXPECT_EQ(testing::ReadAll(dir_ / "other/keep.txt"), "keep");
  EXPECT_EQ(testing::ReadAll(dir_ / "file"), "keep");
  // An empty directory, a checkpoint and the remains of a save that never
  // committed (shard files, a stock DCP save's .distcp files) are replaced.
  ASSERT_TRUE(os::Mkdir(dir_ / "torn", 0755, false).ok());
  testing::WriteAll(dir_ / "torn/rank-00000.shard", "x");
  testing::WriteAll(dir_ / "torn/__0_0.distcp", "x");
  SaveSpec torn;
  torn.name = "torn";
  torn.replace = true;
  ASSERT_TRUE(repo_->Save(torn, it.items).ok());
  EXPECT_TRUE(Holds(*repo_, "torn", 1));
  ASSERT_TRUE(os::Mkdir(dir_ / "empty", 0755, false).ok());
  SaveSpec spec;
  spec.name = "empty";
  spec.replace = true;
  ASSERT_TRUE(repo_->Save(spec, it.items).ok());
  ASSERT_TRUE(repo_->Save(spec, it.items).ok());
  EXPECT_TRUE(Holds(*repo_, "empty", 1));
}

// A checkpoint of many ranks has as many shard files: a reader keeps at
// most half of what the process may open (RLIMIT_NOFILE) open, closing
// idle files and reading an item spread over more files in groups. Here
// the soft limit is a little over what the process has open, far below the
// checkpoint's 64 files; without the cap every read would fail with EMFILE.
TEST_F(RepositoryTest, AReaderKeepsFewFilesOpen) {
  constexpr int kRanks = 64, kPer = 300;
  SaveSpec spec = GatheredSpec(kRanks, "many");
  std::vector<std::string> indexes(kRanks);
  std::vector<OwnedItems> state(kRanks);
  for (int r = 0; r < kRanks; ++r) {
    spec.rank = r;
    state[r].Add("w", DType::kInt32, {kRanks * kPer}, r, {r * kPer}, {kPer});
    state[r].Add("own" + std::to_string(r), DType::kInt32, {7}, 100 + r);
    auto rr = repo_->WriteRank(spec, state[r].items);
    ASSERT_TRUE(rr.ok()) << rr.status().ToString();
    indexes[r] = rr->index;
  }
  spec.rank = 0;
  ASSERT_TRUE(repo_->CommitGathered(spec, indexes).ok());

  auto open_fds = [] {
    return std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                         std::filesystem::directory_iterator{});
  };
  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  struct rlimit low = saved;
  low.rlim_cur = static_cast<rlim_t>(open_fds() + 24);
  if (low.rlim_cur / 2 >= static_cast<rlim_t>(kRanks))
    GTEST_SKIP() << "this process has " << open_fds() << " files open: no room to show the cap";
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  struct Restore {
    rlimit r;
    ~Restore() { ::setrlimit(RLIMIT_NOFILE, &r); }
  } restore{saved};

  auto reader = repo_->OpenCheckpoint("step-000000000001");
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  std::vector<std::byte> whole(kRanks * kPer * 4);
  Status s = (*reader)->ReadItem("w", whole.data(), whole.size());
  ASSERT_TRUE(s.ok()) << s.ToString();
  for (int r = 0; r < kRanks; ++r) {
    EXPECT_EQ(std::memcmp(whole.data() + r * kPer * 4, state[r].items[0].data, kPer * 4), 0) << r;
    std::vector<std::byte> own(7 * 4);
    s = (*reader)->ReadItem("own" + std::to_string(r), own.data(), own.size());
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(std::memcmp(own.data(), state[r].items[1].data, own.size()), 0) << r;
  }
  EXPECT_TRUE((*reader)->CheckFiles().ok());
  auto report = (*reader)->Verify();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(report->problems.empty());
  EXPECT_EQ(report->files_checked, static_cast<std::uint64_t>(kRanks));
}

// A failed syscall at every step of a gathered commit: the checkpoint is
// complete or invisible, and gc leaves nothing behind.
TEST_F(RepositoryTest, GatheredFailureAtEveryCommitStep) {
  os::SetFaults({});
  ASSERT_TRUE(SaveGathered(*repo_, 1, 1).ok());
  const std::uint64_t fsyncs = os::Count(os::Op::kFsync), renames = os::Count(os::Op::kRename);
  int step = 100;
  for (auto [op, count] : {std::pair{os::Op::kFsync, fsyncs}, std::pair{os::Op::kRename, renames}}) {
    for (std::uint64_t n = 1; n <= count; ++n) {
      ++step;
      os::SetFaults({{op, n, false, EIO, false, false}});
      auto r = SaveGathered(*repo_, step, 7);
      os::ClearFaults();
      const std::string ctx = std::string(os::OpName(op)) + " #" + std::to_string(n);
      const std::string name = Repository::StepName(step);
      auto c = Committed(*repo_);
      if (r.ok() || std::find(c.begin(), c.end(), name) != c.end()) {
        EXPECT_TRUE(HoldsGathered(*repo_, name, 7)) << ctx;
      }
      EXPECT_TRUE(HoldsGathered(*repo_, "step-000000000001", 1)) << ctx;
      GcOptions gc;
      gc.staging_grace_s = 0;
      ASSERT_TRUE(repo_->Gc(gc).ok()) << ctx;
      EXPECT_EQ(StagingCount(*repo_), 0) << ctx;
    }
  }
}

TEST_F(RepositoryTest, RefusesToOverwriteUnlessAsked) {
  ASSERT_TRUE(Save(10, 1).ok());
  auto again = Save(10, 2);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists);
  EXPECT_TRUE(Holds(*repo_, "step-000000000010", 1));
  ASSERT_TRUE(Save(10, 3, /*replace=*/true).ok());
  EXPECT_TRUE(Holds(*repo_, "step-000000000010", 3));
  EXPECT_EQ(StagingCount(*repo_), 0);  // the replaced copy is gone
}

// `latest` is a hint: an error moving it after the commit point does not
// fail the save (its ranks already see it committed); it is reported.
TEST_F(RepositoryTest, AFailureToMoveLatestIsReportedNotAFailedSave) {
  ASSERT_TRUE(Save(1, 1).ok());
  os::SetFaults({});
  ASSERT_TRUE(Save(2, 2).ok());
  const std::uint64_t renames = os::Count(os::Op::kRename);  // the last: `latest`
  os::SetFaults({{os::Op::kRename, renames, false, EIO, false, false}});
  auto r = Save(3, 3);
  os::ClearFaults();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->latest_updated);
  EXPECT_NE(r->latest_error.find("latest"), std::string::npos) << r->latest_error;
  EXPECT_TRUE(Holds(*repo_, "step-000000000003", 3));
  EXPECT_EQ(testing::ReadAll(dir_ / "latest"), "step-000000000002\n");
  EXPECT_EQ(**repo_->Latest(), "step-000000000003");  // the highest committed step
  auto next = Save(4, 4);
  ASSERT_TRUE(next.ok());
  EXPECT_TRUE(next->latest_updated && next->latest_error.empty());
}

TEST_F(RepositoryTest, LatestNeverMovesBack) {
  ASSERT_TRUE(Save(10, 1).ok());
  ASSERT_TRUE(Save(20, 2).ok());
  ASSERT_TRUE(Save(10, 3, true).ok());
  EXPECT_EQ(testing::ReadAll(dir_ / "latest"), "step-000000000020\n");
  EXPECT_EQ(**repo_->Latest(), "step-000000000020");
}

TEST_F(RepositoryTest, BadSpecs) {
  OwnedItems it = Items(1);
  for (auto [name, step, ws, rank, id] :
       {std::tuple{"../escape", 1, 1, 0, ""}, std::tuple{".hidden", 1, 1, 0, ""},
        std::tuple{"latest", 1, 1, 0, ""}, std::tuple{"", -1, 1, 0, ""},
        std::tuple{"x", 1, 2, 0, ""}, std::tuple{"x", 1, 2, 2, "id"},
        std::tuple{"x", 1, 1, 0, "bad/id"}}) {
    SaveSpec spec;
    spec.name = name;
    spec.step = step;
    spec.world_size = ws;
    spec.rank = rank;
    spec.save_id = id;
    auto r = repo_->WriteRank(spec, it.items);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << name << " " << id;
  }
}

TEST_F(RepositoryTest, UserMetadataRoundTrips) {
  OwnedItems it = Items(1);
  SaveSpec spec;
  spec.step = 5;
  spec.user_json = R"({"epoch": 2, "note": "ok"})";
  ASSERT_TRUE(repo_->Save(spec, it.items).ok());
  auto reader = repo_->OpenCheckpoint("step-000000000005");
  ASSERT_TRUE(reader.ok());
  // Stored as given (the caller's text), and valid JSON.
  auto user = nlohmann::json::parse((*reader)->manifest().user_json);
  EXPECT_EQ(user["epoch"], 2);
  EXPECT_EQ(user["note"], "ok");
  spec.step = 6;
  spec.user_json = "[not an object";
  EXPECT_FALSE(repo_->Save(spec, it.items).ok());
  EXPECT_EQ(Committed(*repo_).size(), 1u);
}

// A replace where the filesystem has no RENAME_EXCHANGE (Lustre) moves the
// old checkpoint aside, then renames the new one in. Whichever rename of
// the save fails, NAME afterwards holds the old checkpoint or the new one,
// complete: never nothing.
TEST_F(RepositoryTest, AReplaceWithoutExchangeNeverLeavesTheNameEmpty) {
  ASSERT_TRUE(Save(5, 1).ok());
  os::SetFaults({});
  ASSERT_TRUE(Save(5, 2, /*replace=*/true).ok());
  const std::uint64_t renames = os::Count(os::Op::kRename);
  ASSERT_GE(renames, 2u);
  const std::string name = Repository::StepName(5);
  std::uint64_t holds = 2;
  for (std::uint64_t n = 1; n <= renames; ++n) {
    // Rename n as a filesystem without the exchange refuses it; rename n+2
    // fails. Where n is the exchange, n+1 moves the old copy aside and n+2
    // is the rename of the new one into NAME.
    os::SetFaults({{os::Op::kRename, n, false, EINVAL, false, false},
                   {os::Op::kRename, n + 2, false, EIO, false, false}});
    const std::uint64_t seed = 10 + n;
    auto r = Save(5, seed, /*replace=*/true);
    os::ClearFaults();
    // A failure after the new one is in NAME (moving the old copy off,
    // `latest`) is reported, and NAME holds the new one, complete.
    if (r.ok() || !Holds(*repo_, name, holds)) {
      EXPECT_TRUE(Holds(*repo_, name, seed)) << "rename #" << n << ": "
                                             << (r.ok() ? "ok" : r.status().ToString());
      holds = seed;
    }
    GcOptions gc;
    gc.staging_grace_s = 0;
    ASSERT_TRUE(repo_->Gc(gc).ok());
  }
  EXPECT_TRUE(Save(5, 99, /*replace=*/true).ok());
  EXPECT_TRUE(Holds(*repo_, name, 99));
}

// Every fsync and rename of a save is failed in turn. Each time: the error
// names a path, nothing new is committed, the previous checkpoint is intact,
// gc cleans up, and the next save works.
TEST_F(RepositoryTest, FailureAtEveryCommitStep) {
  ASSERT_TRUE(Save(1, 1).ok());
  os::SetFaults({});
  ASSERT_TRUE(Save(2, 2).ok());
  const std::uint64_t fsyncs = os::Count(os::Op::kFsync);
  const std::uint64_t renames = os::Count(os::Op::kRename);
  const std::uint64_t opens = os::Count(os::Op::kOpen);
  ASSERT_GE(fsyncs, 6u);
  ASSERT_GE(renames, 3u);
  int step = 100;
  for (auto [op, count] : {std::pair{os::Op::kFsync, fsyncs}, std::pair{os::Op::kRename, renames},
                           std::pair{os::Op::kOpen, opens}}) {
    for (std::uint64_t n = 1; n <= count; ++n) {
      ++step;
      os::SetFaults({{op, n, false, EIO, false, false}});
      auto r = Save(step, 7);
      os::ClearFaults();
      std::string ctx = std::string(os::OpName(op)) + " #" + std::to_string(n);
      const std::string name = Repository::StepName(step);
      if (r.ok()) {
        // Only a failure after the commit point may leave it committed: then
        // the checkpoint must be complete.
        EXPECT_TRUE(Holds(*repo_, name, 7)) << ctx;
      } else {
        EXPECT_FALSE(r.status().path().empty() && r.status().message().find('/') == std::string::npos)
            << ctx << ": " << r.status().message();
        auto c = Committed(*repo_);
        if (std::find(c.begin(), c.end(), name) != c.end()) {
          // Failed after the rename (fsync of ROOT or `latest`): committed
          // and complete, never partial.
          EXPECT_TRUE(Holds(*repo_, name, 7)) << ctx;
        }
      }
      EXPECT_TRUE(Holds(*repo_, "step-000000000002", 2)) << ctx;
      GcOptions gc;
      gc.staging_grace_s = 0;
      ASSERT_TRUE(repo_->Gc(gc).ok()) << ctx;
      EXPECT_EQ(StagingCount(*repo_), 0) << ctx;
    }
  }
  ASSERT_TRUE(Save(999, 9).ok());
  EXPECT_TRUE(Holds(*repo_, "step-000000000999", 9));
}

TEST_F(RepositoryTest, GcRemovesAbandonedStagingButNotLiveSaves) {
  ASSERT_TRUE(Save(1, 1).ok());
  ASSERT_TRUE(os::Mkdir(dir_ / ".step-000000000002.staging-dead").ok());
  testing::WriteAll(dir_ / ".step-000000000002.staging-dead/rank-00000.shard", "partial");
  ASSERT_TRUE(os::Mkdir(dir_ / ".step-000000000003.staging-live").ok());
  std::string lock = dir_ / ".step-000000000003.staging-live/.lock";
  int fd = ::open(lock.c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_SH), 0);  // a writer at work
  auto list = repo_->List();
  ASSERT_TRUE(list.ok());
  int staging = 0;
  for (const auto& c : *list)
    if (c.state == CheckpointInfo::State::kStaging) {
      ++staging;
      EXPECT_TRUE(c.active);  // both are fresh (within the default grace)
    }
  EXPECT_EQ(staging, 2);
  GcOptions gc;
  EXPECT_TRUE(repo_->Gc(gc)->removed_staging.empty());  // within grace: kept
  gc.staging_grace_s = 0;
  auto report = repo_->Gc(gc);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->removed_staging, std::vector<std::string>{".step-000000000002.staging-dead"});
  EXPECT_TRUE(os::Exists(dir_ / ".step-000000000003.staging-live"));
  ::close(fd);  // the writer died
  report = repo_->Gc(gc);
  EXPECT_EQ(report->removed_staging, std::vector<std::string>{".step-000000000003.staging-live"});
  EXPECT_TRUE(Holds(*repo_, "step-000000000001", 1));
}

// An entry gc cannot remove is reported with why, and gc goes on: the other
// staging directories go and retention runs (a directory an operator made
// read-only used to stop every gc, and the root filled up).
TEST_F(RepositoryTest, GcGoesOnPastWhatItCannotRemove) {
  for (int s = 1; s <= 3; ++s) ASSERT_TRUE(Save(s, static_cast<std::uint64_t>(s)).ok());
  for (const char* dead : {".step-000000000004.staging-a", ".step-000000000005.staging-b"}) {
    ASSERT_TRUE(os::Mkdir(dir_ / dead).ok());
    testing::WriteAll(dir_ / (std::string(dead) + "/rank-00000.shard"), "partial");
  }
  GcOptions gc;
  gc.staging_grace_s = 0;
  gc.keep_last = 1;
  os::SetFaults({{os::Op::kUnlink, 1, false, EACCES, false, false}});  // the first file
  auto report = repo_->Gc(gc);
  os::ClearFaults();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_EQ(report->errors.size(), 1u);
  EXPECT_NE(report->errors[0].find(dir_ / ".step-000000000004.staging-a"), std::string::npos)
      << report->errors[0];
  EXPECT_EQ(report->removed_staging, std::vector<std::string>{".step-000000000005.staging-b"});
  EXPECT_EQ(report->removed_checkpoints,
            (std::vector<std::string>{"step-000000000001", "step-000000000002"}));
  EXPECT_EQ(Committed(*repo_), std::vector<std::string>{"step-000000000003"});
  // The CLI says so and exits 1; the next gc finishes the work.
  auto cli = testing::RunProcess({SW_CLI, "gc", dir_.path(), "--grace", "0"},
                                 {"SHARDWISE_FAULTS=unlink@1=EACCES"});
  EXPECT_EQ(cli.exit_code, 1) << cli.out;
  EXPECT_NE(cli.out.find("shardwise gc: could not remove: "), std::string::npos) << cli.out;
  EXPECT_NE(cli.out.find("left in place"), std::string::npos) << cli.out;
  cli = testing::RunProcess({SW_CLI, "gc", dir_.path(), "--grace", "0", "--json"});
  EXPECT_EQ(cli.exit_code, 0) << cli.out;
  EXPECT_NE(cli.out.find("\"errors\": []"), std::string::npos) << cli.out;
  EXPECT_FALSE(os::Exists(dir_ / ".step-000000000004.staging-a"));
}

// A replaced copy comes back only from a replace cut between its two
// renames (the attempt's staging directory is still there). A leftover of
// a replace that finished, whose checkpoint was deleted since, is removed:
// it may be half removed, and its name has moved on.
TEST_F(RepositoryTest, GcPutsBackOnlyAReplacedCopyWhoseSuccessorNeverArrived) {
  ASSERT_TRUE(Save(1, 1).ok());
  ASSERT_TRUE(Save(2, 2).ok());
  const std::string one = dir_ / "step-000000000001", two = dir_ / "step-000000000002";
  // Cut between the renames: NAME moved aside, the new copy still staged.
  ASSERT_TRUE(os::Rename(one, dir_ / ".step-000000000001.replaced-cut").ok());
  ASSERT_TRUE(os::Mkdir(dir_ / ".step-000000000001.staging-cut").ok());
  // A leftover of a finished replace of step 2, which was deleted since.
  ASSERT_TRUE(os::Rename(two, dir_ / ".step-000000000002.replaced-done").ok());
  // Within the grace, the attempt may be live, between its renames: both
  // its directories stay for a later gc.
  GcOptions gc;
  ASSERT_TRUE(repo_->Gc(gc).ok());
  EXPECT_TRUE(os::Exists(dir_ / ".step-000000000001.replaced-cut"));
  EXPECT_TRUE(os::Exists(dir_ / ".step-000000000001.staging-cut"));
  EXPECT_FALSE(os::Exists(one));
  gc.staging_grace_s = 0;
  auto report = repo_->Gc(gc);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(Holds(*repo_, "step-000000000001", 1));
  EXPECT_FALSE(os::Exists(two));
  EXPECT_FALSE(os::Exists(dir_ / ".step-000000000002.replaced-done"));
  EXPECT_EQ(Committed(*repo_), std::vector<std::string>{"step-000000000001"});
  // A stock DCP checkpoint replaced (no manifest.json): put back all the same.
  ASSERT_TRUE(os::Mkdir(dir_ / ".dcp.replaced-cut2").ok());
  testing::WriteAll(dir_ / ".dcp.replaced-cut2/.metadata", "stock");
  ASSERT_TRUE(os::Mkdir(dir_ / ".dcp.staging-cut2").ok());
  ASSERT_TRUE(repo_->Gc(gc).ok());
  EXPECT_EQ(testing::ReadAll(dir_ / "dcp/.metadata"), "stock");
  EXPECT_FALSE(os::Exists(dir_ / ".dcp.replaced-cut2"));
}

// Probe files of processes killed while probing the root's I/O mode
// (named ones, where the filesystem has no O_TMPFILE) go with gc.
TEST_F(RepositoryTest, GcRemovesLeftoverProbeFiles) {
  ASSERT_TRUE(Save(1, 1).ok());
  const std::string probe = dir_ / (std::string(names::kProbePrefix) + "write-0a1b2c");
  const std::string old_probe = dir_ / ".shardwise-odirect-probe-0a1b2c";
  testing::WriteAll(probe, "x");
  testing::WriteAll(old_probe, "x");
  GcOptions gc;
  EXPECT_TRUE(repo_->Gc(gc)->removed_staging.empty());  // within grace: maybe at work
  gc.staging_grace_s = 0;
  auto report = repo_->Gc(gc);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->removed_staging.size(), 2u);
  EXPECT_FALSE(os::Exists(probe));
  EXPECT_FALSE(os::Exists(old_probe));
  EXPECT_TRUE(Holds(*repo_, "step-000000000001", 1));
}

// One reader shared by threads: one reads the whole index (inspect,
// verify) while another reads data (format 2). Under TSan this is the check
// that LoadAll publishes the files and items safely.
TEST_F(RepositoryTest, AReaderSharedByThreadsLoadsAllWhileReading) {
  ASSERT_TRUE(Save(1, 1).ok());
  const OwnedItems want = Items(1);
  for (int round = 0; round < 20; ++round) {
    auto reader = repo_->OpenCheckpoint("step-000000000001");
    ASSERT_TRUE(reader.ok());
    Status all;
    std::thread loader([&] { all = (*reader)->LoadAll(); });
    for (const auto& w : want.items) {
      std::vector<std::byte> back(w.nbytes);
      ASSERT_TRUE((*reader)->ReadItem(w.name, back.data(), back.size()).ok());
      EXPECT_EQ(std::memcmp(back.data(), w.data, w.nbytes), 0);
    }
    loader.join();
    ASSERT_TRUE(all.ok()) << all.ToString();
    EXPECT_EQ((*reader)->manifest().items.size(), 2u);
  }
}

TEST_F(RepositoryTest, Retention) {
  for (int s = 1; s <= 10; ++s) ASSERT_TRUE(Save(s * 10, static_cast<std::uint64_t>(s)).ok());
  GcOptions gc;
  gc.keep_last = 3;
  gc.keep_every = 40;
  gc.dry_run = true;
  auto dry = repo_->Gc(gc);
  ASSERT_TRUE(dry.ok());
  EXPECT_EQ(Committed(*repo_).size(), 10u);  // dry run changed nothing
  gc.dry_run = false;
  auto report = repo_->Gc(gc);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->removed_checkpoints, dry->removed_checkpoints);
  EXPECT_EQ(Committed(*repo_),
            (std::vector<std::string>{"step-000000000040", "step-000000000080", "step-000000000090",
                                      "step-000000000100"}));
  EXPECT_EQ(StagingCount(*repo_), 0);
}

TEST_F(RepositoryTest, RetentionNeverDeletesLatestOrNewerThanNewestValid) {
  for (int s = 1; s <= 4; ++s) ASSERT_TRUE(Save(s, static_cast<std::uint64_t>(s)).ok());
  // The newest is damaged (a shard truncated): it is not valid, so retention
  // anchors on step 3 and keeps everything from there.
  std::string shard = dir_ / "step-000000000004/rank-00000.shard";
  ASSERT_EQ(::truncate(shard.c_str(), 4096), 0);
  GcOptions gc;
  gc.keep_last = 1;
  auto report = repo_->Gc(gc);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->newest_valid, "step-000000000003");
  EXPECT_EQ(Committed(*repo_),
            (std::vector<std::string>{"step-000000000003", "step-000000000004"}));
  // keep_last counts from the newest valid one down: the damaged newest is
  // not one of the N kept.
  ASSERT_TRUE(Save(2, 2).ok());
  gc.keep_last = 2;
  ASSERT_TRUE(repo_->Gc(gc).ok());
  EXPECT_EQ(Committed(*repo_), (std::vector<std::string>{"step-000000000002", "step-000000000003",
                                                         "step-000000000004"}));
  gc.keep_last = 1;
  // `latest` pinned to an old checkpoint is never deleted.
  ASSERT_TRUE(Save(5, 5).ok());
  ASSERT_TRUE(os::WriteFileAtomic(dir_ / "latest", "step-000000000003\n").ok());
  ASSERT_TRUE(Save(6, 6).ok());
  ASSERT_TRUE(os::WriteFileAtomic(dir_ / "latest", "step-000000000003\n").ok());
  report = repo_->Gc(gc);
  ASSERT_TRUE(report.ok());
  auto c = Committed(*repo_);
  EXPECT_NE(std::find(c.begin(), c.end(), "step-000000000003"), c.end());
  EXPECT_NE(std::find(c.begin(), c.end(), "step-000000000006"), c.end());
  EXPECT_EQ(std::find(c.begin(), c.end(), "step-000000000005"), c.end());
}

// Retention decides from one listing; a Delete or a replace by this process
// between that decision and the deletions must not make it delete what is
// now `latest`, or the checkpoint a replace has just committed.
TEST_F(RepositoryTest, GcLeavesWhatChangedSinceItDecided) {
  for (int s = 1; s <= 3; ++s) ASSERT_TRUE(Save(s, static_cast<std::uint64_t>(s)).ok());
  GcOptions gc;
  gc.keep_last = 1;  // decided: keep 3, delete 1 and 2
  os::SetRunPoint("gc_decided", [&] { EXPECT_TRUE(repo_->Delete("step-000000000003").ok()); });
  ASSERT_TRUE(repo_->Gc(gc).ok());
  EXPECT_EQ(Committed(*repo_), std::vector<std::string>{"step-000000000002"});
  EXPECT_EQ(repo::ReadLatestFile(dir_.path()), "step-000000000002");
  ASSERT_TRUE(Save(4, 4).ok());
  ASSERT_TRUE(Save(5, 5).ok());  // decided: keep 5, delete 2 and 4
  os::SetRunPoint("gc_decided", [&] { EXPECT_TRUE(Save(2, 22, /*replace=*/true).ok()); });
  ASSERT_TRUE(repo_->Gc(gc).ok());
  EXPECT_EQ(Committed(*repo_),
            (std::vector<std::string>{"step-000000000002", "step-000000000005"}));
  EXPECT_TRUE(Holds(*repo_, "step-000000000002", 22));
}

// R separate processes write their ranks; the parent commits; every chunk
// lands in one manifest and reads back assembled.
TEST_F(RepositoryTest, MultiProcessSave) {
  constexpr int kRanks = 4;
  SaveSpec spec;
  spec.step = 42;
  spec.world_size = kRanks;
  spec.save_id = "job7-attempt1";
  auto rank_items = [](int rank) {
    OwnedItems it;
    it.Add("w", DType::kFloat32, {kRanks * 16, 8}, 100 + rank, {rank * 16, 0}, {16, 8});
    if (rank == 1) it.Add("only_rank1", DType::kInt32, {5}, 7);
    return it;
  };
  std::vector<pid_t> pids;
  for (int r = 0; r < kRanks; ++r) {
    pid_t pid = ::fork();
    if (pid == 0) {
      auto repo = Repository::Open(dir_.path());
      SaveSpec s = spec;
      s.rank = r;
      OwnedItems it = rank_items(r);
      bool ok = repo.ok() && (*repo)->WriteRank(s, it.items).ok() &&
                (*repo)->WaitCommitted(s, 60).ok();
      ::_exit(ok ? 0 : 1);
    }
    pids.push_back(pid);
  }
  auto committed = repo_->Commit(spec);
  ASSERT_TRUE(committed.ok()) << committed.status().ToString();
  for (pid_t p : pids) {
    int st = 0;
    ::waitpid(p, &st, 0);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  auto reader = repo_->OpenCheckpoint("step-000000000042");
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ((*reader)->manifest().world_size, kRanks);
  ASSERT_TRUE((*reader)->LoadAll().ok());
  EXPECT_EQ((*reader)->manifest().files.size(), static_cast<std::size_t>(kRanks));
  std::vector<float> all(kRanks * 16 * 8);
  ASSERT_TRUE((*reader)->ReadItem("w", all.data(), all.size() * 4).ok());
  for (int r = 0; r < kRanks; ++r) {
    OwnedItems want = rank_items(r);
    EXPECT_EQ(0, std::memcmp(all.data() + r * 16 * 8, want.items[0].data, 16 * 8 * 4)) << r;
  }
  EXPECT_NE(testing::FindItem(**reader, "only_rank1"), nullptr);
}

TEST_F(RepositoryTest, CommitAbortsWhenARankFails) {
  SaveSpec spec;
  spec.step = 5;
  spec.world_size = 3;
  spec.save_id = "a1";
  OwnedItems it;
  it.Add("x", DType::kUInt8, {3 * 8}, 1, {0}, {8});
  ASSERT_TRUE(repo_->WriteRank(spec, it.items).ok());
  SaveSpec r1 = spec;
  r1.rank = 1;
  ASSERT_TRUE(repo_->ReportFailure(r1, Status(StatusCode::kIoError, "disk on fire")).ok());
  double t0 = os::MonotonicSeconds();
  auto c = repo_->Commit(spec);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kAborted);
  EXPECT_NE(c.status().message().find("disk on fire"), std::string::npos);
  EXPECT_LT(os::MonotonicSeconds() - t0, 10.0);
  EXPECT_TRUE(Committed(*repo_).empty());
  // Ranks waiting for the commit hear about it.
  SaveSpec r2 = spec;
  r2.rank = 2;
  EXPECT_EQ(repo_->WaitCommitted(r2, 5).code(), StatusCode::kAborted);
}

TEST_F(RepositoryTest, CommitTimesOutOnAMissingRank) {
  Options o;
  o.commit_timeout_s = 0.3;
  o.poll_interval_s = 0.01;
  auto repo = Repository::Open(dir_.path(), o);
  SaveSpec spec;
  spec.step = 5;
  spec.world_size = 2;
  spec.save_id = "a2";
  OwnedItems it;
  it.Add("x", DType::kUInt8, {16}, 1, {0}, {8});
  ASSERT_TRUE((*repo)->WriteRank(spec, it.items).ok());
  auto c = (*repo)->Commit(spec);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kTimeout);
  EXPECT_NE(c.status().message().find("ranks 1"), std::string::npos) << c.status().message();
  EXPECT_TRUE(Committed(**repo).empty());
}

TEST_F(RepositoryTest, RanksMustAgreeOnItems) {
  SaveSpec spec;
  spec.step = 5;
  spec.world_size = 2;
  spec.save_id = "a3";
  OwnedItems a, b;
  a.Add("x", DType::kFloat32, {16}, 1, {0}, {8});
  b.Add("x", DType::kFloat16, {16}, 1, {8}, {8});
  ASSERT_TRUE(repo_->WriteRank(spec, a.items).ok());
  SaveSpec s1 = spec;
  s1.rank = 1;
  ASSERT_TRUE(repo_->WriteRank(s1, b.items).ok());
  auto c = repo_->Commit(spec);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("disagree"), std::string::npos);
}

}  // namespace
}  // namespace shardwise
