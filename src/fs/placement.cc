#include "fs/placement.h"

#include <fcntl.h>
#include <sys/ioctl.h>  // _IOW
#include <unistd.h>

#include <cerrno>
#include <cstring>


namespace shardwise::fs {
namespace {

// Our own declarations of the few Lustre constants and the one struct the
// ioctl path needs (from the Lustre user API; values are ABI).
constexpr int kLovDelayCreate = O_NOCTTY | FASYNC;  // O_LOV_DELAY_CREATE
constexpr std::uint32_t kLovUserMagicV1 = 0x0BD10BD0;
constexpr std::uint32_t kLovPatternRaid0 = 0x001;
constexpr unsigned long kLlIocLovSetstripe = _IOW('f', 154, long);

struct [[gnu::packed]] LovUserMdV1 {
  std::uint32_t lmm_magic;
  std::uint32_t lmm_pattern;
  std::uint64_t lmm_oi[2];  // struct ost_id: unused when setting a layout
  std::uint32_t lmm_stripe_size;
  std::uint16_t lmm_stripe_count;
  std::uint16_t lmm_stripe_offset;
};
static_assert(sizeof(LovUserMdV1) == 32);

class LustreApiSetter final : public LayoutSetter {
 public:
  explicit LustreApiSetter(std::unique_ptr<LustreApi> api) : api_(std::move(api)) {}
  std::string_view name() const override { return "liblustreapi"; }
  Result<Created> Create(const std::string& path, int flags, int mode,
                         const Layout& layout) override {
    SW_ASSIGN_OR_RETURN(int fd, api_->FileOpen(path, flags, mode, layout));
    return Created{fd, true, "liblustreapi (" + api_->path() + ")"};
  }

 private:
  std::unique_ptr<LustreApi> api_;
};

class IoctlSetter final : public LayoutSetter {
 public:
  std::string_view name() const override { return "ioctl"; }
  Result<Created> Create(const std::string& path, int flags, int mode,
                         const Layout& layout) override {
    if (layout.stripe_size > 0xFFFFFFFFull || layout.stripe_count > 0xFFFF)
      return InvalidArgument("layout out of range for LL_IOC_LOV_SETSTRIPE");
    SW_ASSIGN_OR_RETURN(os::File file, os::Open(path, flags | kLovDelayCreate, mode));
    LovUserMdV1 lum{};
    lum.lmm_magic = kLovUserMagicV1;
    lum.lmm_pattern = kLovPatternRaid0;
    lum.lmm_stripe_size = static_cast<std::uint32_t>(layout.stripe_size);
    lum.lmm_stripe_count = static_cast<std::uint16_t>(layout.stripe_count);  // -1: 0xFFFF, all
    lum.lmm_stripe_offset = static_cast<std::uint16_t>(layout.stripe_offset);
    Created c;
    const Status set = os::Ioctl(file.fd(), kLlIocLovSetstripe, &lum, "LL_IOC_LOV_SETSTRIPE", path);
    if (set.ok()) {
      c.applied = true;
      c.how = "ioctl LL_IOC_LOV_SETSTRIPE";
    } else {
      const int err = set.err();
      if (err != ENOTTY && err != EOPNOTSUPP && err != EINVAL) {
        (void)os::Unlink(path);
        return set;
      }
      c.how = std::string("not applied: ioctl LL_IOC_LOV_SETSTRIPE: ") + std::strerror(err) +
              " (the filesystem does not take Lustre layouts)";
    }
    c.fd = file.Release();
    return c;
  }
};

}  // namespace

std::string FsTypeName(long magic) {
  switch (static_cast<unsigned long>(magic) & 0xFFFFFFFFul) {
    case 0x0BD00BD0: return "lustre";
    case 0xEF53: return "ext4";
    case 0x01021994: return "tmpfs";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x6969: return "nfs";
    case 0x794C7630: return "overlayfs";
    case 0x65735546: return "fuse";
    case 0x2FC12FC1: return "zfs";
    case 0x00C36400: return "ceph";
    case 0x47504653: return "gpfs";
    case 0x858458F6: return "ramfs";
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(magic));
  return buf;
}

bool IsLustre(const std::string& dir) {
  auto magic = os::FilesystemMagic(dir);
  return magic.ok() && static_cast<unsigned long>(*magic) == kLustreSuperMagic;
}

Result<FsInfo> ProbeFilesystem(const std::string& dir, const LustreApi* api) {
  SW_ASSIGN_OR_RETURN(const long magic, os::FilesystemMagic(dir));
  FsInfo info;
  info.type = FsTypeName(magic);
  info.lustre = static_cast<unsigned long>(magic) == kLustreSuperMagic;
  if (info.lustre && api != nullptr) {
    if (auto n = api->OstCount(dir); n.ok()) info.ost_count = *n;
    if (auto l = api->DefaultLayout(dir); l.ok()) info.default_layout = *l;
  }
  return info;
}

std::unique_ptr<LayoutSetter> MakeLustreApiSetter(std::unique_ptr<LustreApi> api) {
  return std::make_unique<LustreApiSetter>(std::move(api));
}

std::unique_ptr<LayoutSetter> MakeIoctlSetter() { return std::make_unique<IoctlSetter>(); }

std::unique_ptr<Placement> Placement::ForDirectory(const std::string& dir,
                                                   const Options& options) {
  std::unique_ptr<LustreApi> api;
  std::string api_note;
  FsInfo fs;
  if (options.layout != LayoutMode::kOff) {
    if (IsLustre(dir)) {  // only try the library where it can matter
      auto loaded = LustreApi::Load(options.lustre_api);
      if (loaded.ok()) api = std::move(*loaded);
      else api_note = loaded.status().message();
    }
  }
  auto probed = ProbeFilesystem(dir, api.get());
  if (probed.ok()) fs = std::move(*probed);
  else fs.type = "unknown (" + probed.status().message() + ")";
  fs.api = api ? api->path() : api_note;
  std::unique_ptr<LayoutSetter> setter;
  if (fs.lustre && options.layout != LayoutMode::kOff)
    setter = api ? MakeLustreApiSetter(std::move(api)) : MakeIoctlSetter();
  return std::make_unique<Placement>(std::move(fs), std::move(setter), options,
                                     IoModeFor(dir, options));
}

Placement::Placement(FsInfo fs, std::unique_ptr<LayoutSetter> setter, const Options& options,
                     Result<IoMode> io_mode)
    : fs_(std::move(fs)),
      setter_(std::move(setter)),
      options_(options),
      io_mode_(std::move(io_mode)) {
  if (options_.layout == LayoutMode::kOff) off_reason_ = "layouts are off: SHARDWISE_LAYOUT=off";
  else if (!setter_ && !fs_.lustre) off_reason_ = fs_.type + " is not Lustre";
  else if (!setter_) off_reason_ = "no way to set layouts";
}

Result<os::File> Placement::Create(const std::string& path, int flags, int mode,
                                   std::uint64_t bytes, int writers, PlacementReport* report) {
  PlacementReport r;
  if (!off_reason_.empty()) {
    r.how = "no layout applied: " + off_reason_;
    if (report) *report = r;
    return os::Open(path, flags, static_cast<mode_t>(mode));
  }
  LayoutDecision d = DecideLayout({writers, bytes, fs_.ost_count, options_.stripe_count,
                                   options_.stripe_size});
  r.reason = d.reason;
  r.layout = d.layout;
  if (!d.apply) {
    r.how = "no layout applied: " + d.reason;
    if (report) *report = r;
    return os::Open(path, flags, static_cast<mode_t>(mode));
  }
  SW_ASSIGN_OR_RETURN(LayoutSetter::Created c, setter_->Create(path, flags, mode, d.layout));
  r.applied = c.applied;
  r.how = c.how;
  if (report) *report = r;
  return os::File(c.fd, path);
}

std::string Placement::Summary() const {
  const std::string io =
      "; I/O: " + (io_mode_.ok() ? io_mode_->why : io_mode_.status().message());
  std::string s = fs_.type;
  if (!off_reason_.empty()) {
    if (!fs_.lustre && options_.layout != LayoutMode::kOff)
      return s + " (not Lustre): no layout applied" + io;
    return s + ": no layout applied (" + off_reason_ + ")" + io;
  }
  s += fs_.ost_count > 0 ? ", " + std::to_string(fs_.ost_count) + " OSTs" : ", OST count unknown";
  if (fs_.default_layout.stripe_size > 0)
    s += ", root default " + std::to_string(fs_.default_layout.stripe_count) + " x " +
         std::to_string(fs_.default_layout.stripe_size >> 10) + " KiB";
  s += ", layouts set through " + std::string(setter_->name());
  if (setter_->name() == "ioctl" && !fs_.api.empty()) s += " (" + fs_.api + ")";
  return s + io;
}

std::uint64_t Placement::AlignedIoUnit() const {
  if (!off_reason_.empty()) return options_.io_unit_bytes;
  std::uint64_t stripe = options_.stripe_size ? options_.stripe_size : kDefaultStripeSize;
  return AlignIoUnit(options_.io_unit_bytes, stripe, options_.checksum_block_bytes);
}

}  // namespace shardwise::fs
