// A save driver for crash and fault tests. Each subcommand does one thing in
// its own process, so a test can kill it (SHARDWISE_CRASH_AT,
// SHARDWISE_FAULTS=...=kill, or a real SIGKILL) and inspect what is left.
//
//   save   ROOT STEP SEED SIZE                       one-process save
//   gcsave ROOT KEEP STEP SEED SIZE                  retention (keep the last
//                                                    KEEP), then a save
//   rank   ROOT STEP SEED SIZE WORLD RANK SAVE_ID    one rank's write
//   commit ROOT STEP WORLD SAVE_ID                   the coordinator's commit
//   check  ROOT STEP SEED SIZE WORLD                 load and compare bit-exactly
//
// The data of (SEED, STEP, rank) is deterministic, so `check` regenerates it.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cli/synthetic.h"
#include "shardwise/shardwise.h"

using namespace shardwise;

namespace {

cli::SyntheticState Data(std::uint64_t seed, std::int64_t step, std::uint64_t size, int rank,
                         int world) {
  return cli::MakeTransformerState(size, rank, world, seed * 7919 + static_cast<std::uint64_t>(step));
}

int Fail(const Status& s) {
  std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
  return 1;
}

std::uint64_t Arg(char** argv, int i) { return std::strtoull(argv[i], nullptr, 10); }

// A one-process save of STEP SEED SIZE given from argv[at] on.
int SaveStep(Repository& repo, char** argv, int at) {
  auto state = Data(Arg(argv, at + 1), static_cast<std::int64_t>(Arg(argv, at)),
                    Arg(argv, at + 2), 0, 1);
  SaveSpec spec;
  spec.step = static_cast<std::int64_t>(Arg(argv, at));
  auto r = repo.Save(spec, state.items);
  if (!r.ok()) return Fail(r.status());
  std::printf("committed %s\n", r->name.c_str());
  return 0;
}

int RetainThenSave(Repository& repo, char** argv) {
  GcOptions gc;
  gc.keep_last = static_cast<int>(Arg(argv, 3));
  auto kept = repo.Gc(gc);
  if (!kept.ok()) return Fail(kept.status());
  return SaveStep(repo, argv, 4);
}

int WriteOneRank(Repository& repo, char** argv) {
  int world = static_cast<int>(Arg(argv, 6)), rank = static_cast<int>(Arg(argv, 7));
  auto state = Data(Arg(argv, 4), static_cast<std::int64_t>(Arg(argv, 3)), Arg(argv, 5), rank,
                    world);
  SaveSpec spec;
  spec.step = static_cast<std::int64_t>(Arg(argv, 3));
  spec.world_size = world;
  spec.rank = rank;
  spec.save_id = argv[8];
  auto r = repo.WriteRank(spec, state.items);
  if (!r.ok()) return Fail(r.status());
  std::printf("wrote %s\n", r->shard_path.c_str());
  return 0;
}

int CommitSave(Repository& repo, char** argv) {
  SaveSpec spec;
  spec.step = static_cast<std::int64_t>(Arg(argv, 3));
  spec.world_size = static_cast<int>(Arg(argv, 4));
  spec.save_id = argv[5];
  auto r = repo.Commit(spec);
  if (!r.ok()) return Fail(r.status());
  std::printf("committed %s\n", r->name.c_str());
  return 0;
}

int CheckSave(Repository& repo, char** argv) {
  std::int64_t step = static_cast<std::int64_t>(Arg(argv, 3));
  int world = static_cast<int>(Arg(argv, 6));
  auto reader = repo.OpenCheckpoint(Repository::StepName(step));
  if (!reader.ok()) return Fail(reader.status());
  for (int rank = 0; rank < world; ++rank) {
    auto state = Data(Arg(argv, 4), step, Arg(argv, 5), rank, world);
    for (const WriteItem& w : state.items) {
      auto found = (*reader)->Item(w.name);
      if (!found.ok()) return Fail(found.status());
      const ItemRecord* it = *found;
      std::size_t chunk = SIZE_MAX;
      for (std::size_t c = 0; c < it->chunks.size(); ++c)
        if (it->chunks[c].offsets == w.chunk_offsets) chunk = c;
      if (chunk == SIZE_MAX) return Fail(NotFound("chunk of " + w.name));
      std::vector<std::byte> buf(w.nbytes);
      ReadRequest q;
      q.item = it;
      q.chunk = chunk;
      q.dst = buf.data();
      q.dst_bytes = buf.size();
      Status s = (*reader)->Read({&q, 1});
      if (!s.ok()) return Fail(s);
      if (std::memcmp(buf.data(), w.data, w.nbytes) != 0)
        return Fail(Corrupt("item " + w.name + " differs"));
    }
  }
  std::printf("identical\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: see the comment at the top of save_helper.cc\n");
    return 2;
  }
  std::string cmd = argv[1];
  auto opts = Options::FromEnv();
  if (!opts.ok()) return Fail(opts.status());
  auto repo = Repository::Open(argv[2], *opts);
  if (!repo.ok()) return Fail(repo.status());
  if (cmd == "save" && argc == 6) return SaveStep(**repo, argv, 3);
  if (cmd == "gcsave" && argc == 7) return RetainThenSave(**repo, argv);
  if (cmd == "rank" && argc == 9) return WriteOneRank(**repo, argv);
  if (cmd == "commit" && argc == 6) return CommitSave(**repo, argv);
  if (cmd == "check" && argc == 7) return CheckSave(**repo, argv);
  std::fprintf(stderr, "bad arguments\n");
  return 2;
}
