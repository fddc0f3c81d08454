// Reading a committed checkpoint: whole items, or any hyper-rectangle of a
// saved chunk, in parallel, with every byte checked against its CRC32C.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shardwise/options.h"
#include "shardwise/status.h"
#include "shardwise/types.h"

namespace shardwise {

// One read: the box [offsets, offsets+lengths) of chunk `chunk` of `item`
// (coordinates relative to the chunk) is copied into `dst`, a row-major
// array of shape `dst_shape` (empty: `lengths`), at `dst_offsets` (empty:
// zeros). dst_bytes is the size of the whole destination array.
struct ReadRequest {
  const ItemRecord* item = nullptr;
  std::size_t chunk = 0;
  std::vector<std::int64_t> offsets;  // empty: whole chunk
  std::vector<std::int64_t> lengths;  // empty: whole chunk
  void* dst = nullptr;
  std::uint64_t dst_bytes = 0;
  std::vector<std::int64_t> dst_shape;
  std::vector<std::int64_t> dst_offsets;
};

struct VerifyProblem {
  std::string file;  // file name inside the checkpoint
  Status status;
};

struct VerifyReport {
  std::uint64_t bytes_checked = 0;
  std::uint64_t files_checked = 0;
  std::vector<VerifyProblem> problems;  // empty: intact
};

// (bytes done, bytes total); called from the verifying thread.
using ProgressFn = std::function<void(std::uint64_t, std::uint64_t)>;

class CheckpointReader {
 public:
  // Opens a committed checkpoint directory: reads and validates
  // manifest.json, and in format 2 the index's header and items table (not
  // its chunk records). Shard files are opened on first use, and each is
  // checked for its size and header (rank, save id) then.
  static Result<std::unique_ptr<CheckpointReader>> Open(const std::string& dir,
                                                        const Options& options = {});
  ~CheckpointReader();

  // Format 1: the whole manifest. Format 2: the commit record (files and
  // items empty) until LoadAll() fills them in.
  const Manifest& manifest() const;
  // Format 2: reads the whole index into manifest() and checks it as a
  // whole (format::Validate). Nothing to do in format 1.
  Status LoadAll();
  // The validated manifest as JSON text in the format-1 schema (files and
  // items listed; format 2 loads the whole index for it).
  Result<std::string> ManifestJson();

  // Every item's name, kind, dtype and shape, without chunks: no index
  // records are read.
  const std::vector<ItemRecord>& ItemHeaders() const;
  // The item with all its chunks; format 2 reads only this item's records.
  // kNotFound when there is no such item. The record lives as long as the
  // reader and may be passed to Read.
  Result<const ItemRecord*> Item(std::string_view name);
  // The item with only the chunks that overlap the box [offsets, offsets +
  // sizes) of its global shape: in format 2 this reads a few index blocks
  // however many chunks the item has. Chunk numbers in ReadRequest refer to
  // this record's chunks.
  Result<const ItemRecord*> ItemPart(std::string_view name, const std::vector<std::int64_t>& offsets,
                                     const std::vector<std::int64_t>& sizes);
  // ItemPart for many boxes at once, results in order (a failed lookup's
  // status in its place; records live as long as the reader, as ItemPart's).
  // In format 2 up to 64 lookups run at once: each one's reads of index
  // blocks (fence, records, checksums, file record) still come one after
  // another, but the lookups' reads are in flight together, so a rank that
  // loads its part of many items waits for a few rounds of reads, not one
  // per block. Other lookups of this reader wait for the batch.
  struct PartQuery {
    std::string name;
    std::vector<std::int64_t> offsets, sizes;
  };
  std::vector<Result<const ItemRecord*>> ItemParts(std::span<const PartQuery> queries);
  // Bytes of metadata read so far (manifest.json, and the index's blocks).
  std::uint64_t metadata_bytes_read() const;
  const std::string& dir() const;
  std::string_view backend_name() const;

  // Runs the requests in parallel. A checksum mismatch is kCorrupt naming the
  // item, the file and the offset; dst content is then unspecified.
  Status Read(std::span<const ReadRequest> requests);

  // Reads a whole item (all chunks, assembled at their offsets) into a
  // row-major array of the item's global shape.
  Status ReadItem(std::string_view name, void* dst, std::uint64_t dst_bytes);

  // Opens every shard file and checks its type, size and header, without
  // reading the data: a cheap check that the checkpoint is complete.
  Status CheckFiles();

  // Re-reads every file and checks every checksum, file sizes and headers.
  // Problems are collected per file; an error is returned only when the
  // verification itself could not run.
  Result<VerifyReport> Verify(const ProgressFn& progress = {});

  // Verify, with each shard file's bytes taken from memory (a copy just
  // written from `files`, by file name) instead of read back: the metadata,
  // each file's size and header still come from the directory. A shard
  // file missing from `files`, or of another size, is a problem of that file.
  using FileBytes = std::vector<std::pair<std::string, std::string_view>>;
  Result<VerifyReport> VerifyCopy(const FileBytes& files);

 private:
  struct Impl;
  explicit CheckpointReader(std::unique_ptr<Impl> impl);
  Status ReadGroup(std::span<const ReadRequest> requests);  // Read, validated
  Result<VerifyReport> VerifyFrom(const ProgressFn& progress, const FileBytes* copy);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardwise
