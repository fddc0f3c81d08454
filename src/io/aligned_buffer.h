// Page-aligned heap memory, the only kind of buffer handed to O_DIRECT I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <utility>

namespace shardwise::io {

inline constexpr std::size_t kAlignment = 4096;

constexpr std::uint64_t AlignUp(std::uint64_t v, std::uint64_t a = kAlignment) {
  return (v + a - 1) / a * a;
}
constexpr std::uint64_t AlignDown(std::uint64_t v, std::uint64_t a = kAlignment) {
  return v / a * a;
}

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // Allocates `size` bytes (rounded up to the alignment). Throws only
  // std::bad_alloc, which the core treats as fatal like any allocation.
  explicit AlignedBuffer(std::size_t size) : size_(AlignUp(size)) {
    if (size_ == 0) return;
    data_ = static_cast<std::byte*>(std::aligned_alloc(kAlignment, size_));
    if (!data_) throw std::bad_alloc();
  }
  AlignedBuffer(AlignedBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      std::free(data_);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }

  std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace shardwise::io
