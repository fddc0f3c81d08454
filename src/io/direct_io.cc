#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <mutex>
#include <unordered_map>

#include "io/aligned_buffer.h"
#include "io/backend.h"
#include "os/posix.h"

namespace shardwise::io {

bool ProbeDirectIo(const std::string& dir) {
  // Bypasses the fault seam on purpose: a probe must not consume the Nth
  // injected fault meant for the save itself.
  static std::mutex mu;
  static std::unordered_map<std::string, bool> cache;
  {
    std::lock_guard lock(mu);
    auto it = cache.find(dir);
    if (it != cache.end()) return it->second;
  }
  std::string probe = os::JoinPath(dir, ".shardwise-odirect-probe-" + os::RandomHex(6));
  bool ok = false;
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_DIRECT | O_CLOEXEC, 0600);
  if (fd >= 0) {
    AlignedBuffer buf(kAlignment);
    std::memset(buf.data(), 0, kAlignment);
    // Some filesystems accept the open flag and fail the first write.
    ok = ::pwrite(fd, buf.data(), kAlignment, 0) == static_cast<ssize_t>(kAlignment);
    ::close(fd);
    ::unlink(probe.c_str());
  }
  std::lock_guard lock(mu);
  cache[dir] = ok;
  return ok;
}

Result<bool> ResolveDirectIo(const Options& options, const std::string& dir) {
  switch (options.direct_io) {
    case DirectIoMode::kOff: return false;
    case DirectIoMode::kAuto: return ProbeDirectIo(dir);
    case DirectIoMode::kOn:
      if (!ProbeDirectIo(dir))
        return Status(StatusCode::kUnavailable,
                      "O_DIRECT was required but does not work in " + dir, EINVAL, dir);
      return true;
  }
  return false;
}

}  // namespace shardwise::io
