// Reading manifests: a streaming parser that checks the self-checksum
// trailer, then syntax and types, and fills the structs as it goes; the
// semantic rules are then Validate's (manifest_validate.cc).
#include <charconv>
#include <cstdio>
#include <initializer_list>

#include "format/crc32c.h"
#include "format/json_reader.h"
#include "format/manifest.h"
#include "format/manifest_internal.h"
#include "shardwise/utf8.h"
#include "shardwise/names.h"

namespace shardwise::format {

namespace {

// The parser walks the text with a streaming reader and fills the structs
// directly: no JSON tree, so a manifest of a million chunks parses at the
// speed of the text. Every error names the file and the JSON path.

// The JSON path of a value ("items[3].chunks[0]"), built only when an
// error needs it.
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

class Parser {
 public:
  Parser(std::string_view text, const std::string& path) : r_(text), path_(path) {}

  Status Bad(const Where& w, std::string_view key, std::string_view problem) const {
    return Corrupt(path_ + ": " + w.ToString() + (key.empty() ? "" : ".") + std::string(key) +
                       ": " + std::string(problem),
                   path_);
  }
  Status Syntax() const { return Corrupt(path_ + ": not valid JSON (" + r_.error() + ")", path_); }

  Result<std::int64_t> Int(const Where& w, std::string_view key, std::int64_t lo,
                           std::int64_t hi) {
    if (r_.Peek() != JsonReader::Kind::kNumber) return Bad(w, key, "must be an integer");
    JsonReader::Number n;
    if (!r_.ReadNumber(&n)) return Syntax();
    if (!n.integer) return Bad(w, key, "must be an integer");
    if (!n.negative && n.u > static_cast<std::uint64_t>(INT64_MAX))
      return Bad(w, key, "out of range");
    std::int64_t v = n.negative ? n.i : static_cast<std::int64_t>(n.u);
    if (v < lo || v > hi)
      return Bad(w, key, "value " + std::to_string(v) + " is outside [" + std::to_string(lo) +
                             ", " + std::to_string(hi) + "]");
    return v;
  }

  Result<std::uint64_t> Uint(const Where& w, std::string_view key, std::uint64_t hi) {
    if (r_.Peek() != JsonReader::Kind::kNumber)
      return Bad(w, key, "must be an unsigned integer");
    JsonReader::Number n;
    if (!r_.ReadNumber(&n)) return Syntax();
    if (!n.integer) return Bad(w, key, "must be an unsigned integer");
    if (n.negative) return Bad(w, key, "must not be negative");
    if (n.u > hi)
      return Bad(w, key, "value " + std::to_string(n.u) + " exceeds the limit " +
                             std::to_string(hi));
    return n.u;
  }

  Result<double> Double(const Where& w, std::string_view key) {
    if (r_.Peek() != JsonReader::Kind::kNumber) return Bad(w, key, "must be a number");
    JsonReader::Number n;
    if (!r_.ReadNumber(&n)) return Syntax();
    return n.d;
  }

  Result<std::string> Str(const Where& w, std::string_view key, std::size_t max_len) {
    if (r_.Peek() != JsonReader::Kind::kString) return Bad(w, key, "must be a string");
    std::string s;
    if (!r_.String(&s)) return Syntax();
    if (s.size() > max_len)
      return Bad(w, key, "string of " + std::to_string(s.size()) + " bytes is longer than " +
                             std::to_string(max_len));
    return s;
  }

  // Iterates an array, calling elem(index) for each element.
  template <typename Fn>
  Status Array(const Where& w, std::string_view key, std::size_t max_len, Fn elem) {
    if (r_.Peek() != JsonReader::Kind::kArray) return Bad(w, key, "must be an array");
    if (!r_.BeginArray()) return Syntax();
    bool first = true;
    for (std::size_t i = 0;; ++i) {
      auto step = r_.Element(&first);
      if (step == JsonReader::Step::kError) return Syntax();
      if (step == JsonReader::Step::kDone) return Status::Ok();
      if (i >= max_len)
        return Bad(w, key, "array of more than " + std::to_string(max_len) +
                               " entries exceeds the limit " + std::to_string(max_len));
      SW_RETURN_IF_ERROR(elem(i));
    }
  }

  // Iterates an object, calling field(key) for each member. Required keys
  // are tracked in a bitmask (no allocation per object: there are millions):
  // a required key may not appear twice, and the first missing one is
  // reported.
  template <typename Fn>
  Status Object(const Where& w, const char* what, std::initializer_list<const char*> required,
                Fn field) {
    if (r_.Peek() != JsonReader::Kind::kObject)
      return Corrupt(path_ + ": " + w.ToString() + ": " + what, path_);
    if (!r_.BeginObject()) return Syntax();
    std::uint64_t seen = 0;
    bool first = true;
    while (true) {
      auto step = r_.Key(&first, &key_);
      if (step == JsonReader::Step::kError) return Syntax();
      if (step == JsonReader::Step::kDone) break;
      int bit = 0;
      for (const char* k : required) {
        if (key_ == k) {
          if (seen & (1ull << bit)) return Bad(w, key_, "appears twice");
          seen |= 1ull << bit;
          break;
        }
        ++bit;
      }
      bool handled = false;
      const std::string key = key_;  // field() may parse nested objects
      SW_RETURN_IF_ERROR(field(key, &handled));
      if (!handled && !r_.Skip()) return Syntax();  // unknown keys: ignored
    }
    int bit = 0;
    for (const char* k : required) {
      if (!(seen & (1ull << bit))) return Bad(w, k, "missing");
      ++bit;
    }
    return Status::Ok();
  }

  Result<std::vector<std::int64_t>> Dims(const Where& w, std::string_view key) {
    std::vector<std::int64_t> out;
    SW_RETURN_IF_ERROR(Array(w, key, kMaxDims, [&](std::size_t) -> Status {
      if (r_.Peek() != JsonReader::Kind::kNumber)
        return Bad(w, key, "entries must be integers");
      JsonReader::Number n;
      if (!r_.ReadNumber(&n)) return Syntax();
      if (!n.integer) return Bad(w, key, "entries must be integers");
      if (n.negative) return Bad(w, key, "entries must not be negative");
      if (n.u > static_cast<std::uint64_t>(INT64_MAX)) return Bad(w, key, "entry out of range");
      out.push_back(static_cast<std::int64_t>(n.u));
      return Status::Ok();
    }));
    return out;
  }

  JsonReader& reader() { return r_; }

 private:
  JsonReader r_;
  const std::string& path_;
  std::string key_;  // reused buffer for object keys
};

Status ParseFileRecord(Parser& p, std::size_t index, FileRecord* r) {
  Where w{nullptr, "files", static_cast<std::int64_t>(index)};
  return p.Object(w, "must be an object", {"name", "rank", "size"},
                  [&](const std::string& key, bool* handled) -> Status {
    *handled = true;
    if (key == "name") {
      SW_ASSIGN_OR_RETURN(r->name, p.Str(w, "name", 255));
      if (!names::IsSafeName(r->name))
        return p.Bad(w, "name", "'" + r->name +
                                    "' is not a plain file name inside the checkpoint "
                                    "(no '/', no '..', no leading '.')");
    } else if (key == "rank") {
      SW_ASSIGN_OR_RETURN(auto rank, p.Int(w, "rank", 0, kMaxWorldSize - 1));
      r->rank = static_cast<std::int32_t>(rank);
    } else if (key == "size") {
      SW_ASSIGN_OR_RETURN(r->size, p.Uint(w, "size", kMaxFileBytes));
    } else if (key == "backend" && p.reader().Peek() == JsonReader::Kind::kString) {
      if (!p.reader().String(&r->backend)) return p.Syntax();
    } else if (key == "direct_io" && p.reader().Peek() == JsonReader::Kind::kBool) {
      if (!p.reader().ReadBool(&r->direct_io)) return p.Syntax();
    } else {
      *handled = false;
    }
    return Status::Ok();
  });
}

Status ParseChunk(Parser& p, const Where& w, std::size_t nfiles, ChunkRecord* ch) {
  // Files come before items in what we write; if a file list is absent so
  // far, Validate checks the index against the final list.
  const std::uint64_t max_file = nfiles == 0 ? UINT32_MAX : nfiles - 1;
  return p.Object(w, "must be an object", {"offsets", "sizes", "file", "offset", "length", "crc32c"},
                  [&](const std::string& key, bool* handled) -> Status {
    *handled = true;
    if (key == "offsets") {
      SW_ASSIGN_OR_RETURN(ch->offsets, p.Dims(w, "offsets"));
    } else if (key == "sizes") {
      SW_ASSIGN_OR_RETURN(ch->sizes, p.Dims(w, "sizes"));
    } else if (key == "file") {
      SW_ASSIGN_OR_RETURN(auto f, p.Uint(w, "file", max_file));
      ch->file = static_cast<std::uint32_t>(f);
    } else if (key == "offset") {
      SW_ASSIGN_OR_RETURN(ch->offset, p.Uint(w, "offset", kMaxFileBytes));
    } else if (key == "length") {
      SW_ASSIGN_OR_RETURN(ch->length, p.Uint(w, "length", kMaxFileBytes));
    } else if (key == "crc32c") {
      return p.Array(w, "crc32c", 1u << 30, [&](std::size_t) -> Status {
        JsonReader::Number n;
        if (p.reader().Peek() != JsonReader::Kind::kNumber || !p.reader().ReadNumber(&n) ||
            !n.integer || n.negative || n.u > 0xFFFFFFFFull)
          return p.Bad(w, "crc32c", "entries must be 32-bit unsigned integers");
        ch->crc32c.push_back(static_cast<std::uint32_t>(n.u));
        return Status::Ok();
      });
    } else {
      *handled = false;
    }
    return Status::Ok();
  });
}

Status ParseItemRecord(Parser& p, std::size_t index, std::size_t nfiles, ItemRecord* it) {
  Where w{nullptr, "items", static_cast<std::int64_t>(index)};
  return p.Object(w, "must be an object", {"name", "kind", "dtype", "shape", "chunks"},
                  [&](const std::string& key, bool* handled) -> Status {
    *handled = true;
    if (key == "name") {
      SW_ASSIGN_OR_RETURN(it->name, p.Str(w, "name", kMaxNameBytes));
      if (it->name.empty()) return p.Bad(w, "name", "must not be empty");
    } else if (key == "kind") {
      SW_ASSIGN_OR_RETURN(std::string kind, p.Str(w, "kind", 16));
      if (kind == "tensor") it->kind = ItemKind::kTensor;
      else if (kind == "bytes") it->kind = ItemKind::kBytes;
      else return p.Bad(w, "kind", "'" + kind + "' is not tensor or bytes");
    } else if (key == "dtype") {
      SW_ASSIGN_OR_RETURN(std::string dtype, p.Str(w, "dtype", 32));
      auto dt = ParseDType(dtype);
      if (!dt.ok()) return p.Bad(w, "dtype", "unknown dtype '" + dtype + "'");
      it->dtype = *dt;
    } else if (key == "shape") {
      SW_ASSIGN_OR_RETURN(it->shape, p.Dims(w, "shape"));
    } else if (key == "chunks") {
      return p.Array(w, "chunks", 1u << 24, [&](std::size_t c) -> Status {
        Where cw{&w, "chunks", static_cast<std::int64_t>(c)};
        it->chunks.emplace_back();
        return ParseChunk(p, cw, nfiles, &it->chunks.back());
      });
    } else {
      *handled = false;
    }
    return Status::Ok();
  });
}

// The trailer is present and well formed, its CRC32C matches the body, and
// the whole text is UTF-8 (the reader relies on that).
Status CheckTrailer(std::string_view text, const std::string& path) {
  using internal::kTrailerKey;
  using internal::kTrailerLen;
  if (text.size() < kTrailerLen + 2 || text.substr(text.size() - 3) != "\"}\n" ||
      text.substr(text.size() - kTrailerLen, kTrailerKey.size()) != kTrailerKey)
    return Corrupt(path + ": no self-checksum trailer (file is truncated, "
                          "damaged or not written by shardwise)",
                   path);
  std::string_view hex = text.substr(text.size() - 11, 8);
  std::uint32_t stored = 0;
  auto [hp, ec] = std::from_chars(hex.data(), hex.data() + 8, stored, 16);
  if (ec != std::errc() || hp != hex.data() + 8)
    return Corrupt(path + ": malformed self-checksum '" + ToValidUtf8(hex) + "'", path);
  std::string_view body = text.substr(0, text.size() - kTrailerLen);
  std::uint32_t actual = Crc32c(body.data(), body.size());
  actual = Crc32c("}", 1, actual);
  if (actual != stored) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "self-checksum mismatch (stored %08x, computed %08x)",
                  stored, actual);
    return Corrupt(path + ": " + buf + ": the file was modified or damaged", path);
  }
  if (!ValidUtf8(text)) return Corrupt(path + ": not valid JSON (invalid UTF-8)", path);
  return Status::Ok();
}

Status ParseChecksum(Parser& p, const Where& ck, Manifest* m) {
  return p.Object(ck, "must be an object", {"algorithm", "block_bytes"},
                  [&](const std::string& key, bool* handled) -> Status {
    *handled = true;
    if (key == "algorithm") {
      SW_ASSIGN_OR_RETURN(std::string algo, p.Str(ck, key, 32));
      if (algo != "crc32c")
        return p.Bad(ck, key, "'" + algo + "' is not supported (crc32c)");
    } else if (key == "block_bytes") {
      SW_ASSIGN_OR_RETURN(m->checksum_block, p.Uint(ck, key, 1ull << 30));
      if (m->checksum_block < 4096 || m->checksum_block % 4096 != 0)
        return p.Bad(ck, key, "must be a positive multiple of 4096");
    } else {
      *handled = false;
    }
    return Status::Ok();
  });
}

// Format 2's "index": the summary of index.swi.
Status ParseIndexRef(Parser& p, const Where& ix, Manifest* m) {
  return p.Object(ix, "must be an object",
                  {"name", "size", "files", "items", "chunks", "file_bytes"},
                  [&](const std::string& key, bool* handled) -> Status {
    *handled = true;
    if (key == "name") {
      SW_ASSIGN_OR_RETURN(std::string name, p.Str(ix, key, 255));
      if (name != names::kIndex) return p.Bad(ix, key, "must be " + std::string(names::kIndex));
    } else if (key == "size") {
      SW_ASSIGN_OR_RETURN(m->index.size, p.Uint(ix, key, 1ull << 42));
    } else if (key == "files") {
      SW_ASSIGN_OR_RETURN(m->index.files, p.Uint(ix, key, 1u << 24));
    } else if (key == "items") {
      SW_ASSIGN_OR_RETURN(m->index.items, p.Uint(ix, key, 1u << 26));
    } else if (key == "chunks") {
      SW_ASSIGN_OR_RETURN(m->index.chunks, p.Uint(ix, key, 1ull << 40));
    } else if (key == "file_bytes") {
      SW_ASSIGN_OR_RETURN(m->index.file_bytes, p.Uint(ix, key, UINT64_MAX));
    } else {
      *handled = false;
    }
    return Status::Ok();
  });
}

// Which of the version-dependent members appeared.
struct Seen {
  bool files = false, items = false, index = false;
};

// One member of the top-level object; sets *handled to false for the keys
// it does not know (self_crc32c, checked before, and unknown keys).
Status ParseTopField(Parser& p, const std::string& key, std::string_view kind,
                     const std::string& path, Manifest* m, Seen* seen, bool* handled) {
  const Where top{};
  const Where ck{&top, "checksum"};
  *handled = true;
  if (key == "format_version") {
    SW_ASSIGN_OR_RETURN(auto v, p.Int(top, key, 0, INT32_MAX));
    const int newest = kind == kFragmentKind ? 1 : Manifest::kLatestFormat;
    if (v < 1 || v > newest)
      return Corrupt(path + ": format_version " + std::to_string(v) +
                         " is not supported (this build reads versions 1 to " +
                         std::to_string(newest) + ")",
                     path);
    m->format_version = static_cast<int>(v);
  } else if (key == "kind") {
    SW_ASSIGN_OR_RETURN(std::string k, p.Str(top, key, 64));
    if (k != kind)
      return Corrupt(path + ": kind is '" + k + "', expected '" + std::string(kind) + "'", path);
  } else if (key == "name") {
    SW_ASSIGN_OR_RETURN(m->name, p.Str(top, key, 255));
  } else if (key == "step") {
    SW_ASSIGN_OR_RETURN(m->step, p.Int(top, key, -1, INT64_MAX));
  } else if (key == "save_id") {
    SW_ASSIGN_OR_RETURN(m->save_id, p.Str(top, key, 128));
  } else if (key == "world_size") {
    SW_ASSIGN_OR_RETURN(auto ws, p.Int(top, key, 1, kMaxWorldSize));
    m->world_size = static_cast<std::int32_t>(ws);
  } else if (key == "rank") {
    SW_ASSIGN_OR_RETURN(auto rank, p.Int(top, key, -1, kMaxWorldSize - 1));
    m->rank = static_cast<std::int32_t>(rank);
  } else if (key == "created_unix") {
    SW_ASSIGN_OR_RETURN(m->created_unix, p.Double(top, key));
  } else if (key == "checksum") {
    return ParseChecksum(p, ck, m);
  } else if (key == "files" || key == "items" || key == "index") {
    bool& flag = key == "files" ? seen->files : key == "items" ? seen->items : seen->index;
    if (flag) return p.Bad(top, key, "appears twice");
    flag = true;
    if (key == "index") return ParseIndexRef(p, Where{&top, "index"}, m);
    if (key == "items")
      return p.Array(top, key, 1u << 26, [&](std::size_t i) -> Status {
        m->items.emplace_back();
        return ParseItemRecord(p, i, m->files.size(), &m->items.back());
      });
    return p.Array(top, key, 1u << 24, [&](std::size_t i) -> Status {
      m->files.emplace_back();
      return ParseFileRecord(p, i, &m->files.back());
    });
  } else if (key == "user") {
    if (p.reader().Peek() != JsonReader::Kind::kObject)
      return p.Bad(top, key, "must be an object");
    std::string_view raw;
    if (!p.reader().Raw(&raw)) return p.Syntax();
    m->user_json = std::string(raw);
  } else if (key == "dcp") {
    std::string_view raw;
    if (!p.reader().Raw(&raw)) return p.Syntax();
    if (raw != "null") m->dcp_json = std::string(raw);
  } else {
    *handled = false;
  }
  return Status::Ok();
}

Result<Manifest> ParseUnchecked(std::string_view text, std::string_view kind,
                                const std::string& path) {
  // 1. The self-checksum trailer, before trusting any of the content.
  SW_RETURN_IF_ERROR(CheckTrailer(text, path));

  // 2. Syntax and types, straight into the structs.
  Parser p(text, path);
  Manifest m;
  Seen seen;
  if (p.reader().Peek() != JsonReader::Kind::kObject)
    return Corrupt(path + ": top level must be a JSON object", path);
  SW_RETURN_IF_ERROR(p.Object(
      Where{}, "must be an object",
      {"format_version", "kind", "name", "step", "save_id", "world_size", "rank", "created_unix",
       "checksum", "user", "self_crc32c"},
      [&](const std::string& key, bool* handled) {
        return ParseTopField(p, key, kind, path, &m, &seen, handled);
      }));
  if (!p.reader().AtEnd()) return Corrupt(path + ": not valid JSON (trailing characters)", path);
  // Format 1 lists files and items; format 2 describes its index instead.
  const Where top{};
  if (m.format_version == 1) {
    if (!seen.files) return p.Bad(top, "files", "missing");
    if (!seen.items) return p.Bad(top, "items", "missing");
    if (seen.index) return p.Bad(top, "index", "is not part of format 1");
  } else {
    if (!seen.index) return p.Bad(top, "index", "missing");
    if (seen.files || seen.items)
      return p.Bad(top, seen.files ? "files" : "items",
                   "is not part of format 2 (files and items live in the index)");
  }

  // 3. Semantic rules.
  SW_RETURN_IF_ERROR(Validate(m, path));
  return m;
}

}  // namespace

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

}  // namespace shardwise::format
