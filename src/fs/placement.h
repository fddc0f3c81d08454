// Where and how shard files are created: the filesystem probe, and the
// Lustre layout applied to each shard file when it is created. See
// docs/lustre.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "fs/io_mode.h"
#include "fs/layout.h"
#include "fs/lustre_api.h"
#include "os/posix.h"
#include "shardwise/options.h"
#include "shardwise/status.h"

namespace shardwise::fs {

inline constexpr long kLustreSuperMagic = 0x0BD00BD0;  // LL_SUPER_MAGIC, statfs f_type

// "ext4", "tmpfs", "lustre", ... or "0x<magic>".
std::string FsTypeName(long magic);

struct FsInfo {
  std::string type;            // FsTypeName of statfs' f_type
  bool lustre = false;
  int ost_count = 0;           // 0: unknown
  Layout default_layout;       // stripe_size 0: unknown
  std::string api;             // the liblustreapi loaded, or why none was
};

// statfs says Lustre (false when statfs fails).
bool IsLustre(const std::string& dir);

// statfs and, on Lustre with `api`, the OST count and the directory's
// default layout.
Result<FsInfo> ProbeFilesystem(const std::string& dir, const LustreApi* api);

// Sets a layout as a file is created.
class LayoutSetter {
 public:
  struct Created {
    int fd = -1;
    bool applied = false;
    std::string how;  // "liblustreapi", "ioctl", or why the layout was not applied
  };
  virtual ~LayoutSetter() = default;
  virtual std::string_view name() const = 0;
  // Creates `path` (flags include O_CREAT) with `layout` when the filesystem
  // takes it; on a filesystem that does not (ENOTTY, EOPNOTSUPP) the file is
  // still created, plainly, and `how` says why.
  virtual Result<Created> Create(const std::string& path, int flags, int mode,
                                 const Layout& layout) = 0;
};

// Through liblustreapi's llapi_file_open.
std::unique_ptr<LayoutSetter> MakeLustreApiSetter(std::unique_ptr<LustreApi> api);
// Without liblustreapi: open with O_LOV_DELAY_CREATE, then
// ioctl(LL_IOC_LOV_SETSTRIPE) with our own declaration of lov_user_md_v1.
std::unique_ptr<LayoutSetter> MakeIoctlSetter();

// What happened when one file was created.
struct PlacementReport {
  bool applied = false;
  Layout layout;
  std::string how;     // mechanism, or why nothing was applied
  std::string reason;  // the policy's reason
};

// Creates the shard files of one checkpoint root. Probes the filesystem once.
class Placement {
 public:
  // Probes `dir` and decides its I/O mode (IoModeFor). With options.layout
  // off, or off Lustre, files are created plainly and Summary() says why.
  static std::unique_ptr<Placement> ForDirectory(const std::string& dir, const Options& options);
  // For tests: a given filesystem and setter (may be null: no layouts), and
  // an I/O mode (default: buffered).
  Placement(FsInfo fs, std::unique_ptr<LayoutSetter> setter, const Options& options,
            Result<IoMode> io_mode = IoMode{});

  // Creates `path` for a file of `bytes`, written alongside `writers` others
  // files at once.
  Result<os::File> Create(const std::string& path, int flags, int mode, std::uint64_t bytes,
                          int writers, PlacementReport* report = nullptr);
  const FsInfo& fs() const { return fs_; }
  // How shard files here are written and read (an error when the options
  // ask for O_DIRECT where it does not work).
  const Result<IoMode>& io_mode() const { return io_mode_; }
  // One line: the filesystem, whether layouts are applied and the I/O
  // mode, e.g. "ext4 (not Lustre): no layout applied; I/O: ext4: O_DIRECT
  // by measurement (...)" or "lustre, 24 OSTs, layouts set through
  // liblustreapi.so.1; I/O: lustre: O_DIRECT ...".
  std::string Summary() const;
  // The I/O unit aligned to the stripe size that will be used.
  std::uint64_t AlignedIoUnit() const;

 private:
  FsInfo fs_;
  std::unique_ptr<LayoutSetter> setter_;
  Options options_;
  Result<IoMode> io_mode_;
  std::string off_reason_;  // non-empty: no layouts, and why
};

}  // namespace shardwise::fs
