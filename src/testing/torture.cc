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
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "os/posix.h"
#include "shardwise/shardwise.h"
#include "shardwise/names.h"

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

// An invariant that failed, or nothing.
using Problem = std::optional<std::string>;

constexpr char kDataSeed[] = "7";

struct Config {
  std::string dir;
  int trials = 200, first = 0;
  std::uint64_t seed = 1;
  std::string size = "1MiB";
  bool verbose = false;
  std::string helper, cli;  // the sibling binaries
};

bool ParseArgs(int argc, char** argv, Config* c) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i], v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--dir") c->dir = v, ++i;
    else if (a == "--trials") c->trials = std::atoi(v.c_str()), ++i;
    else if (a == "--seed") c->seed = std::strtoull(v.c_str(), nullptr, 10), ++i;
    else if (a == "--size") c->size = v, ++i;
    else if (a == "--verbose") c->verbose = true;
    else {
      std::fprintf(stderr, "usage: sw_torture --dir D [--trials N] [--seed S] [--size SIZE] "
                           "[--verbose]\n");
      return false;
    }
  }
  return true;
}

// The complete checkpoint a later trial must still find bit-exact.
struct History {
  std::int64_t last_ok = -1;
  int last_ok_world = 0;
};

// One trial's plan. Everything random is drawn from the trial's own stream,
// in a fixed order, so that a seed and a trial number replay it exactly.
struct Trial {
  int t = 0;
  std::int64_t step = 0;
  int world = 0;
  int scenario = 0;
  std::string save_id;
  std::vector<std::vector<std::string>> envs;  // per process
  std::vector<int> victims;
  std::string what = "clean";
};

std::uint64_t Pick(std::mt19937_64& rng, std::uint64_t n) { return rng() % n; }

Trial PlanTrial(int t, std::mt19937_64& rng, Stats& st) {
  auto pick = [&](std::uint64_t n) { return Pick(rng, n); };
  Trial tr;
  tr.t = t;
  tr.step = t + 1;
  tr.world = 1 + static_cast<int>(pick(3));
  tr.save_id = "t" + std::to_string(t) + "x" + std::to_string(pick(1 << 20));
  // Processes: ranks 0..world-1, then the coordinator.
  const int nproc = tr.world + 1;
  tr.scenario = static_cast<int>(pick(10));
  tr.envs.resize(nproc);
  if (tr.scenario >= 3 && tr.scenario <= 6) {  // a fault at a random syscall
    std::string rule = std::string(kOps[pick(std::size(kOps))]) + "@" +
                       std::to_string(1 + pick(3)) + "=" + kActions[pick(std::size(kActions))];
    if (tr.scenario == 6) {
      for (int p = 0; p < nproc; ++p) tr.victims.push_back(p);
    } else {
      tr.victims.push_back(static_cast<int>(pick(nproc)));
    }
    for (int v : tr.victims) {
      tr.envs[v].push_back("SHARDWISE_FAULTS=" + rule);
      // A kill at a syscall is a power cut half the time: what was not
      // yet durable is lost too (os/power_loss.h).
      if (rule.ends_with("=kill") && pick(2) == 0) tr.envs[v].push_back("SHARDWISE_POWER_LOSS=1");
    }
    tr.what = "fault " + rule + " in " + std::to_string(tr.victims.size()) + " process(es)";
    ++st.faults;
    ++st.fault_kinds[rule.substr(rule.find('=') + 1)];
  } else if (tr.scenario >= 7) {  // SIGKILL at a random moment
    if (tr.scenario == 9) {
      for (int p = 0; p < nproc; ++p) tr.victims.push_back(p);
    } else {
      tr.victims.push_back(static_cast<int>(pick(nproc)));
    }
    tr.what = "SIGKILL of " + std::to_string(tr.victims.size()) + " process(es)";
    ++st.kills;
  }
  for (auto& e : tr.envs) {
    e.push_back("SHARDWISE_COMMIT_TIMEOUT_S=1.5");
    e.push_back("SHARDWISE_STAGING_GRACE_S=0");
  }
  return tr;
}

// Runs the save's processes (killing the victims at a random moment, for a
// SIGKILL scenario) until all are gone. `*commit_ok`: the coordinator
// reported success.
Problem RunSave(const Config& c, const Trial& tr, std::mt19937_64& rng, bool* commit_ok) {
  const int world = tr.world;
  std::vector<Proc> procs(world + 1);
  for (int r = 0; r < world; ++r)
    procs[r].pid = Spawn({c.helper, "rank", c.dir, std::to_string(tr.step), kDataSeed, c.size,
                          std::to_string(world), std::to_string(r), tr.save_id},
                         tr.envs[r]);
  procs[world].pid = Spawn({c.helper, "commit", c.dir, std::to_string(tr.step),
                            std::to_string(world), tr.save_id},
                           tr.envs[world]);
  if (tr.scenario >= 7) {
    std::this_thread::sleep_for(std::chrono::microseconds(Pick(rng, 25000)));
    for (int v : tr.victims) {
      ::kill(procs[v].pid, SIGKILL);
      procs[v].killed = true;
    }
  }
  if (!WaitAll(procs, 60)) return "a save process hung (" + tr.what + ")";
  *commit_ok = Succeeded(procs[world]);
  return std::nullopt;
}

// Retention now and then, itself sometimes killed.
Problem MaybeRunGc(const Config& c, std::mt19937_64& rng, Stats& st) {
  if (Pick(rng, 3) != 0) return std::nullopt;
  ++st.gcs;
  std::vector<Proc> gc(1);
  gc[0].pid = Spawn({c.cli, "gc", c.dir, "--keep-last", "2", "--grace", "0"}, {});
  if (Pick(rng, 3) == 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(Pick(rng, 20000)));
    ::kill(gc[0].pid, SIGKILL);
    ++st.gc_killed;
  }
  if (!WaitAll(gc, 60)) return "gc hung";
  return std::nullopt;
}

// Invariants 1 and 2: every committed checkpoint verifies, `latest` names
// one, Latest() names the newest. Fills `committed` with their names.
Problem CheckCommitted(const Config& c, const Repository& repo, const Trial& tr,
                       std::map<std::string, bool>* committed) {
  auto list = repo.List();
  if (!list.ok()) return "list: " + list.status().ToString();
  std::int64_t newest = -1;
  for (const auto& ck : *list) {
    if (ck.state == CheckpointInfo::State::kInvalid)
      return "invalid checkpoint " + ck.name + " is visible: " + ck.problem;
    if (ck.state != CheckpointInfo::State::kCommitted) continue;
    auto reader = repo.OpenCheckpoint(ck.name);
    auto report = reader.ok() ? (*reader)->Verify() : Result<VerifyReport>(reader.status());
    if (!report.ok() || !report->problems.empty())
      return "committed checkpoint " + ck.name + " does not verify (" + tr.what + ")";
    (*committed)[ck.name] = true;
    newest = std::max(newest, ck.step);
  }
  auto latest_file = os::ReadSmallFile(os::JoinPath(c.dir, names::kLatest), 4096);
  if (latest_file.ok()) {
    std::string name = latest_file->substr(0, latest_file->find('\n'));
    if (!committed->count(name)) return "latest names " + name + ", not a checkpoint";
  }
  auto latest = repo.Latest();
  if (!latest.ok()) return "Latest(): " + latest.status().ToString();
  if (newest >= 0 && (!*latest || **latest != Repository::StepName(newest)))
    return "Latest() is not the newest committed checkpoint";
  return std::nullopt;
}

// Invariant 3: the newest checkpoint known complete is there, bit-exact.
Problem CheckNewestComplete(const Config& c, const History& h) {
  if (h.last_ok < 0) return std::nullopt;
  std::vector<Proc> check(1);
  check[0].pid = Spawn({c.helper, "check", c.dir, std::to_string(h.last_ok), kDataSeed, c.size,
                        std::to_string(h.last_ok_world)},
                       {});
  if (!WaitAll(check, 60) || !Succeeded(check[0]))
    return "the newest complete checkpoint (step " + std::to_string(h.last_ok) +
           ") is missing or not bit-exact";
  return std::nullopt;
}

// Invariant 4: gc, with nothing running, leaves no staging directory,
// leftover or other hidden entry.
Problem CheckGcCleans(const Config& c, Repository& repo) {
  GcOptions gc;
  gc.staging_grace_s = 0;
  auto g = repo.Gc(gc);
  if (!g.ok()) return "gc: " + g.status().ToString();
  auto after = repo.List();
  for (const auto& ck : *after)
    if (ck.state == CheckpointInfo::State::kStaging || ck.state == CheckpointInfo::State::kLeftover)
      return "gc left " + ck.dir_name;
  // Nothing else hidden may pile up in the root either.
  auto entries = os::ListDir(c.dir);
  for (const auto& e : *entries)
    if (e.name[0] == '.' && e.name != names::kWriterLock && e.name != names::kExportsDir &&
        e.name != names::kIoModeFile && e.name != std::string(names::kIoModeFile) + ".lock")
      return "gc left " + e.name + " in the root";
  return std::nullopt;
}

Problem RunTrial(const Config& c, int t, Stats& st, History& h) {
  std::mt19937_64 rng(c.seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(t));
  const Trial tr = PlanTrial(t, rng, st);
  bool commit_ok = false;
  if (Problem p = RunSave(c, tr, rng, &commit_ok)) return p;
  if (Problem p = MaybeRunGc(c, rng, st)) return p;

  // --- invariants, with nothing running
  auto repo = Repository::Open(c.dir, Options());
  if (!repo.ok()) return "open: " + repo.status().ToString();
  std::map<std::string, bool> committed;
  if (Problem p = CheckCommitted(c, **repo, tr, &committed)) return p;
  const bool present = committed.count(Repository::StepName(tr.step)) > 0;
  if (commit_ok && !present) return "a save reported committed is missing";
  if (present) {
    if (!commit_ok) ++st.recovered_after_kill;  // committed, then the process died
    h.last_ok = tr.step;
    h.last_ok_world = tr.world;
  }
  if (commit_ok) ++st.committed;
  else ++st.failed_saves;
  if (Problem p = CheckNewestComplete(c, h)) return p;
  if (Problem p = CheckGcCleans(c, **repo)) return p;
  ++st.trials;
  if (c.verbose)
    std::fprintf(stderr, "trial %d: world %d, %s: %s\n", t, tr.world, tr.what.c_str(),
                 commit_ok ? "committed" : (present ? "committed (process died)" : "not saved"));
  return std::nullopt;
}

void PrintSummary(const Stats& st, std::uint64_t seed) {
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
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  if (!ParseArgs(argc, argv, &c)) return 2;
  if (c.dir.empty() || c.trials < 1) return 2;
  auto size_b = ParseSize(c.size);
  if (!size_b.ok()) return 2;
  (void)os::RemoveTree(c.dir);
  if (!os::MkdirAll(c.dir).ok()) return 2;
  c.helper = Sibling("sw_save_helper");
  c.cli = Sibling("shardwise");
  Stats st;
  History h;
  for (int t = c.first; t < c.trials; ++t) {
    if (Problem p = RunTrial(c, t, st, h)) {
      std::fprintf(stderr,
                   "sw_torture: FAILED at trial %d (seed %llu): %s\n"
                   "  replay: sw_torture --dir %s --seed %llu --trials %d --size %s --verbose\n",
                   t, static_cast<unsigned long long>(c.seed), p->c_str(), c.dir.c_str(),
                   static_cast<unsigned long long>(c.seed), t + 1, c.size.c_str());
      return 1;
    }
  }
  PrintSummary(st, c.seed);
  return 0;
}
