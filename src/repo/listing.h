#pragma once

#include <optional>
#include <string>

namespace shardwise::repo {

// The name stored in ROOT/latest; nullopt when missing, a symlink, or not a
// safe name.
std::optional<std::string> ReadLatestFile(const std::string& root);

// Whether a staging directory may still be in use: something in it changed
// within grace_s, or a live process holds its lock.
bool StagingActive(const std::string& dir, double grace_s, double* newest_mtime);

}  // namespace shardwise::repo
