#include "shardwise/types.h"

namespace shardwise {
namespace {

struct DTypeInfo {
  DType dtype;
  const char* name;
  std::uint32_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kBool, "bool", 1},           {DType::kUInt8, "uint8", 1},
    {DType::kInt8, "int8", 1},           {DType::kInt16, "int16", 2},
    {DType::kInt32, "int32", 4},         {DType::kInt64, "int64", 8},
    {DType::kUInt16, "uint16", 2},       {DType::kUInt32, "uint32", 4},
    {DType::kUInt64, "uint64", 8},       {DType::kFloat16, "float16", 2},
    {DType::kBFloat16, "bfloat16", 2},   {DType::kFloat32, "float32", 4},
    {DType::kFloat64, "float64", 8},     {DType::kComplex64, "complex64", 8},
    {DType::kComplex128, "complex128", 16},
    {DType::kFloat8E4M3FN, "float8_e4m3fn", 1},
    {DType::kFloat8E5M2, "float8_e5m2", 1},
};

}  // namespace

std::string_view DTypeName(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.name;
  return "unknown";
}

Result<DType> ParseDType(std::string_view name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return d.dtype;
  return InvalidArgument("unknown dtype '" + std::string(name) + "'");
}

std::uint32_t DTypeSize(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.size;
  return 1;
}

std::string_view ItemKindName(ItemKind kind) {
  return kind == ItemKind::kBytes ? "bytes" : "tensor";
}

std::uint64_t Manifest::TotalBytes() const {
  if (files.empty()) return index.file_bytes;  // a format-2 commit record
  std::uint64_t total = 0;
  for (const auto& f : files) total += f.size;
  return total;
}

const ItemRecord* Manifest::FindItem(std::string_view item_name) const {
  for (const auto& it : items)
    if (it.name == item_name) return &it;
  return nullptr;
}

}  // namespace shardwise
