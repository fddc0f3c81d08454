#include <nlohmann/json.hpp>

#include "args.h"
#include "cli.h"
#include "output.h"
#include "shardwise/reader.h"

namespace shardwise::cli {

constexpr char kInspectHelp[] = R"(Usage: shardwise inspect CKPT [--verbose] [--json]

Show what a committed checkpoint holds: its name, step, save id, ranks,
checksum algorithm and block size; every item with its kind, dtype, global
shape, chunk count and size; and every shard file with its rank, size, I/O
backend and whether O_DIRECT was used. The manifest is validated first: a
damaged one is reported and nothing else is shown. Data is not read; use
`shardwise verify` for that.

Options:
  --verbose  also list each chunk (offsets, sizes, file, byte offset, length)
  --json     machine-readable output (schema in docs/cli.md)
  --help     this text

Exit codes: 0 shown; 1 the manifest is damaged; 2 CKPT missing or not a
checkpoint.
)";

namespace {

std::uint64_t ItemBytes(const ItemRecord& it) {
  std::uint64_t bytes = 0;
  for (const auto& c : it.chunks) bytes += c.length;
  return bytes;
}

// The JSON form always lists the chunks (--verbose is for the table).
void PrintInspectJson(std::ostream& out, const std::string& dir, const Manifest& m) {
  using J = nlohmann::ordered_json;
  J j;
  j["name"] = m.name;
  j["dir"] = dir;
  j["format_version"] = m.format_version;
  j["step"] = m.step >= 0 ? J(m.step) : J(nullptr);
  j["save_id"] = m.save_id;
  j["world_size"] = m.world_size;
  j["time_unix"] = m.created_unix;
  j["bytes"] = m.TotalBytes();
  j["checksum"] = {{"algorithm", "crc32c"}, {"block_bytes", m.checksum_block}};
  j["files"] = J::array();
  for (const auto& f : m.files)
    j["files"].push_back({{"name", f.name}, {"rank", f.rank}, {"size", f.size},
                          {"backend", f.backend}, {"direct_io", f.direct_io}});
  j["items"] = J::array();
  for (const auto& it : m.items) {
    J e = {{"name", it.name}, {"kind", ItemKindName(it.kind)},
           {"dtype", DTypeName(it.dtype)}, {"shape", it.shape},
           {"bytes", ItemBytes(it)}, {"num_chunks", it.chunks.size()}};
    e["chunks"] = J::array();
    for (const auto& c : it.chunks)
      e["chunks"].push_back({{"offsets", c.offsets}, {"sizes", c.sizes},
                             {"file", m.files[c.file].name}, {"offset", c.offset},
                             {"length", c.length}});
    j["items"].push_back(std::move(e));
  }
  j["user"] = J::parse(m.user_json);
  WriteJson(out, j);
}

// A summary, then a table of items (and, `verbose`, their chunks), then a
// table of files.
void PrintInspectText(std::ostream& out, const std::string& dir, const Manifest& m,
                      bool verbose) {
  out << "checkpoint  " << m.name << "  (" << dir << ")\n"
      << "step        " << (m.step >= 0 ? std::to_string(m.step) : "-") << '\n'
      << "committed   " << FormatTime(m.created_unix) << " UTC\n"
      << "save id     " << m.save_id << '\n'
      << "ranks       " << m.world_size << '\n'
      << "size        " << FormatBytes(m.TotalBytes()) << " in " << m.files.size()
      << " file(s)\n"
      << "checksum    crc32c per " << FormatBytes(m.checksum_block) << " block\n"
      << "items       " << m.items.size() << "\n\n";
  std::vector<std::vector<std::string>> rows = {{"ITEM", "KIND", "DTYPE", "SHAPE", "CHUNKS", "SIZE"}};
  for (const auto& it : m.items) {
    rows.push_back({it.name, std::string(ItemKindName(it.kind)), std::string(DTypeName(it.dtype)),
                    FormatShape(it.shape), std::to_string(it.chunks.size()),
                    FormatBytes(ItemBytes(it))});
    if (verbose)
      for (const auto& c : it.chunks)
        rows.push_back({"  @" + FormatShape(c.offsets), "", "", FormatShape(c.sizes),
                        m.files[c.file].name, std::to_string(c.offset) + "+" +
                                                   std::to_string(c.length)});
  }
  PrintTable(out, rows, {4, 5});
  out << '\n';
  std::vector<std::vector<std::string>> files = {{"FILE", "RANK", "SIZE", "BACKEND", "O_DIRECT"}};
  for (const auto& f : m.files)
    files.push_back({f.name, std::to_string(f.rank), FormatBytes(f.size), f.backend,
                     f.direct_io ? "yes" : "no"});
  PrintTable(out, files, {1, 2});
  if (m.user_json != "{}") out << "\nuser metadata: " << m.user_json << '\n';
}

}  // namespace

int RunInspect(const Argv& argv, std::ostream& out, std::ostream& err) {
  auto args = Args::Parse(argv, {{"json"}, {"verbose"}});
  if (!args.ok()) return UsageError(err, "inspect", args.status().message());
  if (args->help()) {
    out << kInspectHelp;
    return kExitOk;
  }
  if (args->positional().size() != 1)
    return UsageError(err, "inspect", "expected one checkpoint directory");
  auto opts = Options::FromEnv();
  if (!opts.ok()) return UsageError(err, "inspect", opts.status().message());
  auto reader = CheckpointReader::Open(args->positional()[0], *opts);
  if (!reader.ok()) {
    if (reader.status().code() == StatusCode::kCorrupt) {
      err << "shardwise inspect: " << reader.status().message() << '\n';
      return kExitProblem;
    }
    return PathError(err, "inspect", reader.status().message());
  }
  if (Status all = (*reader)->LoadAll(); !all.ok()) {  // format 2: the whole index
    err << "shardwise inspect: " << all.message() << '\n';
    return kExitProblem;
  }
  if (args->json()) {
    PrintInspectJson(out, (*reader)->dir(), (*reader)->manifest());
  } else {
    PrintInspectText(out, (*reader)->dir(), (*reader)->manifest(), args->Has("verbose"));
  }
  return kExitOk;
}

}  // namespace shardwise::cli
