// A gtest assertion shared by the save tests: a checkpoint holds exactly the
// items it was given.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "shardwise/repository.h"
#include "testing/test_util.h"

namespace shardwise::testing {

// Loads every item of checkpoint `name` and compares it with `want`.
inline ::testing::AssertionResult Holds(Repository& repo, const std::string& name,
                                        const OwnedItems& want) {
  auto reader = repo.OpenCheckpoint(name);
  if (!reader.ok()) return ::testing::AssertionFailure() << reader.status().ToString();
  for (std::size_t i = 0; i < want.items.size(); ++i) {
    const WriteItem& w = want.items[i];
    std::vector<std::byte> back(w.nbytes);
    Status s = (*reader)->ReadItem(w.name, back.data(), back.size());
    if (!s.ok()) return ::testing::AssertionFailure() << s.ToString();
    if (w.nbytes > 0 && std::memcmp(back.data(), want.data[i].data(), w.nbytes) != 0)
      return ::testing::AssertionFailure() << name << ": " << w.name << " differs";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace shardwise::testing
