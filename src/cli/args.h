// A small, strict argument parser for the CLI verbs: --name VALUE,
// --name=VALUE, boolean --flag, and positionals. Unknown options are errors.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "shardwise/status.h"

namespace shardwise::cli {

struct OptSpec {
  std::string name;  // without the leading "--"
  bool takes_value = false;
};

class Args {
 public:
  static Result<Args> Parse(const std::vector<std::string>& argv,
                            const std::vector<OptSpec>& spec);
  bool Has(const std::string& name) const { return flags_.count(name) || values_.count(name); }
  std::optional<std::string> Get(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }
  bool help() const { return flags_.count("help") > 0; }
  bool json() const { return flags_.count("json") > 0; }

  // Typed getters with clear usage errors.
  Result<std::optional<long long>> GetInt(const std::string& name, long long lo,
                                          long long hi) const;
  Result<std::optional<double>> GetDouble(const std::string& name, double lo) const;

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_;
  std::vector<std::string> positional_;
};

}  // namespace shardwise::cli
