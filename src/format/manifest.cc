// Writing manifests (Serialize and the self-checksum seal) and the semantic
// rules (Validate). Parsing is in manifest_parse.cc.
#include "format/manifest.h"

#include <algorithm>
#include <cstdio>
#include <unordered_set>

#include "format/crc32c.h"
#include "format/json_reader.h"
#include "format/json_writer.h"
#include "format/manifest_internal.h"
#include "shardwise/utf8.h"

namespace shardwise::format {

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
  out += ",\"created_unix\":";
  AppendFixed(out, m.created_unix, 6);
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
  body += internal::kTrailerKey;
  body += buf;
  body += "\"}\n";
  return body;
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
  item_names.reserve(m.items.size());
  // Extents per file, to check bounds and overlaps.
  struct Extent {
    std::uint64_t begin, end;
    std::size_t item;
  };
  std::vector<std::vector<Extent>> per_file(m.files.size());
  std::vector<const std::vector<std::int64_t>*> starts;  // reused per item
  for (std::size_t i = 0; i < m.items.size(); ++i) {
    const ItemRecord& it = m.items[i];
    // Names for messages are built only on error: there may be a million.
    auto iname = [&] { return "item '" + it.name + "'"; };
    if (!item_names.insert(it.name).second) return bad(iname() + " is listed twice");
    if (it.kind == ItemKind::kBytes && (it.dtype != DType::kUInt8 || it.shape.size() != 1))
      return bad(iname() + ": a bytes item must be uint8 with a 1-d shape");
    if (!Volume(it.shape)) return bad(iname() + ": shape volume overflows");
    std::uint32_t esize = DTypeSize(it.dtype);
    for (std::size_t c = 0; c < it.chunks.size(); ++c) {
      const ChunkRecord& ch = it.chunks[c];
      auto cname = [&] { return iname() + " chunk " + std::to_string(c); };
      if (ch.offsets.size() != it.shape.size() || ch.sizes.size() != it.shape.size())
        return bad(cname() + ": offsets/sizes do not match the item's rank " +
                   std::to_string(it.shape.size()));
      for (std::size_t d = 0; d < it.shape.size(); ++d) {
        std::int64_t end;
        if (__builtin_add_overflow(ch.offsets[d], ch.sizes[d], &end) || end > it.shape[d])
          return bad(cname() + ": dimension " + std::to_string(d) +
                     " lies outside the global shape");
      }
      auto vol = Volume(ch.sizes);
      std::uint64_t bytes;
      if (!vol || __builtin_mul_overflow(*vol, static_cast<std::uint64_t>(esize), &bytes))
        return bad(cname() + ": size overflows");
      if (bytes != ch.length)
        return bad(cname() + ": length " + std::to_string(ch.length) +
                   " does not match its shape and dtype (" + std::to_string(bytes) +
                   " bytes)");
      if (ch.offset % 4096 != 0)
        return bad(cname() + ": file offset " + std::to_string(ch.offset) +
                   " is not 4096-aligned");
      if (ch.file >= m.files.size()) return bad(cname() + ": file index out of range");
      std::uint64_t end;
      if (__builtin_add_overflow(ch.offset, ch.length, &end) || end > m.files[ch.file].size)
        return bad(cname() + ": extent [" + std::to_string(ch.offset) + ", +" +
                   std::to_string(ch.length) + ") lies outside file '" +
                   m.files[ch.file].name + "' of " + std::to_string(m.files[ch.file].size) +
                   " bytes");
      if (ch.length > 0 && ch.offset < 4096)
        return bad(cname() + ": extent overlaps the shard header");
      if (ch.crc32c.size() != BlockCount(ch.length, m.checksum_block))
        return bad(cname() + ": has " + std::to_string(ch.crc32c.size()) +
                   " checksums, expected " +
                   std::to_string(BlockCount(ch.length, m.checksum_block)));
      if (ch.length > 0) per_file[ch.file].push_back({ch.offset, end, i});
    }
    // No two chunks of an item start at the same offsets (sorted, not hashed:
    // no allocation per chunk).
    if (it.chunks.size() > 1) {
      starts.clear();
      for (const auto& ch : it.chunks) starts.push_back(&ch.offsets);
      std::sort(starts.begin(), starts.end(), [](auto* a, auto* b) { return *a < *b; });
      for (std::size_t k = 1; k < starts.size(); ++k)
        if (*starts[k] == *starts[k - 1])
          return bad(iname() + ": two chunks start at the same offsets");
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
  // user_json and dcp_json come from callers too: they must be valid JSON
  // (an object, for user) so that the manifest stays valid.
  if (!m.user_json.empty()) {
    JsonReader u(m.user_json);
    if (!ValidUtf8(m.user_json) || u.Peek() != JsonReader::Kind::kObject || !u.Skip() ||
        !u.AtEnd())
      return bad("user metadata must be a JSON object");
  }
  if (!m.dcp_json.empty()) {
    JsonReader d(m.dcp_json);
    if (!ValidUtf8(m.dcp_json) || !d.Skip() || !d.AtEnd())
      return bad("dcp metadata must be valid JSON");
  }
  return Status::Ok();
}

}  // namespace shardwise::format
