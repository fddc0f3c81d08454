// shardwise bench: R forked processes each save a synthetic rank shard,
// rank 0 commits, then every rank loads its shard back with checksum
// verification and compares it bit for bit. Timings are taken by the parent
// from "go" to "every rank reported", so they include the commit protocol's
// fsyncs: what is measured is durable bytes.
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <iostream>
#include <list>
#include <sstream>

#include "cli/args.h"
#include "cli/bench.h"
#include "cli/cli.h"
#include "cli/output.h"
#include "cli/synthetic.h"
#include "common/parallel.h"
#include "format/crc32c.h"
#include "fs/placement.h"
#include "os/posix.h"
#include "shardwise/repository.h"

namespace shardwise::cli {

constexpr char kBenchHelp[] = R"(Usage: shardwise bench --dir D [--ranks R] [--size-per-rank SIZE]
                       [--io-backend auto|uring|threads] [--queue-depth N]
                       [--io-unit SIZE] [--direct-io auto|on|off] [--threads N]
                       [--keep] [--json]
                       [--layout auto|off] [--stripe-count N] [--stripe-size SIZE]
                       [--files-per-rank K] [--provisioned-mbps X | --fsx-describe FILE]
       shardwise bench --async --dir D [--size-per-rank SIZE] [--saves N]
                       [--staging-budget SIZE] [...] [--json]

Measure checkpoint throughput on directory D (created if missing). R
processes each build a synthetic rank state shaped like a transformer layer
stack (projection matrices, biases, norms; bf16), then all save at once
through the full commit protocol (shards fsynced, manifest, directory
fsyncs, rename). Then every rank loads its part back, verifying every
checksum, and compares it with what it saved.

Save time runs from the start signal until the coordinator's commit is
durable; load time until the last rank has read and verified its data.
The ranks run as torchrun's would on one node (LOCAL_WORLD_SIZE=R unless
set), so each copies and checksums on its share of the CPUs by default.
The report also gives the CPU time of each (user + system, every thread
of every rank, per GB), the machine's copy and CRC32C rates measured
afterwards with the time one copy and one checksum pass of the same bytes
take (the limit where the data stays in memory, as on tmpfs), and the I/O
mode the root's filesystem got (O_DIRECT or buffered, and why).

Options:
  --dir D              where to write (a checkpoint root)            [required]
  --ranks R            writer processes                              [2]
  --size-per-rank SIZE bytes per rank: 512MiB, 2GiB, 100MB...        [1GiB]
  --io-backend B       auto (io_uring, else threads), uring, threads [auto]
  --queue-depth N      I/Os in flight per rank                       [8]
  --io-unit SIZE       bytes per write/read                          [8MiB]
  --direct-io M        auto (the root's filesystem decides; the report
                       says what and why), on, off                   [auto]
  --threads N          threads per rank for copies and checksums
                       (SHARDWISE_THREADS; 0: CPUs / LOCAL_WORLD_SIZE) [0]
  --keep               leave the committed checkpoint in D
  --json               machine-readable output (schema in docs/cli.md)

Lustre (docs/lustre.md). The first line of the report names the filesystem
and says whether Lustre layouts were applied to the shard files:
  --layout M           auto (on Lustre, per-file layouts), off           [auto]
  --stripe-count N     stripes per shard file, -1 = every OST        [policy]
  --stripe-size SIZE   stripe size, a multiple of 64KiB              [policy]
  --files-per-rank K   split each rank's shard into K part files     [1]
  --provisioned-mbps X the file system's provisioned throughput in MB/s:
                       also report efficiency = achieved / provisioned
  --fsx-describe FILE  the same figure from saved `aws fsx
                       describe-file-systems` JSON (one file system):
                       capacity / 1024 x MB/s per TiB (SCRATCH: 200)

Asynchronous saves (one process, several saves through one engine):
  --async              report the stall (until SaveAsync returns; median of
                       the saves after the first), the first stall (sets up
                       the staging pool), the background persist time, the
                       memcpy bandwidth over the same bytes, how much of its
                       speed a CPU-bound "training" loop keeps while saves
                       persist, and the peak resident memory
  --saves N            saves to run                                  [5]
  --staging-budget S   staging pool size; smaller than the state: waves
                                                                     [state size]
  --help               this text

Exit codes: 0 measured and verified; 1 a save, load or comparison failed;
2 usage error.
)";

namespace {

// Provisioned MB/s of the one file system in saved `aws fsx
// describe-file-systems` output: capacity (GiB) / 1024 x MB/s per TiB, with
// SCRATCH's documented 200 MB/s per TiB where the API reports null.
Result<double> ProvisionedFromDescribe(const std::string& path) {
  auto text = os::ReadSmallFile(path, 16 << 20);
  if (!text.ok()) return text.status().WithContext("--fsx-describe");
  auto j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("FileSystems") ||
      !j["FileSystems"].is_array())
    return InvalidArgument(path + ": not `aws fsx describe-file-systems` JSON (no FileSystems list)");
  const auto& list = j["FileSystems"];
  if (list.size() != 1)
    return InvalidArgument(path + ": holds " + std::to_string(list.size()) +
                           " file systems; pass describe output for exactly one "
                           "(--file-system-ids ID)");
  const auto& f = list[0];
  const auto* cap = f.contains("StorageCapacity") ? &f["StorageCapacity"] : nullptr;
  if (!cap || !cap->is_number())
    return InvalidArgument(path + ": the file system has no StorageCapacity");
  double per_tib = 0;
  std::string type;
  if (f.contains("LustreConfiguration") && f["LustreConfiguration"].is_object()) {
    const auto& l = f["LustreConfiguration"];
    if (l.contains("DeploymentType") && l["DeploymentType"].is_string())
      type = l["DeploymentType"].get<std::string>();
    if (l.contains("PerUnitStorageThroughput") && l["PerUnitStorageThroughput"].is_number())
      per_tib = l["PerUnitStorageThroughput"].get<double>();
  }
  if (per_tib == 0 && type.rfind("SCRATCH", 0) == 0) per_tib = 200;
  if (per_tib == 0)
    return InvalidArgument(path + ": no PerUnitStorageThroughput for deployment type '" + type +
                           "'; pass --provisioned-mbps");
  return cap->get<double>() / 1024.0 * per_tib;
}

// Line-oriented messages from children over one pipe (each line is shorter
// than PIPE_BUF, so writes from different children never interleave).
void Send(int fd, const std::string& line) {
  std::string l = line + "\n";
  ssize_t r;
  do {
    r = ::write(fd, l.data(), l.size());
  } while (r < 0 && errno == EINTR);
}

bool WaitByte(int fd) {
  char c;
  ssize_t r;
  do {
    r = ::read(fd, &c, 1);
  } while (r < 0 && errno == EINTR);
  return r == 1;
}

std::string OneLine(std::string s) {
  for (auto& c : s)
    if (c == '\n' || c == '\t') c = ' ';
  if (s.size() > 1000) s.resize(1000);
  return s;
}

// User and system seconds of this process, all its threads (io_uring's
// workers among them).
double CpuSeconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return sec(ru.ru_utime) + sec(ru.ru_stime);
}

// What the machine allows a save or load of memory-resident data: one copy
// and one CRC32C pass over the bytes, each at the best rate of 1 thread or
// every CPU (each thread its own share; median of 3), into and from
// pre-faulted memory.
// A filesystem that keeps files in memory (tmpfs) also allocates a page for
// every 4 KiB it stores: `fresh_copy_gbps` is memcpy into memory never
// touched before (4 KiB pages), which pays that.
struct MachineLimit {
  double copy_gbps = 0;
  double fresh_copy_gbps = 0;
  double crc_gbps = 0;
  int threads = 1;
  static double Pass(std::uint64_t bytes, double copy, double crc) {
    if (copy <= 0 || crc <= 0) return 0;
    return static_cast<double>(bytes) / 1e9 * (1 / copy + 1 / crc);
  }
  double Seconds(std::uint64_t bytes) const { return Pass(bytes, copy_gbps, crc_gbps); }
  double FreshSeconds(std::uint64_t bytes) const { return Pass(bytes, fresh_copy_gbps, crc_gbps); }
};

MachineLimit MeasureMachineLimit() {
  constexpr std::uint64_t kBytes = 256ull << 20;
  MachineLimit m;
  m.threads = AvailableCpus();
  std::vector<std::byte> src(kBytes), dst(kBytes);
  for (std::uint64_t i = 0; i < kBytes; i += 4096) src[i] = static_cast<std::byte>(i >> 12);
  std::memset(dst.data(), 0, kBytes);
  auto rate = [&](int threads, auto&& body) {
    std::vector<double> r;
    const std::uint64_t share = kBytes / static_cast<std::uint64_t>(threads);
    for (int rep = 0; rep < 3; ++rep) {
      const double t0 = os::MonotonicSeconds();
      ParallelFor(0, static_cast<std::size_t>(threads), threads,
                  [&](std::size_t t) { body(t * share, share); });
      r.push_back(static_cast<double>(kBytes) / (os::MonotonicSeconds() - t0) / 1e9);
    }
    std::sort(r.begin(), r.end());
    return r[1];
  };
  std::atomic<std::uint32_t> sink{0};
  for (int t : {1, m.threads}) {
    m.copy_gbps = std::max(m.copy_gbps, rate(t, [&](std::uint64_t off, std::uint64_t n) {
      std::memcpy(dst.data() + off, src.data() + off, n);
    }));
    m.crc_gbps = std::max(m.crc_gbps, rate(t, [&](std::uint64_t off, std::uint64_t n) {
      sink.fetch_xor(format::Crc32c(src.data() + off, n));
    }));
    std::vector<double> fresh;
    for (int rep = 0; rep < 3; ++rep) {
      void* mem = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                         -1, 0);
      if (mem == MAP_FAILED) break;
      (void)::madvise(mem, kBytes, MADV_NOHUGEPAGE);
      auto* to = static_cast<std::byte*>(mem);
      const std::uint64_t share = kBytes / static_cast<std::uint64_t>(t);
      const double t0 = os::MonotonicSeconds();
      ParallelFor(0, static_cast<std::size_t>(t), t, [&](std::size_t k) {
        std::memcpy(to + k * share, src.data() + k * share, share);
      });
      fresh.push_back(static_cast<double>(kBytes) / (os::MonotonicSeconds() - t0) / 1e9);
      ::munmap(mem, kBytes);
    }
    if (fresh.size() == 3) {
      std::sort(fresh.begin(), fresh.end());
      m.fresh_copy_gbps = std::max(m.fresh_copy_gbps, fresh[1]);
    }
  }
  return m;
}

[[noreturn]] void RunChild(int rank, int ranks, std::uint64_t size, const Options& opts,
                           const std::string& dir, const SaveSpec& base, int go_fd,
                           int go2_fd, int out_fd) {
  SyntheticState state = MakeTransformerState(size, rank, ranks, 20261129);
  auto repo = Repository::Open(dir, opts);
  if (!repo.ok()) {
    Send(out_fd, "E\t" + std::to_string(rank) + "\t" + OneLine(repo.status().message()));
    ::_exit(1);
  }
  // Destination buffers for the load, touched now so that page faults are
  // not part of the measurement (a real load fills existing tensors).
  std::vector<std::unique_ptr<std::byte[]>> back(state.items.size());
  for (std::size_t i = 0; i < state.items.size(); ++i) {
    back[i] = std::make_unique<std::byte[]>(state.items[i].nbytes);
    std::memset(back[i].get(), 0xA5, state.items[i].nbytes);
  }
  Send(out_fd, "R\t" + std::to_string(rank));
  if (!WaitByte(go_fd)) ::_exit(1);

  SaveSpec spec = base;
  spec.rank = rank;
  const double cpu0 = CpuSeconds();
  auto wr = (*repo)->WriteRank(spec, state.items);
  if (!wr.ok()) {
    Send(out_fd, "E\t" + std::to_string(rank) + "\t" + OneLine(wr.status().message()));
    ::_exit(1);
  }
  double commit_s = 0;
  if (rank == 0) {
    double t = os::MonotonicSeconds();
    auto c = (*repo)->Commit(spec);
    commit_s = os::MonotonicSeconds() - t;
    if (!c.ok()) {
      Send(out_fd, "E\t0\t" + OneLine(c.status().message()));
      ::_exit(1);
    }
  }
  std::ostringstream msg;
  msg << "S\t" << rank << "\t" << wr->seconds << "\t" << commit_s << "\t" << wr->backend << "\t"
      << (wr->direct_io ? 1 : 0) << "\t" << wr->bytes << "\t" << CpuSeconds() - cpu0;
  Send(out_fd, msg.str());
  if (!WaitByte(go2_fd)) ::_exit(1);

  auto reader = (*repo)->OpenCheckpoint(spec.name);
  if (!reader.ok()) {
    Send(out_fd, "E\t" + std::to_string(rank) + "\t" + OneLine(reader.status().message()));
    ::_exit(1);
  }
  std::vector<ReadRequest> reqs;
  const Manifest& m = (*reader)->manifest();
  for (std::size_t i = 0; i < state.items.size(); ++i) {
    const ItemRecord* it = m.FindItem(state.items[i].name);
    std::size_t chunk = SIZE_MAX;
    for (std::size_t c = 0; it && c < it->chunks.size(); ++c)
      if (it->chunks[c].offsets == state.items[i].chunk_offsets) chunk = c;
    if (!it || chunk == SIZE_MAX) {
      Send(out_fd, "E\t" + std::to_string(rank) + "\titem " + state.items[i].name +
                       " missing from the checkpoint");
      ::_exit(1);
    }
    ReadRequest q;
    q.item = it;
    q.chunk = chunk;
    q.dst = back[i].get();
    q.dst_bytes = state.items[i].nbytes;
    reqs.push_back(std::move(q));
  }
  const double cpu1 = CpuSeconds();
  Status rs = (*reader)->Read(reqs);
  if (!rs.ok()) {
    Send(out_fd, "E\t" + std::to_string(rank) + "\t" + OneLine(rs.message()));
    ::_exit(1);
  }
  Send(out_fd, "L\t" + std::to_string(rank) + "\t" + std::to_string(CpuSeconds() - cpu1));
  // Outside the timing: the loaded bytes must equal the saved ones.
  for (std::size_t i = 0; i < state.items.size(); ++i)
    if (std::memcmp(back[i].get(), state.items[i].data, state.items[i].nbytes) != 0) {
      Send(out_fd, "E\t" + std::to_string(rank) + "\tloaded bytes of " +
                       state.items[i].name + " differ from the saved ones");
      ::_exit(1);
    }
  Send(out_fd, "V\t" + std::to_string(rank) + "\t" + std::to_string(state.items.size()) + "\t" +
                   std::to_string(state.bytes));
  ::_exit(0);
}

// Reads result lines from children until `want` lines of `kind` arrived.
// Fails on an "E" line, or when a child died.
class Collector {
 public:
  Collector(int fd, std::vector<pid_t>& pids) : fd_(fd), pids_(pids) {}

  Result<std::vector<std::vector<std::string>>> Wait(char kind, int want) {
    std::vector<std::vector<std::string>> got;
    while (true) {
      // Lines of a later phase may arrive early: they wait in pending_.
      for (auto it = pending_.begin(); it != pending_.end() && static_cast<int>(got.size()) < want;) {
        if ((*it)[0] == "E")
          return Status(StatusCode::kAborted, "rank " + (it->size() > 1 ? (*it)[1] : "?") +
                                                  ": " + (it->size() > 2 ? (*it)[2] : ""));
        if ((*it)[0][0] == kind) {
          got.push_back(*it);
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
      if (static_cast<int>(got.size()) == want) return got;
      pollfd p{fd_, POLLIN, 0};
      int r = ::poll(&p, 1, 200);
      if (r > 0) {
        char tmp[4096];
        ssize_t n = ::read(fd_, tmp, sizeof tmp);
        if (n == 0) return Status(StatusCode::kAborted, "all ranks exited early");
        if (n > 0) buf_.append(tmp, static_cast<std::size_t>(n));
        for (auto nl = buf_.find('\n'); nl != std::string::npos; nl = buf_.find('\n')) {
          std::vector<std::string> f;
          std::stringstream ss(buf_.substr(0, nl));
          buf_.erase(0, nl + 1);
          std::string part;
          while (std::getline(ss, part, '\t')) f.push_back(part);
          if (!f.empty() && !f[0].empty()) pending_.push_back(std::move(f));
        }
        continue;
      }
      for (pid_t& pid : pids_) {
        int st = 0;
        if (pid > 0 && ::waitpid(pid, &st, WNOHANG) == pid) {
          pid = -1;
          if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            return Status(StatusCode::kAborted,
                          "a rank process died (wait status " + std::to_string(st) + ")");
        }
      }
    }
  }

 private:
  int fd_;
  std::vector<pid_t>& pids_;
  std::string buf_;
  std::list<std::vector<std::string>> pending_;
};

}  // namespace

int RunBench(const Argv& argv, std::ostream& out, std::ostream& err) {
  auto args = Args::Parse(argv, {{"json"}, {"keep"}, {"async"}, {"dir", true}, {"ranks", true},
                                 {"size-per-rank", true}, {"io-backend", true},
                                 {"queue-depth", true}, {"io-unit", true}, {"direct-io", true},
                                 {"threads", true},
                                 {"saves", true}, {"staging-budget", true}, {"layout", true},
                                 {"stripe-count", true}, {"stripe-size", true},
                                 {"files-per-rank", true},
                                 {"provisioned-mbps", true}, {"fsx-describe", true}});
  if (!args.ok()) return UsageError(err, "bench", args.status().message());
  if (args->help()) {
    out << kBenchHelp;
    return kExitOk;
  }
  if (!args->positional().empty())
    return UsageError(err, "bench", "unexpected argument '" + args->positional()[0] + "'");
  auto dir = args->Get("dir");
  if (!dir) return UsageError(err, "bench", "--dir is required");
  auto opts_r = Options::FromEnv();
  if (!opts_r.ok()) return UsageError(err, "bench", opts_r.status().message());
  Options opts = *opts_r;
  auto ranks_r = args->GetInt("ranks", 1, 1024);
  if (!ranks_r.ok()) return UsageError(err, "bench", ranks_r.status().message());
  int ranks = static_cast<int>(ranks_r->value_or(2));
  std::uint64_t size = 1ull << 30;
  if (auto s = args->Get("size-per-rank")) {
    auto v = ParseSize(*s);
    if (!v.ok()) return UsageError(err, "bench", "--size-per-rank: " + v.status().message());
    if (*v < (1u << 20)) return UsageError(err, "bench", "--size-per-rank must be at least 1MiB");
    size = *v;
  }
  if (auto b = args->Get("io-backend")) {
    auto k = ParseIoBackendKind(*b);
    if (!k.ok()) return UsageError(err, "bench", k.status().message());
    opts.io_backend = *k;
  }
  auto qd = args->GetInt("queue-depth", 1, 256);
  if (!qd.ok()) return UsageError(err, "bench", qd.status().message());
  if (*qd) opts.queue_depth = static_cast<int>(**qd);
  if (args->Get("threads")) {
    auto t = args->GetInt("threads", 0, 1024);
    if (!t.ok()) return UsageError(err, "bench", t.status().message());
    opts.threads = static_cast<int>(t->value_or(0));
  }
  if (auto u = args->Get("io-unit")) {
    auto v = ParseSize(*u);
    if (!v.ok()) return UsageError(err, "bench", "--io-unit: " + v.status().message());
    opts.io_unit_bytes = *v;
  }
  if (auto d = args->Get("direct-io")) {
    if (*d == "auto") opts.direct_io = DirectIoMode::kAuto;
    else if (*d == "on") opts.direct_io = DirectIoMode::kOn;
    else if (*d == "off") opts.direct_io = DirectIoMode::kOff;
    else return UsageError(err, "bench", "--direct-io expects auto, on or off");
  }
  if (auto l = args->Get("layout")) {
    if (*l == "auto") opts.layout = LayoutMode::kAuto;
    else if (*l == "off") opts.layout = LayoutMode::kOff;
    else return UsageError(err, "bench", "--layout expects auto or off");
  }
  if (args->Get("stripe-count")) {
    auto n = args->GetInt("stripe-count", -1, 65535);
    if (!n.ok()) return UsageError(err, "bench", n.status().message());
    opts.stripe_count = static_cast<int>(n->value_or(0));
  }
  if (args->Get("files-per-rank")) {
    auto n = args->GetInt("files-per-rank", 1, 64);
    if (!n.ok()) return UsageError(err, "bench", n.status().message());
    opts.files_per_rank = static_cast<int>(n->value_or(1));
  }
  if (auto v = args->Get("stripe-size")) {
    auto size = ParseSize(*v);
    if (!size.ok()) return UsageError(err, "bench", "--stripe-size: " + size.status().message());
    opts.stripe_size = *size;
  }
  if (Status s = opts.Validate(); !s.ok()) return UsageError(err, "bench", s.message());
  double provisioned_mbps = 0;
  if (args->Get("provisioned-mbps") && args->Get("fsx-describe"))
    return UsageError(err, "bench", "give --provisioned-mbps or --fsx-describe, not both");
  if (auto v = args->Get("provisioned-mbps")) {
    char* end = nullptr;
    provisioned_mbps = std::strtod(v->c_str(), &end);
    if (end == v->c_str() || *end != '\0' || !(provisioned_mbps > 0) ||
        !std::isfinite(provisioned_mbps))
      return UsageError(err, "bench", "--provisioned-mbps expects a positive number of MB/s");
  }
  if (auto f = args->Get("fsx-describe")) {
    auto mbps = ProvisionedFromDescribe(*f);
    if (!mbps.ok()) return UsageError(err, "bench", mbps.status().message());
    provisioned_mbps = *mbps;
  }
  if (args->Has("async")) {
    BenchParams p;
    p.dir = *dir;
    p.ranks = static_cast<int>(ranks_r->value_or(1));
    p.size_per_rank = size;
    p.options = opts;
    p.keep = args->Has("keep");
    p.json = args->json();
    auto saves = args->GetInt("saves", 2, 10000);
    if (!saves.ok()) return UsageError(err, "bench", saves.status().message());
    p.saves = static_cast<int>(saves->value_or(5));
    if (auto b = args->Get("staging-budget")) {
      auto v = ParseSize(*b);
      if (!v.ok()) return UsageError(err, "bench", "--staging-budget: " + v.status().message());
      p.staging_budget = *v;
    }
    return RunAsyncBench(p, out, err);
  }
  if (args->Has("saves") || args->Has("staging-budget"))
    return UsageError(err, "bench", "--saves and --staging-budget go with --async");
  auto repo = Repository::Open(*dir, opts, /*create=*/true);
  if (!repo.ok()) return UsageError(err, "bench", repo.status().message());
  // The same probe and policy the ranks' saves use, for the report.
  auto placement = fs::Placement::ForDirectory((*repo)->root(), opts);
  std::string layout_line = placement->Summary();
  nlohmann::ordered_json layout_json = {{"filesystem", placement->fs().type},
                                        {"lustre", placement->fs().lustre},
                                        {"applied", false}};
  if (placement->fs().lustre && opts.layout != LayoutMode::kOff) {
    fs::LayoutDecision d = fs::DecideLayout(
        {ranks * opts.files_per_rank, size / static_cast<std::uint64_t>(opts.files_per_rank),
         placement->fs().ost_count, opts.stripe_count, opts.stripe_size});
    layout_json["applied"] = d.apply;
    layout_json["reason"] = d.reason;
    if (d.apply) {
      layout_json["stripe_count"] = d.layout.stripe_count;
      layout_json["stripe_size"] = d.layout.stripe_size;
      layout_line += "; shard files: " + std::to_string(d.layout.stripe_count) + " stripe(s) of " +
                     FormatBytes(d.layout.stripe_size) + " (" + d.reason + ")";
    } else {
      layout_line += "; " + d.reason;
    }
  }
  layout_json["summary"] = layout_line;
  if (const auto& mode = placement->io_mode(); mode.ok())
    layout_json["io_mode"] = {{"direct_writes", mode->direct_writes},
                              {"direct_reads", mode->direct_reads},
                              {"measured", mode->measured},
                              {"why", mode->why}};
  else
    return UsageError(err, "bench", mode.status().message());

  SaveSpec spec;
  spec.save_id = os::RandomHex(8);
  spec.name = "bench-" + spec.save_id;
  spec.world_size = ranks;
  spec.user_json = R"({"shardwise_bench":true})";

  // The ranks share this machine as torchrun's would: each defaults to its
  // share of the CPUs (Options::threads), unless the caller set the count.
  if (!std::getenv("LOCAL_WORLD_SIZE"))
    ::setenv("LOCAL_WORLD_SIZE", std::to_string(ranks).c_str(), 1);
  int res[2], go[2], go2[2];
  if (::pipe(res) || ::pipe(go) || ::pipe(go2)) {
    err << "shardwise bench: pipe: " << std::strerror(errno) << '\n';
    return kExitProblem;
  }
  std::cout.flush();
  std::vector<pid_t> pids;
  for (int r = 0; r < ranks; ++r) {
    pid_t pid = ::fork();
    if (pid < 0) {
      err << "shardwise bench: fork: " << std::strerror(errno) << '\n';
      for (pid_t p : pids) ::kill(p, SIGKILL);
      return kExitProblem;
    }
    if (pid == 0) {
      ::close(res[0]);
      ::close(go[1]);
      ::close(go2[1]);
      RunChild(r, ranks, size, opts, (*repo)->root(), spec, go[0], go2[0], res[1]);
    }
    pids.push_back(pid);
  }
  ::close(res[1]);
  ::close(go[0]);
  ::close(go2[0]);
  Collector col(res[0], pids);
  auto fail = [&](const Status& s) {
    for (pid_t p : pids)
      if (p > 0) ::kill(p, SIGKILL);
    for (pid_t p : pids)
      if (p > 0) ::waitpid(p, nullptr, 0);
    err << "shardwise bench: " << s.message() << '\n';
    return kExitProblem;
  };
  bool tty = StderrIsTty() && !args->json();
  if (tty) err << "bench: preparing " << ranks << " x " << FormatBytes(size) << " ..." << std::flush;
  auto ready = col.Wait('R', ranks);
  if (!ready.ok()) return fail(ready.status());
  if (tty) err << "\rbench: saving ...                       " << std::flush;
  std::string bytes(static_cast<std::size_t>(ranks), 'g');
  double t0 = os::MonotonicSeconds();
  if (::write(go[1], bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()))
    return fail(Status(StatusCode::kInternal, "cannot signal ranks"));
  auto saved = col.Wait('S', ranks);
  double save_s = os::MonotonicSeconds() - t0;
  if (!saved.ok()) return fail(saved.status());
  if (tty) err << "\rbench: loading ...                      " << std::flush;
  double t1 = os::MonotonicSeconds();
  if (::write(go2[1], bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()))
    return fail(Status(StatusCode::kInternal, "cannot signal ranks"));
  auto loaded = col.Wait('L', ranks);
  double load_s = os::MonotonicSeconds() - t1;
  if (!loaded.ok()) return fail(loaded.status());
  auto verified = col.Wait('V', ranks);
  if (!verified.ok()) return fail(verified.status());
  for (pid_t p : pids)
    if (p > 0) ::waitpid(p, nullptr, 0);
  if (tty) err << "\r\033[K" << std::flush;

  std::uint64_t data_bytes = 0, file_bytes = 0;
  std::size_t items = 0;
  for (const auto& v : *verified) {
    items += std::stoull(v[2]);
    data_bytes += std::stoull(v[3]);
  }
  double max_write = 0, commit = 0, save_cpu = 0, load_cpu = 0;
  std::string backend;
  bool direct = false;
  for (const auto& s : *saved) {
    max_write = std::max(max_write, std::stod(s[2]));
    commit = std::max(commit, std::stod(s[3]));
    backend = s[4];
    direct = s[5] == "1";
    file_bytes += std::stoull(s[6]);
    save_cpu += std::stod(s[7]);
  }
  for (const auto& l : *loaded) load_cpu += std::stod(l[2]);
  // Measured once the ranks are gone, so it competes with nothing.
  const MachineLimit limit = MeasureMachineLimit();
  const double limit_s = limit.Seconds(data_bytes);
  const double fresh_s = limit.FreshSeconds(data_bytes);
  auto cpu_per_gb = [&](double cpu) { return data_bytes ? cpu / (data_bytes / 1e9) : 0; };
  bool keep = args->Has("keep");
  std::string ckpt_dir = os::JoinPath((*repo)->root(), spec.name);
  if (!keep) {
    (void)os::RemoveTree(ckpt_dir);
    // Do not leave `latest` naming the removed benchmark checkpoint.
    auto latest = os::ReadSmallFile(os::JoinPath((*repo)->root(), "latest"), 4096);
    if (latest.ok() && *latest == spec.name + "\n")
      (void)os::Unlink(os::JoinPath((*repo)->root(), "latest"));
    RemoveLoneWriterLock((*repo)->root());
  }
  auto gbps = [](std::uint64_t b, double s) { return s > 0 ? static_cast<double>(b) / s / 1e9 : 0; };
  if (args->json()) {
    nlohmann::ordered_json j;
    j["dir"] = (*repo)->root();
    j["ranks"] = ranks;
    j["size_per_rank"] = size;
    j["items"] = items;
    j["backend"] = backend;
    j["direct_io"] = direct;
    j["queue_depth"] = opts.queue_depth;
    j["threads_per_rank"] = opts.EffectiveThreads();
    j["io_unit_bytes"] = opts.io_unit_bytes;
    j["save"] = {{"bytes", data_bytes}, {"file_bytes", file_bytes}, {"seconds", save_s},
                 {"gb_per_s", gbps(data_bytes, save_s)}, {"max_rank_write_seconds", max_write},
                 {"commit_seconds", commit}};
    j["save"]["cpu_seconds"] = save_cpu;
    j["save"]["cpu_seconds_per_gb"] = cpu_per_gb(save_cpu);
    j["save"]["of_machine_limit"] = save_s > 0 ? limit_s / save_s : 0;
    j["save"]["of_fresh_page_limit"] = save_s > 0 ? fresh_s / save_s : 0;
    j["load"] = {{"bytes", data_bytes}, {"seconds", load_s}, {"gb_per_s", gbps(data_bytes, load_s)},
                 {"cpu_seconds", load_cpu}, {"cpu_seconds_per_gb", cpu_per_gb(load_cpu)},
                 {"of_machine_limit", load_s > 0 ? limit_s / load_s : 0}};
    j["machine"] = {{"copy_gb_per_s", limit.copy_gbps},
                    {"fresh_page_copy_gb_per_s", limit.fresh_copy_gbps},
                    {"crc32c_gb_per_s", limit.crc_gbps}, {"threads", limit.threads},
                    {"limit_seconds", limit_s}, {"fresh_page_limit_seconds", fresh_s}};
    j["io_mode"] = layout_json["io_mode"];
    j["verified"] = true;
    j["checkpoint"] = keep ? nlohmann::ordered_json(ckpt_dir) : nlohmann::ordered_json(nullptr);
    j["layout"] = layout_json;
    if (provisioned_mbps > 0) {
      j["provisioned_mbps"] = provisioned_mbps;
      j["efficiency"] = {{"save", gbps(data_bytes, save_s) * 1000 / provisioned_mbps},
                         {"load", gbps(data_bytes, load_s) * 1000 / provisioned_mbps}};
    }
    WriteJson(out, j);
    return kExitOk;
  }
  char line[512];
  out << "shardwise bench: " << ranks << " rank(s) x " << FormatBytes(size) << " in "
      << (*repo)->root() << "\n"
      << "  backend " << backend << ", O_DIRECT " << (direct ? "on" : "off") << ", queue depth "
      << opts.queue_depth << ", I/O unit " << FormatBytes(opts.io_unit_bytes) << ", "
      << opts.EffectiveThreads() << " thread(s) per rank, " << items << " items\n"
      << "  filesystem: " << layout_line << "\n";
  std::snprintf(line, sizeof line, "  save  %s in %s: %.2f GB/s (durable; commit %s)\n",
                FormatBytes(data_bytes).c_str(), FormatSeconds(save_s).c_str(),
                gbps(data_bytes, save_s), FormatSeconds(commit).c_str());
  out << line;
  std::snprintf(line, sizeof line, "  load  %s in %s: %.2f GB/s (checksums verified, bit-exact)\n",
                FormatBytes(data_bytes).c_str(), FormatSeconds(load_s).c_str(),
                gbps(data_bytes, load_s));
  out << line;
  std::snprintf(line, sizeof line,
                "  cpu   save %.2f s (%.2f s/GB), load %.2f s (%.2f s/GB): user+system, every "
                "thread of every rank\n",
                save_cpu, cpu_per_gb(save_cpu), load_cpu, cpu_per_gb(load_cpu));
  out << line;
  std::snprintf(line, sizeof line,
                "  machine: copy %.2f GB/s, CRC32C %.2f GB/s (best of 1 and %d threads); one "
                "copy and one checksum pass of these bytes take %s:\n"
                "         save at %.2fx, load at %.2fx of that limit (data in memory, e.g. tmpfs)\n",
                limit.copy_gbps, limit.crc_gbps, limit.threads, FormatSeconds(limit_s).c_str(),
                save_s > 0 ? limit_s / save_s : 0, load_s > 0 ? limit_s / load_s : 0);
  out << line;
  std::snprintf(line, sizeof line,
                "         copy into new pages %.2f GB/s (what a memory filesystem pays per "
                "page it stores): save at %.2fx of a limit of %s\n",
                limit.fresh_copy_gbps, save_s > 0 ? fresh_s / save_s : 0,
                FormatSeconds(fresh_s).c_str());
  out << line;
  if (provisioned_mbps > 0) {
    std::snprintf(line, sizeof line,
                  "  provisioned %.1f MB/s: efficiency save %.1f%%, load %.1f%% "
                  "(achieved / provisioned; docs/lustre.md explains how to read it)\n",
                  provisioned_mbps, gbps(data_bytes, save_s) * 1e5 / provisioned_mbps,
                  gbps(data_bytes, load_s) * 1e5 / provisioned_mbps);
    out << line;
  }
  if (keep) out << "  kept  " << ckpt_dir << '\n';
  return kExitOk;
}

}  // namespace shardwise::cli
