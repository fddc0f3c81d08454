// Hostile checkpoint roots: symbolic links pointing outside, device files,
// and the permissions of what we create. (Hostile manifest contents, such as
// path traversal, huge sizes, overflows and duplicate names, are refused by
// the parser: src/format/manifest_test.cc; the fuzz targets in fuzz/ cover
// arbitrary bytes.)
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "format/index.h"
#include "format/manifest.h"
#include "os/posix.h"
#include "shardwise/shardwise.h"
#include "testing/test_util.h"

namespace shardwise {
namespace {

using testing::OwnedItems;
using testing::TempDir;

std::unique_ptr<Repository> SavedRepo(const std::string& root, std::int64_t step) {
  auto repo = Repository::Open(root, Options());
  EXPECT_TRUE(repo.ok());
  OwnedItems items;
  items.Add("w", DType::kFloat32, {64, 64}, static_cast<std::uint64_t>(step));
  SaveSpec spec;
  spec.step = step;
  EXPECT_TRUE((*repo)->Save(spec, items.items).ok());
  return std::move(*repo);
}

TEST(Hostile, LatestAsASymlinkOutsideIsNeverFollowed) {
  TempDir root, outside;
  auto repo = SavedRepo(root.path(), 1);
  // someone replaces `latest` with a link to a file outside the root
  testing::WriteAll(outside / "secret", "step-999\n");
  ASSERT_EQ(::unlink((root / "latest").c_str()), 0);
  ASSERT_EQ(::symlink((outside / "secret").c_str(), (root / "latest").c_str()), 0);
  auto latest = repo->Latest();
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(**latest, "step-000000000001");  // from the listing, not the link
  auto ls = testing::RunProcess({SW_CLI, "ls", root.path(), "--json"});
  EXPECT_EQ(ls.exit_code, 0) << ls.out;
  EXPECT_EQ(ls.out.find("step-999"), std::string::npos) << ls.out;
  // the next commit replaces the link itself, and the outside file is untouched
  OwnedItems items;
  items.Add("w", DType::kFloat32, {8}, 2);
  SaveSpec spec;
  spec.step = 2;
  ASSERT_TRUE(repo->Save(spec, items.items).ok());
  struct stat st {};
  ASSERT_EQ(::lstat((root / "latest").c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(testing::ReadAll(outside / "secret"), "step-999\n");
}

TEST(Hostile, ACheckpointThatIsASymlinkIsNotACheckpoint) {
  TempDir root, elsewhere;
  auto other = SavedRepo(elsewhere.path(), 7);  // a valid checkpoint outside the root
  auto repo = Repository::Open(root.path(), Options());
  ASSERT_TRUE(repo.ok());
  ASSERT_EQ(::symlink((elsewhere / "step-000000000007").c_str(),
                      (root / "step-000000000007").c_str()),
            0);
  auto list = (*repo)->List();
  ASSERT_TRUE(list.ok());
  for (const auto& c : *list) EXPECT_NE(c.state, CheckpointInfo::State::kCommitted) << c.name;
  auto r = (*repo)->OpenCheckpoint("step-000000000007");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("symbolic links are not followed"), std::string::npos)
      << r.status().message();
  // gc with retention never deletes through the link
  GcOptions gc;
  gc.keep_last = 1;
  ASSERT_TRUE((*repo)->Gc(gc).ok());
  EXPECT_TRUE(os::Exists(elsewhere / "step-000000000007/manifest.json"));
}

TEST(Hostile, ADeviceFileInPlaceOfAShardIsRefused) {
  TempDir root;
  auto repo = SavedRepo(root.path(), 1);
  std::string shard = root / "step-000000000001/rank-00000.shard";
  ASSERT_EQ(::unlink(shard.c_str()), 0);
  if (::mknod(shard.c_str(), S_IFCHR | 0644, makedev(1, 5)) != 0)  // /dev/zero's numbers
    GTEST_SKIP() << "mknod not permitted here: " << std::strerror(errno);
  auto reader = repo->OpenCheckpoint("step-000000000001");
  ASSERT_TRUE(reader.ok());
  Status s = (*reader)->CheckFiles();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("not a regular file"), std::string::npos) << s.message();
  auto v = testing::RunProcess({SW_CLI, "verify", root / "step-000000000001", "--no-progress"});
  EXPECT_EQ(v.exit_code, 1) << v.out;
  EXPECT_NE(v.out.find("not a regular file"), std::string::npos) << v.out;
}

TEST(Hostile, ADeviceFileAsTheManifestIsRefused) {
  TempDir root;
  auto repo = SavedRepo(root.path(), 1);
  std::string m = root / "step-000000000001/manifest.json";
  ASSERT_EQ(::unlink(m.c_str()), 0);
  if (::mknod(m.c_str(), S_IFCHR | 0644, makedev(1, 5)) != 0)
    GTEST_SKIP() << "mknod not permitted here: " << std::strerror(errno);
  auto reader = repo->OpenCheckpoint("step-000000000001");
  ASSERT_FALSE(reader.ok());  // and it does not read /dev/zero forever
  EXPECT_NE(reader.status().message().find("manifest.json"), std::string::npos)
      << reader.status().message();
}

TEST(Hostile, CreatedFilesRespectTheUmask) {
  TempDir root;
  mode_t old = ::umask(027);
  auto repo = SavedRepo(root / "sub", 1);
  ::umask(old);
  auto mode = [](const std::string& p) {
    struct stat st {};
    EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
    return st.st_mode & 0777;
  };
  EXPECT_EQ(mode(root / "sub/step-000000000001"), 0750u);
  EXPECT_EQ(mode(root / "sub/step-000000000001/manifest.json"), 0640u);
  EXPECT_EQ(mode(root / "sub/step-000000000001/rank-00000.shard"), 0640u);
  EXPECT_EQ(mode(root / "sub/latest"), 0640u);
  // nothing we create is world-writable even under a permissive umask
  old = ::umask(0);
  auto repo2 = SavedRepo(root / "open", 1);
  ::umask(old);
  EXPECT_EQ(mode(root / "open/step-000000000001/rank-00000.shard") & 0002, 0u);
  EXPECT_EQ(mode(root / "open/step-000000000001/manifest.json") & 0002, 0u);
}

// Format 2's index file: a symlink, a missing file, a file of another save
// or a damaged block are refused by name, never followed or trusted.
TEST(Hostile, AFormat2IndexThatIsNotOursIsRefused) {
  TempDir root, other, outside;
  SavedRepo(root.path(), 1);
  {
    auto repo = Repository::Open(other.path(), Options());
    ASSERT_TRUE(repo.ok());
    OwnedItems items;  // the same step and data, another save attempt
    items.Add("w", DType::kFloat32, {64, 64}, 1);
    SaveSpec spec;
    spec.step = 1;
    spec.save_id = "another-attempt";
    ASSERT_TRUE((*repo)->Save(spec, items.items).ok());
  }
  const std::string ckpt = root / "step-000000000001";
  const std::string index = ckpt + "/index.swi";
  ASSERT_TRUE(CheckpointReader::Open(ckpt).ok());
  auto refused = [&](const char* phrase) {
    auto r = CheckpointReader::Open(ckpt);
    Status s = r.ok() ? (*r)->LoadAll() : r.status();
    EXPECT_EQ(s.code(), StatusCode::kCorrupt) << phrase << ": " << s.ToString();
    EXPECT_NE(s.message().find(phrase), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(index), std::string::npos) << s.message();
  };
  const std::string good = testing::ReadAll(index);
  // Another save's index, of the same size.
  testing::WriteAll(index, testing::ReadAll(other / "step-000000000001/index.swi"));
  refused("belongs to save attempt");
  // A link to a file outside.
  testing::WriteAll(outside / "index.swi", good);
  ASSERT_EQ(::unlink(index.c_str()), 0);
  ASSERT_EQ(::symlink((outside / "index.swi").c_str(), index.c_str()), 0);
  refused("symbolic link");
  ASSERT_EQ(::unlink(index.c_str()), 0);
  refused("missing");
  // A flipped byte, and a truncated file.
  std::string flipped = good;
  flipped[200] ^= 1;
  testing::WriteAll(index, flipped);
  refused("fails its checksum");
  testing::WriteAll(index, good.substr(0, 2048));
  refused("size is 2048 bytes");
  testing::WriteAll(index, good);
  auto r = CheckpointReader::Open(ckpt);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE((*r)->LoadAll().ok());
  // verify names the index as the damaged file.
  testing::WriteAll(index, flipped);
  auto v = testing::RunProcess({SW_CLI, "verify", ckpt});
  EXPECT_NE(v.exit_code, 0);
  EXPECT_NE(v.out.find("index.swi"), std::string::npos) << v.out;
}

// Rewrites the checkpoint's commit record from `m`, in format 1 or 2, as a
// writer would (sealed, checksummed): damage no checksum can see.
void Rewrite(const std::string& ckpt, Manifest m, int format) {
  const std::string index = ckpt + "/index.swi";
  if (format == 1) {
    m.format_version = 1;
    if (os::Exists(index)) {
      ASSERT_EQ(::unlink(index.c_str()), 0);
    }
  } else {
    Manifest header = m;
    auto bytes = format::EncodeIndex(m, &header.index);
    ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
    testing::WriteAll(index, std::string(bytes->view()));
    header.format_version = 2;
    header.items.clear();
    header.files.clear();
    m = header;
  }
  testing::WriteAll(ckpt + "/manifest.json", format::Serialize(m, format::kManifestKind));
}

// Chunks that hold part of a tensor twice are damage the reader names, and
// so are chunks that leave part of a tensor out when the whole tensor is
// read: a read never fills a tensor in part and leaves the rest as it was (a
// check by the sum of the chunks' volumes would pass an overlap plus a gap
// of the same size).
TEST(Hostile, ChunksThatDoNotTileTheirTensorAreRefusedAtRead) {
  for (int format : {1, 2}) {
    SCOPED_TRACE("format " + std::to_string(format));
    TempDir root;
    SavedRepo(root.path(), 1);
    const std::string ckpt = root / "step-000000000001";
    Manifest m;
    {
      auto r = CheckpointReader::Open(ckpt);
      ASSERT_TRUE(r.ok());
      ASSERT_TRUE((*r)->LoadAll().ok());
      m = (*r)->manifest();
    }
    ASSERT_EQ(m.items.size(), 1u);
    m.items[0].shape = {128, 64};  // its one chunk holds rows 0-63
    Rewrite(ckpt, m, format);
    auto r = CheckpointReader::Open(ckpt);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    std::vector<float> back(128 * 64);
    Status s = (*r)->ReadItem("w", back.data(), back.size() * sizeof(float));
    EXPECT_EQ(s.code(), StatusCode::kCorrupt) << s.ToString();
    EXPECT_NE(s.message().find("item 'w' in " + ckpt + ": its chunks do not cover the whole tensor"),
              std::string::npos)
        << s.message();
    if (format == 2) {
      // A checkpoint may hold part of an item (a rank's local-tier
      // checkpoint holds its shard): resolving the chunks of a box is not a
      // read, and gets the chunks there are.
      auto part = (*r)->ItemPart("w", {32, 0}, {64, 64});
      ASSERT_TRUE(part.ok()) << part.status().ToString();
      EXPECT_EQ((*part)->chunks.size(), 1u);
      // Two chunks of the same rows (the validator of the whole index,
      // which LoadAll runs, refuses them too).
      m.items[0].shape = {64, 64};
      ChunkRecord again = m.items[0].chunks[0];
      again.offsets = {32, 0};
      again.sizes = {32, 64};
      again.length /= 2;
      again.crc32c.resize(format::BlockCount(again.length, m.checksum_block));
      m.items[0].chunks.push_back(again);
      Rewrite(ckpt, m, format);
      auto twice = CheckpointReader::Open(ckpt);
      ASSERT_TRUE(twice.ok()) << twice.status().ToString();
      auto item = (*twice)->Item("w");
      EXPECT_EQ(item.status().code(), StatusCode::kCorrupt);
      EXPECT_NE(item.status().message().find("its chunks at offsets [0,0] and [32,0] overlap"),
                std::string::npos)
          << item.status().message();
      EXPECT_EQ((*twice)->LoadAll().code(), StatusCode::kCorrupt);
    }
  }
}

}  // namespace
}  // namespace shardwise
