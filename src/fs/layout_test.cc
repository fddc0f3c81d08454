#include "fs/layout.h"

#include <fcntl.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <sstream>

#include <gtest/gtest.h>

#include "fs/lustre_api.h"
#include "fs/placement.h"
#include "repo/repository_impl.h"
#include "shardwise/reader.h"
#include "shardwise/repository.h"
#include "testing/test_util.h"

namespace shardwise::fs {
namespace {

using testing::TempDir;

std::string ReadAll(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// One row of the decision table in docs/lustre.md.
struct Row {
  int writers;
  std::uint64_t bytes;
  int osts;               // 0: unknown
  int override_count;     // 0: none
  std::uint64_t override_size;
  bool apply;
  int count;
  std::uint64_t size;
  std::string line;
};

std::uint64_t Size(const std::string& text) {
  auto s = ParseSize(text);
  EXPECT_TRUE(s.ok()) << text;
  return s.ok() ? *s : 0;
}

std::vector<Row> DecisionTable() {
  std::string doc = ReadAll(std::string(SW_SOURCE_DIR) + "/docs/lustre.md");
  auto begin = doc.find("<!-- decision-table -->");
  auto end = doc.find("<!-- /decision-table -->");
  EXPECT_NE(begin, std::string::npos);
  EXPECT_NE(end, std::string::npos);
  std::istringstream in(doc.substr(begin, end - begin));
  std::vector<Row> rows;
  std::string line;
  std::regex cells(R"(\|\s*([^|]*?)\s*(?=\|))");
  while (std::getline(in, line)) {
    if (line.rfind("| ", 0) != 0 || line.find("writers") != std::string::npos) continue;
    std::vector<std::string> c;
    for (auto it = std::sregex_iterator(line.begin(), line.end(), cells);
         it != std::sregex_iterator(); ++it)
      c.push_back((*it)[1]);
    EXPECT_EQ(c.size(), 7u) << line;
    if (c.size() != 7) continue;
    Row r;
    r.line = line;
    r.writers = std::stoi(c[0]);
    r.bytes = Size(c[1]);
    r.osts = c[2] == "unknown" ? 0 : std::stoi(c[2]);
    r.override_count = c[3] == "-" ? 0 : std::stoi(c[3]);
    r.override_size = c[4] == "-" ? 0 : Size(c[4]);
    r.apply = c[5] != "default";
    r.count = r.apply ? std::stoi(c[5]) : 0;
    r.size = c[6] == "default" ? 0 : Size(c[6]);
    rows.push_back(r);
  }
  return rows;
}

TEST(LayoutPolicy, MatchesTheDecisionTableInTheDocs) {
  auto rows = DecisionTable();
  ASSERT_GE(rows.size(), 10u);
  for (const Row& r : rows) {
    LayoutDecision d =
        DecideLayout({r.writers, r.bytes, r.osts, r.override_count, r.override_size});
    EXPECT_EQ(d.apply, r.apply) << r.line << "\n" << d.reason;
    if (!r.apply) continue;
    EXPECT_EQ(d.layout.stripe_count, r.count) << r.line << "\n" << d.reason;
    EXPECT_EQ(d.layout.stripe_size, r.size) << r.line;
    EXPECT_EQ(d.layout.stripe_offset, -1) << r.line;
    EXPECT_FALSE(d.reason.empty());
  }
}

TEST(LayoutPolicy, NeverMoreStripesThanOstsNorFewerThanOne) {
  for (int osts : {1, 2, 7, 16, 48, 160})
    for (int writers : {1, 2, 3, 8, 64, 1024})
      for (std::uint64_t gib : {1ull, 3ull, 17ull, 200ull}) {
        LayoutDecision d = DecideLayout({writers, gib << 30, osts, 0, 0});
        ASSERT_TRUE(d.apply);
        EXPECT_GE(d.layout.stripe_count, 1);
        EXPECT_LE(d.layout.stripe_count, osts);
        // all files together never ask for more OSTs than exist, unless one each
        if (d.layout.stripe_count > 1) {
          EXPECT_LE(d.layout.stripe_count * writers, osts);
        }
      }
}

TEST(LayoutPolicy, IoUnitIsAlignedToTheStripe) {
  constexpr std::uint64_t M = 1 << 20;
  EXPECT_EQ(AlignIoUnit(8 * M, 4 * M, M), 8 * M);    // a multiple
  EXPECT_EQ(AlignIoUnit(8 * M, 16 * M, M), 8 * M);   // a divisor
  EXPECT_EQ(AlignIoUnit(8 * M, 3 * M, M), 9 * M);    // rounded up to a multiple
  EXPECT_EQ(AlignIoUnit(8 * M, 1280 * 1024, M), 10 * M);  // and of the checksum block
  EXPECT_EQ(AlignIoUnit(6 * M, 4 * M, M), 8 * M);
  // lcm(320 KiB, 1 GiB) is 5 GiB, over the largest unit: left as it is.
  EXPECT_EQ(AlignIoUnit(1024 * M, 320 * 1024, 1024 * M), 1024 * M);
}

// Records what the placement asked for; creates files plainly.
class RecordingSetter final : public LayoutSetter {
 public:
  std::vector<std::pair<std::string, Layout>> calls;
  std::string_view name() const override { return "recording"; }
  Result<Created> Create(const std::string& path, int flags, int mode,
                         const Layout& layout) override {
    calls.push_back({path, layout});
    int fd = ::open(path.c_str(), flags, mode);
    if (fd < 0) return Status(StatusCode::kIoError, "open " + path, errno, path);
    return Created{fd, true, "recording"};
  }
};

FsInfo FakeLustre(int osts) {
  FsInfo fs;
  fs.type = "lustre";
  fs.lustre = true;
  fs.ost_count = osts;
  return fs;
}

TEST(Placement, AppliesThePolicysDecisionsOverATable) {
  TempDir dir;
  for (const Row& r : DecisionTable()) {
    auto rec = std::make_unique<RecordingSetter>();
    RecordingSetter* seen = rec.get();
    Options o;
    o.stripe_count = r.override_count;
    o.stripe_size = r.override_size;
    Placement p(FakeLustre(r.osts), std::move(rec), o);
    std::string path = dir / ("f" + std::to_string(r.writers) + "-" + std::to_string(r.bytes));
    PlacementReport report;
    auto f = p.Create(path, O_WRONLY | O_CREAT | O_EXCL, 0644, r.bytes, r.writers, &report);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    if (!r.apply) {
      EXPECT_TRUE(seen->calls.empty()) << r.line;
      EXPECT_FALSE(report.applied);
      EXPECT_NE(report.how.find("no layout applied: OST count unknown"), std::string::npos);
    } else {
      ASSERT_EQ(seen->calls.size(), 1u) << r.line;
      EXPECT_EQ(seen->calls[0].first, path);
      EXPECT_EQ(seen->calls[0].second.stripe_count, r.count) << r.line;
      EXPECT_EQ(seen->calls[0].second.stripe_size, r.size) << r.line;
      EXPECT_TRUE(report.applied);
    }
    ASSERT_TRUE(os::RemoveTree(path).ok());
  }
}

TEST(Placement, RepositorySavesCreateEveryShardThroughIt) {
  TempDir dir;
  Options o;
  auto repo = Repository::Open(dir.path(), o);
  ASSERT_TRUE(repo.ok());
  auto rec = std::make_unique<RecordingSetter>();
  RecordingSetter* seen = rec.get();
  SetPlacementForTesting(**repo,
                               std::make_unique<Placement>(FakeLustre(16), std::move(rec), o));
  std::vector<float> data(300 << 18, 1.5f);  // 300 MiB
  WriteItem item;
  item.name = "w";
  item.dtype = DType::kFloat32;
  item.global_shape = {static_cast<std::int64_t>(data.size())};
  item.data = data.data();
  item.nbytes = data.size() * sizeof(float);
  SaveSpec spec;
  spec.step = 1;
  auto saved = (*repo)->Save(spec, {&item, 1});
  ASSERT_TRUE(saved.ok()) << saved.status().ToString();
  ASSERT_EQ(seen->calls.size(), 1u);
  EXPECT_NE(seen->calls[0].first.find("rank-00000.shard"), std::string::npos);
  EXPECT_EQ(seen->calls[0].second.stripe_count, 1);  // one writer, 300 MiB: capped at 1/256 MiB
  auto reader = (*repo)->OpenCheckpoint(Repository::StepName(1));
  ASSERT_TRUE(reader.ok());
  EXPECT_TRUE((*reader)->Verify().ok());
}

TEST(LustreApi, FakeLibraryIsCalledWithTheRightArguments) {
  TempDir dir;
  std::string log = dir / "llapi.log";
  ::setenv("FAKE_LLAPI_LOG", log.c_str(), 1);
  ::setenv("FAKE_LLAPI_OSTS", "24", 1);
  auto api = LustreApi::Load(SW_FAKE_LUSTREAPI);
  ASSERT_TRUE(api.ok()) << api.status().ToString();
  EXPECT_EQ((*api)->path(), SW_FAKE_LUSTREAPI);
  auto osts = (*api)->OstCount(dir.path());
  ASSERT_TRUE(osts.ok());
  EXPECT_EQ(*osts, 24);
  auto def = (*api)->DefaultLayout(dir.path());
  ASSERT_TRUE(def.ok());
  EXPECT_EQ(def->stripe_count, 1);
  EXPECT_EQ(def->stripe_size, 1u << 20);

  // Through the placement: 2 writers of 4 GiB files over 24 OSTs: 12 stripes.
  FsInfo fs = FakeLustre(*osts);
  fs.default_layout = *def;
  Placement p(fs, MakeLustreApiSetter(std::move(*api)), Options());
  std::string path = dir / "rank-00000.shard";
  PlacementReport report;
  auto f = p.Create(path, O_WRONLY | O_CREAT | O_EXCL, 0640, 4ull << 30, 2, &report);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_TRUE(report.applied);
  EXPECT_NE(report.how.find("liblustreapi"), std::string::npos);
  ASSERT_EQ(::write(f->fd(), "x", 1), 1);
  std::string calls = ReadAll(log);
  EXPECT_NE(calls.find("llapi_get_obd_count " + dir.path() + " is_mdt=0"), std::string::npos)
      << calls;
  char expect[512];
  std::snprintf(expect, sizeof expect,
                "llapi_file_open %s flags=%#x mode=0640 stripe_size=4194304 stripe_offset=-1 "
                "stripe_count=12 stripe_pattern=0",
                path.c_str(), O_WRONLY | O_CREAT | O_EXCL);
  EXPECT_NE(calls.find(expect), std::string::npos) << calls << "\nexpected: " << expect;
  EXPECT_NE(p.Summary().find("24 OSTs, root default 1 x 1024 KiB, layouts set through liblustreapi"),
            std::string::npos)
      << p.Summary();
  ::unsetenv("FAKE_LLAPI_LOG");
  ::unsetenv("FAKE_LLAPI_OSTS");
}

TEST(LustreApi, MissingLibraryIsAClearNotFound) {
  auto api = LustreApi::Load("/nonexistent/liblustreapi.so.1");
  ASSERT_FALSE(api.ok());
  EXPECT_EQ(api.status().code(), StatusCode::kNotFound);
  EXPECT_NE(api.status().message().find("/nonexistent/liblustreapi.so.1"), std::string::npos);
}

// The ioctl path for real on the local filesystems: the layout is refused
// (not Lustre), the file is still created and usable, and the report says why.
void ExpectIoctlFallsBack(const std::string& base) {
  TempDir dir(base);
  ASSERT_FALSE(dir.path().empty());
  auto setter = MakeIoctlSetter();
  std::string path = dir / "shard";
  auto c = setter->Create(path, O_WRONLY | O_CREAT | O_EXCL, 0644, Layout{4 << 20, 4, -1});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  os::File f(c->fd, path);
  EXPECT_FALSE(c->applied);
  EXPECT_NE(c->how.find("not applied: ioctl LL_IOC_LOV_SETSTRIPE"), std::string::npos) << c->how;
  EXPECT_EQ(::write(f.fd(), "abc", 3), 3);
  EXPECT_TRUE(f.Close().ok());
  EXPECT_EQ(ReadAll(path), "abc");
}

TEST(IoctlSetter, FallsBackOnTheLocalFilesystem) { ExpectIoctlFallsBack(""); }

TEST(IoctlSetter, FallsBackOnTmpfs) {
  struct statfs st {};
  if (::statfs("/dev/shm", &st) != 0 || FsTypeName(static_cast<long>(st.f_type)) != "tmpfs")
    GTEST_SKIP() << "/dev/shm is not tmpfs here";
  ExpectIoctlFallsBack("/dev/shm");
}

TEST(Placement, NonLustreSaysPlainlyThatNoLayoutWasApplied) {
  TempDir dir;
  auto p = Placement::ForDirectory(dir.path(), Options());
  EXPECT_FALSE(p->fs().lustre);
  EXPECT_NE(p->Summary().find("(not Lustre): no layout applied"), std::string::npos)
      << p->Summary();
  PlacementReport report;
  auto f = p->Create(dir / "x", O_WRONLY | O_CREAT | O_EXCL, 0644, 4ull << 30, 2, &report);
  ASSERT_TRUE(f.ok());
  EXPECT_FALSE(report.applied);
  EXPECT_EQ(report.how, "no layout applied: " + p->fs().type + " is not Lustre");
  Options off;
  off.layout = LayoutMode::kOff;
  auto q = Placement::ForDirectory(dir.path(), off);
  EXPECT_NE(q->Summary().find("layouts are off"), std::string::npos) << q->Summary();
}

TEST(Options, LayoutVariablesAreParsedAndChecked) {
  ::setenv("SHARDWISE_STRIPE_COUNT", "-1", 1);
  ::setenv("SHARDWISE_STRIPE_SIZE", "16MiB", 1);
  ::setenv("SHARDWISE_LAYOUT", "off", 1);
  auto o = Options::FromEnv();
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->stripe_count, -1);
  EXPECT_EQ(o->stripe_size, 16u << 20);
  EXPECT_EQ(o->layout, LayoutMode::kOff);
  ::setenv("SHARDWISE_STRIPE_SIZE", "100000", 1);
  auto bad = Options::FromEnv();
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("multiple of 64 KiB"), std::string::npos);
  ::setenv("SHARDWISE_STRIPE_COUNT", "-2", 1);
  EXPECT_FALSE(Options::FromEnv().ok());
  ::unsetenv("SHARDWISE_STRIPE_COUNT");
  ::unsetenv("SHARDWISE_STRIPE_SIZE");
  ::unsetenv("SHARDWISE_LAYOUT");
}

}  // namespace
}  // namespace shardwise::fs
