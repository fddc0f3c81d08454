// The public C++ API of shardwise. See docs/cpp-api.md.
#pragma once

#include "shardwise/async.h"
#include "shardwise/host.h"
#include "shardwise/names.h"
#include "shardwise/options.h"
#include "shardwise/reader.h"
#include "shardwise/repository.h"
#include "shardwise/staging.h"
#include "shardwise/status.h"
#include "shardwise/types.h"
#include "shardwise/utf8.h"
#include "shardwise/version.h"
