// Long-lived memory that writes are made from (staging slabs), announced to
// the I/O layer so that io_uring backends can register it as fixed buffers.
//
// Without registration the kernel looks up and pins a write's pages on every
// write (O_DIRECT) or walks its iovec (buffered I/O). A registered buffer is
// pinned once, when a ring first writes from it, and stays registered while
// the memory lives: the staging pool keeps its slabs from save to save.
// The owner announces memory after allocating it; destroying the handle
// withdraws it, and returns only once no ring holds it registered, so no
// registration pins memory that was freed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>

namespace shardwise::io {

class AnnouncedMemory {
 public:
  AnnouncedMemory() = default;
  AnnouncedMemory(const std::byte* base, std::uint64_t bytes);
  ~AnnouncedMemory();  // withdraws it
  AnnouncedMemory(AnnouncedMemory&& o) noexcept;
  AnnouncedMemory& operator=(AnnouncedMemory&& o) noexcept;
  AnnouncedMemory(const AnnouncedMemory&) = delete;
  AnnouncedMemory& operator=(const AnnouncedMemory&) = delete;

 private:
  void Withdraw();
  std::uint64_t id_ = 0;
};

// The backends' side. Everything below runs under the registry's lock.
namespace announced {

struct Region {
  std::uint64_t id = 0;  // never 0 for an announced region
  const std::byte* base = nullptr;
  std::uint64_t bytes = 0;
};

// Something that registers announced memory: told when a region goes, with
// the lock held, so it unregisters before the memory is freed.
class Holder {
 public:
  virtual void Forget(std::uint64_t region) = 0;

 protected:
  ~Holder() = default;
};

std::unique_lock<std::mutex> Lock();
// Requires the lock. Registers or unregisters a holder.
void AddHolder(Holder* h);
void RemoveHolder(Holder* h);
// Requires the lock. The announced region that holds [p, p + n), if any
// (`out->id` 0 otherwise).
Region Find(const std::byte* p, std::uint64_t n);

}  // namespace announced
}  // namespace shardwise::io
