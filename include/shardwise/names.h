// Every name shardwise gives a file or directory on disk (docs/format.md,
// "On-disk layout"), and the one parser of each. Nothing else in the tree
// spells these names.
//
//   ROOT/NAME/                         a committed checkpoint
//   ROOT/NAME/manifest.json            its manifest
//   ROOT/NAME/rank-00003.shard         rank 3's shard (.part1.shard, ... with
//                                      several files per rank)
//   ROOT/.NAME.staging-ID/             a save in progress (ID: the save id)
//       .lock                          held by the saving processes
//       rank-00003.fragment.json       rank 3's index, once its shard is durable
//       rank-00003.failed              rank 3 failed (the reason inside)
//       commit.failed                  the coordinator's commit failed
//   ROOT/.NAME.replaced-ID/            the old checkpoint during a replace
//   ROOT/.NAME.deleting-ID/            a checkpoint being deleted
//   ROOT/latest                        the newest checkpoint's name
//   ROOT/.writer.lock                  held by the job writing ROOT
//   ROOT/.exports/NAME.json            the S3 export record of NAME
//   ROOT/.recycle/FILE                 a removed checkpoint's file, kept for
//                                      a later save to overwrite
//   PATH.tmp-XXXXXXXXXXXX              an atomic write of PATH in progress
//   DIR/.shardwise-probe-*             a filesystem probe in progress
#pragma once

#include <string>
#include <string_view>

namespace shardwise::names {

inline constexpr std::string_view kManifest = "manifest.json";
inline constexpr std::string_view kIndex = "index.swi";  // format 2
inline constexpr std::string_view kLatest = "latest";
inline constexpr std::string_view kStagingLock = ".lock";
inline constexpr std::string_view kCommitFailed = "commit.failed";
inline constexpr std::string_view kWriterLock = ".writer.lock";
inline constexpr std::string_view kExportsDir = ".exports";
inline constexpr std::string_view kRecycleDir = ".recycle";
inline constexpr std::string_view kProbePrefix = ".shardwise-probe-";
// The I/O mode measurement, shared by the processes of a job (fs/io_mode.cc);
// and its lock, ".io-mode.lock".
inline constexpr std::string_view kIoModeFile = ".io-mode";
inline constexpr std::string_view kShardExt = ".shard";

// A checkpoint name (and every file name inside a checkpoint): 1-255 of
// [A-Za-z0-9._=-], not starting with '.'.
bool IsSafeName(std::string_view name);
// A save id: 1-64 of [A-Za-z0-9_-].
bool IsSafeSaveId(std::string_view id);

// The hidden directories of ROOT: ".NAME.staging-ID" and the like.
enum class Hidden { kStaging, kReplaced, kDeleting };
std::string HiddenDir(std::string_view name, Hidden kind, std::string_view id);
// Splits ENTRY into NAME and ID when it is a hidden directory of `kind`
// with a safe name and id.
bool ParseHiddenDir(std::string_view entry, Hidden kind, std::string* name, std::string* id);

// The files of one rank: "rank-00003.shard", ".fragment.json", ".failed".
enum class RankFile { kShard, kFragment, kFailed };
std::string RankFileName(int rank, RankFile kind);
// RANK and KIND of a rank file name; false for anything else (part files
// of a shard included).
bool ParseRankFile(std::string_view entry, int* rank, RankFile* kind);
// A rank's failure marker, or the coordinator's (commit.failed).
bool IsFailureMarker(std::string_view entry);
// Part P of a shard file (P = 0: the shard path itself):
// "rank-00003.shard" -> "rank-00003.part1.shard".
std::string ShardPartPath(const std::string& shard_path, std::size_t part);
// Whether ENTRY is a shard file or a part of one.
bool IsShardFile(std::string_view entry);

// The temporary file of an atomic write of PATH, with a random suffix; and
// whether ENTRY is one for a file named BASE.
std::string TempPath(const std::string& path, std::string_view random_suffix);
bool IsTempOf(std::string_view entry, std::string_view base);
// Whether ENTRY is a probe file (any version's spelling).
bool IsProbeFile(std::string_view entry);

}  // namespace shardwise::names
