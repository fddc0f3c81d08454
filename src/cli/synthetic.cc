#include "synthetic.h"

#include <cstring>
#include <string>

namespace shardwise::cli {

void FillPattern(std::byte* p, std::uint64_t n, std::uint64_t seed, std::uint64_t stream) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + stream * 0xD1B54A32D192ED03ull + 1;
  std::uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(p + i, &x, 8);
  }
  for (; i < n; ++i) p[i] = static_cast<std::byte>(x >> (8 * (i % 8)));
}

SyntheticState MakeTransformerState(std::uint64_t target_bytes, int rank, int world_size,
                                    std::uint64_t seed) {
  SyntheticState s;
  // Hidden size: as large as 2048 while one layer stays under half the target,
  // so there are always several layers.
  std::int64_t h = 2048;
  auto layer_bytes = [](std::int64_t hh) {
    return static_cast<std::uint64_t>(12 * hh * hh + 13 * hh) * 2;  // bf16
  };
  while (h > 64 && layer_bytes(h) * 2 > target_bytes) h /= 2;
  struct Spec {
    const char* name;
    std::int64_t rows, cols;  // cols == 0: 1-d
  };
  const Spec layer[] = {
      {"attn.qkv.weight", 3 * h, h}, {"attn.qkv.bias", 3 * h, 0},
      {"attn.out.weight", h, h},     {"attn.out.bias", h, 0},
      {"mlp.up.weight", 4 * h, h},   {"mlp.up.bias", 4 * h, 0},
      {"mlp.down.weight", h, 4 * h}, {"mlp.down.bias", h, 0},
      {"norm1.weight", h, 0},        {"norm1.bias", h, 0},
      {"norm2.weight", h, 0},        {"norm2.bias", h, 0},
  };
  auto add = [&](std::string name, std::int64_t rows, std::int64_t cols) {
    WriteItem w;
    w.name = std::move(name);
    w.dtype = DType::kBFloat16;
    // Each rank holds rows [rank*rows, (rank+1)*rows) of the global tensor.
    if (cols == 0) {
      w.global_shape = {rows * world_size};
      w.chunk_offsets = {rows * rank};
      w.chunk_sizes = {rows};
    } else {
      w.global_shape = {rows * world_size, cols};
      w.chunk_offsets = {rows * rank, 0};
      w.chunk_sizes = {rows, cols};
    }
    w.nbytes = static_cast<std::uint64_t>(rows) * static_cast<std::uint64_t>(cols ? cols : 1) * 2;
    auto buf = std::make_unique_for_overwrite<std::byte[]>(w.nbytes);
    FillPattern(buf.get(), w.nbytes, seed, s.items.size() * 131071 + static_cast<std::uint64_t>(rank));
    w.data = buf.get();
    s.bytes += w.nbytes;
    s.storage.push_back(std::move(buf));
    s.items.push_back(std::move(w));
  };
  int l = 0;
  while (s.bytes + layer_bytes(h) <= target_bytes) {
    for (const Spec& sp : layer)
      add("layers." + std::to_string(l) + "." + sp.name, sp.rows, sp.cols);
    ++l;
  }
  // The rest as an embedding table.
  std::uint64_t rest = target_bytes - s.bytes;
  std::int64_t rows = static_cast<std::int64_t>(rest / (static_cast<std::uint64_t>(h) * 2));
  if (rows > 0) add("embed.weight", rows, h);
  return s;
}

}  // namespace shardwise::cli
