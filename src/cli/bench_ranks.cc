// The rank-process harness of `shardwise bench`: R forked processes each
// save a synthetic rank shard, rank 0 commits, then every rank loads its
// shard back with checksum verification and compares it bit for bit.
// Timings are taken by the parent from "go" to "every rank reported", so
// they include the commit protocol's fsyncs: what is measured is durable
// bytes. Children report over one pipe, one tab-separated line each:
//   R rank                      ready (state built, load buffers touched)
//   S rank write_s commit_s backend direct bytes cpu_s   saved
//   L rank cpu_s                loaded and verified
//   V rank items bytes          compared bit for bit
//   E rank message              failed
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <list>
#include <memory>
#include <sstream>

#include "bench.h"
#include "output.h"
#include "synthetic.h"

namespace shardwise::cli {
namespace {

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

[[noreturn]] void Fail(int out_fd, int rank, const std::string& message) {
  Send(out_fd, "E\t" + std::to_string(rank) + "\t" + OneLine(message));
  ::_exit(1);
}

// Saves the rank's items (rank 0 also commits); reports "S".
void SaveRank(Repository& repo, const SaveSpec& spec, const SyntheticState& state, int out_fd) {
  const double cpu0 = CpuSeconds();
  auto wr = repo.WriteRank(spec, state.items);
  if (!wr.ok()) Fail(out_fd, spec.rank, wr.status().message());
  double commit_s = 0;
  if (spec.rank == 0) {
    const double t = MonotonicNow();
    auto c = repo.Commit(spec);
    commit_s = MonotonicNow() - t;
    if (!c.ok()) Fail(out_fd, 0, c.status().message());
  }
  std::ostringstream msg;
  msg << "S\t" << spec.rank << "\t" << wr->seconds << "\t" << commit_s << "\t" << wr->backend
      << "\t" << (wr->direct_io ? 1 : 0) << "\t" << wr->bytes << "\t" << CpuSeconds() - cpu0;
  Send(out_fd, msg.str());
}

// Reads the rank's items back into `back` (checksums verified); reports
// "L", then compares them with what was saved and reports "V".
void LoadRank(Repository& repo, const SaveSpec& spec, const SyntheticState& state,
              std::vector<std::unique_ptr<std::byte[]>>& back, int out_fd) {
  auto reader = repo.OpenCheckpoint(spec.name);
  if (!reader.ok()) Fail(out_fd, spec.rank, reader.status().message());
  std::vector<ReadRequest> reqs;
  for (std::size_t i = 0; i < state.items.size(); ++i) {
    // Only this rank's items are resolved (format 2 reads their records).
    auto found = (*reader)->Item(state.items[i].name);
    const ItemRecord* it = found.ok() ? *found : nullptr;
    std::size_t chunk = SIZE_MAX;
    for (std::size_t c = 0; it && c < it->chunks.size(); ++c)
      if (it->chunks[c].offsets == state.items[i].chunk_offsets) chunk = c;
    if (!it || chunk == SIZE_MAX)
      Fail(out_fd, spec.rank, "item " + state.items[i].name + " missing from the checkpoint");
    ReadRequest q;
    q.item = it;
    q.chunk = chunk;
    q.dst = back[i].get();
    q.dst_bytes = state.items[i].nbytes;
    reqs.push_back(std::move(q));
  }
  const double cpu0 = CpuSeconds();
  if (Status rs = (*reader)->Read(reqs); !rs.ok()) Fail(out_fd, spec.rank, rs.message());
  Send(out_fd, "L\t" + std::to_string(spec.rank) + "\t" + std::to_string(CpuSeconds() - cpu0));
  // Outside the timing: the loaded bytes must equal the saved ones.
  for (std::size_t i = 0; i < state.items.size(); ++i)
    if (std::memcmp(back[i].get(), state.items[i].data, state.items[i].nbytes) != 0)
      Fail(out_fd, spec.rank,
           "loaded bytes of " + state.items[i].name + " differ from the saved ones");
  Send(out_fd, "V\t" + std::to_string(spec.rank) + "\t" + std::to_string(state.items.size()) +
                   "\t" + std::to_string(state.bytes));
}

// One rank process: waits for "go" before the save and again before the load.
[[noreturn]] void RunChild(const BenchParams& p, const std::string& root, SaveSpec spec,
                           int go_fd, int go2_fd, int out_fd) {
  SyntheticState state = MakeTransformerState(p.size_per_rank, spec.rank, p.ranks, 20261129);
  auto repo = Repository::Open(root, p.options);
  if (!repo.ok()) Fail(out_fd, spec.rank, repo.status().message());
  // Destination buffers for the load, touched now so that page faults are
  // not part of the measurement (a real load fills existing tensors).
  std::vector<std::unique_ptr<std::byte[]>> back(state.items.size());
  for (std::size_t i = 0; i < state.items.size(); ++i) {
    back[i] = std::make_unique<std::byte[]>(state.items[i].nbytes);
    std::memset(back[i].get(), 0xA5, state.items[i].nbytes);
  }
  Send(out_fd, "R\t" + std::to_string(spec.rank));
  if (!WaitByte(go_fd)) ::_exit(1);
  SaveRank(**repo, spec, state, out_fd);
  if (!WaitByte(go2_fd)) ::_exit(1);
  LoadRank(**repo, spec, state, back, out_fd);
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

namespace {

// Sums what the ranks reported.
RankFigures Tally(const std::vector<std::vector<std::string>>& saved,
                  const std::vector<std::vector<std::string>>& loaded,
                  const std::vector<std::vector<std::string>>& verified) {
  RankFigures f;
  for (const auto& v : verified) {
    f.items += std::stoull(v[2]);
    f.data_bytes += std::stoull(v[3]);
  }
  for (const auto& s : saved) {
    f.max_write_s = std::max(f.max_write_s, std::stod(s[2]));
    f.commit_s = std::max(f.commit_s, std::stod(s[3]));
    f.backend = s[4];
    f.direct_io = s[5] == "1";
    f.file_bytes += std::stoull(s[6]);
    f.save_cpu_s += std::stod(s[7]);
  }
  for (const auto& l : loaded) f.load_cpu_s += std::stod(l[2]);
  return f;
}

// The parent's side: forks the ranks, then releases and times each phase.
class Harness {
 public:
  ~Harness() {
    for (pid_t p : pids_)
      if (p > 0) ::kill(p, SIGKILL);
    for (pid_t p : pids_)
      if (p > 0) ::waitpid(p, nullptr, 0);
    for (int fd : {res_[0], go_[1], go2_[1]})
      if (fd >= 0) ::close(fd);
  }

  Status Start(const BenchParams& p, const std::string& root, const SaveSpec& spec) {
    if (::pipe(res_) || ::pipe(go_) || ::pipe(go2_))
      return Status(StatusCode::kIoError, std::string("pipe: ") + std::strerror(errno));
    std::cout.flush();
    for (int r = 0; r < p.ranks; ++r) {
      const pid_t pid = ::fork();
      if (pid < 0) return Status(StatusCode::kIoError, std::string("fork: ") + std::strerror(errno));
      if (pid == 0) {
        ::close(res_[0]);
        ::close(go_[1]);
        ::close(go2_[1]);
        SaveSpec mine = spec;
        mine.rank = r;
        RunChild(p, root, mine, go_[0], go2_[0], res_[1]);
      }
      pids_.push_back(pid);
    }
    for (int* fd : {&res_[1], &go_[0], &go2_[0]}) {
      ::close(*fd);
      *fd = -1;
    }
    collector_ = std::make_unique<Collector>(res_[0], pids_);
    return Status::Ok();
  }

  Result<std::vector<std::vector<std::string>>> Wait(char kind) {
    return collector_->Wait(kind, static_cast<int>(pids_.size()));
  }

  // Writes one byte per rank to a "go" pipe (0: save, 1: load).
  Status Go(int phase) {
    const std::string bytes(pids_.size(), 'g');
    const int fd = phase == 0 ? go_[1] : go2_[1];
    if (::write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()))
      return Status(StatusCode::kInternal, "cannot signal the ranks");
    return Status::Ok();
  }

  void Reap() {
    for (pid_t& p : pids_)
      if (p > 0) ::waitpid(std::exchange(p, -1), nullptr, 0);
  }

 private:
  int res_[2] = {-1, -1}, go_[2] = {-1, -1}, go2_[2] = {-1, -1};
  std::vector<pid_t> pids_;
  std::unique_ptr<Collector> collector_;
};

}  // namespace

Result<RankFigures> RunRanks(const BenchParams& p, const std::string& root, const SaveSpec& spec,
                             std::ostream& err) {
  // The ranks share this machine as torchrun's would: each defaults to its
  // share of the CPUs (Options::threads), unless the caller set the count.
  if (!std::getenv("LOCAL_WORLD_SIZE"))
    ::setenv("LOCAL_WORLD_SIZE", std::to_string(p.ranks).c_str(), 1);
  Harness h;
  SW_RETURN_IF_ERROR(h.Start(p, root, spec));
  const bool tty = StderrIsTty() && !p.json;
  auto say = [&](const std::string& what) {
    if (tty) err << "\r\033[Kbench: " << what << std::flush;
  };
  say("preparing " + std::to_string(p.ranks) + " x " + FormatBytes(p.size_per_rank) + " ...");
  SW_RETURN_IF_ERROR(h.Wait('R').status());
  say("saving ...");
  const double t0 = MonotonicNow();
  SW_RETURN_IF_ERROR(h.Go(0));
  SW_ASSIGN_OR_RETURN(auto saved, h.Wait('S'));
  const double save_s = MonotonicNow() - t0;
  say("loading ...");
  const double t1 = MonotonicNow();
  SW_RETURN_IF_ERROR(h.Go(1));
  SW_ASSIGN_OR_RETURN(auto loaded, h.Wait('L'));
  const double load_s = MonotonicNow() - t1;
  SW_ASSIGN_OR_RETURN(auto verified, h.Wait('V'));
  h.Reap();
  if (tty) err << "\r\033[K" << std::flush;
  RankFigures f = Tally(saved, loaded, verified);
  f.save_s = save_s;
  f.load_s = load_s;
  return f;
}

}  // namespace shardwise::cli
