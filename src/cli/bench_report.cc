// The report of a synchronous `shardwise bench` run: text and JSON (the
// schema is in docs/cli.md).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench.h"
#include "output.h"

namespace shardwise::cli {
namespace {

double Gbps(std::uint64_t bytes, double s) { return s > 0 ? static_cast<double>(bytes) / s / 1e9 : 0; }
double Ratio(double limit_s, double s) { return s > 0 ? limit_s / s : 0; }
double PerGb(double cpu_s, std::uint64_t bytes) {
  return bytes ? cpu_s / (static_cast<double>(bytes) / 1e9) : 0;
}

nlohmann::ordered_json StorageJson(const StorageReport& s) {
  nlohmann::ordered_json j = {{"filesystem", s.filesystem}, {"lustre", s.lustre},
                              {"applied", s.layout_applied}};
  if (!s.layout_reason.empty()) j["reason"] = s.layout_reason;
  if (s.layout_applied) {
    j["stripe_count"] = s.stripe_count;
    j["stripe_size"] = s.stripe_size;
  }
  j["summary"] = s.summary;
  return j;
}

}  // namespace

void PrintBenchJson(const BenchReport& r, std::ostream& out) {
  const RankFigures& f = r.figures;
  const Options& o = r.params.options;
  const std::uint64_t b = f.data_bytes;
  const double limit_s = r.limits.Seconds(b), fresh_s = r.limits.FreshSeconds(b);
  nlohmann::ordered_json j;
  j["dir"] = r.root;
  j["ranks"] = r.params.ranks;
  j["size_per_rank"] = r.params.size_per_rank;
  j["items"] = f.items;
  j["backend"] = f.backend;
  j["direct_io"] = f.direct_io;
  j["queue_depth"] = o.queue_depth;
  j["threads_per_rank"] = o.EffectiveThreads();
  j["io_unit_bytes"] = o.io_unit_bytes;
  j["save"] = {{"bytes", b}, {"file_bytes", f.file_bytes}, {"seconds", f.save_s},
               {"gb_per_s", Gbps(b, f.save_s)}, {"max_rank_write_seconds", f.max_write_s},
               {"commit_seconds", f.commit_s}, {"cpu_seconds", f.save_cpu_s},
               {"cpu_seconds_per_gb", PerGb(f.save_cpu_s, b)},
               {"of_machine_limit", Ratio(limit_s, f.save_s)},
               {"of_fresh_page_limit", Ratio(fresh_s, f.save_s)}};
  j["load"] = {{"bytes", b}, {"seconds", f.load_s}, {"gb_per_s", Gbps(b, f.load_s)},
               {"cpu_seconds", f.load_cpu_s}, {"cpu_seconds_per_gb", PerGb(f.load_cpu_s, b)},
               {"of_machine_limit", Ratio(limit_s, f.load_s)}};
  j["machine"] = {{"copy_gb_per_s", r.limits.copy.best()},
                  {"fresh_page_copy_gb_per_s", r.limits.fresh_copy.best()},
                  {"crc32c_gb_per_s", r.limits.crc32c.best()}, {"threads", r.limits.threads},
                  {"limit_seconds", limit_s}, {"fresh_page_limit_seconds", fresh_s}};
  j["io_mode"] = {{"direct_writes", r.storage.direct_writes},
                  {"direct_reads", r.storage.direct_reads},
                  {"measured", r.storage.io_measured},
                  {"why", r.storage.io_why}};
  j["verified"] = true;
  j["checkpoint"] = r.kept.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(r.kept);
  j["layout"] = StorageJson(r.storage);
  j["layout"]["io_mode"] = j["io_mode"];
  if (r.params.provisioned_mbps > 0) {
    j["provisioned_mbps"] = r.params.provisioned_mbps;
    j["efficiency"] = {{"save", Gbps(b, f.save_s) * 1000 / r.params.provisioned_mbps},
                       {"load", Gbps(b, f.load_s) * 1000 / r.params.provisioned_mbps}};
  }
  WriteJson(out, j);
}

void PrintBenchReport(const BenchReport& r, std::ostream& out) {
  const RankFigures& f = r.figures;
  const Options& o = r.params.options;
  const HostLimits& h = r.limits;
  const std::uint64_t b = f.data_bytes;
  const double limit_s = h.Seconds(b), fresh_s = h.FreshSeconds(b);
  char line[512];
  out << "shardwise bench: " << r.params.ranks << " rank(s) x " << FormatBytes(r.params.size_per_rank)
      << " in " << r.root << "\n"
      << "  backend " << f.backend << ", O_DIRECT " << (f.direct_io ? "on" : "off")
      << ", queue depth " << o.queue_depth << ", I/O unit " << FormatBytes(o.io_unit_bytes) << ", "
      << o.EffectiveThreads() << " thread(s) per rank, " << f.items << " items\n"
      << "  filesystem: " << r.storage.summary << "\n";
  std::snprintf(line, sizeof line, "  save  %s in %s: %.2f GB/s (durable; commit %s)\n",
                FormatBytes(b).c_str(), FormatSeconds(f.save_s).c_str(), Gbps(b, f.save_s),
                FormatSeconds(f.commit_s).c_str());
  out << line;
  std::snprintf(line, sizeof line, "  load  %s in %s: %.2f GB/s (checksums verified, bit-exact)\n",
                FormatBytes(b).c_str(), FormatSeconds(f.load_s).c_str(), Gbps(b, f.load_s));
  out << line;
  std::snprintf(line, sizeof line,
                "  cpu   save %.2f s (%.2f s/GB), load %.2f s (%.2f s/GB): user+system, every "
                "thread of every rank\n",
                f.save_cpu_s, PerGb(f.save_cpu_s, b), f.load_cpu_s, PerGb(f.load_cpu_s, b));
  out << line;
  std::snprintf(line, sizeof line,
                "  machine: copy %.2f GB/s, CRC32C %.2f GB/s (best of 1 and %d threads); one "
                "copy and one checksum pass of these bytes take %s:\n"
                "         save at %.2fx, load at %.2fx of that limit (data in memory, e.g. tmpfs)\n",
                h.copy.best(), h.crc32c.best(), h.threads, FormatSeconds(limit_s).c_str(),
                Ratio(limit_s, f.save_s), Ratio(limit_s, f.load_s));
  out << line;
  std::snprintf(line, sizeof line,
                "         copy into new pages %.2f GB/s (what a memory filesystem pays per "
                "page it stores): save at %.2fx of a limit of %s\n",
                h.fresh_copy.best(), Ratio(fresh_s, f.save_s), FormatSeconds(fresh_s).c_str());
  out << line;
  if (const double mbps = r.params.provisioned_mbps; mbps > 0) {
    std::snprintf(line, sizeof line,
                  "  provisioned %.1f MB/s: efficiency save %.1f%%, load %.1f%% "
                  "(achieved / provisioned; docs/lustre.md explains how to read it)\n",
                  mbps, Gbps(b, f.save_s) * 1e5 / mbps, Gbps(b, f.load_s) * 1e5 / mbps);
    out << line;
  }
  if (!r.kept.empty()) out << "  kept  " << r.kept << '\n';
}

}  // namespace shardwise::cli
