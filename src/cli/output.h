// Human output helpers for the CLI: aligned tables, times, a progress line.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace shardwise::cli {

// Prints rows as columns separated by two spaces; the first row is the
// header. Columns listed in right_align are right-aligned (numbers).
void PrintTable(std::ostream& out, const std::vector<std::vector<std::string>>& rows,
                const std::vector<std::size_t>& right_align = {});

// `head`, then `text` wrapped at 76 columns and indented by `indent`; the
// text starts under `head` when head does not leave it room. Ends in "\n".
std::string Wrap(const std::string& head, const std::string& text, std::size_t indent);

// "2026-11-29 17:05:03" in UTC.
std::string FormatTime(double unix_seconds);
std::string FormatShape(const std::vector<std::int64_t>& shape);
std::string FormatSeconds(double s);

// A one-line progress display on a terminal (stderr); silent otherwise.
class Progress {
 public:
  Progress(std::ostream& err, bool enabled, std::string label);
  ~Progress();
  void Update(std::uint64_t done, std::uint64_t total);
  void Finish();

 private:
  std::ostream& err_;
  bool enabled_;
  std::string label_;
  double start_;
  double last_ = 0;
  bool shown_ = false;
};

// Whether stderr is a terminal.
bool StderrIsTty();
// Clocks for reports: seconds of a steady clock, and since the epoch.
double MonotonicNow();
double UnixNow();

}  // namespace shardwise::cli

namespace shardwise::cli {
// Prints "shardwise VERB: MESSAGE" and a hint, returns kExitUsage (2).
int UsageError(std::ostream& err, const std::string& verb, const std::string& message);
// "shardwise VERB: message" for a path that cannot be read or opened; exit
// code 2, without UsageError's pointer to --help (the arguments were fine).
int PathError(std::ostream& err, const std::string& verb, const std::string& message);
// ROOT where a checkpoint root is expected: if it is a checkpoint (it holds
// manifest.json), prints so (with its root) and returns kExitUsage (2);
// otherwise returns -1.
int CheckpointGivenAsRoot(std::ostream& err, const std::string& verb, const std::string& root);

// Writes `j` indented, with any invalid UTF-8 (file names are arbitrary
// bytes) replaced rather than thrown on.
template <typename Json>
void WriteJson(std::ostream& out, const Json& j) {
  out << j.dump(2, ' ', false, Json::error_handler_t::replace) << '\n';
}

}  // namespace shardwise::cli
