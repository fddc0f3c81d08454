#include "shardwise/options.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

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

std::string Str(std::string_view v) { return std::string(v); }

Result<long long> ParseInt(std::string_view text, long long lo, long long hi) {
  long long out = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  if (ec != std::errc() || end != text.data() + text.size() || out < lo || out > hi)
    return InvalidArgument("'" + Str(text) + "' is not an integer in [" + std::to_string(lo) +
                           ", " + std::to_string(hi) + "]");
  return out;
}

// Field parsers, one per kind of value. The ranges here are the ones
// Options::Validate checks, so a value a parser takes is valid on its own.
template <auto Field, long long Lo, long long Hi>
Status Int(Options& o, std::string_view t) {
  SW_ASSIGN_OR_RETURN(long long v, ParseInt(t, Lo, Hi));
  o.*Field = static_cast<std::remove_reference_t<decltype(o.*Field)>>(v);
  return Status::Ok();
}
template <auto Field>
std::string ShowInt(const Options& o) { return std::to_string(o.*Field); }

template <auto Field>
Status Size(Options& o, std::string_view t) {
  SW_ASSIGN_OR_RETURN(o.*Field, ParseSize(t));
  return Status::Ok();
}
template <auto Field>
std::string ShowSize(const Options& o) {
  const std::uint64_t v = o.*Field;
  if (v != 0 && v % (1ull << 20) == 0) return std::to_string(v >> 20) + "MiB";
  if (v != 0 && v % (1ull << 10) == 0) return std::to_string(v >> 10) + "KiB";
  return std::to_string(v);
}

// Seconds: a non-negative number, "inf" (no limit) included; with
// `positive`, more than 0 and finite.
template <auto Field, bool positive = false>
Status Seconds(Options& o, std::string_view t) {
  const std::string s(t);
  char* end = nullptr;
  const double d = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || std::isnan(d) || d < 0 || (positive && (d == 0 || std::isinf(d))))
    return InvalidArgument("'" + s + (positive ? "' is not a positive number of seconds"
                                               : "' is not a non-negative number of seconds"));
  o.*Field = d;
  return Status::Ok();
}
template <auto Field>
std::string ShowSeconds(const Options& o) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", o.*Field);
  return buf;
}

template <auto Field>
Status Text(Options& o, std::string_view t) {
  o.*Field = Str(t);
  return Status::Ok();
}
template <auto Field>
std::string ShowText(const Options& o) { return o.*Field; }

// Enumerations: the words each value is spelled with; the first is the one
// shown. "1"/"0" stand for on/off where a mode has them.
template <typename E>
struct Word {
  std::string_view word;
  E value;
};
template <typename E, std::size_t N>
Status ParseWord(E* out, std::string_view t, const Word<E> (&words)[N], std::string_view expected) {
  for (const auto& w : words)
    if (w.word == t) {
      *out = w.value;
      return Status::Ok();
    }
  return InvalidArgument("'" + Str(t) + "' (expected " + Str(expected) + ")");
}
template <typename E, std::size_t N>
std::string ShowWord(E v, const Word<E> (&words)[N]) {
  for (const auto& w : words)
    if (w.value == v) return Str(w.word);
  return "?";
}

constexpr Word<DirectIoMode> kDirectIo[] = {
    {"auto", DirectIoMode::kAuto}, {"on", DirectIoMode::kOn}, {"off", DirectIoMode::kOff},
    {"1", DirectIoMode::kOn}, {"0", DirectIoMode::kOff}};
constexpr Word<LayoutMode> kLayout[] = {
    {"auto", LayoutMode::kAuto}, {"off", LayoutMode::kOff}, {"0", LayoutMode::kOff}};
constexpr Word<ExportMode> kExport[] = {{"off", ExportMode::kOff},
                                        {"fsx-task", ExportMode::kFsxTask},
                                        {"hsm", ExportMode::kHsm},
                                        {"0", ExportMode::kOff}};

Status Backend(Options& o, std::string_view t) {
  SW_ASSIGN_OR_RETURN(o.io_backend, ParseIoBackendKind(t));
  return Status::Ok();
}
std::string ShowBackend(const Options& o) { return Str(IoBackendKindName(o.io_backend)); }

template <bool Options::*F>
Status Flag(Options& o, std::string_view t) {
  SW_ASSIGN_OR_RETURN(long long v, ParseInt(t, 0, 1));
  o.*F = v == 1;
  return Status::Ok();
}
template <bool Options::*F>
std::string ShowFlag(const Options& o) {
  return o.*F ? "1" : "0";
}

constexpr OptionInfo kTable[] = {
    {"io_backend", "SHARDWISE_IO_BACKEND", "io_backend", "--io-backend", "auto|uring|threads",
     "I/O engine: auto (io_uring, else a thread pool), uring, threads", Backend, ShowBackend},
    {"queue_depth", "SHARDWISE_QUEUE_DEPTH", "queue_depth", "--queue-depth", "1-256",
     "I/Os in flight per rank", Int<&Options::queue_depth, 1, 256>,
     ShowInt<&Options::queue_depth>},
    {"threads", "SHARDWISE_THREADS", "threads", "--threads", "0-1024",
     "threads per rank for copies, checksums and I/O work; 0: the CPUs this process may use "
     "divided by LOCAL_WORLD_SIZE",
     Int<&Options::threads, 0, 1024>, ShowInt<&Options::threads>},
    {"io_unit_bytes", "SHARDWISE_IO_UNIT", "io_unit", "--io-unit", "SIZE",
     "bytes per write or read; a multiple of the checksum block, at most 1 GiB",
     Size<&Options::io_unit_bytes>, ShowSize<&Options::io_unit_bytes>},
    {"checksum_block_bytes", "SHARDWISE_CHECKSUM_BLOCK", "checksum_block", "", "SIZE",
     "CRC32C granularity (a slice is verified reading only the blocks it touches); a multiple "
     "of 4 KiB",
     Size<&Options::checksum_block_bytes>, ShowSize<&Options::checksum_block_bytes>},
    {"direct_io", "SHARDWISE_DIRECT_IO", "direct_io", "--direct-io", "auto|on|off",
     "O_DIRECT: auto (the root's filesystem decides; docs/cpp-api.md, \"I/O mode\"), on (fail "
     "if unsupported), off",
     [](Options& o, std::string_view t) {
       return ParseWord(&o.direct_io, t, kDirectIo, "auto, on or off");
     },
     [](const Options& o) { return ShowWord(o.direct_io, kDirectIo); }},
    {"commit_timeout_s", "SHARDWISE_COMMIT_TIMEOUT_S", "commit_timeout_s", "", "SECONDS",
     "how long the coordinator waits for every rank's fragment",
     Seconds<&Options::commit_timeout_s>, ShowSeconds<&Options::commit_timeout_s>},
    {"staging_grace_s", "SHARDWISE_STAGING_GRACE_S", "staging_grace_s", "", "SECONDS",
     "gc leaves staging directories younger than this alone",
     Seconds<&Options::staging_grace_s>, ShowSeconds<&Options::staging_grace_s>},
    {"format_version", "SHARDWISE_FORMAT_VERSION", "format_version", "", "1-2",
     "the on-disk format commits write: 2 (a small commit record and a binary index read in "
     "part) or 1 (everything in manifest.json, for older readers)",
     Int<&Options::format_version, 1, 2>, ShowInt<&Options::format_version>},
    {"poll_interval_s", "SHARDWISE_POLL_INTERVAL_S", "poll_interval_s", "", "SECONDS",
     "how often waits on the filesystem (fragments, commits) look again",
     Seconds<&Options::poll_interval_s, true>, ShowSeconds<&Options::poll_interval_s>},
    {"layout", "SHARDWISE_LAYOUT", "layout", "--layout", "auto|off",
     "Lustre layouts: auto (on Lustre, each shard file gets the layout the policy picks; "
     "docs/lustre.md), off",
     [](Options& o, std::string_view t) {
       return ParseWord(&o.layout, t, kLayout, "auto or off");
     },
     [](const Options& o) { return ShowWord(o.layout, kLayout); }},
    {"stripe_count", "SHARDWISE_STRIPE_COUNT", "stripe_count", "--stripe-count", "-1-65535",
     "stripes per shard file: 0 the policy, -1 every OST, n", Int<&Options::stripe_count, -1, 65535>,
     ShowInt<&Options::stripe_count>},
    {"stripe_size", "SHARDWISE_STRIPE_SIZE", "stripe_size", "--stripe-size", "SIZE",
     "stripe size, a multiple of 64 KiB under 4 GiB; 0 the policy (4 MiB)",
     Size<&Options::stripe_size>, ShowSize<&Options::stripe_size>},
    {"files_per_rank", "SHARDWISE_FILES_PER_RANK", "files_per_rank", "--files-per-rank", "1-64",
     "split each rank's shard into up to this many part files, at tensor boundaries",
     Int<&Options::files_per_rank, 1, 64>, ShowInt<&Options::files_per_rank>},
    {"lustre_api", "SHARDWISE_LUSTREAPI", "lustre_api", "", "PATH",
     "the liblustreapi to load (empty: liblustreapi.so.1 from the library path)",
     Text<&Options::lustre_api>, ShowText<&Options::lustre_api>},
    {"export_mode", "SHARDWISE_EXPORT", "export", "", "off|fsx-task|hsm",
     "after each commit, export to S3: fsx-task (aws fsx create-data-repository-task), hsm "
     "(lfs hsm_archive), off",
     [](Options& o, std::string_view t) {
       return ParseWord(&o.export_mode, t, kExport, "off, fsx-task or hsm");
     },
     [](const Options& o) { return ShowWord(o.export_mode, kExport); }},
    {"fsx_id", "SHARDWISE_FSX_ID", "fsx_id", "", "ID", "the FSx file system id, for fsx-task",
     Text<&Options::fsx_id>, ShowText<&Options::fsx_id>},
    {"fsx_mount", "SHARDWISE_FSX_MOUNT", "fsx_mount", "", "PATH",
     "the file system's local mount point (export paths are relative to it)",
     Text<&Options::fsx_mount>, ShowText<&Options::fsx_mount>},
    {"retention_requires_export", "SHARDWISE_RETENTION_REQUIRES_EXPORT",
     "retention_requires_export", "", "0|1",
     "1: retention keeps every checkpoint whose export is not done",
     Flag<&Options::retention_requires_export>, ShowFlag<&Options::retention_requires_export>},
    {"fixed_buffers", "SHARDWISE_FIXED_BUFFERS", "fixed_buffers", "--fixed-buffers", "0|1",
     "io_uring fixed buffers: register the I/O buffers and the staging memory once (needs "
     "RLIMIT_MEMLOCK or CAP_IPC_LOCK; plain buffers where refused); 0: never",
     Flag<&Options::fixed_buffers>, ShowFlag<&Options::fixed_buffers>},
    {"recycle_files", "SHARDWISE_RECYCLE_FILES", "recycle_files", "", "0|1",
     "1: removed checkpoints' shard files are kept in ROOT/.recycle for the next save to "
     "overwrite (on tmpfs: no new pages; local filesystems only, never a file someone has "
     "open; Checkpointer's local tier uses it)",
     Flag<&Options::recycle_files>, ShowFlag<&Options::recycle_files>},
};

}  // namespace

std::span<const OptionInfo> OptionTable() { return kTable; }

const OptionInfo* FindOption(std::string_view name) {
  for (const auto& row : kTable)
    if (name == row.field || name == row.env || name == row.keyword ||
        (!row.flag.empty() && name == row.flag))
      return &row;
  return nullptr;
}

Status SetOption(Options& o, std::string_view name, std::string_view text) {
  const OptionInfo* row = FindOption(name);
  if (!row) return InvalidArgument("unknown option '" + Str(name) + "' (shardwise options lists them)");
  Status s = row->parse(o, text);
  if (s.ok()) return s;
  // "NAME='x' is not ..." or "NAME: bad size 'x' ..."
  const std::string& m = s.message();
  return InvalidArgument(Str(name) + (m.rfind('\'', 0) == 0 ? "=" : ": ") + m);
  return Status::Ok();
}

Result<Options> Options::FromEnv() { return FromEnv(Options()); }

Result<Options> Options::FromEnv(Options o) {
  for (const auto& row : kTable)
    if (const char* v = std::getenv(std::string(row.env).c_str()))
      SW_RETURN_IF_ERROR(SetOption(o, row.env, v));
  if (Status s = o.Validate(); !s.ok())
    return InvalidArgument("the SHARDWISE_* environment: " + s.message());
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
  if (!(commit_timeout_s >= 0) || !(staging_grace_s >= 0))
    return InvalidArgument("commit_timeout_s and staging_grace_s must be non-negative");
  if (!(poll_interval_s > 0) || std::isinf(poll_interval_s))
    return InvalidArgument("poll_interval_s must be a positive number of seconds");
  return Status::Ok();
}

int Options::EffectiveThreads() const { return threads > 0 ? threads : CpusPerLocalRank(); }

}  // namespace shardwise
