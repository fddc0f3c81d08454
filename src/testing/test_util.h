// Helpers shared by the C++ tests: temporary directories, deterministic
// items, running helper processes.
#pragma once

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "fs/recycle.h"
#include "os/posix.h"
#include "shardwise/reader.h"
#include "shardwise/types.h"

namespace shardwise::testing {

// The item with all its chunks (resolved from a format-2 index), or null.
inline const ItemRecord* FindItem(CheckpointReader& reader, std::string_view name) {
  auto it = reader.Item(name);
  return it.ok() ? *it : nullptr;
}

// A fresh directory, removed with everything in it at the end of the test.
// Sets an environment variable for a scope, restoring what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) ::setenv(name_.c_str(), old_.c_str(), 1);
    else ::unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_, old_;
  bool had_ = false;
};

class TempDir {
 public:
  explicit TempDir(const std::string& base = "") {
    std::string b = base;
    if (b.empty()) {
      const char* t = std::getenv("TEST_TMPDIR");
      b = t ? t : "/tmp";
    }
    std::string tmpl = b + "/shardwise-test-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    char* p = ::mkdtemp(buf.data());
    path_ = p ? p : "";
  }
  ~TempDir() {
    if (!path_.empty()) (void)os::RemoveTree(path_);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return os::JoinPath(path_, name); }

 private:
  std::string path_;
};

// Why recycled files (fs/recycle.h) cannot run in `dir`: not a local
// filesystem, or file leases unavailable (leases-enable 0); "" where they can.
inline std::string RecyclingUnavailable(const TempDir& dir) {
  if (!fs::RecyclingSupported(dir.path()))
    return dir.path() + " is not on a local filesystem recycling runs on";
  auto f = os::Open(dir / "lease-probe", O_WRONLY | O_CREAT, 0644);
  const bool leases = f.ok() && os::SoleOpener(f->fd());
  (void)os::Unlink(dir / "lease-probe");
  return leases ? "" : "file leases are unavailable here";
}

// Owns the bytes of a list of items.
// Every field of two chunk records alike.
inline bool SameChunk(const ChunkRecord& a, const ChunkRecord& b) {
  return a.offsets == b.offsets && a.sizes == b.sizes && a.file == b.file &&
         a.offset == b.offset && a.length == b.length && a.crc32c == b.crc32c;
}

struct OwnedItems {
  std::vector<WriteItem> items;
  std::vector<std::vector<std::byte>> data;

  void Add(std::string name, DType dtype, std::vector<std::int64_t> shape, std::uint64_t seed,
           std::vector<std::int64_t> offsets = {}, std::vector<std::int64_t> sizes = {}) {
    WriteItem w;
    w.name = std::move(name);
    w.dtype = dtype;
    w.global_shape = std::move(shape);
    w.chunk_offsets = std::move(offsets);
    w.chunk_sizes = std::move(sizes);
    const auto& s = w.chunk_sizes.empty() ? w.global_shape : w.chunk_sizes;
    std::uint64_t n = DTypeSize(dtype);
    for (auto d : s) n *= static_cast<std::uint64_t>(d);
    std::vector<std::byte> bytes(n);
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 12345;
    for (auto& b : bytes) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      b = static_cast<std::byte>(x);
    }
    data.push_back(std::move(bytes));
    w.nbytes = n;
    items.push_back(std::move(w));
    // Re-point every item: push_back may have moved the byte vectors' owners.
    for (std::size_t i = 0; i < items.size(); ++i) items[i].data = data[i].data();
  }
};

inline std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
}

// Flips one byte of a file in place.
inline void FlipByte(const std::string& path, std::uint64_t offset) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5A);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

struct ProcResult {
  int exit_code = -1;  // -1 when killed by a signal
  int signal = 0;
  std::string out;
};

// Runs argv with extra environment entries ("K=V"), capturing stdout+stderr.
inline ProcResult RunProcess(const std::vector<std::string>& argv,
                             const std::vector<std::string>& env = {}) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) return {};
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(pipefd[1], 1);
    ::dup2(pipefd[1], 2);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(pipefd[1]);
  ProcResult r;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0) r.out.append(buf, static_cast<std::size_t>(n));
  ::close(pipefd[0]);
  int st = 0;
  ::waitpid(pid, &st, 0);
  if (WIFEXITED(st)) r.exit_code = WEXITSTATUS(st);
  if (WIFSIGNALED(st)) r.signal = WTERMSIG(st);
  return r;
}

}  // namespace shardwise::testing
