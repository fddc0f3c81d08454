#include "os/fault.h"

#include <signal.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <thread>

#include "os/power_loss.h"

namespace shardwise::os {
namespace {

struct State {
  std::mutex mu;
  std::vector<FaultRule> rules;
  std::array<std::atomic<std::uint64_t>, static_cast<int>(Op::kCount)> counts{};
  std::atomic<bool> active{false};
  std::string crash_name;
  std::uint64_t crash_nth = 1;
  std::atomic<std::uint64_t> crash_hits{0};
  bool crash_loaded = false;
  std::string throw_name;  // guarded by mu
  std::uint64_t throw_nth = 1;
  std::uint64_t throw_hits = 0;
  std::atomic<bool> throw_set{false};
  std::string run_name;  // guarded by mu
  std::function<void()> run_fn;
  std::atomic<bool> run_set{false};
};

State& S() {
  static State* s = [] {
    auto* st = new State;  // never destroyed: used from threads at exit
    if (const char* spec = std::getenv("SHARDWISE_FAULTS")) {
      auto rules = ParseFaults(spec);
      if (rules.ok()) {
        st->rules = std::move(*rules);
        st->active = !st->rules.empty();
      } else {
        // A typo in a test's fault spec must not silently test nothing.
        std::fprintf(stderr, "shardwise: bad SHARDWISE_FAULTS: %s\n",
                     rules.status().message().c_str());
        std::abort();
      }
    }
    if (const char* c = std::getenv("SHARDWISE_CRASH_AT")) {
      std::string_view v(c);
      auto at = v.find('@');
      st->crash_name = std::string(v.substr(0, at));
      if (at != std::string_view::npos) {
        std::from_chars(v.data() + at + 1, v.data() + v.size(), st->crash_nth);
      }
    }
    return st;
  }();
  return *s;
}

int ErrnoFromName(std::string_view name) {
  static const std::pair<const char*, int> kNames[] = {
      {"EIO", EIO},       {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT},
      {"EROFS", EROFS},   {"EACCES", EACCES}, {"EPERM", EPERM},
      {"EINTR", EINTR},   {"EAGAIN", EAGAIN}, {"ENOENT", ENOENT},
      {"EEXIST", EEXIST}, {"EINVAL", EINVAL}, {"EXDEV", EXDEV},
      {"EBADF", EBADF},   {"ENOMEM", ENOMEM}, {"EFBIG", EFBIG}};
  for (auto& [n, e] : kNames)
    if (name == n) return e;
  return 0;
}

void KillSelf() {
  power_loss::LoseUnsynced();  // with SHARDWISE_POWER_LOSS: a power cut, not just a crash
  ::kill(::getpid(), SIGKILL);
  ::_exit(137);  // not reached
}

}  // namespace

std::string_view OpName(Op op) {
  static constexpr const char* kNames[] = {
      "open", "write", "read", "fsync", "rename", "fallocate", "mkdir", "unlink", "ring"};
  return kNames[static_cast<int>(op)];
}

Result<std::vector<FaultRule>> ParseFaults(std::string_view spec) {
  std::vector<FaultRule> rules;
  while (!spec.empty()) {
    auto comma = spec.find(',');
    std::string_view r = spec.substr(0, comma);
    spec = comma == std::string_view::npos ? "" : spec.substr(comma + 1);
    if (r.empty()) continue;
    auto at = r.find('@');
    auto eq = r.find('=');
    if (at == std::string_view::npos || eq == std::string_view::npos || eq < at)
      return InvalidArgument("fault rule '" + std::string(r) +
                             "' is not OP@N=ACTION");
    FaultRule rule;
    std::string_view op = r.substr(0, at);
    bool found = false;
    for (int i = 0; i < static_cast<int>(Op::kCount); ++i)
      if (OpName(static_cast<Op>(i)) == op) {
        rule.op = static_cast<Op>(i);
        found = true;
      }
    if (!found)
      return InvalidArgument("fault rule '" + std::string(r) +
                             "': unknown operation '" + std::string(op) + "'");
    std::string_view n = r.substr(at + 1, eq - at - 1);
    if (!n.empty() && n.back() == '+') {
      rule.and_later = true;
      n.remove_suffix(1);
    }
    auto [p, ec] = std::from_chars(n.data(), n.data() + n.size(), rule.nth);
    if (ec != std::errc() || p != n.data() + n.size() || rule.nth == 0)
      return InvalidArgument("fault rule '" + std::string(r) +
                             "': N must be a positive integer");
    std::string_view action = r.substr(eq + 1);
    if (action == "short") rule.short_io = true;
    else if (action == "kill") rule.kill = true;
    else if ((rule.err = ErrnoFromName(action)) == 0)
      return InvalidArgument("fault rule '" + std::string(r) +
                             "': unknown action '" + std::string(action) + "'");
    rules.push_back(rule);
  }
  return rules;
}

void SetFaults(std::vector<FaultRule> rules) {
  State& s = S();
  std::lock_guard lock(s.mu);
  s.rules = std::move(rules);
  for (auto& c : s.counts) c = 0;
  s.active = !s.rules.empty();
}

void ClearFaults() { SetFaults({}); }

std::size_t ShortLength(std::size_t n) {
  std::size_t half = n / 2 / 4096 * 4096;
  return half > 0 ? half : n;
}

std::uint64_t Count(Op op) { return S().counts[static_cast<int>(op)].load(); }

FaultDecision Check(Op op) {
  State& s = S();
  std::uint64_t n = ++s.counts[static_cast<int>(op)];
  if (!s.active.load(std::memory_order_relaxed)) return {};
  std::lock_guard lock(s.mu);
  for (const FaultRule& r : s.rules) {
    if (r.op != op) continue;
    if (n == r.nth || (r.and_later && n > r.nth)) {
      if (r.kill) KillSelf();
      if (r.short_io) return {FaultKind::kShort, 0};
      return {FaultKind::kErrno, r.err};
    }
  }
  return {};
}

void SetCrashPoint(std::string name, std::uint64_t nth) {
  State& s = S();
  std::lock_guard lock(s.mu);
  s.crash_name = std::move(name);
  s.crash_nth = nth;
  s.crash_hits = 0;
}

void CrashPoint(std::string_view name) {
  State& s = S();
  if (s.crash_name.empty() || s.crash_name != name) return;
  if (++s.crash_hits == s.crash_nth) KillSelf();
}

void PausePoint(std::string_view name) {
  const char* spec = std::getenv("SHARDWISE_PAUSE_AT");
  if (!spec) return;
  std::string_view rest(spec);
  while (!rest.empty()) {
    std::string_view rule = rest.substr(0, rest.find(','));
    rest.remove_prefix(std::min(rest.size(), rule.size() + 1));
    auto colon = rule.find(':');
    if (colon == std::string_view::npos || rule.substr(0, colon) != name) continue;
    const long ms = std::strtol(std::string(rule.substr(colon + 1)).c_str(), nullptr, 10);
    if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  }
}

void SetThrowPoint(std::string name, std::uint64_t nth) {
  State& s = S();
  std::lock_guard lock(s.mu);
  s.throw_set = !name.empty();
  s.throw_name = std::move(name);
  s.throw_nth = nth;
  s.throw_hits = 0;
}

void ThrowPoint(std::string_view name) {
  State& s = S();
  if (!s.throw_set) return;
  {
    std::lock_guard lock(s.mu);
    if (s.throw_name != name || ++s.throw_hits != s.throw_nth) return;
  }
  throw std::bad_alloc();
}

void SetRunPoint(std::string name, std::function<void()> fn) {
  State& s = S();
  std::lock_guard lock(s.mu);
  s.run_set = !name.empty();
  s.run_name = std::move(name);
  s.run_fn = std::move(fn);
}

void RunPoint(std::string_view name) {
  State& s = S();
  if (!s.run_set) return;
  std::function<void()> fn;
  {
    std::lock_guard lock(s.mu);
    if (s.run_name != name) return;
    fn = std::move(s.run_fn);
    s.run_name.clear();
    s.run_set = false;
  }
  if (fn) fn();
}

}  // namespace shardwise::os
