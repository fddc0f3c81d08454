// Randomized crash torture (docs/RELIABILITY.md).
//
//   sw_torture --dir D [--trials 200] [--seed S] [--size 1MiB] [--verbose]
//
// Each trial saves one step with 1-3 rank processes and a coordinator
// process (sw_save_helper rank/commit), and sometimes runs retention
// (`shardwise gc --keep-last 2`) in its own process. Chosen at random from
// the seed: nothing goes wrong; a fault at a random syscall (EIO, ENOSPC,
// EDQUOT, a short transfer, or SIGKILL right there, half the time as a power
// cut that also drops what was not yet durable) in one process or all;
// or SIGKILL of one process or all at a random moment. When every process of
// the trial is gone, the harness checks:
//   1. every committed checkpoint verifies (every checksum);
//   2. `latest`, when present, names a committed checkpoint, and
//      Repository::Latest() names the newest one;
//   3. the newest checkpoint known complete is present and bit-exact (a
//      save counts as complete when its commit reported success, or when
//      its checkpoint is there and verifies);
//   4. gc (grace 0, nothing running) leaves no staging directory or leftover.
// A failure prints the trial, the seed and the command that replays it, and
// exits 1. The summary is one JSON object on stdout.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "os/posix.h"
#include "shardwise/shardwise.h"

using namespace shardwise;

namespace {

std::string Sibling(const char* name) {
  char self[4096];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return name;
  self[n] = '\0';
  return os::JoinPath(os::Dirname(self), name);
}

struct Proc {
  pid_t pid = -1;
  int status = 0;
  bool killed = false;
};

pid_t Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) {
      ::dup2(null, 1);
      ::dup2(null, 2);
    }
    for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  return pid;
}

// Waits for every process, killing any still alive after `deadline_s` (a
// hang is a failure the caller reports).
bool WaitAll(std::vector<Proc>& procs, double deadline_s) {
  const double end = os::MonotonicSeconds() + deadline_s;
  bool hung = false;
  for (auto& p : procs) {
    while (true) {
      pid_t r = ::waitpid(p.pid, &p.status, WNOHANG);
      if (r == p.pid) break;
      if (os::MonotonicSeconds() > end) {
        hung = true;
        ::kill(p.pid, SIGKILL);
        ::waitpid(p.pid, &p.status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  return !hung;
}

bool Succeeded(const Proc& p) { return WIFEXITED(p.status) && WEXITSTATUS(p.status) == 0; }

const char* kOps[] = {"open", "write", "fsync", "rename", "fallocate", "mkdir", "unlink"};
const char* kActions[] = {"EIO", "ENOSPC", "EDQUOT", "short", "kill"};

struct Stats {
  int trials = 0, committed = 0, failed_saves = 0, faults = 0, kills = 0, gcs = 0,
      gc_killed = 0, recovered_after_kill = 0;
  std::map<std::string, int> fault_kinds;
};

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  int trials = 200, first = 0;
  std::uint64_t seed = 1;
  std::string size = "1MiB";
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i], v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--dir") dir = v, ++i;
    else if (a == "--trials") trials = std::atoi(v.c_str()), ++i;
    else if (a == "--seed") seed = std::strtoull(v.c_str(), nullptr, 10), ++i;
    else if (a == "--size") size = v, ++i;
    else if (a == "--verbose") verbose = true;
    else {
      std::fprintf(stderr, "usage: sw_torture --dir D [--trials N] [--seed S] [--size SIZE] "
                           "[--verbose]\n");
      return 2;
    }
  }
  if (dir.empty() || trials < 1) return 2;
  auto size_b = ParseSize(size);
  if (!size_b.ok()) return 2;
  (void)os::RemoveTree(dir);
  if (!os::MkdirAll(dir).ok()) return 2;
  const std::string helper = Sibling("sw_save_helper"), cli = Sibling("shardwise");
  const std::string data_seed = "7";
  Stats st;
  std::int64_t last_ok = -1;
  int last_ok_world = 0;
  std::map<std::int64_t, int> world_of;

  auto fail = [&](int t, const std::string& what) {
    std::fprintf(stderr,
                 "sw_torture: FAILED at trial %d (seed %llu): %s\n"
                 "  replay: sw_torture --dir %s --seed %llu --trials %d --size %s --verbose\n",
                 t, static_cast<unsigned long long>(seed), what.c_str(), dir.c_str(),
                 static_cast<unsigned long long>(seed), t + 1, size.c_str());
    return 1;
  };

  for (int t = first; t < trials; ++t) {
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(t));
    auto pick = [&](std::uint64_t n) { return rng() % n; };
    const std::int64_t step = t + 1;
    const int world = 1 + static_cast<int>(pick(3));
    world_of[step] = world;
    const std::string save_id = "t" + std::to_string(t) + "x" + std::to_string(pick(1 << 20));
    // Processes: ranks 0..world-1, then the coordinator.
    const int nproc = world + 1;
    const int scenario = static_cast<int>(pick(10));
    std::vector<std::vector<std::string>> envs(nproc);
    std::string what = "clean";
    std::vector<int> victims;
    if (scenario >= 3 && scenario <= 6) {  // a fault at a random syscall
      std::string rule = std::string(kOps[pick(std::size(kOps))]) + "@" +
                         std::to_string(1 + pick(3)) + "=" + kActions[pick(std::size(kActions))];
      if (scenario == 6) {
        for (int p = 0; p < nproc; ++p) victims.push_back(p);
      } else {
        victims.push_back(static_cast<int>(pick(nproc)));
      }
      for (int v : victims) {
        envs[v].push_back("SHARDWISE_FAULTS=" + rule);
        // A kill at a syscall is a power cut half the time: what was not
        // yet durable is lost too (os/power_loss.h).
        if (rule.ends_with("=kill") && pick(2) == 0) envs[v].push_back("SHARDWISE_POWER_LOSS=1");
      }
      what = "fault " + rule + " in " + std::to_string(victims.size()) + " process(es)";
      ++st.faults;
      ++st.fault_kinds[rule.substr(rule.find('=') + 1)];
    } else if (scenario >= 7) {  // SIGKILL at a random moment
      if (scenario == 9) {
        for (int p = 0; p < nproc; ++p) victims.push_back(p);
      } else {
        victims.push_back(static_cast<int>(pick(nproc)));
      }
      what = "SIGKILL of " + std::to_string(victims.size()) + " process(es)";
      ++st.kills;
    }
    for (auto& e : envs) {
      e.push_back("SHARDWISE_COMMIT_TIMEOUT_S=1.5");
      e.push_back("SHARDWISE_STAGING_GRACE_S=0");
    }
    std::vector<Proc> procs(nproc);
    for (int r = 0; r < world; ++r)
      procs[r].pid = Spawn({helper, "rank", dir, std::to_string(step), data_seed, size,
                            std::to_string(world), std::to_string(r), save_id},
                           envs[r]);
    procs[world].pid = Spawn({helper, "commit", dir, std::to_string(step), std::to_string(world),
                              save_id},
                             envs[world]);
    if (scenario >= 7) {
      std::this_thread::sleep_for(std::chrono::microseconds(pick(25000)));
      for (int v : victims) {
        ::kill(procs[v].pid, SIGKILL);
        procs[v].killed = true;
      }
    }
    if (!WaitAll(procs, 60)) return fail(t, "a save process hung (" + what + ")");
    const bool commit_ok = Succeeded(procs[world]);
    // Retention now and then, itself sometimes killed.
    if (pick(3) == 0) {
      ++st.gcs;
      std::vector<Proc> gc(1);
      gc[0].pid = Spawn({cli, "gc", dir, "--keep-last", "2", "--grace", "0"}, {});
      if (pick(3) == 0) {
        std::this_thread::sleep_for(std::chrono::microseconds(pick(20000)));
        ::kill(gc[0].pid, SIGKILL);
        ++st.gc_killed;
      }
      if (!WaitAll(gc, 60)) return fail(t, "gc hung");
    }

    // --- invariants, with nothing running
    auto repo = Repository::Open(dir, Options());
    if (!repo.ok()) return fail(t, "open: " + repo.status().ToString());
    auto list = (*repo)->List();
    if (!list.ok()) return fail(t, "list: " + list.status().ToString());
    std::int64_t newest = -1;
    std::map<std::string, bool> committed;
    for (const auto& c : *list) {
      if (c.state == CheckpointInfo::State::kInvalid)
        return fail(t, "invalid checkpoint " + c.name + " is visible: " + c.problem);
      if (c.state != CheckpointInfo::State::kCommitted) continue;
      auto reader = (*repo)->OpenCheckpoint(c.name);
      auto report = reader.ok() ? (*reader)->Verify() : Result<VerifyReport>(reader.status());
      if (!report.ok() || !report->problems.empty())
        return fail(t, "committed checkpoint " + c.name + " does not verify (" + what + ")");
      committed[c.name] = true;
      newest = std::max(newest, c.step);
    }
    auto latest_file = os::ReadSmallFile(os::JoinPath(dir, "latest"), 4096);
    if (latest_file.ok()) {
      std::string name = latest_file->substr(0, latest_file->find('\n'));
      if (!committed.count(name)) return fail(t, "latest names " + name + ", not a checkpoint");
    }
    auto latest = (*repo)->Latest();
    if (!latest.ok()) return fail(t, "Latest(): " + latest.status().ToString());
    if (newest >= 0 && (!*latest || **latest != Repository::StepName(newest)))
      return fail(t, "Latest() is not the newest committed checkpoint");
    const bool present = committed.count(Repository::StepName(step)) > 0;
    if (commit_ok && !present) return fail(t, "a save reported committed is missing");
    if (present) {
      if (!commit_ok) ++st.recovered_after_kill;  // committed, then the process died
      last_ok = step;
      last_ok_world = world;
    }
    if (commit_ok) ++st.committed;
    else ++st.failed_saves;
    if (last_ok >= 0) {
      std::vector<Proc> check(1);
      check[0].pid = Spawn({helper, "check", dir, std::to_string(last_ok), data_seed, size,
                            std::to_string(last_ok_world)},
                           {});
      if (!WaitAll(check, 60) || !Succeeded(check[0]))
        return fail(t, "the newest complete checkpoint (step " + std::to_string(last_ok) +
                           ") is missing or not bit-exact");
    }
    GcOptions gc;
    gc.staging_grace_s = 0;
    auto g = (*repo)->Gc(gc);
    if (!g.ok()) return fail(t, "gc: " + g.status().ToString());
    auto after = (*repo)->List();
    for (const auto& c : *after)
      if (c.state == CheckpointInfo::State::kStaging || c.state == CheckpointInfo::State::kLeftover)
        return fail(t, "gc left " + c.dir_name);
    // Nothing else hidden may pile up in the root either.
    auto entries = os::ListDir(dir);
    for (const auto& e : *entries)
      if (e.name[0] == '.' && e.name != ".writer.lock" && e.name != ".exports")
        return fail(t, "gc left " + e.name + " in the root");
    ++st.trials;
    if (verbose)
      std::fprintf(stderr, "trial %d: world %d, %s: %s\n", t, world, what.c_str(),
                   commit_ok ? "committed" : (present ? "committed (process died)" : "not saved"));
  }
  std::printf("{\"trials\": %d, \"seed\": %llu, \"committed\": %d, \"failed_saves\": %d, "
              "\"committed_then_killed\": %d, \"fault_trials\": %d, \"kill_trials\": %d, "
              "\"retention_runs\": %d, \"retention_killed\": %d, \"faults\": {",
              st.trials, static_cast<unsigned long long>(seed), st.committed, st.failed_saves,
              st.recovered_after_kill, st.faults, st.kills, st.gcs, st.gc_killed);
  bool firstk = true;
  for (const auto& [k, n] : st.fault_kinds) {
    std::printf("%s\"%s\": %d", firstk ? "" : ", ", k.c_str(), n);
    firstk = false;
  }
  std::printf("}, \"invariant_failures\": 0}\n");
  return 0;
}
