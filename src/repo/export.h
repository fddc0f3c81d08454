// Export of committed checkpoints to S3 on FSx for Lustre (docs/lustre.md):
// the request after a commit, its record in ROOT/.exports/NAME.json, and its
// state, read back from `aws fsx describe-data-repository-tasks` or
// `lfs hsm_state`.
#pragma once

#include <string>

#include "shardwise/options.h"
#include "shardwise/repository.h"
#include "shardwise/status.h"

namespace shardwise::repo {


using ExportStatus = ExportInfo;  // shardwise/repository.h

// Requests the export of checkpoint NAME under ROOT as options.export_mode
// says, and records the request (or its failure) durably. A failed request
// is recorded and returned in `request_error` (empty: requested), not as an
// error: an export must never fail a save that is already committed. The
// Status is an error only when the record itself cannot be written.
Status RequestExport(const std::string& root, const std::string& name, const Options& options,
                     std::string* request_error);

// The state of NAME's export; asks aws or lfs when a request is pending.
ExportStatus QueryExport(const std::string& root, const std::string& name);

// Drops NAME's record (after retention deleted the checkpoint).
void RemoveExportRecord(const std::string& root, const std::string& name);

}  // namespace shardwise::repo
