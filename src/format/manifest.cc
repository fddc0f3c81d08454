#include "format/manifest.h"

#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "format/crc32c.h"

namespace shardwise::format {

using Json = nlohmann::json;

namespace {

// ---- serialization -------------------------------------------------------

constexpr std::string_view kTrailerKey = ",\"self_crc32c\":\"";
constexpr std::size_t kTrailerLen = kTrailerKey.size() + 8 + 3;  // hex "}\n

void AppendEscaped(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (c == '"') out += "\\\"";
    else if (c == '\\') out += "\\\\";
    else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else out += c;
  }
  out += '"';
}

template <typename T>
void AppendInt(std::string& out, T v) {
  char buf[24];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, p);
}

template <typename T>
void AppendIntArray(std::string& out, const std::vector<T>& v) {
  out += '[';
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out += ',';
    AppendInt(out, v[i]);
  }
  out += ']';
}

// ---- parsing helpers -------------------------------------------------------

// The JSON path of a value ("items[3].chunks[0]"), built only when an
// error needs it: building it for each of a million chunks costs seconds.
struct Where {
  const Where* parent = nullptr;
  const char* key = "manifest";
  std::int64_t index = -1;  // >= 0: key[index]
  std::string ToString() const {
    std::string s = parent ? parent->ToString() + "." : "";
    s += key;
    if (index >= 0) s += "[" + std::to_string(index) + "]";
    return s;
  }
};

// Reads typed fields out of a JSON object, producing errors that name the
// file and the JSON path of the offending field.
class Fields {
 public:
  Fields(const Json& obj, const std::string& file, const Where& where)
      : obj_(obj), file_(file), where_(where) {}

  Status Bad(std::string_view key, std::string_view problem) const {
    return Corrupt(file_ + ": " + where_.ToString() + (key.empty() ? "" : ".") +
                       std::string(key) + ": " + std::string(problem),
                   file_);
  }

  Result<const Json*> Get(std::string_view key, bool required = true) const {
    auto it = obj_.find(key);
    if (it == obj_.end()) {
      if (!required) return static_cast<const Json*>(nullptr);
      return Bad(key, "missing");
    }
    return &*it;
  }

  Result<std::int64_t> Int(std::string_view key, std::int64_t lo,
                           std::int64_t hi) const {
    SW_ASSIGN_OR_RETURN(const Json* v, Get(key));
    std::int64_t out;
    if (v->is_number_unsigned()) {
      auto u = v->get<std::uint64_t>();
      if (u > static_cast<std::uint64_t>(INT64_MAX))
        return Bad(key, "out of range");
      out = static_cast<std::int64_t>(u);
    } else if (v->is_number_integer()) {
      out = v->get<std::int64_t>();
    } else {
      return Bad(key, "must be an integer");
    }
    if (out < lo || out > hi)
      return Bad(key, "value " + std::to_string(out) + " is outside [" +
                          std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return out;
  }

  Result<std::uint64_t> Uint(std::string_view key, std::uint64_t hi) const {
    SW_ASSIGN_OR_RETURN(const Json* v, Get(key));
    if (!v->is_number_unsigned()) {
      if (v->is_number_integer()) return Bad(key, "must not be negative");
      return Bad(key, "must be an unsigned integer");
    }
    auto u = v->get<std::uint64_t>();
    if (u > hi)
      return Bad(key, "value " + std::to_string(u) + " exceeds the limit " +
                          std::to_string(hi));
    return u;
  }

  Result<std::string> Str(std::string_view key, std::size_t max_len) const {
    SW_ASSIGN_OR_RETURN(const Json* v, Get(key));
    if (!v->is_string()) return Bad(key, "must be a string");
    const auto& s = v->get_ref<const std::string&>();
    if (s.size() > max_len)
      return Bad(key, "string of " + std::to_string(s.size()) +
                          " bytes is longer than " + std::to_string(max_len));
    return s;
  }

  Result<const Json*> Arr(std::string_view key, std::size_t max_len) const {
    SW_ASSIGN_OR_RETURN(const Json* v, Get(key));
    if (!v->is_array()) return Bad(key, "must be an array");
    if (v->size() > max_len)
      return Bad(key, "array of " + std::to_string(v->size()) +
                          " entries exceeds the limit " + std::to_string(max_len));
    return v;
  }

  Result<std::vector<std::int64_t>> Dims(std::string_view key) const {
    SW_ASSIGN_OR_RETURN(const Json* a, Arr(key, kMaxDims));
    std::vector<std::int64_t> out;
    out.reserve(a->size());
    for (const Json& d : *a) {
      if (!d.is_number_integer()) return Bad(key, "entries must be integers");
      if (d.is_number_unsigned() &&
          d.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
        return Bad(key, "entry out of range");
      std::int64_t x = d.get<std::int64_t>();
      if (x < 0) return Bad(key, "entries must not be negative");
      out.push_back(x);
    }
    return out;
  }

 private:
  const Json& obj_;
  const std::string& file_;
  const Where& where_;
};

Result<FileRecord> ParseFile(const Json& j, const std::string& path,
                             std::size_t index) {
  Where where{nullptr, "files", static_cast<std::int64_t>(index)};
  if (!j.is_object())
    return Corrupt(path + ": " + where.ToString() + ": must be an object", path);
  Fields f(j, path, where);
  FileRecord r;
  SW_ASSIGN_OR_RETURN(r.name, f.Str("name", 255));
  if (!IsSafeFileName(r.name))
    return f.Bad("name", "'" + r.name +
                             "' is not a plain file name inside the checkpoint "
                             "(no '/', no '..', no leading '.')");
  SW_ASSIGN_OR_RETURN(auto rank, f.Int("rank", 0, kMaxWorldSize - 1));
  r.rank = static_cast<std::int32_t>(rank);
  SW_ASSIGN_OR_RETURN(r.size, f.Uint("size", kMaxFileBytes));
  SW_ASSIGN_OR_RETURN(const Json* be, f.Get("backend", false));
  if (be && be->is_string()) r.backend = be->get<std::string>();
  SW_ASSIGN_OR_RETURN(const Json* dio, f.Get("direct_io", false));
  if (dio && dio->is_boolean()) r.direct_io = dio->get<bool>();
  return r;
}

Result<ItemRecord> ParseItem(const Json& j, const std::string& path,
                             std::size_t index, std::size_t nfiles) {
  Where where{nullptr, "items", static_cast<std::int64_t>(index)};
  if (!j.is_object())
    return Corrupt(path + ": " + where.ToString() + ": must be an object", path);
  Fields f(j, path, where);
  ItemRecord it;
  SW_ASSIGN_OR_RETURN(it.name, f.Str("name", kMaxNameBytes));
  if (it.name.empty()) return f.Bad("name", "must not be empty");
  SW_ASSIGN_OR_RETURN(std::string kind, f.Str("kind", 16));
  if (kind == "tensor") it.kind = ItemKind::kTensor;
  else if (kind == "bytes") it.kind = ItemKind::kBytes;
  else return f.Bad("kind", "'" + kind + "' is not tensor or bytes");
  SW_ASSIGN_OR_RETURN(std::string dtype, f.Str("dtype", 32));
  auto dt = ParseDType(dtype);
  if (!dt.ok()) return f.Bad("dtype", "unknown dtype '" + dtype + "'");
  it.dtype = *dt;
  SW_ASSIGN_OR_RETURN(it.shape, f.Dims("shape"));
  SW_ASSIGN_OR_RETURN(const Json* chunks, f.Arr("chunks", 1u << 24));
  it.chunks.reserve(chunks->size());
  for (std::size_t c = 0; c < chunks->size(); ++c) {
    const Json& cj = (*chunks)[c];
    Where cw{&where, "chunks", static_cast<std::int64_t>(c)};
    if (!cj.is_object())
      return Corrupt(path + ": " + cw.ToString() + ": must be an object", path);
    Fields cf(cj, path, cw);
    ChunkRecord ch;
    SW_ASSIGN_OR_RETURN(ch.offsets, cf.Dims("offsets"));
    SW_ASSIGN_OR_RETURN(ch.sizes, cf.Dims("sizes"));
    SW_ASSIGN_OR_RETURN(auto file, cf.Uint("file", nfiles == 0 ? 0 : nfiles - 1));
    if (nfiles == 0) return cf.Bad("file", "refers to a file but none are listed");
    ch.file = static_cast<std::uint32_t>(file);
    SW_ASSIGN_OR_RETURN(ch.offset, cf.Uint("offset", kMaxFileBytes));
    SW_ASSIGN_OR_RETURN(ch.length, cf.Uint("length", kMaxFileBytes));
    SW_ASSIGN_OR_RETURN(const Json* crcs, cf.Arr("crc32c", 1u << 30));
    ch.crc32c.reserve(crcs->size());
    for (const Json& v : *crcs) {
      if (!v.is_number_unsigned() || v.get<std::uint64_t>() > 0xFFFFFFFFull)
        return cf.Bad("crc32c", "entries must be 32-bit unsigned integers");
      ch.crc32c.push_back(static_cast<std::uint32_t>(v.get<std::uint64_t>()));
    }
    it.chunks.push_back(std::move(ch));
  }
  return it;
}

Result<Manifest> ParseUnchecked(std::string_view text, std::string_view kind,
                                const std::string& path) {
  // 1. The self-checksum trailer, before trusting any of the content.
  if (text.size() < kTrailerLen + 2 || text.substr(text.size() - 3) != "\"}\n" ||
      text.substr(text.size() - kTrailerLen, kTrailerKey.size()) != kTrailerKey)
    return Corrupt(path + ": no self-checksum trailer (file is truncated, "
                          "damaged or not written by shardwise)",
                   path);
  std::string_view hex = text.substr(text.size() - 11, 8);
  std::uint32_t stored = 0;
  auto [p, ec] = std::from_chars(hex.data(), hex.data() + 8, stored, 16);
  if (ec != std::errc() || p != hex.data() + 8)
    return Corrupt(path + ": malformed self-checksum '" + std::string(hex) + "'", path);
  std::string_view body = text.substr(0, text.size() - kTrailerLen);
  std::uint32_t actual = Crc32c(body.data(), body.size());
  actual = Crc32c("}", 1, actual);
  if (actual != stored) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "self-checksum mismatch (stored %08x, computed %08x)",
                  stored, actual);
    return Corrupt(path + ": " + buf + ": the file was modified or damaged", path);
  }

  // 2. JSON syntax and types.
  Json j = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Corrupt(path + ": not valid JSON", path);
  if (!j.is_object()) return Corrupt(path + ": top level must be a JSON object", path);
  const Where top{};
  Fields f(j, path, top);
  Manifest m;
  SW_ASSIGN_OR_RETURN(auto version, f.Int("format_version", 0, INT32_MAX));
  if (version != Manifest::kFormatVersion)
    return Corrupt(path + ": format_version " + std::to_string(version) +
                       " is not supported (this build reads version " +
                       std::to_string(Manifest::kFormatVersion) + ")",
                   path);
  m.format_version = static_cast<int>(version);
  SW_ASSIGN_OR_RETURN(std::string k, f.Str("kind", 64));
  if (k != kind)
    return Corrupt(path + ": kind is '" + k + "', expected '" + std::string(kind) + "'",
                   path);
  SW_ASSIGN_OR_RETURN(m.name, f.Str("name", 255));
  SW_ASSIGN_OR_RETURN(m.step, f.Int("step", -1, INT64_MAX));
  SW_ASSIGN_OR_RETURN(m.save_id, f.Str("save_id", 128));
  SW_ASSIGN_OR_RETURN(auto ws, f.Int("world_size", 1, kMaxWorldSize));
  m.world_size = static_cast<std::int32_t>(ws);
  SW_ASSIGN_OR_RETURN(auto rank, f.Int("rank", -1, kMaxWorldSize - 1));
  m.rank = static_cast<std::int32_t>(rank);
  SW_ASSIGN_OR_RETURN(const Json* created, f.Get("created_unix"));
  if (!created->is_number()) return f.Bad("created_unix", "must be a number");
  m.created_unix = created->get<double>();
  SW_ASSIGN_OR_RETURN(const Json* ck, f.Get("checksum"));
  if (!ck->is_object()) return f.Bad("checksum", "must be an object");
  const Where ck_where{&top, "checksum"};
  Fields cf(*ck, path, ck_where);
  SW_ASSIGN_OR_RETURN(std::string algo, cf.Str("algorithm", 32));
  if (algo != "crc32c")
    return cf.Bad("algorithm", "'" + algo + "' is not supported (crc32c)");
  SW_ASSIGN_OR_RETURN(m.checksum_block, cf.Uint("block_bytes", 1ull << 30));
  if (m.checksum_block < 4096 || m.checksum_block % 4096 != 0)
    return cf.Bad("block_bytes", "must be a positive multiple of 4096");

  SW_ASSIGN_OR_RETURN(const Json* files, f.Arr("files", 1u << 24));
  m.files.reserve(files->size());
  for (std::size_t i = 0; i < files->size(); ++i) {
    SW_ASSIGN_OR_RETURN(FileRecord fr, ParseFile((*files)[i], path, i));
    m.files.push_back(std::move(fr));
  }
  SW_ASSIGN_OR_RETURN(const Json* items, f.Arr("items", 1u << 26));
  m.items.reserve(items->size());
  for (std::size_t i = 0; i < items->size(); ++i) {
    SW_ASSIGN_OR_RETURN(ItemRecord ir, ParseItem((*items)[i], path, i, m.files.size()));
    m.items.push_back(std::move(ir));
  }
  SW_ASSIGN_OR_RETURN(const Json* user, f.Get("user"));
  if (!user->is_object()) return f.Bad("user", "must be an object");
  m.user_json = user->dump();
  SW_ASSIGN_OR_RETURN(const Json* dcp, f.Get("dcp", false));
  if (dcp && !dcp->is_null()) m.dcp_json = dcp->dump();
  SW_ASSIGN_OR_RETURN(const Json* self, f.Get("self_crc32c"));
  (void)self;  // checked above on the raw bytes

  // 3. Semantic rules.
  SW_RETURN_IF_ERROR(Validate(m, path));
  return m;
}

}  // namespace

bool IsSafeFileName(std::string_view name) {
  if (name.empty() || name.size() > 255 || name[0] == '.') return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::uint64_t BlockCount(std::uint64_t length, std::uint64_t block) {
  return (length + block - 1) / block;
}

std::optional<std::uint64_t> Volume(const std::vector<std::int64_t>& shape) {
  std::uint64_t v = 1;
  for (std::int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (__builtin_mul_overflow(v, static_cast<std::uint64_t>(d), &v))
      return std::nullopt;
  }
  return v;
}

std::string Serialize(const Manifest& m, std::string_view kind) {
  std::string out;
  out.reserve(4096 + m.items.size() * 160);
  out += "{\"format_version\":";
  AppendInt(out, m.format_version);
  out += ",\"kind\":";
  AppendEscaped(out, kind);
  out += ",\"name\":";
  AppendEscaped(out, m.name);
  out += ",\"step\":";
  AppendInt(out, m.step);
  out += ",\"save_id\":";
  AppendEscaped(out, m.save_id);
  out += ",\"world_size\":";
  AppendInt(out, m.world_size);
  out += ",\"rank\":";
  AppendInt(out, m.rank);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6f", m.created_unix);
  out += ",\"created_unix\":";
  out += buf;
  out += ",\"checksum\":{\"algorithm\":\"crc32c\",\"block_bytes\":";
  AppendInt(out, m.checksum_block);
  out += "},\n\"files\":[";
  for (std::size_t i = 0; i < m.files.size(); ++i) {
    const FileRecord& f = m.files[i];
    out += i ? ",\n{" : "\n{";
    out += "\"name\":";
    AppendEscaped(out, f.name);
    out += ",\"rank\":";
    AppendInt(out, f.rank);
    out += ",\"size\":";
    AppendInt(out, f.size);
    out += ",\"backend\":";
    AppendEscaped(out, f.backend);
    out += f.direct_io ? ",\"direct_io\":true}" : ",\"direct_io\":false}";
  }
  out += "],\n\"items\":[";
  for (std::size_t i = 0; i < m.items.size(); ++i) {
    const ItemRecord& it = m.items[i];
    out += i ? ",\n{" : "\n{";
    out += "\"name\":";
    AppendEscaped(out, it.name);
    out += ",\"kind\":";
    AppendEscaped(out, ItemKindName(it.kind));
    out += ",\"dtype\":";
    AppendEscaped(out, DTypeName(it.dtype));
    out += ",\"shape\":";
    AppendIntArray(out, it.shape);
    out += ",\"chunks\":[";
    for (std::size_t c = 0; c < it.chunks.size(); ++c) {
      const ChunkRecord& ch = it.chunks[c];
      out += c ? ",{" : "{";
      out += "\"offsets\":";
      AppendIntArray(out, ch.offsets);
      out += ",\"sizes\":";
      AppendIntArray(out, ch.sizes);
      out += ",\"file\":";
      AppendInt(out, ch.file);
      out += ",\"offset\":";
      AppendInt(out, ch.offset);
      out += ",\"length\":";
      AppendInt(out, ch.length);
      out += ",\"crc32c\":";
      AppendIntArray(out, ch.crc32c);
      out += '}';
    }
    out += "]}";
  }
  out += "],\n\"user\":";
  out += m.user_json.empty() ? "{}" : m.user_json;
  out += ",\n\"dcp\":";
  out += m.dcp_json.empty() ? "null" : m.dcp_json;
  out += '}';
  return Seal(std::move(out));
}

std::string Seal(std::string body) {
  std::uint32_t crc = Crc32c(body.data(), body.size());
  if (!body.empty() && body.back() == '}') body.pop_back();
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", crc);
  body += kTrailerKey;
  body += buf;
  body += "\"}\n";
  return body;
}

Result<Manifest> Parse(std::string_view text, std::string_view kind,
                       const std::string& path) {
  try {
    return ParseUnchecked(text, kind, path);
  } catch (const std::exception& e) {
    // The parser is written not to throw; this is a last line of defence so
    // that a hostile file can never take the process down.
    return Corrupt(path + ": malformed: " + e.what(), path);
  }
}

Status Validate(const Manifest& m, const std::string& path) {
  auto bad = [&](std::string what) { return Corrupt(path + ": " + what, path); };
  if (!m.name.empty() && !IsSafeFileName(m.name))
    return bad("name '" + m.name + "' is not a safe directory name");
  std::unordered_set<std::string_view> file_names;
  for (const FileRecord& f : m.files) {
    if (!file_names.insert(f.name).second)
      return bad("file '" + f.name + "' is listed twice");
    if (f.name == kManifestName) return bad("a data file may not be named manifest.json");
    if (f.rank >= m.world_size)
      return bad("file '" + f.name + "' has rank " + std::to_string(f.rank) +
                 " but world_size is " + std::to_string(m.world_size));
  }
  std::unordered_set<std::string_view> item_names;
  // Extents per file, to check bounds and overlaps.
  struct Extent {
    std::uint64_t begin, end;
    std::size_t item;
  };
  std::vector<std::vector<Extent>> per_file(m.files.size());
  for (std::size_t i = 0; i < m.items.size(); ++i) {
    const ItemRecord& it = m.items[i];
    std::string iname = "item '" + it.name + "'";
    if (!item_names.insert(it.name).second) return bad(iname + " is listed twice");
    if (it.kind == ItemKind::kBytes && (it.dtype != DType::kUInt8 || it.shape.size() != 1))
      return bad(iname + ": a bytes item must be uint8 with a 1-d shape");
    if (!Volume(it.shape)) return bad(iname + ": shape volume overflows");
    std::uint32_t esize = DTypeSize(it.dtype);
    std::unordered_set<std::string> chunk_keys;
    for (std::size_t c = 0; c < it.chunks.size(); ++c) {
      const ChunkRecord& ch = it.chunks[c];
      std::string cname = iname + " chunk " + std::to_string(c);
      if (ch.offsets.size() != it.shape.size() || ch.sizes.size() != it.shape.size())
        return bad(cname + ": offsets/sizes do not match the item's rank " +
                   std::to_string(it.shape.size()));
      for (std::size_t d = 0; d < it.shape.size(); ++d) {
        std::int64_t end;
        if (__builtin_add_overflow(ch.offsets[d], ch.sizes[d], &end) || end > it.shape[d])
          return bad(cname + ": dimension " + std::to_string(d) +
                     " lies outside the global shape");
      }
      auto vol = Volume(ch.sizes);
      std::uint64_t bytes;
      if (!vol || __builtin_mul_overflow(*vol, static_cast<std::uint64_t>(esize), &bytes))
        return bad(cname + ": size overflows");
      if (bytes != ch.length)
        return bad(cname + ": length " + std::to_string(ch.length) +
                   " does not match its shape and dtype (" + std::to_string(bytes) +
                   " bytes)");
      std::string key(reinterpret_cast<const char*>(ch.offsets.data()),
                      ch.offsets.size() * sizeof(std::int64_t));
      if (!chunk_keys.insert(key).second)
        return bad(cname + ": two chunks start at the same offsets");
      if (ch.offset % 4096 != 0)
        return bad(cname + ": file offset " + std::to_string(ch.offset) +
                   " is not 4096-aligned");
      if (ch.file >= m.files.size()) return bad(cname + ": file index out of range");
      std::uint64_t end;
      if (__builtin_add_overflow(ch.offset, ch.length, &end) ||
          end > m.files[ch.file].size)
        return bad(cname + ": extent [" + std::to_string(ch.offset) + ", +" +
                   std::to_string(ch.length) + ") lies outside file '" +
                   m.files[ch.file].name + "' of " +
                   std::to_string(m.files[ch.file].size) + " bytes");
      if (ch.length > 0 && ch.offset < 4096)
        return bad(cname + ": extent overlaps the shard header");
      if (ch.crc32c.size() != BlockCount(ch.length, m.checksum_block))
        return bad(cname + ": has " + std::to_string(ch.crc32c.size()) +
                   " checksums, expected " +
                   std::to_string(BlockCount(ch.length, m.checksum_block)));
      if (ch.length > 0) per_file[ch.file].push_back({ch.offset, end, i});
    }
  }
  for (std::size_t f = 0; f < per_file.size(); ++f) {
    auto& v = per_file[f];
    std::sort(v.begin(), v.end(),
              [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
    for (std::size_t k = 1; k < v.size(); ++k)
      if (v[k].begin < v[k - 1].end)
        return bad("extents of items '" + m.items[v[k - 1].item].name + "' and '" +
                   m.items[v[k].item].name + "' overlap in file '" + m.files[f].name +
                   "'");
  }
  if (!m.user_json.empty()) {
    // user_json comes from callers too; it must be an object to stay valid.
    Json u = Json::parse(m.user_json, nullptr, false);
    if (u.is_discarded() || !u.is_object()) return bad("user metadata must be a JSON object");
  }
  if (!m.dcp_json.empty()) {
    Json d = Json::parse(m.dcp_json, nullptr, false);
    if (d.is_discarded()) return bad("dcp metadata must be valid JSON");
  }
  return Status::Ok();
}

}  // namespace shardwise::format
