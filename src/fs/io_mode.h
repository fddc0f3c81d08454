// How shard files under one checkpoint root are written and read: through
// the page cache or with O_DIRECT, and why. Decided
// once per root and process, from what the root's filesystem is known to do
// well, or, where nothing is known, from a short measurement of both write
// modes. docs/cpp-api.md ("I/O mode") has the table.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "shardwise/options.h"
#include "shardwise/status.h"

namespace shardwise::fs {

// Probe files in a root start with this; gc removes those that processes
// killed while probing left behind.

struct IoMode {
  bool direct_writes = false;  // O_DIRECT for shard writes
  bool direct_reads = false;   // O_DIRECT for shard reads (loads, verify)
  bool measured = false;       // chosen by MeasureWriteModes
  double direct_gbps = 0;      // the measurement, when measured
  double buffered_gbps = 0;
  std::string why;             // one line, for the filesystem summary and bench
};

// Whether an O_DIRECT write of one page works in `dir`: a probe file is
// written and removed. Bypasses the fault seam on purpose: a probe must
// not consume the Nth injected fault meant for the save itself.
bool ProbeDirectIo(const std::string& dir);

struct WriteRates {
  double direct_gbps = 0;
  double buffered_gbps = 0;
};
// Writes a few tens of MiB into `dir` with O_DIRECT and through the page
// cache, each made durable (fdatasync), on several threads, best of two
// rounds each; the probe files are removed.
Result<WriteRates> MeasureWriteModes(const std::string& dir);

// The decision, from facts: the filesystem's type name (FsTypeName),
// whether O_DIRECT works there, what the options ask for, and a
// measurement to call where the type says nothing. kOn where O_DIRECT
// does not work is an error.
Result<IoMode> DecideIoMode(std::string_view fs_type, bool direct_works,
                            DirectIoMode requested,
                            const std::function<Result<WriteRates>()>& measure);

// DecideIoMode for `root` (statfs, the probe, the measurement), cached for
// the life of the process per root and requested mode.
Result<IoMode> IoModeFor(const std::string& root, const Options& options);

// The read half of IoModeFor, for readers, and writing nothing: whether
// shard reads use O_DIRECT (`file`, an existing file under `root`, is
// opened with O_DIRECT to find out). IoModeFor's decision when this process
// made one for `root`; otherwise decided afresh (a statfs and an open).
Result<IoMode> ReadModeFor(const std::string& root, const std::string& file,
                           const Options& options);

// Tests: forgets every cached decision.
void ForgetIoModesForTesting();

}  // namespace shardwise::fs
