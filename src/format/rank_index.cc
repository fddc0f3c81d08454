#include "format/rank_index.h"

#include <cstring>

#include "format/binary.h"
#include "format/crc32c.h"
#include "format/manifest.h"

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

Status DecodeChunk(Cursor& c, std::size_t ndim, ChunkRecord* ch) {
  SW_ASSIGN_OR_RETURN(ch->offsets, c.Dims(ndim));
  SW_ASSIGN_OR_RETURN(ch->sizes, c.Dims(ndim));
  SW_ASSIGN_OR_RETURN(std::uint64_t file, c.Var(UINT32_MAX));
  ch->file = static_cast<std::uint32_t>(file);
  SW_ASSIGN_OR_RETURN(ch->offset, c.Var(kMaxFileBytes));
  SW_ASSIGN_OR_RETURN(ch->length, c.Var(kMaxFileBytes));
  SW_ASSIGN_OR_RETURN(std::size_t ncrc, c.Count(4));
  ch->crc32c.resize(ncrc);
  for (auto& v : ch->crc32c) {
    SW_ASSIGN_OR_RETURN(v, c.U32());
  }
  return Status::Ok();
}

Status DecodeItem(Cursor& c, ItemRecord* it) {
  SW_ASSIGN_OR_RETURN(it->name, c.Str(kMaxNameBytes));
  SW_ASSIGN_OR_RETURN(std::uint64_t kind, c.Var(1));
  it->kind = static_cast<ItemKind>(kind);
  SW_ASSIGN_OR_RETURN(std::uint64_t dtype, c.Var(static_cast<std::uint64_t>(DType::kFloat8E5M2)));
  it->dtype = static_cast<DType>(dtype);
  SW_ASSIGN_OR_RETURN(std::uint64_t ndim, c.Var(kMaxDims));
  SW_ASSIGN_OR_RETURN(it->shape, c.Dims(ndim));
  SW_ASSIGN_OR_RETURN(std::size_t nchunks, c.Count(2 * ndim + 4));
  it->chunks.resize(nchunks);
  for (auto& ch : it->chunks) SW_RETURN_IF_ERROR(DecodeChunk(c, ndim, &ch));
  return Status::Ok();
}

Status DecodeBody(Cursor& c, Manifest* m) {
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
  m->items.resize(nitems);
  for (auto& it : m->items) SW_RETURN_IF_ERROR(DecodeItem(c, &it));
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

Result<Manifest> DecodeRankIndex(std::string_view bytes, const std::string& where) {
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
  Manifest m;
  SW_RETURN_IF_ERROR(DecodeBody(c, &m));
  SW_RETURN_IF_ERROR(Validate(m, where));
  return m;
}

}  // namespace shardwise::format
