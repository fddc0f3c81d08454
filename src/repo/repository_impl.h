// Shared state and naming rules of the repository (see docs/format.md).
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fs/placement.h"
#include "io/backend.h"
#include "repo/writer_lock.h"
#include "shardwise/names.h"
#include "shardwise/repository.h"

namespace shardwise::repo {

// Serializes the updates of `latest` in this process (a commit moving it
// forward, a delete moving it back); other processes do not write the root
// (the writer lock).
std::mutex& LatestMutex();

// Removes the committed checkpoint ROOT/NAME: renames it to a hidden
// .NAME.deleting-ID entry (it vanishes from listings atomically; a crash
// midway leaves a leftover gc removes), fsyncs ROOT, removes the tree and
// the export record. The caller holds the writer lock.
// With `recycle` (Options::recycle_files), its files go to the root's
// recycle bin (fs/recycle.h) instead of being unlinked.
Status RemoveCommitted(const std::string& root, const std::string& name, bool recycle);
// Its two halves: the rename out of sight (then fsync of ROOT, and the
// export record dropped), which returns the hidden path; and the rest.
Result<std::string> HideCommitted(const std::string& root, const std::string& name);
Status FinishRemoval(const std::string& root, const std::string& hidden, bool recycle);

}  // namespace shardwise::repo

namespace shardwise {

struct Repository::Impl {
  std::string root;
  Options options;
  // I/O backends, reused from save to save. A backend runs one transfer at
  // a time, so saves in flight at once (two async saves, two threads) each
  // take their own: an idle one, or a new one.
  std::mutex backend_mu;
  std::vector<std::unique_ptr<io::IoBackend>> idle_backends;
  std::mutex placement_mu;
  std::unique_ptr<fs::Placement> placement;  // probed on first save
  std::mutex writer_mu;
  std::shared_ptr<repo::WriterLock> writer_lock;  // from the first commit or retention on

  // A backend for one shard's transfers, returned to the pool when the
  // lease goes.
  using BackendLease = std::unique_ptr<io::IoBackend, std::function<void(io::IoBackend*)>>;
  Result<BackendLease> Backend();
  fs::Placement* Placement();
  // The placement when a save of this process probed it already; nullptr
  // otherwise (probing is left to saves: it may measure).
  const fs::Placement* PlacementIfProbed();
};

// Tests: replaces the probed placement (a fake filesystem or layout setter).
void SetPlacementForTesting(Repository& repo, std::unique_ptr<fs::Placement> placement);

}  // namespace shardwise
