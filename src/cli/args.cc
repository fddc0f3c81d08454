#include "args.h"

#include <charconv>
#include <cmath>
#include <cstdlib>

namespace shardwise::cli {

Result<Args> Args::Parse(const std::vector<std::string>& argv,
                         const std::vector<OptSpec>& spec) {
  Args a;
  bool only_positional = false;
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (only_positional || arg.size() < 2 || arg[0] != '-' ) {
      a.positional_.push_back(arg);
      continue;
    }
    if (arg == "--") {
      only_positional = true;
      continue;
    }
    if (arg == "-h" || arg == "--help") {
      a.flags_.insert("help");
      continue;
    }
    if (arg.rfind("--", 0) != 0)
      return InvalidArgument("unknown option '" + arg + "' (see --help)");
    std::string name = arg.substr(2);
    std::optional<std::string> inline_value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const OptSpec* s = nullptr;
    for (const auto& o : spec)
      if (o.name == name) s = &o;
    if (!s) return InvalidArgument("unknown option '--" + name + "' (see --help)");
    if (!s->takes_value) {
      if (inline_value) return InvalidArgument("option '--" + name + "' takes no value");
      a.flags_.insert(name);
      continue;
    }
    if (inline_value) {
      a.values_[name] = *inline_value;
    } else {
      if (i + 1 >= argv.size())
        return InvalidArgument("option '--" + name + "' needs a value");
      a.values_[name] = argv[++i];
    }
  }
  return a;
}

std::optional<std::string> Args::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

Result<std::optional<long long>> Args::GetInt(const std::string& name, long long lo,
                                              long long hi) const {
  auto v = Get(name);
  if (!v) return std::optional<long long>();
  long long out = 0;
  auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
  if (ec != std::errc() || p != v->data() + v->size() || out < lo || out > hi)
    return InvalidArgument("--" + name + " expects an integer in [" + std::to_string(lo) +
                           ", " + std::to_string(hi) + "], got '" + *v + "'");
  return std::optional<long long>(out);
}

Result<std::optional<double>> Args::GetDouble(const std::string& name, double lo) const {
  auto v = Get(name);
  if (!v) return std::optional<double>();
  char* end = nullptr;
  double d = std::strtod(v->c_str(), &end);
  if (end == v->c_str() || *end != '\0' || !std::isfinite(d) || d < lo)
    return InvalidArgument("--" + name + " expects a number >= " + std::to_string(lo) +
                           ", got '" + *v + "'");
  return std::optional<double>(d);
}

}  // namespace shardwise::cli
