// libFuzzer target: reading an arbitrary checkpoint directory, as the CLI
// and the library do. The input is cut into a manifest, an index and one
// data file:
//   [4 bytes LE: manifest length][manifest]
//   [4 bytes LE: index length][index.swi][rest: rank-00000.shard]
// An index length of 0 (or an input that ends first) writes no index.swi,
// as in format 1. The manifest is sealed when it looks like a JSON object
// (so the fuzzer gets past its self-checksum). The directory is written
// fresh for every input, then opened, listed, checked, verified (from the
// files, and from the shard's bytes in memory as Repository::Install does),
// read item by item, and run through `shardwise inspect` and `shardwise
// verify`. Nothing may crash, hang or read outside the directory or the
// bytes given.
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "cli/cli.h"
#include "format/manifest.h"
#include "os/posix.h"
#include "shardwise/reader.h"
#include "shardwise/repository.h"

using namespace shardwise;

namespace {

const std::string& Root() {
  static const std::string root = [] {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base ? base : "/tmp") + "/sw-fuzz-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    return std::string(::mkdtemp(buf.data()));
  }();
  return root;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto take = [&in]() {  // a length-prefixed piece, cut short where the input ends
    std::uint32_t n = 0;
    std::memcpy(&n, in.data(), std::min<std::size_t>(4, in.size()));
    in.remove_prefix(std::min<std::size_t>(4, in.size()));
    std::string piece(in.substr(0, n));
    in.remove_prefix(piece.size());
    return piece;
  };
  if (size < 4) return 0;
  std::string manifest = take();
  std::string index = take();
  std::string shard(in);
  if (manifest.size() >= 2 && manifest.front() == '{' && manifest.back() == '}') {
    manifest.pop_back();
    manifest = format::Seal(manifest);
  }
  const std::string root = Root();
  const std::string dir = os::JoinPath(root, "step-000000000001");
  (void)os::RemoveTree(dir);
  if (!os::MkdirAll(dir).ok()) return 0;
  if (!os::WriteFileAtomic(os::JoinPath(dir, "manifest.json"), manifest, "fuzz").ok()) return 0;
  if (!os::WriteFileAtomic(os::JoinPath(dir, "rank-00000.shard"), shard, "fuzz").ok()) return 0;
  if (!index.empty() &&
      !os::WriteFileAtomic(os::JoinPath(dir, "index.swi"), index, "fuzz").ok())
    return 0;

  Options o;
  o.direct_io = DirectIoMode::kOff;
  auto repo = Repository::Open(root, o);
  if (repo.ok()) (void)(*repo)->List();
  auto reader = CheckpointReader::Open(dir, o);
  if (reader.ok()) {
    (void)(*reader)->CheckFiles();
    (void)(*reader)->Verify();
    // The shard in memory, whole and cut short (a transfer that ended early).
    (void)(*reader)->VerifyCopy({{"rank-00000.shard", shard}});
    (void)(*reader)->VerifyCopy(
        {{"rank-00000.shard", std::string_view(shard).substr(0, shard.size() / 2)}});
    for (const auto& item : (*reader)->manifest().items) {
      // The whole item's bytes, as a caller would size its buffer.
      std::uint64_t n = DTypeSize(item.dtype);
      bool huge = false;
      for (auto d : item.shape)
        if (d < 0 || __builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &n)) huge = true;
      if (huge || n > (64u << 20)) continue;
      std::vector<std::byte> buf(n);
      (void)(*reader)->ReadItem(item.name, buf.data(), buf.size());
    }
  }
  std::ostringstream out, err;
  (void)cli::RunInspect({dir, "--json"}, out, err);
  (void)cli::RunVerify({dir, "--json", "--no-progress"}, out, err);
  return 0;
}
