#include "shardwise/names.h"

#include <cstdio>

namespace shardwise::names {
namespace {

std::string_view Marker(Hidden kind) {
  switch (kind) {
    case Hidden::kStaging: return ".staging-";
    case Hidden::kReplaced: return ".replaced-";
    case Hidden::kDeleting: return ".deleting-";
  }
  return ".staging-";
}

std::string_view RankSuffix(RankFile kind) {
  switch (kind) {
    case RankFile::kShard: return ".shard";
    case RankFile::kFragment: return ".fragment.json";
    case RankFile::kFailed: return ".failed";
  }
  return ".shard";
}

constexpr std::string_view kRankPrefix = "rank-";
constexpr std::string_view kTmpInfix = ".tmp-";
constexpr std::string_view kOldProbePrefix = ".shardwise-odirect-probe-";  // before 0.1.0

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool EndsWith(std::string_view s, std::string_view x) {
  return s.size() >= x.size() && s.substr(s.size() - x.size()) == x;
}

}  // namespace

bool IsSafeName(std::string_view name) {
  if (name.empty() || name.size() > 255 || name[0] == '.') return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-' || c == '=';
    if (!ok) return false;
  }
  return true;
}

bool IsSafeSaveId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '_' || c == '-'))
      return false;
  return true;
}

std::string HiddenDir(std::string_view name, Hidden kind, std::string_view id) {
  return "." + std::string(name) + std::string(Marker(kind)) + std::string(id);
}

bool ParseHiddenDir(std::string_view entry, Hidden kind, std::string* name, std::string* id) {
  const std::string_view marker = Marker(kind);
  if (entry.size() < 2 || entry[0] != '.') return false;
  const auto pos = entry.rfind(marker);
  if (pos == std::string_view::npos || pos < 2) return false;
  *name = std::string(entry.substr(1, pos - 1));
  *id = std::string(entry.substr(pos + marker.size()));
  return IsSafeName(*name) && IsSafeSaveId(*id);
}

std::string RankFileName(int rank, RankFile kind) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%05d", rank);
  return std::string(kRankPrefix) + buf + std::string(RankSuffix(kind));
}

bool ParseRankFile(std::string_view entry, int* rank, RankFile* kind) {
  if (!StartsWith(entry, kRankPrefix)) return false;
  std::string_view rest = entry.substr(kRankPrefix.size());
  std::size_t digits = 0;
  long long r = 0;
  while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9' && digits < 10)
    r = r * 10 + (rest[digits++] - '0');
  if (digits < 5 || r > 0x7fffffff) return false;
  for (RankFile k : {RankFile::kShard, RankFile::kFragment, RankFile::kFailed})
    if (rest.substr(digits) == RankSuffix(k)) {
      // Only the one spelling RankFileName gives ("rank-000003..." is not
      // rank 3's).
      if (RankFileName(static_cast<int>(r), k) != entry) return false;
      *rank = static_cast<int>(r);
      *kind = k;
      return true;
    }
  return false;
}

bool IsFailureMarker(std::string_view entry) {
  int rank;
  RankFile kind;
  return entry == kCommitFailed || (ParseRankFile(entry, &rank, &kind) && kind == RankFile::kFailed);
}

std::string ShardPartPath(const std::string& shard_path, std::size_t part) {
  if (part == 0) return shard_path;
  std::string stem = shard_path;
  if (stem.size() > kShardExt.size() && EndsWith(stem, kShardExt))
    stem.resize(stem.size() - kShardExt.size());
  return stem + ".part" + std::to_string(part) + std::string(kShardExt);
}

bool IsShardFile(std::string_view entry) {
  return StartsWith(entry, kRankPrefix) && EndsWith(entry, kShardExt);
}

std::string TempPath(const std::string& path, std::string_view random_suffix) {
  return path + std::string(kTmpInfix) + std::string(random_suffix);
}

bool IsTempOf(std::string_view entry, std::string_view base) {
  return StartsWith(entry, base) && StartsWith(entry.substr(base.size()), kTmpInfix);
}

bool IsProbeFile(std::string_view entry) {
  return StartsWith(entry, kProbePrefix) || StartsWith(entry, kOldProbePrefix);
}

}  // namespace shardwise::names
