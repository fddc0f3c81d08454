// Exports to S3 after commit, with stub `aws` and `lfs` executables on PATH
// that log their arguments and answer from files the tests control.
#include "repo/export.h"

#include <sys/stat.h>

#include <cstdlib>

#include <gtest/gtest.h>

#include "os/posix.h"
#include "shardwise/repository.h"
#include "testing/test_util.h"

namespace shardwise::repo {
namespace {

using testing::ReadAll;
using testing::TempDir;
using testing::WriteAll;

// Puts stub aws and lfs first on PATH for the life of the test.
class StubTools {
 public:
  StubTools() : old_path_(std::getenv("PATH") ? std::getenv("PATH") : "") {
    Write("aws", R"SH(#!/bin/sh
echo "aws $*" >> "$STUB_DIR/calls"
case "$2" in
  create-data-repository-task)
    if [ -f "$STUB_DIR/create_fails" ]; then
      echo "An error occurred (BadRequest): $(cat "$STUB_DIR/create_fails")" >&2; exit 254
    fi
    echo '{"DataRepositoryTask": {"TaskId": "task-0123456789abcdef0", "Lifecycle": "PENDING"}}' ;;
  describe-data-repository-tasks)
    life=$(cat "$STUB_DIR/lifecycle" 2>/dev/null || echo EXECUTING)
    echo "{\"DataRepositoryTasks\": [{\"TaskId\": \"$4\", \"Lifecycle\": \"$life\",
      \"FailureDetails\": {\"Message\": \"access denied to the bucket\"}}]}" ;;
  *) echo "stub aws: unexpected $*" >&2; exit 2 ;;
esac
)SH");
    Write("lfs", R"SH(#!/bin/sh
echo "lfs $*" >> "$STUB_DIR/calls"
cmd=$1; shift
case "$cmd" in
  hsm_archive) exit 0 ;;
  hsm_state)
    for f in "$@"; do
      if [ -f "$STUB_DIR/archived" ]; then echo "$f: (0x00000009) exists archived, archive_id:1"
      else echo "$f: (0x00000001) exists, archive_id:1"; fi
    done ;;
  *) exit 2 ;;
esac
)SH");
    ::setenv("PATH", (dir_.path() + ":" + old_path_).c_str(), 1);
    ::setenv("STUB_DIR", dir_.path().c_str(), 1);
  }
  ~StubTools() {
    ::setenv("PATH", old_path_.c_str(), 1);
    ::unsetenv("STUB_DIR");
  }
  void Set(const std::string& file, const std::string& text) { WriteAll(dir_ / file, text); }
  void Clear(const std::string& file) { (void)os::Unlink(dir_ / file); }
  std::string Calls() const { return ReadAll(dir_ / "calls"); }

 private:
  void Write(const std::string& name, const std::string& body) {
    WriteAll(dir_ / name, body);
    ::chmod((dir_ / name).c_str(), 0755);
  }
  TempDir dir_;
  std::string old_path_;
};

std::unique_ptr<Repository> OpenRepo(const std::string& root, const Options& o) {
  auto r = Repository::Open(root, o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return std::move(*r);
}

CommitResult SaveStep(Repository& repo, std::int64_t step, bool replace = false) {
  testing::OwnedItems items;
  items.Add("w", DType::kFloat32, {256}, static_cast<std::uint64_t>(step) + replace);
  SaveSpec spec;
  spec.step = step;
  spec.replace = replace;
  auto r = repo.Save(spec, items.items);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : CommitResult{};
}

Options FsxOptions(const TempDir& mount) {
  Options o;
  o.export_mode = ExportMode::kFsxTask;
  o.fsx_id = "fs-0123456789abcdef0";
  o.fsx_mount = mount.path();
  return o;
}

TEST(Export, FsxTaskIsRequestedWithTheRelativePathAndTracked) {
  StubTools stubs;
  TempDir mount;
  std::string root = mount / "ckpts";
  auto repo = OpenRepo(root, FsxOptions(mount));
  CommitResult c = SaveStep(*repo, 1);
  EXPECT_TRUE(c.export_error.empty()) << c.export_error;
  std::string calls = stubs.Calls();
  EXPECT_NE(calls.find("aws fsx create-data-repository-task --file-system-id "
                       "fs-0123456789abcdef0 --type EXPORT_TO_REPOSITORY --paths "
                       "ckpts/step-000000000001 --report Enabled=false"),
            std::string::npos)
      << calls;
  // the commit only requests; it does not ask for the state
  EXPECT_EQ(calls.find("describe-data-repository-tasks"), std::string::npos) << calls;
  ExportStatus st = QueryExport(root, "step-000000000001");
  EXPECT_EQ(st.state, ExportState::kPending);
  EXPECT_NE(st.detail.find("task-0123456789abcdef0 EXECUTING"), std::string::npos) << st.detail;
  stubs.Set("lifecycle", "SUCCEEDED");
  EXPECT_EQ(QueryExport(root, "step-000000000001").state, ExportState::kExported);
  stubs.Set("lifecycle", "FAILED");
  st = QueryExport(root, "step-000000000001");
  EXPECT_EQ(st.state, ExportState::kFailed);
  EXPECT_NE(st.detail.find("access denied to the bucket"), std::string::npos) << st.detail;
  EXPECT_EQ(QueryExport(root, "step-000000000099").state, ExportState::kNotRequested);
}

// Records are kept by name. A checkpoint saved again under that name with
// no export request of its own (a crash between commit and request, a save
// with exports off) is not exported, whatever the old record says: retention
// that requires exports must keep it.
TEST(Export, ARecordOfAnEarlierCheckpointOfTheNameDoesNotCount) {
  StubTools stubs;
  stubs.Set("lifecycle", "SUCCEEDED");
  TempDir mount;
  std::string root = mount / "ckpts";
  {
    auto repo = OpenRepo(root, FsxOptions(mount));
    SaveStep(*repo, 1);
    EXPECT_EQ(QueryExport(root, "step-000000000001").state, ExportState::kExported);
  }
  SaveStep(*OpenRepo(root, Options()), 1, /*replace=*/true);  // exports off
  ExportStatus st = QueryExport(root, "step-000000000001");
  EXPECT_EQ(st.state, ExportState::kNotRequested);
  EXPECT_NE(st.detail.find("earlier checkpoint"), std::string::npos) << st.detail;
}

TEST(Export, AFailedRequestIsRecordedAndNeverFailsTheSave) {
  StubTools stubs;
  stubs.Set("create_fails", "the file system has no data repository");
  TempDir mount;
  std::string root = mount / "ckpts";
  auto repo = OpenRepo(root, FsxOptions(mount));
  CommitResult c = SaveStep(*repo, 3);
  EXPECT_NE(c.export_error.find("no data repository"), std::string::npos) << c.export_error;
  EXPECT_TRUE(os::Exists(os::JoinPath(root, "step-000000000003/manifest.json")));
  ExportStatus st = QueryExport(root, "step-000000000003");
  EXPECT_EQ(st.state, ExportState::kFailed);
  EXPECT_NE(st.detail.find("exited 254"), std::string::npos) << st.detail;
  // ls shows it
  auto ls = testing::RunProcess({SW_CLI, "ls", root});
  EXPECT_EQ(ls.exit_code, 0) << ls.out;
  EXPECT_NE(ls.out.find("EXPORT"), std::string::npos) << ls.out;
  EXPECT_NE(ls.out.find("step-000000000003: export failed:"), std::string::npos) << ls.out;
}

TEST(Export, MisconfiguredFsxExportSaysWhat) {
  StubTools stubs;
  TempDir mount, elsewhere;
  Options o = FsxOptions(elsewhere);  // the root is not under this mount
  auto repo = OpenRepo(mount / "ckpts", o);
  CommitResult c = SaveStep(*repo, 1);
  EXPECT_NE(c.export_error.find("is not under SHARDWISE_FSX_MOUNT"), std::string::npos)
      << c.export_error;
  o.fsx_id.clear();
  auto repo2 = OpenRepo(mount / "ckpts2", o);
  c = SaveStep(*repo2, 1);
  EXPECT_NE(c.export_error.find("SHARDWISE_FSX_ID and SHARDWISE_FSX_MOUNT"), std::string::npos);
  EXPECT_EQ(stubs.Calls(), "");  // nothing was run
}

TEST(Export, HsmArchivesEveryFileAndWaitsForAllArchived) {
  StubTools stubs;
  TempDir root;
  Options o;
  o.export_mode = ExportMode::kHsm;
  auto repo = OpenRepo(root.path(), o);
  SaveStep(*repo, 1);
  std::string calls = stubs.Calls();
  std::string dir = root / "step-000000000001";
  EXPECT_NE(calls.find("lfs hsm_archive " + dir + "/index.swi " + dir + "/manifest.json " + dir +
                       "/rank-00000.shard"),
            std::string::npos)
      << calls;
  ExportStatus st = QueryExport(root.path(), "step-000000000001");
  EXPECT_EQ(st.state, ExportState::kPending);
  EXPECT_EQ(st.detail, "0/3 files archived");
  stubs.Set("archived", "");
  st = QueryExport(root.path(), "step-000000000001");
  EXPECT_EQ(st.state, ExportState::kExported) << st.detail;
  auto ls = testing::RunProcess({SW_CLI, "ls", root.path(), "--json"});
  EXPECT_NE(ls.out.find("\"state\": \"exported\""), std::string::npos) << ls.out;
}

TEST(Export, RetentionCanRequireExportBeforeDeleting) {
  StubTools stubs;
  TempDir mount;
  std::string root = mount / "ckpts";
  Options o = FsxOptions(mount);
  o.retention_requires_export = true;
  auto repo = OpenRepo(root, o);
  for (int s = 1; s <= 3; ++s) SaveStep(*repo, s);
  GcOptions gc;
  gc.keep_last = 1;
  auto r = repo->Gc(gc);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->removed_checkpoints.empty());
  EXPECT_EQ(r->kept_unexported,
            (std::vector<std::string>{"step-000000000001", "step-000000000002"}));
  stubs.Set("lifecycle", "SUCCEEDED");
  r = repo->Gc(gc);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->removed_checkpoints,
            (std::vector<std::string>{"step-000000000001", "step-000000000002"}));
  EXPECT_FALSE(os::Exists(os::JoinPath(root, ".exports/step-000000000001.json")));
  EXPECT_TRUE(os::Exists(os::JoinPath(root, ".exports/step-000000000003.json")));
  // without the option, retention does not ask
  Options plain = o;
  plain.retention_requires_export = false;
  stubs.Set("lifecycle", "EXECUTING");
  SaveStep(*repo, 4);
  auto repo2 = OpenRepo(root, plain);
  r = repo2->Gc(gc);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->removed_checkpoints, (std::vector<std::string>{"step-000000000003"}));
}

TEST(Export, ExportRecordsAreNotCheckpoints) {
  StubTools stubs;
  TempDir mount;
  std::string root = mount / "ckpts";
  auto repo = OpenRepo(root, FsxOptions(mount));
  SaveStep(*repo, 1);
  auto list = repo->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "step-000000000001");
  auto report = repo->Gc(GcOptions{});
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->removed_staging.empty());
  EXPECT_TRUE(os::Exists(os::JoinPath(root, ".exports/step-000000000001.json")));
}

TEST(RunCommand, CapturesOutputAndReportsMissingPrograms) {
  auto r = os::RunCommand({"sh", "-c", "echo out; echo err >&2; exit 3"}, 10);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->out, "out\n");
  EXPECT_EQ(r->err, "err\n");
  auto missing = os::RunCommand({"shardwise-no-such-program"}, 10);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  auto slow = os::RunCommand({"sleep", "10"}, 0.2);
  ASSERT_FALSE(slow.ok());
  EXPECT_EQ(slow.status().code(), StatusCode::kTimeout);
}

}  // namespace
}  // namespace shardwise::repo
