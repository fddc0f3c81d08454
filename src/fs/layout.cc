#include "fs/layout.h"

#include <algorithm>
#include <numeric>

namespace shardwise::fs {

LayoutDecision DecideLayout(const LayoutInput& in) {
  LayoutDecision d;
  d.layout.stripe_size = in.stripe_size ? in.stripe_size : kDefaultStripeSize;
  const int files = std::max(1, in.writers);
  if (in.stripe_count != 0) {
    d.apply = true;
    d.layout.stripe_count = in.stripe_count;
    d.reason = "stripe count " + std::to_string(in.stripe_count) + " set by the user";
    return d;
  }
  if (in.ost_count <= 0 && in.stripe_size == 0) {
    d.reason = "OST count unknown (liblustreapi not available): the directory's default layout "
               "is kept; set SHARDWISE_STRIPE_COUNT to choose one";
    return d;
  }
  d.apply = true;
  if (in.bytes_per_file < kMinStripedFile) {
    d.layout.stripe_count = 1;
    d.reason = "file under 256 MiB: one stripe";
    return d;
  }
  if (in.ost_count <= 0) {
    d.layout.stripe_count = 1;
    d.reason = "OST count unknown: one stripe, with the requested stripe size";
    return d;
  }
  if (files >= in.ost_count) {
    d.layout.stripe_count = 1;
    d.reason = std::to_string(files) + " files over " + std::to_string(in.ost_count) +
               " OSTs: one OST per file";
    return d;
  }
  const std::uint64_t by_size = std::max<std::uint64_t>(1, in.bytes_per_file / kMinBytesPerStripe);
  const int share = in.ost_count / files;
  d.layout.stripe_count = static_cast<int>(std::min<std::uint64_t>(share, by_size));
  d.reason = std::to_string(files) + " files over " + std::to_string(in.ost_count) + " OSTs: " +
             std::to_string(d.layout.stripe_count) + " stripes per file" +
             (static_cast<std::uint64_t>(share) > by_size ? " (capped: 256 MiB per stripe)" : "");
  return d;
}

std::uint64_t AlignIoUnit(std::uint64_t io_unit, std::uint64_t stripe, std::uint64_t block) {
  if (stripe == 0 || io_unit == 0) return io_unit;
  if (io_unit % stripe == 0 || stripe % io_unit == 0) return io_unit;
  const std::uint64_t step = std::lcm(stripe, block ? block : 1);
  const std::uint64_t aligned = (io_unit + step - 1) / step * step;
  // Past the largest unit the engine allows (1 GiB), the unit stays as it
  // is: its writes then cross stripe boundaries, which costs speed only.
  return aligned <= (1ull << 30) ? aligned : io_unit;
}

}  // namespace shardwise::fs
