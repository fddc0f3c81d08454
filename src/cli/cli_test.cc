// The CLI end to end (the real binary, its exit codes and JSON), plus the
// verb functions called in-process for their human output.
#include "cli.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "shardwise/shardwise.h"
#include "testing/test_util.h"

namespace shardwise::cli {
namespace {

using Json = nlohmann::json;
using shardwise::testing::OwnedItems;
using shardwise::testing::ProcResult;
using shardwise::testing::RunProcess;
using shardwise::testing::TempDir;

ProcResult Cli(std::vector<std::string> args) {
  args.insert(args.begin(), SW_CLI);
  return RunProcess(args);
}

Json JsonOf(const ProcResult& r) {
  Json j = Json::parse(r.out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << r.out;
  return j;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto repo = Repository::Open(dir_.path());
    ASSERT_TRUE(repo.ok());
    for (int step : {100, 200}) {
      OwnedItems it;
      it.Add("model.layers.0.weight", DType::kBFloat16, {256, 128}, step);
      it.Add("model.layers.0.bias", DType::kBFloat16, {256}, step + 1);
      SaveSpec spec;
      spec.step = step;
      ASSERT_TRUE((*repo)->Save(spec, it.items).ok());
    }
    ASSERT_TRUE(os::Mkdir(dir_ / ".step-000000000300.staging-deadbeef").ok());
  }
  std::string Ckpt(int step) { return dir_ / Repository::StepName(step); }
  TempDir dir_;
};

TEST_F(CliTest, EveryVerbHasHelp) {
  for (const char* verb : {"ls", "inspect", "verify", "gc", "bench"}) {
    ProcResult r = Cli({verb, "--help"});
    EXPECT_EQ(r.exit_code, 0) << verb;
    EXPECT_NE(r.out.find("Usage: shardwise " + std::string(verb)), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("--json"), std::string::npos) << verb;
    EXPECT_NE(r.out.find("Exit codes"), std::string::npos) << verb;
  }
  EXPECT_EQ(Cli({"--help"}).exit_code, 0);
  EXPECT_EQ(Cli({}).exit_code, 2);
  EXPECT_EQ(Cli({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(Cli({"ls", "--bogus", dir_.path()}).exit_code, 2);
}

TEST_F(CliTest, Ls) {
  ProcResult r = Cli({"ls", dir_.path()});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("step-000000000100"), std::string::npos);
  EXPECT_NE(r.out.find("abandoned"), std::string::npos) << r.out;  // grace: fresh → active
  Json j = JsonOf(Cli({"ls", dir_.path(), "--json"}));
  ASSERT_EQ(j["checkpoints"].size(), 2u);
  EXPECT_EQ(j["checkpoints"][0]["step"], 100);
  EXPECT_EQ(j["checkpoints"][1]["latest"], true);
  EXPECT_EQ(j["checkpoints"][1]["world_size"], 1);
  EXPECT_GT(j["checkpoints"][1]["bytes"].get<std::uint64_t>(), 256u * 128 * 2);
  EXPECT_EQ(j["latest"], "step-000000000200");
  ASSERT_EQ(j["staging"].size(), 1u);
  EXPECT_EQ(j["staging"][0]["name"], "step-000000000300");
  EXPECT_EQ(Cli({"ls", dir_ / "nope"}).exit_code, 2);
  // A checkpoint where a root is expected: said so, not "no checkpoints".
  for (const char* verb : {"ls", "gc"}) {
    ProcResult c = Cli({verb, Ckpt(200) + "/"});
    EXPECT_EQ(c.exit_code, 2) << verb;
    EXPECT_NE(c.out.find("is a checkpoint (it holds manifest.json), not a root; its root is " +
                         dir_.path()),
              std::string::npos)
        << c.out;
  }
  EXPECT_FALSE(os::Exists(Ckpt(200) + "/.writer.lock"));  // gc did not claim it as a root
}

TEST_F(CliTest, Inspect) {
  ProcResult r = Cli({"inspect", Ckpt(100), "--verbose"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("model.layers.0.weight"), std::string::npos);
  EXPECT_NE(r.out.find("bfloat16"), std::string::npos);
  EXPECT_NE(r.out.find("[256, 128]"), std::string::npos);
  EXPECT_NE(r.out.find("crc32c"), std::string::npos);
  Json j = JsonOf(Cli({"inspect", Ckpt(100), "--json"}));
  EXPECT_EQ(j["checksum"]["algorithm"], "crc32c");
  EXPECT_EQ(j["items"][0]["shape"], Json::array({256, 128}));
  EXPECT_EQ(j["items"][0]["chunks"][0]["file"], "rank-00000.shard");
  EXPECT_EQ(j["files"][0]["rank"], 0);
  testing::WriteAll(Ckpt(100) + "/manifest.json", "{garbage");
  EXPECT_EQ(Cli({"inspect", Ckpt(100)}).exit_code, 1);
  EXPECT_EQ(Cli({"inspect", dir_ / "nope"}).exit_code, 2);
}

TEST_F(CliTest, VerifyIntactAndDamaged) {
  EXPECT_EQ(Cli({"verify", Ckpt(100)}).exit_code, 0);
  ProcResult all = Cli({"verify", dir_.path()});
  EXPECT_EQ(all.exit_code, 0) << all.out;
  EXPECT_NE(all.out.find("OK"), std::string::npos);
  // Flip one byte in the data of step 200: exit 1, the file named.
  std::string shard = Ckpt(200) + "/rank-00000.shard";
  testing::FlipByte(shard, 4096 + 1000);
  ProcResult bad = Cli({"verify", dir_.path()});
  EXPECT_EQ(bad.exit_code, 1) << bad.out;
  EXPECT_NE(bad.out.find("DAMAGED  step-000000000200"), std::string::npos) << bad.out;
  EXPECT_NE(bad.out.find(shard), std::string::npos) << bad.out;
  Json j = JsonOf(Cli({"verify", Ckpt(200), "--json"}));
  EXPECT_EQ(j["ok"], false);
  EXPECT_EQ(j["checkpoints"][0]["problems"][0]["file"], "rank-00000.shard");
  EXPECT_EQ(j["checkpoints"][0]["problems"][0]["code"], "CORRUPT");
  // A damaged index is the index's problem, not the manifest's.
  testing::FlipByte(Ckpt(100) + "/index.swi", 10);
  Json ix = JsonOf(Cli({"verify", Ckpt(100), "--json"}));
  EXPECT_EQ(ix["checkpoints"][0]["problems"][0]["file"], "index.swi") << ix.dump();
  testing::FlipByte(Ckpt(100) + "/index.swi", 10);
  // Truncated and missing files.
  ASSERT_EQ(::truncate((Ckpt(100) + "/rank-00000.shard").c_str(), 5000), 0);
  ProcResult tr = Cli({"verify", Ckpt(100)});
  EXPECT_EQ(tr.exit_code, 1);
  EXPECT_NE(tr.out.find("truncated"), std::string::npos) << tr.out;
  ASSERT_EQ(::unlink((Ckpt(100) + "/rank-00000.shard").c_str()), 0);
  ProcResult miss = Cli({"verify", Ckpt(100)});
  EXPECT_EQ(miss.exit_code, 1);
  EXPECT_NE(miss.out.find("missing"), std::string::npos) << miss.out;
  // Missing manifest, with shards present.
  ASSERT_EQ(::unlink((Ckpt(200) + "/manifest.json").c_str()), 0);
  EXPECT_EQ(Cli({"verify", Ckpt(200)}).exit_code, 1);
  Json nomanifest = JsonOf(Cli({"verify", Ckpt(200) + "/", "--json"}));
  EXPECT_EQ(nomanifest["checkpoints"][0]["problems"][0]["file"], "manifest.json")
      << nomanifest.dump();
  // Usage errors and unreadable paths: exit 2.
  EXPECT_EQ(Cli({"verify"}).exit_code, 2);
  EXPECT_EQ(Cli({"verify", dir_ / "nope"}).exit_code, 2);
  EXPECT_EQ(Cli({"verify", Ckpt(200) + "/rank-00000.shard"}).exit_code, 2);
}

TEST_F(CliTest, VerifyHostileManifests) {
  std::string m = Ckpt(100) + "/manifest.json";
  std::string good = testing::ReadAll(m);
  for (const std::string& bad :
       {std::string(""), std::string("[]"), good.substr(0, good.size() - 5),
        std::string("{\"format_version\":\"1\"}")}) {
    testing::WriteAll(m, bad);
    ProcResult r = Cli({"verify", Ckpt(100)});
    EXPECT_EQ(r.exit_code, 1) << bad.substr(0, 40) << ": " << r.out;
    EXPECT_NE(r.out.find(m), std::string::npos) << r.out;
  }
}

TEST_F(CliTest, Gc) {
  ProcResult dry = Cli({"gc", dir_.path(), "--grace", "0", "--keep-last", "1", "--dry-run", "--json"});
  ASSERT_EQ(dry.exit_code, 0) << dry.out;
  Json j = JsonOf(dry);
  EXPECT_EQ(j["dry_run"], true);
  EXPECT_EQ(j["removed_checkpoints"], Json::array({"step-000000000100"}));
  EXPECT_EQ(j["removed_staging"], Json::array({".step-000000000300.staging-deadbeef"}));
  EXPECT_TRUE(os::Exists(Ckpt(100)));
  ProcResult real = Cli({"gc", dir_.path(), "--grace", "0", "--keep-last", "1"});
  ASSERT_EQ(real.exit_code, 0) << real.out;
  EXPECT_NE(real.out.find("removed checkpoint  step-000000000100"), std::string::npos) << real.out;
  EXPECT_FALSE(os::Exists(Ckpt(100)));
  EXPECT_TRUE(os::Exists(Ckpt(200)));
  EXPECT_EQ(Cli({"gc", dir_.path(), "--keep-last", "0"}).exit_code, 2);
  EXPECT_EQ(Cli({"gc", dir_.path(), "--keep-last", "x"}).exit_code, 2);
  // Past what retention can hold: refused, not quietly clamped.
  ProcResult big = Cli({"gc", dir_.path(), "--keep-every", "2000000000", "--dry-run"});
  EXPECT_EQ(big.exit_code, 2) << big.out;
  EXPECT_NE(big.out.find("keep-every"), std::string::npos) << big.out;
}

TEST(CliBench, SmallRunReportsAndVerifies) {
  TempDir dir;
  ProcResult r = Cli({"bench", "--dir", dir / "b", "--ranks", "2", "--size-per-rank", "8MiB",
                      "--io-unit", "1MiB", "--threads", "2", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  Json j = JsonOf(r);
  for (const char* k : {"save", "load"}) {
    EXPECT_EQ(j[k]["bytes"].get<std::uint64_t>(), j["save"]["bytes"].get<std::uint64_t>());
    EXPECT_GT(j[k]["seconds"].get<double>(), 0);
    EXPECT_GT(j[k]["gb_per_s"].get<double>(), 0);
    // CPU time of every rank, and the machine's limit measured in the run.
    EXPECT_GT(j[k]["cpu_seconds"].get<double>(), 0);
    EXPECT_GT(j[k]["of_machine_limit"].get<double>(), 0);
  }
  EXPECT_EQ(j["threads_per_rank"], 2);
  for (const char* k : {"copy_gb_per_s", "fresh_page_copy_gb_per_s", "crc32c_gb_per_s"})
    EXPECT_GT(j["machine"][k].get<double>(), 0) << k;
  EXPECT_FALSE(j["io_mode"]["why"].get<std::string>().empty());
  EXPECT_GE(j["save"]["bytes"].get<std::uint64_t>(), 15u << 20);
  EXPECT_TRUE(j["backend"] == "uring" || j["backend"] == "threads");
  EXPECT_TRUE(j["direct_io"].is_boolean());
  EXPECT_EQ(j["verified"], true);
  EXPECT_TRUE(j["checkpoint"].is_null());
  // Without --keep nothing is left behind: the run created the root, so it
  // removes it.
  EXPECT_FALSE(os::Exists(dir / "b"));
  ProcResult keep = Cli({"bench", "--dir", dir / "b", "--ranks", "1", "--size-per-rank",
                         "4MiB", "--io-backend", "threads", "--keep"});
  ASSERT_EQ(keep.exit_code, 0) << keep.out;
  EXPECT_NE(keep.out.find("backend threads"), std::string::npos) << keep.out;
  EXPECT_EQ(Cli({"verify", dir / "b"}).exit_code, 0);
  EXPECT_EQ(Cli({"bench", "--dir", dir / "b", "--size-per-rank", "12XB"}).exit_code, 2);
  EXPECT_EQ(Cli({"bench", "--dir", dir / "b", "--threads", "-1"}).exit_code, 2);
  EXPECT_EQ(Cli({"bench"}).exit_code, 2);
}

// A run that cannot fit (its state in the host's memory, its checkpoint on
// D's filesystem) is refused before anything is allocated or created.
TEST(CliBench, ARunThatCannotFitIsRefusedUpFront) {
  TempDir dir;
  for (std::vector<std::string> extra :
       {std::vector<std::string>{"--ranks", "2"}, std::vector<std::string>{"--async"}}) {
    std::vector<std::string> args{"bench", "--dir", dir / "b", "--size-per-rank", "1000000GiB"};
    args.insert(args.end(), extra.begin(), extra.end());
    ProcResult r = Cli(args);
    EXPECT_EQ(r.exit_code, 2) << r.out;
    EXPECT_NE(r.out.find("of memory available here"), std::string::npos) << r.out;
    EXPECT_FALSE(os::Exists(dir / "b"));
  }
}

TEST(CliBench, AsyncReportsStallPersistMemoryAndTraining) {
  TempDir dir;
  ProcResult r = Cli({"bench", "--async", "--dir", dir / "a", "--size-per-rank", "16MiB",
                      "--saves", "3", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  Json j = JsonOf(r);
  for (const char* k : {"stall", "persist", "first_stall"}) {
    EXPECT_GT(j[k]["bytes"].get<std::uint64_t>(), 15u << 20) << k;
    EXPECT_GT(j[k]["seconds"].get<double>(), 0) << k;
    EXPECT_GT(j[k]["gb_per_s"].get<double>(), 0) << k;
  }
  EXPECT_GT(j["memcpy_gb_per_s"].get<double>(), 0);
  // Null when the persists were too short to time a loop against.
  EXPECT_TRUE(j["training"]["ratio"].is_null() || j["training"]["ratio"].get<double>() > 0);
  EXPECT_GT(j["training"]["undisturbed_steps_per_s"].get<double>(), 0);
  // Peak memory holds at least the state and the pool.
  EXPECT_GE(j["peak_rss_bytes"].get<std::uint64_t>(),
            j["state_bytes"].get<std::uint64_t>() + j["staging_bytes"].get<std::uint64_t>());
  EXPECT_EQ(j["waves"], 1);
  // The documented bound on rss_overhead_bytes (4 MiB) does not hold under
  // the sanitizers CI runs this under: python/tests/test_cli.py checks it on
  // the release build.
  // A budget below the state: waves.
  ProcResult w = Cli({"bench", "--async", "--dir", dir / "a", "--size-per-rank", "16MiB",
                      "--saves", "2", "--staging-budget", "4MiB", "--io-unit", "1MiB", "--json"});
  ASSERT_EQ(w.exit_code, 0) << w.out;
  EXPECT_GT(JsonOf(w)["waves"].get<int>(), 2);
  EXPECT_FALSE(os::Exists(dir / "a"));  // nothing left without --keep
  EXPECT_EQ(Cli({"bench", "--async", "--dir", dir / "a", "--ranks", "2"}).exit_code, 2);
  EXPECT_EQ(Cli({"bench", "--dir", dir / "a", "--saves", "3"}).exit_code, 2);
}

// docs/cpp-api.md shows the option table exactly as `shardwise options
// --markdown` prints it.
TEST(CliOptions, DocsTableIsTheOptionTable) {
  std::ifstream f(std::string(SW_SOURCE_DIR) + "/docs/cpp-api.md");
  std::stringstream doc;
  doc << f.rdbuf();
  const std::string begin = "src/common/options.cc; src/cli/cli_test.cc fails when they differ -->\n";
  const std::string text = doc.str();
  const auto a = text.find(begin), b = text.find("<!-- end of generated table -->");
  ASSERT_NE(a, std::string::npos);
  ASSERT_NE(b, std::string::npos);
  std::ostringstream out, err;
  ASSERT_EQ(RunOptions({"--markdown"}, out, err), kExitOk);
  EXPECT_EQ(text.substr(a + begin.size(), b - a - begin.size()), out.str())
      << "regenerate the table in docs/cpp-api.md with `shardwise options --markdown`";
  // Every variable is listed, and a malformed one is reported with its name.
  std::ostringstream o2, e2;
  EXPECT_EQ(RunOptions({"--json"}, o2, e2), kExitOk);
  EXPECT_EQ(nlohmann::json::parse(o2.str())["options"].size(), OptionTable().size());
  std::ostringstream o4, e4;
  EXPECT_EQ(RunOptions({"--json", "--markdown"}, o4, e4), kExitUsage);
  testing::ScopedEnv bad("SHARDWISE_DIRECT_IO", "sometimes");
  std::ostringstream o3, e3;
  EXPECT_EQ(RunOptions({}, o3, e3), kExitProblem);
  EXPECT_NE(e3.str().find("SHARDWISE_DIRECT_IO='sometimes' (expected auto, on or off)"),
            std::string::npos) << e3.str();
}

TEST(CliArgs, InProcessVerbs) {
  std::ostringstream out, err;
  EXPECT_EQ(RunLs({"--help"}, out, err), kExitOk);
  EXPECT_NE(out.str().find("Usage: shardwise ls"), std::string::npos);
  EXPECT_EQ(RunGc({}, out, err), kExitUsage);
  EXPECT_NE(err.str().find("expected one ROOT"), std::string::npos);
}

}  // namespace
}  // namespace shardwise::cli

namespace shardwise::cli {
namespace {

// Found by fuzz/checkpoint_dir_fuzz: a damaged manifest whose error message
// quotes bytes that are not UTF-8 made `verify --json` abort. Messages now
// escape such bytes and JSON output never throws on them.
TEST_F(CliTest, JsonOutputSurvivesInvalidUtf8InMessages) {
  std::string m = Ckpt(100) + "/manifest.json";
  std::string text = testing::ReadAll(m);
  std::string bad = "\n\xA8\xC9\xC9Ti\x01*";
  text.replace(text.size() - 11, 8, bad);  // the self-checksum's 8 hex digits
  testing::WriteAll(m, text);
  for (const char* verb : {"verify", "inspect"}) {
    ProcResult r = Cli({verb, Ckpt(100), "--json"});
    EXPECT_NE(r.exit_code, 0) << verb;
    EXPECT_NE(r.out.find("malformed self-checksum"), std::string::npos) << verb << ": " << r.out;
    EXPECT_NE(r.out.find("xA8"), std::string::npos) << verb << ": " << r.out;  // escaped
    EXPECT_EQ(r.out.find('\xA8'), std::string::npos) << verb << ": the raw byte leaked";
  }
  ProcResult v = Cli({"verify", Ckpt(100), "--json"});
  auto j = Json::parse(v.out.substr(0, v.out.rfind('}') + 1), nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << v.out;
}

}  // namespace
}  // namespace shardwise::cli
