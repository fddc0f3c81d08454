// The version of shardwise (the VERSION file at the top of the tree).
#pragma once

#include <string_view>

namespace shardwise {

std::string_view Version();  // "0.1.0"

}  // namespace shardwise
