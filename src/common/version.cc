#include "shardwise/version.h"

namespace shardwise {

std::string_view Version() { return SHARDWISE_VERSION; }

}  // namespace shardwise
