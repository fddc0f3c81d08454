#include "shardwise/options.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "common/parallel.h"

namespace shardwise {

std::string_view IoBackendKindName(IoBackendKind kind) {
  switch (kind) {
    case IoBackendKind::kAuto: return "auto";
    case IoBackendKind::kUring: return "uring";
    case IoBackendKind::kThreads: return "threads";
  }
  return "auto";
}

Result<IoBackendKind> ParseIoBackendKind(std::string_view text) {
  if (text == "auto") return IoBackendKind::kAuto;
  if (text == "uring" || text == "io_uring") return IoBackendKind::kUring;
  if (text == "threads") return IoBackendKind::kThreads;
  return InvalidArgument("unknown I/O backend '" + std::string(text) +
                         "' (expected auto, uring or threads)");
}

Result<std::uint64_t> ParseSize(std::string_view text) {
  std::string_view t = text;
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back())))
    t.remove_suffix(1);
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), value);
  if (ec != std::errc() || end == t.data())
    return InvalidArgument("bad size '" + std::string(text) +
                           "' (examples: 4096, 512MiB, 2GiB)");
  std::string suffix(end, t.data() + t.size());
  for (auto& ch : suffix) ch = static_cast<char>(std::tolower(ch));
  std::uint64_t mult = 1;
  if (suffix.empty() || suffix == "b") mult = 1;
  else if (suffix == "k" || suffix == "kib" || suffix == "ki") mult = 1ull << 10;
  else if (suffix == "m" || suffix == "mib" || suffix == "mi") mult = 1ull << 20;
  else if (suffix == "g" || suffix == "gib" || suffix == "gi") mult = 1ull << 30;
  else if (suffix == "t" || suffix == "tib" || suffix == "ti") mult = 1ull << 40;
  else if (suffix == "kb") mult = 1000;
  else if (suffix == "mb") mult = 1000 * 1000;
  else if (suffix == "gb") mult = 1000ull * 1000 * 1000;
  else
    return InvalidArgument("bad size suffix in '" + std::string(text) +
                           "' (use KiB, MiB, GiB, TiB or kB, MB, GB)");
  if (value != 0 && mult > UINT64_MAX / value)
    return InvalidArgument("size '" + std::string(text) + "' is too large");
  return value * mult;
}

std::string FormatBytes(std::uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof buf, "%llu B",
                            static_cast<unsigned long long>(bytes));
  else std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

namespace {

Result<long long> EnvInt(const char* name, long long lo, long long hi) {
  const char* v = std::getenv(name);
  long long out = 0;
  auto [end, ec] = std::from_chars(v, v + std::char_traits<char>::length(v), out);
  if (ec != std::errc() || *end != '\0' || out < lo || out > hi)
    return InvalidArgument(std::string("environment variable ") + name + "='" +
                           v + "' is not an integer in [" +
                           std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return out;
}

Result<double> EnvSeconds(const char* name) {
  const char* v = std::getenv(name);
  char* end = nullptr;
  double d = std::strtod(v, &end);
  if (end == v || *end != '\0' || !std::isfinite(d) || d < 0)
    return InvalidArgument(std::string("environment variable ") + name + "='" +
                           v + "' is not a non-negative number of seconds");
  return d;
}

}  // namespace

Result<Options> Options::FromEnv() { return FromEnv(Options()); }

Result<Options> Options::FromEnv(Options o) {
  if (std::getenv("SHARDWISE_IO_BACKEND")) {
    auto k = ParseIoBackendKind(std::getenv("SHARDWISE_IO_BACKEND"));
    if (!k.ok()) return k.status().WithContext("SHARDWISE_IO_BACKEND");
    o.io_backend = *k;
  }
  if (std::getenv("SHARDWISE_QUEUE_DEPTH")) {
    SW_ASSIGN_OR_RETURN(o.queue_depth, EnvInt("SHARDWISE_QUEUE_DEPTH", 1, 256));
  }
  if (std::getenv("SHARDWISE_THREADS")) {
    SW_ASSIGN_OR_RETURN(o.threads, EnvInt("SHARDWISE_THREADS", 0, 1024));
  }
  for (auto [name, field] :
       {std::pair{"SHARDWISE_IO_UNIT", &o.io_unit_bytes},
        std::pair{"SHARDWISE_CHECKSUM_BLOCK", &o.checksum_block_bytes}}) {
    if (!std::getenv(name)) continue;
    auto size = ParseSize(std::getenv(name));
    if (!size.ok()) return size.status().WithContext(name);
    *field = *size;
  }
  if (const char* v = std::getenv("SHARDWISE_DIRECT_IO")) {
    std::string s(v);
    if (s == "auto") o.direct_io = DirectIoMode::kAuto;
    else if (s == "on" || s == "1") o.direct_io = DirectIoMode::kOn;
    else if (s == "off" || s == "0") o.direct_io = DirectIoMode::kOff;
    else
      return InvalidArgument("SHARDWISE_DIRECT_IO='" + s +
                             "' (expected auto, on or off)");
  }
  if (const char* v = std::getenv("SHARDWISE_LAYOUT")) {
    std::string s(v);
    if (s == "auto") o.layout = LayoutMode::kAuto;
    else if (s == "off" || s == "0") o.layout = LayoutMode::kOff;
    else return InvalidArgument("SHARDWISE_LAYOUT='" + s + "' (expected auto or off)");
  }
  if (std::getenv("SHARDWISE_STRIPE_COUNT")) {
    SW_ASSIGN_OR_RETURN(long long n, EnvInt("SHARDWISE_STRIPE_COUNT", -1, 65535));
    o.stripe_count = static_cast<int>(n);
  }
  if (std::getenv("SHARDWISE_FILES_PER_RANK")) {
    SW_ASSIGN_OR_RETURN(long long n, EnvInt("SHARDWISE_FILES_PER_RANK", 1, 64));
    o.files_per_rank = static_cast<int>(n);
  }
  if (const char* v = std::getenv("SHARDWISE_STRIPE_SIZE")) {
    auto size = ParseSize(v);
    if (!size.ok()) return size.status().WithContext("SHARDWISE_STRIPE_SIZE");
    o.stripe_size = *size;
  }
  if (const char* v = std::getenv("SHARDWISE_LUSTREAPI")) o.lustre_api = v;
  if (const char* v = std::getenv("SHARDWISE_EXPORT")) {
    std::string s(v);
    if (s == "off" || s == "0") o.export_mode = ExportMode::kOff;
    else if (s == "fsx-task") o.export_mode = ExportMode::kFsxTask;
    else if (s == "hsm") o.export_mode = ExportMode::kHsm;
    else return InvalidArgument("SHARDWISE_EXPORT='" + s + "' (expected off, fsx-task or hsm)");
  }
  if (const char* v = std::getenv("SHARDWISE_FSX_ID")) o.fsx_id = v;
  if (const char* v = std::getenv("SHARDWISE_FSX_MOUNT")) o.fsx_mount = v;
  if (std::getenv("SHARDWISE_RETENTION_REQUIRES_EXPORT")) {
    SW_ASSIGN_OR_RETURN(long long b, EnvInt("SHARDWISE_RETENTION_REQUIRES_EXPORT", 0, 1));
    o.retention_requires_export = b == 1;
  }
  if (std::getenv("SHARDWISE_COMMIT_TIMEOUT_S")) {
    SW_ASSIGN_OR_RETURN(o.commit_timeout_s, EnvSeconds("SHARDWISE_COMMIT_TIMEOUT_S"));
  }
  if (std::getenv("SHARDWISE_STAGING_GRACE_S")) {
    SW_ASSIGN_OR_RETURN(o.staging_grace_s, EnvSeconds("SHARDWISE_STAGING_GRACE_S"));
  }
  SW_RETURN_IF_ERROR(o.Validate());
  return o;
}

Status Options::Validate() const {
  constexpr std::uint64_t kPage = 4096;
  if (queue_depth < 1 || queue_depth > 256)
    return InvalidArgument("queue_depth must be in [1, 256]");
  if (checksum_block_bytes < kPage || checksum_block_bytes % kPage != 0 ||
      checksum_block_bytes > (1ull << 30))
    return InvalidArgument(
        "checksum_block_bytes must be a multiple of 4 KiB, at most 1 GiB");
  if (io_unit_bytes < checksum_block_bytes ||
      io_unit_bytes % checksum_block_bytes != 0 || io_unit_bytes > (1ull << 30))
    return InvalidArgument(
        "io_unit_bytes must be a multiple of checksum_block_bytes, at most "
        "1 GiB");
  if (threads < 0 || threads > 1024)
    return InvalidArgument("threads must be in [0, 1024] (0: the CPUs per local rank)");
  if (files_per_rank < 1 || files_per_rank > 64)
    return InvalidArgument("files_per_rank must be in [1, 64]");
  if (stripe_count < -1 || stripe_count > 65535)
    return InvalidArgument("stripe_count must be -1 (every OST), 0 (policy) or 1..65535");
  if (stripe_size % (64 << 10) != 0 || stripe_size >= (4ull << 30))
    return InvalidArgument("stripe_size must be a multiple of 64 KiB, under 4 GiB (0: policy)");
  if (!(commit_timeout_s >= 0) || !(staging_grace_s >= 0) ||
      !(poll_interval_s > 0))
    return InvalidArgument("timeouts must be non-negative");
  return Status::Ok();
}

int Options::EffectiveThreads() const { return threads > 0 ? threads : CpusPerLocalRank(); }

}  // namespace shardwise
