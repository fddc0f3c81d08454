// Lustre file layouts for shard files: what to ask for, and why. See
// docs/lustre.md (its decision table is the table layout_test.cc checks).
#pragma once

#include <cstdint>
#include <string>

namespace shardwise::fs {

// A file's striping. stripe_count -1 means "every OST"; stripe_offset -1
// lets Lustre pick the first OST (it balances across OSTs).
struct Layout {
  std::uint64_t stripe_size = 0;
  int stripe_count = 0;
  int stripe_offset = -1;
  bool operator==(const Layout&) const = default;
};

// The policy's defaults.
inline constexpr std::uint64_t kDefaultStripeSize = 4ull << 20;   // 4 MiB: a multiple of
                                                                  // the 1-4 MiB RPC size
inline constexpr std::uint64_t kMinStripedFile = 256ull << 20;    // smaller files: 1 stripe
inline constexpr std::uint64_t kMinBytesPerStripe = 256ull << 20; // each stripe gets this much
inline constexpr std::uint64_t kStripeSizeQuantum = 64ull << 10;  // Lustre's granularity

struct LayoutInput {
  int writers = 1;                  // files written at once (ranks x files per rank)
  std::uint64_t bytes_per_file = 0;
  int ost_count = 0;                // 0: unknown
  // User overrides (Options / SHARDWISE_STRIPE_COUNT, SHARDWISE_STRIPE_SIZE):
  int stripe_count = 0;             // 0: policy; -1: all OSTs; n > 0: n
  std::uint64_t stripe_size = 0;    // 0: policy
};

struct LayoutDecision {
  bool apply = false;   // false: leave the directory's default layout
  Layout layout;
  std::string reason;   // one line, for logs and docs
};

// The policy: a pure function of its input.
//   - stripe size: the override, else 4 MiB;
//   - stripe count: the override; else 1 for files under 256 MiB; else 1
//     when there are at least as many files as OSTs (each file on its own
//     OST spreads the load with no two writers sharing an OST stripe);
//     else OSTs / files (rounded down), capped so that every stripe holds
//     at least 256 MiB, at least 1;
//   - unknown OST count and no override: leave the default layout.
LayoutDecision DecideLayout(const LayoutInput& in);

// The I/O unit to use with stripe size `stripe`: `io_unit` when one divides
// the other, else io_unit rounded up to a multiple of both the stripe size
// and the checksum block, so no write spans more stripes than its size
// requires; `io_unit` again when that multiple exceeds 1 GiB.
std::uint64_t AlignIoUnit(std::uint64_t io_unit, std::uint64_t stripe, std::uint64_t block);

}  // namespace shardwise::fs
