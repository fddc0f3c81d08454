#include "fs/lustre_api.h"

#include <dlfcn.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace shardwise::fs {

// The C signatures, as liblustreapi declares them.
struct LustreApi::Symbols {
  int (*file_open)(const char* name, int flags, int mode, unsigned long long stripe_size,
                   int stripe_offset, int stripe_count, int stripe_pattern) = nullptr;
  int (*get_obd_count)(char* mnt, int* count, int is_mdt) = nullptr;
  void* (*layout_get_by_path)(const char* path, std::uint32_t flags) = nullptr;
  int (*layout_stripe_count_get)(const void* layout, std::uint64_t* count) = nullptr;
  int (*layout_stripe_size_get)(const void* layout, std::uint64_t* size) = nullptr;
  void (*layout_free)(void* layout) = nullptr;
};

namespace {

constexpr int kPatternRaid0 = 0;  // LOV_PATTERN_RAID0 as llapi_file_open takes it (0 = default)

template <typename F>
void Resolve(void* handle, const char* name, F& fn) {
  fn = reinterpret_cast<F>(::dlsym(handle, name));
}

}  // namespace

LustreApi::LustreApi(void* handle, std::string path, std::unique_ptr<Symbols> syms)
    : handle_(handle), path_(std::move(path)), syms_(std::move(syms)) {}

LustreApi::~LustreApi() {
  if (handle_) ::dlclose(handle_);
}

Result<std::unique_ptr<LustreApi>> LustreApi::Load(const std::string& path) {
  std::vector<std::string> tries;
  if (!path.empty()) {
    tries.push_back(path);
  } else if (const char* env = std::getenv("SHARDWISE_LUSTREAPI"); env && *env) {
    tries.push_back(env);
  } else {
    tries = {"liblustreapi.so.1", "liblustreapi.so"};
  }
  std::string why;
  for (const std::string& t : tries) {
    void* h = ::dlopen(t.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      const char* e = ::dlerror();
      why += (why.empty() ? "" : "; ") + std::string(e ? e : t.c_str());
      continue;
    }
    auto syms = std::make_unique<Symbols>();
    Resolve(h, "llapi_file_open", syms->file_open);
    Resolve(h, "llapi_get_obd_count", syms->get_obd_count);
    Resolve(h, "llapi_layout_get_by_path", syms->layout_get_by_path);
    Resolve(h, "llapi_layout_stripe_count_get", syms->layout_stripe_count_get);
    Resolve(h, "llapi_layout_stripe_size_get", syms->layout_stripe_size_get);
    Resolve(h, "llapi_layout_free", syms->layout_free);
    if (syms->file_open == nullptr) {
      ::dlclose(h);
      why += (why.empty() ? "" : "; ") + t + ": no llapi_file_open";
      continue;
    }
    return std::unique_ptr<LustreApi>(new LustreApi(h, t, std::move(syms)));
  }
  return Status(StatusCode::kNotFound, "liblustreapi not loaded: " + why);
}

Result<int> LustreApi::FileOpen(const std::string& path, int flags, int mode,
                                const Layout& layout) const {
  int fd = syms_->file_open(path.c_str(), flags, mode, layout.stripe_size, layout.stripe_offset,
                            layout.stripe_count, kPatternRaid0);
  if (fd < 0) {
    int err = -fd;
    return Status(StatusCode::kIoError,
                  "llapi_file_open " + path + " (stripe count " +
                      std::to_string(layout.stripe_count) + ", size " +
                      std::to_string(layout.stripe_size) + "): " + std::strerror(err),
                  err, path);
  }
  return fd;
}

Result<int> LustreApi::OstCount(const std::string& path) const {
  if (syms_->get_obd_count == nullptr)
    return Status(StatusCode::kUnavailable, path_ + " has no llapi_get_obd_count");
  std::string mnt = path;  // the call takes a mutable string
  int count = 0;
  int rc = syms_->get_obd_count(mnt.data(), &count, 0);
  if (rc < 0)
    return Status(StatusCode::kIoError, "llapi_get_obd_count " + path + ": " + std::strerror(-rc),
                  -rc, path);
  return count;
}

Result<Layout> LustreApi::DefaultLayout(const std::string& dir) const {
  if (!syms_->layout_get_by_path || !syms_->layout_stripe_count_get ||
      !syms_->layout_stripe_size_get || !syms_->layout_free)
    return Status(StatusCode::kUnavailable, path_ + " has no llapi_layout_* calls");
  void* l = syms_->layout_get_by_path(dir.c_str(), 0);
  if (l == nullptr)
    return Status(StatusCode::kIoError, "llapi_layout_get_by_path " + dir + ": " +
                                            std::strerror(errno), errno, dir);
  std::uint64_t count = 0, size = 0;
  int a = syms_->layout_stripe_count_get(l, &count);
  int b = syms_->layout_stripe_size_get(l, &size);
  syms_->layout_free(l);
  if (a != 0 || b != 0)
    return Status(StatusCode::kIoError, "reading the default layout of " + dir, errno, dir);
  Layout out;
  out.stripe_size = size;
  out.stripe_count = count > 0xFFFF ? -1 : static_cast<int>(count);  // LLAPI_LAYOUT_WIDE etc.
  return out;
}

}  // namespace shardwise::fs
