// manifest.json and rank fragments: serialization and the validating parser.
// Every MUST rule of docs/format.md is checked here, each with its own
// message, and the self-checksum trailer is verified before anything else.
#pragma once

#include <string>
#include <string_view>

#include "format/chunk_geometry.h"
#include "format/chunk_source.h"
#include "shardwise/status.h"
#include "shardwise/types.h"

namespace shardwise::format {

inline constexpr char kManifestKind[] = "shardwise.checkpoint";
inline constexpr char kFragmentKind[] = "shardwise.fragment";

// Limits that make absurd inputs an error instead of an allocation.
inline constexpr std::uint64_t kMaxManifestBytes = 1ull << 30;
inline constexpr int kMaxDims = 64;
inline constexpr std::int32_t kMaxWorldSize = 1 << 20;
inline constexpr std::size_t kMaxNameBytes = 4096;
inline constexpr std::uint64_t kMaxFileBytes = 1ull << 50;  // 1 PiB

// Serializes (with the self-checksum trailer). `kind` is kManifestKind or
// kFragmentKind. With m.format_version 2 it writes a commit record: the
// header fields and `index` (m.index), no files or items.
std::string Serialize(const Manifest& m, std::string_view kind);

// Everything of `m` but its files and items: a format-2 commit record's
// fields.
Manifest HeaderOf(const Manifest& m);

// Appends the self-checksum trailer to a JSON object text `body` ("{...}"):
// the result ends with ,"self_crc32c":"xxxxxxxx"}\n where the CRC32C covers
// `body` exactly. Serialize uses it; tests use it to build hostile inputs.
std::string Seal(std::string body);

// Parses and validates. `path` names the file in every error.
Result<Manifest> Parse(std::string_view text, std::string_view kind,
                       const std::string& path);

// Checks the rules that do not need the JSON (bounds, overlaps, names).
Status Validate(const Manifest& m, const std::string& path);

// Validate's rules for files and items, wherever they are held: file names
// and ranks, item names and fields, every chunk's geometry and extent,
// distinct chunk starts per item, no overlapping extents in a file.
Status ValidateSource(const ChunkSource& s, std::int32_t world_size,
                      std::uint64_t checksum_block, const std::string& path);
// The file rules alone: safe, distinct names, ranks below world_size.
Status ValidateFiles(const std::vector<FileRecord>& files, std::int32_t world_size,
                     const std::string& path);
// No two chunks of item i start at the same offsets.
bool DistinctStarts(const ChunkSource& s, std::size_t i);
// How the chunks of item i tile its whole shape (format/chunk_geometry.h).
// ValidateSource and the merge of every rank's part refuse overlapping
// chunks. Coverage is checked where a read fills a tensor: a checkpoint may
// hold part of an item (a rank's local-tier checkpoint holds its shard).
Tiling ItemTiling(const ChunkSource& s, std::size_t i);
// ItemTiling's problem as an error naming the item, or Ok.
Status TilingError(const ChunkSource& s, std::size_t i, const Tiling& t, const std::string& path);

// Validate's rules for one item's own fields (kind, dims, volume), and for
// one chunk of it against its file (geometry, length, alignment, extent,
// checksum count): what a reader that resolves items one at a time (the
// format-2 index) can check without the whole manifest.
Status ValidateItemHeader(const ItemView& it, const std::string& path);
Status ValidateChunkRecord(const ItemView& it, std::size_t c, const ChunkView& ch,
                           const FileRecord& file, std::uint64_t checksum_block,
                           const std::string& path);

// A plain file name: [A-Za-z0-9._=-]+, not starting with '.', at most 255

// Number of checksum blocks covering `length` bytes.
std::uint64_t BlockCount(std::uint64_t length, std::uint64_t block);

// Element count of a shape; nullopt on overflow or negative dims.
std::optional<std::uint64_t> Volume(std::span<const std::int64_t> shape);

}  // namespace shardwise::format
