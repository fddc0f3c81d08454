// The one polling loop of the core: commit waits for ranks, ranks wait for
// the commit, the coordinator waits for the staging directory.
#pragma once

#include <chrono>
#include <thread>

#include "shardwise/status.h"

namespace shardwise {

// Calls check() until it returns true, then returns Ok; an error from
// check() is returned at once. check() runs at least once, then every
// interval_s; once timeout_s has passed, returns timed_out() instead.
// A timeout of a year or more (infinity included) never expires.
template <typename Check, typename TimedOut>
Status PollUntil(double timeout_s, double interval_s, Check&& check, TimedOut&& timed_out) {
  using Clock = std::chrono::steady_clock;
  const bool forever = !(timeout_s < 365.0 * 86400);
  const auto deadline = forever ? Clock::time_point::max()
                                : Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                     std::chrono::duration<double>(timeout_s));
  while (true) {
    Result<bool> done = check();
    if (!done.ok()) return done.status();
    if (*done) return Status::Ok();
    if (!forever && Clock::now() >= deadline) return timed_out();
    std::this_thread::sleep_for(std::chrono::duration<double>(interval_s));
  }
}

}  // namespace shardwise
