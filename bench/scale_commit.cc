// Scaling simulation (issue 5): how commit time and metadata load time grow
// with the number of ranks. For each R it generates R ranks' fragments of
// ~200 items each (every item a row-slice of one global tensor, as a sharded
// model gives), with sparse shard files of the declared sizes, then times
//   commit: Repository::Commit (read, check and merge every fragment, write
//           and fsync manifest.json, rename, fsync ROOT, update latest);
//   load:   one rank's metadata load, what a restarting rank does before it
//           reads data: CheckpointReader::Open, then the chunks of its own
//           slice of each of its items (ItemPart). Format 1 parses the
//           whole manifest; format 2 reads the commit record, the items
//           table and a few index blocks per item. Timed cold (the
//           metadata dropped from the page cache first, as a rank on
//           another node finds it), cold with every item's lookup in one
//           ItemParts call (the reads in flight together), and cached.
//   whole:  the same rank resolving every chunk of its items (Item), as
//           DCP's default load planner asks for them.
// Bytes: the metadata one rank reads (load), and the total on disk
// (manifest.json plus index.swi).
// With --gathered, the ranks' indexes are handed to CommitGathered in memory
// (binary rank indexes, as DCP's gather delivers them) instead of fragment
// files the coordinator waits for and reads. --format 1 writes format 1.
//   scale_commit [--ranks 256,1024,4096] [--items 200] [--dir D] [--runs 3] [--gathered]
//                [--format 1|2] [--json]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "format/manifest.h"
#include "format/rank_index.h"
#include "os/posix.h"
#include "shardwise/shardwise.h"

using namespace shardwise;

namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// Writes R sparse shards into the staging directory of `spec`, and R
// fragment files, or with `gathered` R binary indexes into *indexes.
Status Generate(Repository& repo, const SaveSpec& spec, int items,
                std::vector<std::string>* indexes, std::uint64_t* report_bytes) {
  std::string staging = repo.StagingDir(spec);
  SW_RETURN_IF_ERROR(os::Mkdir(staging, 0755, true));
  const std::int64_t rows = 64, cols = 256;  // 32 KiB per chunk (fp16)
  const std::uint64_t chunk_bytes = rows * cols * 2;
  for (int r = 0; r < spec.world_size; ++r) {
    Manifest f;
    f.name = spec.name;
    f.step = spec.step;
    f.save_id = spec.save_id;
    f.world_size = spec.world_size;
    f.rank = r;
    f.checksum_block = 1 << 20;
    char shard[32], frag[40];
    std::snprintf(shard, sizeof shard, "rank-%05d.shard", r);
    std::snprintf(frag, sizeof frag, "rank-%05d.fragment.json", r);
    std::uint64_t size = 4096 + chunk_bytes * static_cast<std::uint64_t>(items);
    f.files.push_back({shard, r, size, "uring", true});
    for (int i = 0; i < items; ++i) {
      ItemRecord it;
      it.name = "model.layers." + std::to_string(i / 8) + ".w" + std::to_string(i % 8);
      it.dtype = DType::kFloat16;
      it.shape = {rows * spec.world_size, cols};
      it.chunks.push_back({{rows * r, 0}, {rows, cols}, 0, 4096 + chunk_bytes * i, chunk_bytes,
                           {0x12345678u}});
      f.items.push_back(std::move(it));
    }
    std::string path = os::JoinPath(staging, shard);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(size)) != 0) return IoError("create", path, errno);
    ::close(fd);
    if (spec.gathered) {
      indexes->push_back(format::EncodeRankIndex(f));
      *report_bytes += indexes->back().size();
      continue;
    }
    std::string text = format::Serialize(f, format::kFragmentKind);
    *report_bytes += text.size();
    std::string fpath = os::JoinPath(staging, frag);
    fd = ::open(fpath.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size()))
      return IoError("write", fpath, errno);
    ::close(fd);
  }
  return Status::Ok();
}

// Drops the checkpoint's metadata files from the page cache (they are
// durable: the commit fsynced them).
void DropFromPageCache(const std::string& ckpt) {
  for (const char* f : {"manifest.json", "index.swi"}) {
    const int fd = ::open(os::JoinPath(ckpt, f).c_str(), O_RDONLY);
    if (fd < 0) continue;
    (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

struct Loaded {
  double seconds = 0;
  std::uint64_t bytes = 0;
};

// What rank `rank` of a restart reads before its data: open the checkpoint,
// then its own slice of each item (or, `whole`, every chunk of each item).
Result<Loaded> LoadRank(const std::string& ckpt, const Options& o, int rank, int items, int R,
                        bool whole, bool batched = false) {
  const std::int64_t rows = 64, cols = 256;
  const double t0 = os::MonotonicSeconds();
  SW_ASSIGN_OR_RETURN(auto reader, CheckpointReader::Open(ckpt, o));
  if (batched) {  // every item's part in one ItemParts call
    std::vector<CheckpointReader::PartQuery> queries;
    for (int i = 0; i < items; ++i)
      queries.push_back({"model.layers." + std::to_string(i / 8) + ".w" + std::to_string(i % 8),
                         {rows * rank, 0}, {rows, cols}});
    for (auto& it : reader->ItemParts(queries)) {
      SW_RETURN_IF_ERROR(it.status());
      bool found = false;
      for (const auto& c : (*it)->chunks) found |= c.offsets[0] == rows * rank;
      if (!found) return Corrupt("rank's chunk not found in " + (*it)->name);
    }
    return Loaded{os::MonotonicSeconds() - t0, reader->metadata_bytes_read()};
  }
  for (int i = 0; i < items; ++i) {
    const std::string name =
        "model.layers." + std::to_string(i / 8) + ".w" + std::to_string(i % 8);
    const ItemRecord* it;
    if (whole) {
      SW_ASSIGN_OR_RETURN(it, reader->Item(name));
      if (it->chunks.size() != static_cast<std::size_t>(R)) return Corrupt("wrong chunk count");
    } else {
      SW_ASSIGN_OR_RETURN(it, reader->ItemPart(name, {rows * rank, 0}, {rows, cols}));
      bool found = false;
      for (const auto& c : it->chunks) found |= c.offsets[0] == rows * rank;
      if (!found) return Corrupt("rank's chunk not found in " + name);
    }
  }
  return Loaded{os::MonotonicSeconds() - t0, reader->metadata_bytes_read()};
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> ranks = {256, 1024, 4096};
  int items = 200, runs = 3, format = 2;
  std::string dir = "/tmp/shardwise-scale";
  bool json = false, keep = false, generate_only = false, gathered = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--ranks") {
      ranks.clear();
      std::stringstream ss(next());
      for (std::string t; std::getline(ss, t, ',');) ranks.push_back(std::stoi(t));
    } else if (a == "--items") items = std::stoi(next());
    else if (a == "--dir") dir = next();
    else if (a == "--runs") runs = std::stoi(next());
    else if (a == "--json") json = true;
    else if (a == "--gathered") gathered = true;
    else if (a == "--format") format = std::stoi(next());
    else if (a == "--keep") keep = true;
    else if (a == "--generate-only") generate_only = keep = true;  // for profiling
    else {
      std::fprintf(stderr, "usage: scale_commit [--ranks 256,1024,4096] [--items 200] [--dir D] "
                           "[--runs 3] [--gathered] [--format 1|2] [--json] [--keep]\n");
      return 2;
    }
  }
  if (!json)
    std::printf("| ranks | items/rank | chunks | metadata on disk | commit (s) | one rank's load, "
                "cold (s) | cold, batched (s) | cached (s) | bytes it read | whole items (s) | "
                "bytes | commit + cold load (s) |\n"
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  std::string out_json = "[";
  for (int R : ranks) {
    std::vector<double> commit, load, load_cold, load_batch, whole;
    std::uint64_t disk_bytes = 0, report_bytes = 0, load_bytes = 0, whole_bytes = 0;
    for (int run = 0; run < runs; ++run) {
      (void)os::RemoveTree(dir);
      Options o;
      o.poll_interval_s = 0.001;
      o.format_version = format;
      auto repo = Repository::Open(dir, o);
      if (!repo.ok()) return std::fprintf(stderr, "%s\n", repo.status().ToString().c_str()), 1;
      SaveSpec spec;
      spec.step = 1;
      spec.world_size = R;
      spec.save_id = "sim" + std::to_string(run);
      spec.name = Repository::StepName(1);
      spec.gathered = gathered;
      std::vector<std::string> indexes;
      report_bytes = 0;
      Status g = Generate(**repo, spec, items, &indexes, &report_bytes);
      if (!g.ok()) return std::fprintf(stderr, "%s\n", g.ToString().c_str()), 1;
      if (generate_only) {
        std::printf("%s\n", (*repo)->StagingDir(spec).c_str());
        return 0;
      }
      // In a real save every rank has fsynced its shard before the commit
      // starts (step 1): the sparse shards made above are flushed first, so
      // that the commit's own fsyncs do not pay for them. The coordinator
      // wrote its own shard through this Repository, which probed the
      // root's filesystem and I/O mode then: done here, untimed.
      (void)(*repo)->FilesystemSummary();
      ::sync();
      double t0 = os::MonotonicSeconds();
      auto c = gathered ? (*repo)->CommitGathered(spec, indexes) : (*repo)->Commit(spec);
      double t1 = os::MonotonicSeconds();
      if (!c.ok()) return std::fprintf(stderr, "%s\n", c.status().ToString().c_str()), 1;
      const std::string ckpt = os::JoinPath(dir, spec.name);
      // Cold: what a rank on another node reads (the coordinator's page
      // cache holds the metadata only where it was written through it).
      DropFromPageCache(ckpt);
      auto cold = LoadRank(ckpt, o, R / 2, items, R, /*whole=*/false);
      if (!cold.ok()) return std::fprintf(stderr, "%s\n", cold.status().ToString().c_str()), 1;
      DropFromPageCache(ckpt);  // the same lookups, all at once (ItemParts)
      auto batch = LoadRank(ckpt, o, R / 2, items, R, /*whole=*/false, /*batched=*/true);
      if (!batch.ok()) return std::fprintf(stderr, "%s\n", batch.status().ToString().c_str()), 1;
      auto m = LoadRank(ckpt, o, R / 2, items, R, /*whole=*/false);
      if (!m.ok()) return std::fprintf(stderr, "%s\n", m.status().ToString().c_str()), 1;
      auto w = LoadRank(ckpt, o, R / 2, items, R, /*whole=*/true);
      if (!w.ok()) return std::fprintf(stderr, "%s\n", w.status().ToString().c_str()), 1;
      commit.push_back(t1 - t0);
      load.push_back(m->seconds);
      load_cold.push_back(cold->seconds);
      load_batch.push_back(batch->seconds);
      whole.push_back(w->seconds);
      load_bytes = m->bytes;
      whole_bytes = w->bytes;
      disk_bytes = 0;
      for (const char* f : {"manifest.json", "index.swi"}) {
        auto st = os::Stat(os::JoinPath(ckpt, f));
        if (st.ok()) disk_bytes += static_cast<std::uint64_t>(st->st_size);
      }
    }
    double mc = Median(commit), ml = Median(load), mcl = Median(load_cold),
           mb = Median(load_batch), mw = Median(whole);
    if (json) {
      char buf[512];
      std::snprintf(buf, sizeof buf,
                    "%s{\"ranks\":%d,\"items_per_rank\":%d,\"format\":%d,\"gathered\":%s,"
                    "\"rank_report_bytes\":%llu,\"metadata_disk_bytes\":%llu,"
                    "\"commit_s\":%.4f,\"rank_load_s\":%.4f,\"rank_load_cold_s\":%.4f,"
                    "\"rank_load_cold_batched_s\":%.4f,"
                    "\"rank_load_bytes\":%llu,"
                    "\"whole_items_load_s\":%.4f,\"whole_items_bytes\":%llu}",
                    out_json.size() > 1 ? "," : "", R, items, format,
                    gathered ? "true" : "false", static_cast<unsigned long long>(report_bytes),
                    static_cast<unsigned long long>(disk_bytes), mc, ml, mcl, mb,
                    static_cast<unsigned long long>(load_bytes), mw,
                    static_cast<unsigned long long>(whole_bytes));
      out_json += buf;
    } else {
      std::printf("| %d | %d | %d | %s | %.3f | %.4f | %.4f | %.4f | %s | %.3f | %s | %.3f |\n",
                  R, items, R * items, FormatBytes(disk_bytes).c_str(), mc, mcl, mb, ml,
                  FormatBytes(load_bytes).c_str(), mw, FormatBytes(whole_bytes).c_str(),
                  mc + mcl);
      std::fflush(stdout);
    }
  }
  if (!keep) (void)os::RemoveTree(dir);
  if (json) std::printf("%s]\n", out_json.c_str());
  return 0;
}
