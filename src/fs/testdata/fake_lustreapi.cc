// A stand-in liblustreapi for tests, loaded with dlopen like the real one.
// It records each call, one line per call, in $FAKE_LLAPI_LOG, creates files
// plainly, and reports $FAKE_LLAPI_OSTS OSTs (default 8) and a default
// layout of 1 stripe of 1 MiB.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace {

void Log(const char* fmt, auto... args) {
  const char* path = std::getenv("FAKE_LLAPI_LOG");
  if (path == nullptr) return;
  FILE* f = std::fopen(path, "a");
  if (f == nullptr) return;
  std::fprintf(f, fmt, args...);
  std::fputc('\n', f);
  std::fclose(f);
}

struct FakeLayout {
  std::uint64_t count = 1;
  std::uint64_t size = 1 << 20;
};

}  // namespace

extern "C" {

int llapi_file_open(const char* name, int flags, int mode, unsigned long long stripe_size,
                    int stripe_offset, int stripe_count, int stripe_pattern) {
  Log("llapi_file_open %s flags=%#x mode=%#o stripe_size=%llu stripe_offset=%d "
      "stripe_count=%d stripe_pattern=%d",
      name, flags, mode, stripe_size, stripe_offset, stripe_count, stripe_pattern);
  int fd = ::open(name, flags, mode);
  return fd < 0 ? -errno : fd;
}

int llapi_get_obd_count(char* mnt, int* count, int is_mdt) {
  Log("llapi_get_obd_count %s is_mdt=%d", mnt, is_mdt);
  const char* n = std::getenv("FAKE_LLAPI_OSTS");
  *count = n ? std::atoi(n) : 8;
  return 0;
}

void* llapi_layout_get_by_path(const char* path, std::uint32_t flags) {
  Log("llapi_layout_get_by_path %s flags=%u", path, flags);
  return new FakeLayout;
}

int llapi_layout_stripe_count_get(const void* layout, std::uint64_t* count) {
  *count = static_cast<const FakeLayout*>(layout)->count;
  return 0;
}

int llapi_layout_stripe_size_get(const void* layout, std::uint64_t* size) {
  *size = static_cast<const FakeLayout*>(layout)->size;
  return 0;
}

void llapi_layout_free(void* layout) { delete static_cast<FakeLayout*>(layout); }

}  // extern "C"
