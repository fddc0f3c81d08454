#include "format/rank_index.h"

#include <cstring>

#include "format/binary.h"
#include "format/crc32c.h"
#include "format/manifest.h"
#include "shardwise/names.h"

namespace shardwise::format {
namespace {

using binary::Cursor;
using binary::PutDims;
using binary::PutSigned;
using binary::PutStr;
using binary::PutU32;
using binary::PutVar;

constexpr char kMagic[4] = {'S', 'W', 'R', 'X'};
constexpr std::uint8_t kVersion = 1;

Status DecodeChunk(Cursor& c, std::size_t ndim, RankColumns* out) {
  RankColumns::Extent e;
  e.dims_at = out->dims.size();
  for (std::size_t d = 0; d < 2 * ndim; ++d) out->dims.push_back(c.SignedOr0());
  e.file = static_cast<std::uint32_t>(c.VarOr0(UINT32_MAX));
  e.offset = c.VarOr0(kMaxFileBytes);
  e.length = c.VarOr0(kMaxFileBytes);
  const std::uint64_t ncrc = c.VarOr0(c.left() / 4);
  if (c.failed()) return c.Failed();
  e.crc_first = out->crcs.size();
  e.crcs = static_cast<std::uint32_t>(ncrc);
  for (std::size_t k = 0; k < ncrc; ++k) out->crcs.push_back(c.U32Or0());
  out->extents.push_back(e);
  return c.failed() ? c.Failed() : Status::Ok();
}

Status DecodeItem(Cursor& c, RankColumns* out) {
  RankColumns::Entry& e = out->entries.emplace_back();
  SW_ASSIGN_OR_RETURN(e.name, c.View(kMaxNameBytes));
  e.kind = static_cast<ItemKind>(c.VarOr0(1));
  e.dtype = static_cast<DType>(c.VarOr0(static_cast<std::uint64_t>(DType::kFloat8E5M2)));
  e.ndim = static_cast<std::uint32_t>(c.VarOr0(kMaxDims));
  e.shape_at = out->dims.size();
  for (std::size_t d = 0; d < e.ndim; ++d) out->dims.push_back(c.SignedOr0());
  const std::uint64_t nchunks = c.VarOr0(c.left() / (2 * e.ndim + 4));
  if (c.failed()) return c.Failed();
  e.first = out->extents.size();
  e.count = nchunks;
  for (std::size_t k = 0; k < nchunks; ++k) SW_RETURN_IF_ERROR(DecodeChunk(c, e.ndim, out));
  return Status::Ok();
}

Status DecodeBody(Cursor& c, RankColumns* out) {
  Manifest* m = &out->header;
  SW_ASSIGN_OR_RETURN(m->name, c.Str(kMaxNameBytes));
  SW_ASSIGN_OR_RETURN(m->step, c.Signed());
  SW_ASSIGN_OR_RETURN(m->save_id, c.Str(kMaxNameBytes));
  SW_ASSIGN_OR_RETURN(std::uint64_t world, c.Var(kMaxWorldSize));
  SW_ASSIGN_OR_RETURN(std::uint64_t rank, c.Var(kMaxWorldSize));
  m->world_size = static_cast<std::int32_t>(world);
  m->rank = static_cast<std::int32_t>(rank);
  SW_ASSIGN_OR_RETURN(m->checksum_block, c.Var(1ull << 30));
  SW_ASSIGN_OR_RETURN(std::uint64_t created, c.Var());
  std::memcpy(&m->created_unix, &created, sizeof created);
  SW_ASSIGN_OR_RETURN(std::size_t nfiles, c.Count(5));
  m->files.resize(nfiles);
  for (auto& f : m->files) {
    SW_ASSIGN_OR_RETURN(f.name, c.Str(kMaxNameBytes));
    SW_ASSIGN_OR_RETURN(std::uint64_t frank, c.Var(kMaxWorldSize));
    f.rank = static_cast<std::int32_t>(frank);
    SW_ASSIGN_OR_RETURN(f.size, c.Var(kMaxFileBytes));
    SW_ASSIGN_OR_RETURN(f.backend, c.Str(64));
    SW_ASSIGN_OR_RETURN(std::uint64_t direct, c.Var(1));
    f.direct_io = direct == 1;
  }
  SW_ASSIGN_OR_RETURN(std::size_t nitems, c.Count(6));
  out->entries.reserve(nitems);
  // Most ranks hold one chunk of each item, of two dimensions or so.
  out->extents.reserve(nitems);
  out->dims.reserve(nitems * 6);
  out->crcs.reserve(nitems);
  for (std::size_t i = 0; i < nitems; ++i) SW_RETURN_IF_ERROR(DecodeItem(c, out));
  if (c.left() != 0) return c.Bad("has trailing bytes");
  return Status::Ok();
}

}  // namespace

std::string EncodeRankIndex(const Manifest& f) {
  std::string out(kMagic, sizeof kMagic);
  out += static_cast<char>(kVersion);
  PutStr(out, f.name);
  PutSigned(out, f.step);
  PutStr(out, f.save_id);
  PutVar(out, static_cast<std::uint64_t>(f.world_size));
  PutVar(out, static_cast<std::uint64_t>(f.rank));
  PutVar(out, f.checksum_block);
  std::uint64_t created;
  std::memcpy(&created, &f.created_unix, sizeof created);
  PutVar(out, created);
  PutVar(out, f.files.size());
  for (const FileRecord& file : f.files) {
    PutStr(out, file.name);
    PutVar(out, static_cast<std::uint64_t>(file.rank));
    PutVar(out, file.size);
    PutStr(out, file.backend);
    PutVar(out, file.direct_io ? 1 : 0);
  }
  PutVar(out, f.items.size());
  for (const ItemRecord& it : f.items) {
    PutStr(out, it.name);
    PutVar(out, static_cast<std::uint64_t>(it.kind));
    PutVar(out, static_cast<std::uint64_t>(it.dtype));
    PutVar(out, it.shape.size());
    PutDims(out, it.shape);
    PutVar(out, it.chunks.size());
    for (const ChunkRecord& ch : it.chunks) {
      PutDims(out, ch.offsets);
      PutDims(out, ch.sizes);
      PutVar(out, ch.file);
      PutVar(out, ch.offset);
      PutVar(out, ch.length);
      PutVar(out, ch.crc32c.size());
      for (std::uint32_t v : ch.crc32c) PutU32(out, v);
    }
  }
  PutU32(out, Crc32c(out.data(), out.size()));
  return out;
}

Result<RankColumns> DecodeRankColumns(std::string_view bytes, const std::string& where) {
  auto bad = [&](const std::string& what) {
    return Corrupt(where + ": rank index " + what, where);
  };
  if (bytes.size() < sizeof kMagic + 1 + 4)
    return bad("is truncated (" + std::to_string(bytes.size()) + " bytes)");
  if (std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) return bad("has no SWRX magic");
  if (static_cast<std::uint8_t>(bytes[4]) != kVersion)
    return bad("has version " + std::to_string(static_cast<std::uint8_t>(bytes[4])) +
               " (this build reads version 1)");
  const std::string_view body = bytes.substr(0, bytes.size() - 4);
  Cursor tail(bytes.substr(bytes.size() - 4), where, "rank index");
  SW_ASSIGN_OR_RETURN(std::uint32_t want, tail.U32());
  if (Crc32c(body.data(), body.size()) != want) return bad("fails its checksum");
  Cursor c(body.substr(5), where, "rank index");
  RankColumns out;
  SW_RETURN_IF_ERROR(DecodeBody(c, &out));
  if (!out.header.name.empty() && !names::IsSafeName(out.header.name))
    return bad("names the checkpoint '" + out.header.name + "', not a safe directory name");
  SW_RETURN_IF_ERROR(
      ValidateSource(out, out.header.world_size, out.header.checksum_block, where));
  return out;
}

Result<Manifest> DecodeRankIndex(std::string_view bytes, const std::string& where) {
  SW_ASSIGN_OR_RETURN(RankColumns cols, DecodeRankColumns(bytes, where));
  Manifest m = std::move(cols.header);
  m.items = Materialize(cols);
  return m;
}

}  // namespace shardwise::format
