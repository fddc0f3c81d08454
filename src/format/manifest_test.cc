#include "format/manifest.h"
#include "shardwise/names.h"

#include <gtest/gtest.h>

#include <functional>
#include <nlohmann/json.hpp>

namespace shardwise::format {
namespace {

using Json = nlohmann::json;
const std::string kPath = "/ckpt/step-1/manifest.json";

Manifest Valid() {
  Manifest m;
  m.name = "step-000000000001";
  m.step = 1;
  m.save_id = "abc123";
  m.world_size = 2;
  m.created_unix = 1764400000.5;
  m.checksum_block = 1 << 20;
  m.files = {{"rank-00000.shard", 0, 4096 + 8192, "uring", true},
             {"rank-00001.shard", 1, 4096 + 4096, "threads", false}};
  ItemRecord w{"model.w", ItemKind::kTensor, DType::kFloat32, {4, 512}, {}};
  w.chunks.push_back({{0, 0}, {2, 512}, 0, 4096, 4096, {0x12345678}});
  w.chunks.push_back({{2, 0}, {2, 512}, 1, 4096, 4096, {0x9abcdef0}});
  ItemRecord b{"extra/bytes \"quoted\"", ItemKind::kBytes, DType::kUInt8, {10}, {}};
  b.chunks.push_back({{0}, {10}, 0, 8192, 10, {42}});
  ItemRecord s{"scalar", ItemKind::kTensor, DType::kInt64, {}, {}};
  s.chunks.push_back({{}, {}, 0, 12288, 8, {7}});
  m.files[0].size = 16384;
  m.items = {w, b, s};
  m.user_json = R"({"epoch":3})";
  return m;
}

TEST(Manifest, RoundTrip) {
  Manifest m = Valid();
  std::string text = Serialize(m, kManifestKind);
  auto back = Parse(text, kManifestKind, kPath);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->name, m.name);
  EXPECT_EQ(back->step, 1);
  EXPECT_EQ(back->world_size, 2);
  ASSERT_EQ(back->items.size(), 3u);
  EXPECT_EQ(back->items[1].name, "extra/bytes \"quoted\"");
  EXPECT_EQ(back->items[0].chunks[1].crc32c[0], 0x9abcdef0u);
  EXPECT_EQ(back->files[1].backend, "threads");
  EXPECT_EQ(Json::parse(back->user_json)["epoch"], 3);
  // The sealed file is still plain JSON for other tools.
  EXPECT_FALSE(Json::parse(text, nullptr, false).is_discarded());
}

TEST(Manifest, DetectsAnyFlippedByte) {
  std::string text = Serialize(Valid(), kManifestKind);
  for (std::size_t i = 0; i < text.size(); i += 7) {
    std::string bad = text;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    auto r = Parse(bad, kManifestKind, kPath);
    EXPECT_FALSE(r.ok()) << "flip at " << i;
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kCorrupt);
      EXPECT_NE(r.status().message().find(kPath), std::string::npos);
    }
  }
}

TEST(Manifest, TruncatedOrEmpty) {
  std::string text = Serialize(Valid(), kManifestKind);
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, text.size() / 2, text.size() - 1}) {
    auto r = Parse(text.substr(0, n), kManifestKind, kPath);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("trailer"), std::string::npos) << r.status().message();
  }
}

// Re-seals a modified manifest so the checks behind the checksum are reached.
std::string Mutate(const std::function<void(Json&)>& f) {
  Json j = Json::parse(Serialize(Valid(), kManifestKind));
  j.erase("self_crc32c");
  f(j);
  return Seal(j.dump());
}

struct Case {
  const char* name;
  std::function<void(Json&)> mutate;
  const char* expect;  // a phrase of the error message
};

class ManifestRule : public ::testing::TestWithParam<Case> {};

TEST_P(ManifestRule, RejectedWithItsOwnError) {
  const Case& c = GetParam();
  auto r = Parse(Mutate(c.mutate), kManifestKind, kPath);
  ASSERT_FALSE(r.ok()) << c.name;
  EXPECT_EQ(r.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(r.status().message().find(c.expect), std::string::npos)
      << c.name << ": " << r.status().message();
  EXPECT_NE(r.status().message().find(kPath), std::string::npos) << r.status().message();
  EXPECT_EQ(r.status().path(), kPath);
}

const Case kCases[] = {
    {"wrong type", [](Json& j) { j["world_size"] = "2"; }, "world_size: must be an integer"},
    {"missing field", [](Json& j) { j.erase("files"); }, "files: missing"},
    {"future version", [](Json& j) { j["format_version"] = 99; }, "not supported"},
    {"wrong kind", [](Json& j) { j["kind"] = "shardwise.fragment"; }, "expected 'shardwise.checkpoint'"},
    {"dotdot file", [](Json& j) { j["files"][0]["name"] = "../../etc/passwd"; }, "not a plain file name"},
    {"absolute file", [](Json& j) { j["files"][0]["name"] = "/etc/passwd"; }, "not a plain file name"},
    {"hidden file", [](Json& j) { j["files"][0]["name"] = ".staging"; }, "not a plain file name"},
    {"subdir file", [](Json& j) { j["files"][0]["name"] = "a/b.shard"; }, "not a plain file name"},
    {"duplicate file", [](Json& j) { j["files"][1]["name"] = "rank-00000.shard"; }, "listed twice"},
    {"duplicate item", [](Json& j) { j["items"][2]["name"] = "model.w"; }, "listed twice"},
    {"extent past end",
     [](Json& j) { j["items"][0]["chunks"][1]["offset"] = 8192; }, "lies outside file"},
    {"overlap",
     [](Json& j) { j["items"][1]["chunks"][0]["offset"] = 4096; }, "overlap"},
    {"chunks overlap in the tensor",
     [](Json& j) { j["items"][0]["chunks"][1]["offsets"][0] = 1; }, "chunks 0 and 1 overlap"},
    {"offset overflow",
     [](Json& j) { j["items"][0]["chunks"][0]["offset"] = 1125899906842624ull - 4096; },
     "lies outside file"},
    {"absurd size", [](Json& j) { j["files"][0]["size"] = 1ull << 62; }, "exceeds the limit"},
    {"float size", [](Json& j) { j["files"][0]["size"] = 1e30; }, "must be an unsigned integer"},
    {"negative", [](Json& j) { j["items"][0]["chunks"][0]["offsets"][0] = -1; }, "must not be negative"},
    {"shape overflow",
     [](Json& j) { j["items"][0]["shape"] = {1ll << 62, 1ll << 62}; }, "overflows"},
    {"unaligned", [](Json& j) { j["items"][0]["chunks"][0]["offset"] = 4097; }, "not 4096-aligned"},
    {"outside shape", [](Json& j) { j["items"][0]["chunks"][1]["offsets"][0] = 3; }, "outside the global shape"},
    {"length mismatch", [](Json& j) { j["items"][0]["chunks"][0]["length"] = 4000; }, "does not match"},
    {"crc count", [](Json& j) { j["items"][0]["chunks"][0]["crc32c"] = Json::array(); }, "checksums, expected"},
    {"crc range", [](Json& j) { j["items"][0]["chunks"][0]["crc32c"][0] = 1ll << 33; }, "32-bit"},
    {"file index", [](Json& j) { j["items"][0]["chunks"][0]["file"] = 7; }, "exceeds the limit"},
    {"rank beyond world", [](Json& j) { j["files"][1]["rank"] = 5; }, "world_size"},
    {"bad dtype", [](Json& j) { j["items"][0]["dtype"] = "float13"; }, "unknown dtype"},
    {"too many dims",
     [](Json& j) { j["items"][0]["shape"] = std::vector<int>(65, 1); }, "exceeds the limit 64"},
    {"header overlap", [](Json& j) {
       j["items"][2]["chunks"][0]["offset"] = 0;
     }, "shard header"},
    {"user not object", [](Json& j) { j["user"] = 5; }, "user: must be an object"},
    {"top not object", [](Json& j) { j = Json::array({1, 2}); }, ""},
};

INSTANTIATE_TEST_SUITE_P(Rules, ManifestRule, ::testing::ValuesIn(kCases),
                         [](const auto& info) {
                           std::string n = info.param.name;
                           for (auto& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

TEST(Manifest, InvalidJsonBehindAValidChecksum) {
  auto r = Parse(Seal("{\"format_version\": 1, oops}"), kManifestKind, kPath);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not valid JSON"), std::string::npos);
}

TEST(Manifest, DeepNestingDoesNotCrash) {
  std::string deep = "{\"user\":" + std::string(200000, '[') + std::string(200000, ']') + "}";
  auto r = Parse(Seal(deep), kManifestKind, kPath);
  EXPECT_FALSE(r.ok());
}

// A hostile layout that would take the overlap check O(n^2) comparisons
// (towers, as in CheckTiling's test) is refused by the validator, naming
// the item, in bounded time; a manifest otherwise sound.
TEST(Manifest, AnItemTooIrregularToCheckIsRefused) {
  Manifest m = Valid();
  m.world_size = 1;
  m.files = {{"rank-00000.shard", 0, 0, "threads", false}};
  m.checksum_block = 1 << 30;
  m.items.clear();
  ItemRecord& it = m.items.emplace_back(ItemRecord{"w", ItemKind::kTensor, DType::kUInt8, {}, {}});
  const std::int64_t n = 40000, k = 200;
  it.shape = {n, k, k};
  std::uint64_t at = 4096;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto bytes = static_cast<std::uint64_t>(n - i);
    it.chunks.push_back({{i, i / k, i % k}, {n - i, 1, 1}, 0, at, bytes, {0}});
    at += (bytes + 4095) / 4096 * 4096;
  }
  m.files[0].size = at;
  const Status s = Validate(m, kPath);
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("item 'w': its 40000 chunks are neither a grid nor few enough"),
            std::string::npos)
      << s.message();
  // Its first 400 towers alone are few enough to compare: checked, and
  // found not to overlap (that they leave most of the tensor out is no
  // rule of a manifest).
  it.chunks.resize(400);
  m.files[0].size = it.chunks.back().offset + 40960;
  EXPECT_TRUE(Validate(m, kPath).ok()) << Validate(m, kPath).ToString();
}

TEST(Manifest, SafeFileNames) {
  EXPECT_TRUE(names::IsSafeName("rank-00001.shard"));
  EXPECT_TRUE(names::IsSafeName("step-000000000100"));
  for (const char* bad : {"", ".", "..", "../x", "/abs", "a/b", ".hidden", "a b", "x\n"})
    EXPECT_FALSE(names::IsSafeName(bad)) << bad;
  EXPECT_FALSE(names::IsSafeName(std::string(256, 'a')));
}

}  // namespace
}  // namespace shardwise::format
