#include <sys/mman.h>

#include <cstring>

#include "io/aligned_buffer.h"
#include "shardwise/async.h"

namespace shardwise {

namespace {
constexpr std::uint64_t kHugePage = 2ull << 20;
}

Result<std::unique_ptr<StagingPool>> StagingPool::Allocate(std::uint64_t bytes, bool huge_pages) {
  if (bytes == 0) return InvalidArgument("staging pool of 0 bytes");
  std::uint64_t size = io::AlignUp(bytes, kHugePage);
  // Every page is faulted in now, so that no save pays for page faults:
  // MAP_POPULATE does it in one pass; with huge pages, the advice must come
  // first, then MADV_POPULATE_WRITE (Linux 5.14), else a touch per page.
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | (huge_pages ? 0 : MAP_POPULATE);
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED)
    return Status(StatusCode::kIoError,
                  "cannot map a staging pool of " + FormatBytes(size) + ": " + std::strerror(errno),
                  errno);
  if (huge_pages) {
    (void)::madvise(p, size, MADV_HUGEPAGE);  // a hint; fine if refused
    constexpr int kPopulateWrite = 23;         // MADV_POPULATE_WRITE
    if (::madvise(p, size, kPopulateWrite) != 0) {
      auto* b = static_cast<volatile std::byte*>(p);
      for (std::uint64_t off = 0; off < size; off += 4096) b[off] = std::byte{0};
    }
  }
  return std::unique_ptr<StagingPool>(new StagingPool(static_cast<std::byte*>(p), size, true));
}

Result<std::unique_ptr<StagingPool>> StagingPool::Wrap(void* data, std::uint64_t bytes) {
  if (!data || bytes == 0) return InvalidArgument("staging memory is empty");
  if (reinterpret_cast<std::uintptr_t>(data) % io::kAlignment != 0)
    return InvalidArgument("staging memory must be 4096-byte aligned");
  return std::unique_ptr<StagingPool>(
      new StagingPool(static_cast<std::byte*>(data), io::AlignDown(bytes), false));
}

StagingPool::~StagingPool() {
  if (owned_) ::munmap(data_, size_);
}

}  // namespace shardwise
