// Writes one rank's items into its shard file (or, with
// Options::files_per_rank, several part files): plans 4 KiB-aligned
// extents, cuts them into I/O units (small items share a unit) and writes
// the units in parallel through the backend, then fsyncs. A unit is either
// written straight from the items' memory, when that memory already holds
// the unit's exact file image (items staged into a StagingLease), or filled
// with a fused copy+CRC32C pass into an I/O buffer. See docs/format.md for
// the layout.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "fs/placement.h"
#include "io/backend.h"
#include "os/posix.h"
#include "shardwise/options.h"
#include "shardwise/staging.h"
#include "shardwise/types.h"

namespace shardwise::engine {

// What a rank reports after writing: its files and its chunks, as manifest
// records (file indices are local: 0 is this rank's first file).
struct ShardIndex {
  std::vector<FileRecord> files;
  std::vector<ItemRecord> items;  // one chunk each
  double seconds = 0;
  std::uint64_t copied_bytes = 0;  // tensor bytes copied into I/O buffers
};

// Checks one item before anything is written: name, shape, bounds, size.
Status ValidateWriteItem(const WriteItem& item);

// A contiguous part of one item placed in a unit. Pieces of copied items
// start on a checksum-block boundary of their item, so every block lies in
// one unit and is checksummed while it is copied; `checksum` is false for
// the copied tail of an item written from its memory, whose blocks the
// checksum pass computes from that memory.
struct Piece {
  std::uint32_t item;
  std::uint64_t begin;  // byte offset within the item
  std::uint64_t length;
  bool checksum = true;
};

// Where the bytes of an item are written from.
enum class Source : std::uint8_t {
  kCopy,    // copied into an I/O buffer, checksummed in the same pass
  kStaged,  // a staged extent (4 KiB-aligned, zero up to its next 4 KiB
            // boundary): whole pages written from it; adjacent ones share units
  kPages,   // 4 KiB-aligned memory (O_DIRECT): its whole pages written from
            // it, the tail past the last whole page copied
  kExact,   // any memory, buffered I/O: written from it byte for byte; the
            // padding is never written (the preallocated file reads zero)
};

// One write: a 4 KiB-aligned range of part file `file` holding whole pieces
// and padding (a kExact unit ends where its item ends instead). The unit at offset 0 of each file starts with its header.
// `pos` is the unit's position in the concatenation of all part files (what
// a staging buffer holding the whole rank is indexed by). `src`, when set,
// is memory that already holds the unit's bytes (direct items, below).
struct Unit {
  std::uint64_t offset;
  std::uint64_t length;
  std::vector<Piece> pieces;
  std::uint32_t file = 0;
  std::uint64_t pos = 0;
  const std::byte* src = nullptr;
};

// The layout of one rank's shard: which part file each item goes to, where
// its extent starts, how the files are cut into units, and the checksums
// once computed.
struct ShardPlan {
  std::vector<std::uint64_t> extent;        // file offset of each item
  std::vector<std::uint32_t> item_file;     // part file of each item
  std::vector<Unit> units;                  // by file, then ascending offset
  std::vector<std::uint64_t> file_sizes;    // per part file
  std::uint64_t total_size = 0;             // sum of file_sizes
  std::uint64_t block = 0;            // checksum block bytes
  std::int32_t rank = 0;
  std::string save_id;
  std::vector<std::vector<std::uint32_t>> crcs;  // per item, per block
};

// Validates the items and lays them out (docs/format.md, "Shard files").
// `sources[i]` says where item i is written from (default: every item
// copied; small copied items are packed together).
Result<ShardPlan> PlanShard(std::span<const WriteItem> items, std::int32_t rank,
                            const std::string& save_id, const Options& options,
                            std::span<const Source> sources = {});

// Where each item is best written from, given the I/O mode: staged extents
// from the staging pool, else from its own memory when that is large enough
// to be worth its own writes and O_DIRECT (if on) allows it, else copied.
std::vector<Source> ChooseSources(std::span<const WriteItem> items, bool direct_io,
                                  std::vector<std::shared_ptr<StagingLease>>* leases);

// The checksums of every item not copied (Source other than kCopy), from its
// memory, on `threads` threads.
void ChecksumFromSource(ShardPlan& plan, std::span<const WriteItem> items,
                        std::span<const Source> sources, int threads);

// Writes the header of part file `file` (kShardHeaderBytes) to dst.
void EncodeHeader(const ShardPlan& plan, std::uint32_t file, std::byte* dst);
// Computes the checksums of unit u from its image (its file bytes).
void ChecksumUnit(ShardPlan& plan, std::size_t u, const std::byte* image);
// Copies and checksums in one pass into dst (an I/O buffer); returns the
// tensor bytes copied (serialized values are not state copied).
std::uint64_t FillUnit(ShardPlan& plan, std::span<const WriteItem> items, std::size_t u,
                       std::byte* dst);

// The rank's index once every unit was checksummed and written.
ShardIndex MakeIndex(ShardPlan& plan, std::span<const WriteItem> items, const std::string& path,
                     std::string_view backend, bool direct_io);

// Part file p of the shard at `path`: `path` itself for p = 0, else
// rank-NNNNN.partP.shard beside it.

// Where one rank's shard file goes and how it is created.
struct ShardTarget {
  std::string path;
  bool direct_io = false;
  fs::Placement* placement = nullptr;  // null: a plain open
  int writers = 1;                     // files written at once (for the layout policy)
  // Non-empty (Options::recycle_files): the root whose recycle bin
  // (fs/recycle.h) part files are taken from when it has some.
  std::string recycle_root;
};

// Creates the shard's part files (O_EXCL, each with its Lustre layout where
// one applies, preallocated). A file taken from the recycle bin instead is
// cut to its new size and zeroed wherever the plan's units do not write, so
// that it reads as a new file would once they are written.
Result<std::vector<os::File>> CreateShardFiles(const ShardTarget& target, const ShardPlan& plan);

// Plans and writes `items` into a new file at target.path (which must not
// exist). Returns after the data and the file size are durable. `released`
// (optional) is called once every unit has been copied or handed to the
// backend: the items' memory is not read after that.
Result<ShardIndex> WriteShard(const ShardTarget& target, std::int32_t rank,
                              const std::string& save_id,
                              std::span<const WriteItem> items,
                              const Options& options, io::IoBackend& backend,
                              const std::function<void()>& released = {});

}  // namespace shardwise::engine
