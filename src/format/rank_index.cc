#include "format/rank_index.h"

#include <cstring>

#include "format/crc32c.h"
#include "format/manifest.h"

namespace shardwise::format {
namespace {

constexpr char kMagic[4] = {'S', 'W', 'R', 'X'};
constexpr std::uint8_t kVersion = 1;

void PutVar(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>(v | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void PutSigned(std::string& out, std::int64_t v) {
  PutVar(out, (static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63));
}
void PutStr(std::string& out, std::string_view s) {
  PutVar(out, s.size());
  out.append(s);
}
void PutU32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>(v >> (8 * i));
}
void PutDims(std::string& out, const std::vector<std::int64_t>& v) {
  for (std::int64_t x : v) PutSigned(out, x);
}

// A bounds-checked cursor; every read failure is kCorrupt naming `where_`.
class Cursor {
 public:
  Cursor(std::string_view data, const std::string& where) : data_(data), where_(where) {}
  Status Bad(const std::string& what) const {
    return Corrupt(where_ + ": rank index " + what + " (at byte " + std::to_string(pos_) + ")",
                   where_);
  }
  Result<std::uint64_t> Var(std::uint64_t max = UINT64_MAX) {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return Bad("is truncated");
      const auto b = static_cast<std::uint8_t>(data_[pos_++]);
      v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) {
        if (v > max) return Bad("holds a value out of range");
        return v;
      }
    }
    return Bad("holds an overlong number");
  }
  Result<std::int64_t> Signed() {
    SW_ASSIGN_OR_RETURN(std::uint64_t z, Var());
    return static_cast<std::int64_t>((z >> 1) ^ (~(z & 1) + 1));
  }
  Result<std::string> Str(std::size_t max) {
    SW_ASSIGN_OR_RETURN(std::uint64_t n, Var(max));
    if (n > data_.size() - pos_) return Bad("is truncated");
    std::string s(data_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  Result<std::uint32_t> U32() {
    if (data_.size() - pos_ < 4) return Bad("is truncated");
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i)
      v |= static_cast<std::uint32_t>(static_cast<std::uint8_t>(data_[pos_++])) << (8 * i);
    return v;
  }
  Result<std::vector<std::int64_t>> Dims(std::size_t n) {
    std::vector<std::int64_t> v(n);
    for (auto& x : v) {
      SW_ASSIGN_OR_RETURN(x, Signed());
    }
    return v;
  }
  // A count of things of at least `min_bytes` each: never more than what is left.
  Result<std::size_t> Count(std::size_t min_bytes) {
    SW_ASSIGN_OR_RETURN(std::uint64_t n, Var());
    if (n > (data_.size() - pos_) / std::max<std::size_t>(min_bytes, 1))
      return Bad("declares more entries than it holds");
    return static_cast<std::size_t>(n);
  }
  std::size_t left() const { return data_.size() - pos_; }

 private:
  std::string_view data_;
  const std::string& where_;
  std::size_t pos_ = 0;
};

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
  Cursor tail(bytes.substr(bytes.size() - 4), where);
  SW_ASSIGN_OR_RETURN(std::uint32_t want, tail.U32());
  if (Crc32c(body.data(), body.size()) != want) return bad("fails its checksum");
  Cursor c(body.substr(5), where);
  Manifest m;
  SW_RETURN_IF_ERROR(DecodeBody(c, &m));
  SW_RETURN_IF_ERROR(Validate(m, where));
  return m;
}

}  // namespace shardwise::format
