// liblustreapi, loaded at run time with dlopen: shardwise neither links
// against it nor needs its headers. Only the few calls we use are resolved.
#pragma once

#include <memory>
#include <string>

#include "fs/layout.h"
#include "shardwise/status.h"

namespace shardwise::fs {

class LustreApi {
 public:
  // Loads `path`, else $SHARDWISE_LUSTREAPI, else liblustreapi.so.1 then
  // liblustreapi.so from the library path. NotFound when none loads; the
  // message says what was tried.
  static Result<std::unique_ptr<LustreApi>> Load(const std::string& path = "");
  ~LustreApi();
  LustreApi(const LustreApi&) = delete;
  LustreApi& operator=(const LustreApi&) = delete;

  // llapi_file_open: creates `path` with `layout` and opens it (flags must
  // include O_CREAT). Returns the descriptor.
  Result<int> FileOpen(const std::string& path, int flags, int mode, const Layout& layout) const;
  // llapi_get_obd_count on the file system holding `path`: the OST count.
  Result<int> OstCount(const std::string& path) const;
  // The default layout of directory `dir` (llapi_layout_*), when the
  // library offers those calls.
  Result<Layout> DefaultLayout(const std::string& dir) const;
  const std::string& path() const { return path_; }

 private:
  struct Symbols;
  LustreApi(void* handle, std::string path, std::unique_ptr<Symbols> syms);
  void* handle_;
  std::string path_;
  std::unique_ptr<Symbols> syms_;
};

}  // namespace shardwise::fs
