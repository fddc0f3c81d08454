// Writing manifests: Serialize and the self-checksum seal. Parsing is in
// manifest_parse.cc, the semantic rules in manifest_validate.cc.
#include "format/manifest.h"

#include <cstdio>

#include "format/crc32c.h"
#include "format/json_writer.h"
#include "format/manifest_internal.h"
#include "shardwise/names.h"

namespace shardwise::format {

namespace {

void AppendHeader(std::string& out, const Manifest& m, std::string_view kind) {
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
  out += "},\n";
}

// Format 2: what manifest.json says about index.swi.
void AppendIndexRef(std::string& out, const IndexRef& ix) {
  out += "\"index\":{\"name\":";
  AppendEscaped(out, names::kIndex);
  for (auto [key, v] : {std::pair{"size", ix.size}, {"files", ix.files}, {"items", ix.items},
                        {"chunks", ix.chunks}, {"file_bytes", ix.file_bytes}}) {
    out += ",\"";
    out += key;
    out += "\":";
    AppendInt(out, v);
  }
  out += "},\n";
}

void AppendFiles(std::string& out, const Manifest& m) {
  out += "\"files\":[";
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
  out += "],\n";
}

void AppendItems(std::string& out, const Manifest& m) {
  out += "\"items\":[";
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
  out += "],\n";
}

}  // namespace

std::string Serialize(const Manifest& m, std::string_view kind) {
  std::string out;
  out.reserve(4096 + m.items.size() * 160);
  AppendHeader(out, m, kind);
  if (m.format_version >= 2) {
    AppendIndexRef(out, m.index);  // a commit record: files and items live in the index
  } else {
    AppendFiles(out, m);
    AppendItems(out, m);
  }
  out += "\"user\":";
  out += m.user_json.empty() ? "{}" : m.user_json;
  out += ",\n\"dcp\":";
  out += m.dcp_json.empty() ? "null" : m.dcp_json;
  out += '}';
  return Seal(std::move(out));
}

Manifest HeaderOf(const Manifest& m) {
  Manifest h;
  h.format_version = m.format_version;
  h.name = m.name;
  h.step = m.step;
  h.save_id = m.save_id;
  h.world_size = m.world_size;
  h.rank = m.rank;
  h.created_unix = m.created_unix;
  h.checksum_block = m.checksum_block;
  h.user_json = m.user_json;
  h.dcp_json = m.dcp_json;
  h.index = m.index;
  return h;
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

}  // namespace shardwise::format
