// Listing a repository and resolving `latest`.
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>

#include "format/manifest.h"
#include "os/posix.h"
#include "repo/export.h"
#include "repo/listing.h"
#include "repo/repository_impl.h"
#include "shardwise/names.h"

namespace shardwise {
namespace repo {

std::optional<std::string> ReadLatestFile(const std::string& root) {
  auto text = os::ReadSmallFile(os::JoinPath(root, names::kLatest), 4096);
  if (!text.ok()) return std::nullopt;
  std::string name = *text;
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
  if (!names::IsSafeName(name) || name == names::kLatest) return std::nullopt;
  return name;
}

bool StagingActive(const std::string& dir, double grace_s, double* newest_mtime) {
  double newest = 0;
  auto mtime = [](const struct stat& st) {
    return static_cast<double>(st.st_mtim.tv_sec) + st.st_mtim.tv_nsec * 1e-9;
  };
  if (auto st = os::Lstat(dir); st.ok()) newest = mtime(*st);
  if (auto entries = os::ListDir(dir); entries.ok())
    for (const auto& e : *entries)
      if (auto st = os::Lstat(os::JoinPath(dir, e.name)); st.ok())
        newest = std::max(newest, mtime(*st));
  if (newest_mtime) *newest_mtime = newest;
  if (os::NowUnix() - newest < grace_s) return true;
  // A live writer holds the lock (shared); an exclusive try tells.
  std::string lock_path = os::JoinPath(dir, names::kStagingLock);
  auto lock = os::Open(lock_path, O_RDONLY | O_NOFOLLOW);
  if (!lock.ok()) return false;
  Status s = os::Flock(lock->fd(), /*exclusive=*/true, /*try_only=*/true, lock_path);
  return !s.ok() && s.err() == EWOULDBLOCK;
}

}  // namespace repo

std::string_view ExportStateName(ExportState state) {
  switch (state) {
    case ExportState::kNotRequested: return "not requested";
    case ExportState::kPending: return "pending";
    case ExportState::kExported: return "exported";
    case ExportState::kFailed: return "failed";
  }
  return "unknown";
}

bool Repository::ExportsInUse() const {
  return impl_->options.export_mode != ExportMode::kOff ||
         os::Exists(os::JoinPath(impl_->root, names::kExportsDir));
}

Result<std::vector<CheckpointInfo>> Repository::List(bool with_exports) const {
  const std::string& root = impl_->root;
  SW_ASSIGN_OR_RETURN(auto entries, os::ListDir(root));
  auto latest = repo::ReadLatestFile(root);
  std::vector<CheckpointInfo> committed, other;
  for (const auto& e : entries) {
    std::string path = os::JoinPath(root, e.name);
    CheckpointInfo info;
    info.dir_name = e.name;
    std::string name, id;
    if (e.name[0] == '.') {
      if (e.type != DT_DIR) continue;
      if (names::ParseHiddenDir(e.name, names::Hidden::kStaging, &name, &id)) {
        info.state = CheckpointInfo::State::kStaging;
        info.active = repo::StagingActive(path, impl_->options.staging_grace_s,
                                          &info.created_unix);
      } else if (names::ParseHiddenDir(e.name, names::Hidden::kReplaced, &name, &id) ||
                 names::ParseHiddenDir(e.name, names::Hidden::kDeleting, &name, &id)) {
        info.state = CheckpointInfo::State::kLeftover;
        repo::StagingActive(path, 0, &info.created_unix);
      } else {
        continue;
      }
      info.name = name;
      info.save_id = id;
      other.push_back(std::move(info));
      continue;
    }
    // Only real directories holding a manifest are checkpoints; symlinks and
    // other entries are never followed.
    if (e.type != DT_DIR || !names::IsSafeName(e.name)) continue;
    std::string mpath = os::JoinPath(path, names::kManifest);
    if (!os::Exists(mpath)) continue;
    info.name = e.name;
    auto text = os::ReadSmallFile(mpath, format::kMaxManifestBytes);
    Result<Manifest> m = text.ok() ? format::Parse(*text, format::kManifestKind, mpath)
                                   : Result<Manifest>(text.status());
    if (!m.ok()) {
      info.state = CheckpointInfo::State::kInvalid;
      info.problem = m.status().message();
    } else if (m->name != e.name) {
      info.state = CheckpointInfo::State::kInvalid;
      info.problem = mpath + ": manifest names checkpoint '" + m->name + "'";
    } else {
      info.step = m->step;
      info.world_size = m->world_size;
      info.bytes = m->TotalBytes();
      info.created_unix = m->created_unix;
      info.save_id = m->save_id;
      info.items = m->format_version >= 2 ? m->index.items : m->items.size();
      if (with_exports) info.export_info = repo::QueryExport(root, e.name);
    }
    info.is_latest = latest && *latest == e.name;
    committed.push_back(std::move(info));
  }
  auto older = [](const CheckpointInfo& a, const CheckpointInfo& b) {
    if (a.step != b.step) return a.step < b.step;
    if (a.created_unix != b.created_unix) return a.created_unix < b.created_unix;
    return a.name < b.name;
  };
  std::sort(committed.begin(), committed.end(), older);
  std::sort(other.begin(), other.end(), older);
  committed.insert(committed.end(), other.begin(), other.end());
  return committed;
}

Result<std::optional<std::string>> Repository::Latest() const {
  SW_ASSIGN_OR_RETURN(auto all, List());
  // The newest committed checkpoint by (step, commit time). The `latest`
  // file is kept in step with it, but a crash between the commit's rename and
  // the update of `latest` leaves the file one save behind; the directory
  // listing is the truth.
  std::optional<std::string> newest;
  for (const auto& c : all)
    if (c.state == CheckpointInfo::State::kCommitted) newest = c.name;
  return newest;
}

Result<std::unique_ptr<CheckpointReader>> Repository::OpenCheckpoint(
    const std::string& name) const {
  if (!names::IsSafeName(name))
    return InvalidArgument("'" + name + "' is not a checkpoint name");
  std::string dir = os::JoinPath(impl_->root, name);
  auto st = os::Lstat(dir);
  if (!st.ok()) return NotFound("no checkpoint '" + name + "' in " + impl_->root, dir);
  if (!S_ISDIR(st->st_mode))
    return Corrupt(dir + ": not a directory (symbolic links are not followed)", dir);
  return CheckpointReader::Open(dir, impl_->options);
}

}  // namespace shardwise
