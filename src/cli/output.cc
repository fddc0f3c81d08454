#include "output.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>

#include <chrono>
#include <filesystem>
#include <sstream>

#include "shardwise/names.h"
#include "shardwise/options.h"

namespace shardwise::cli {

void PrintTable(std::ostream& out, const std::vector<std::vector<std::string>>& rows,
                const std::vector<std::size_t>& right_align) {
  std::vector<std::size_t> width;
  for (const auto& r : rows) {
    if (width.size() < r.size()) width.resize(r.size(), 0);
    for (std::size_t c = 0; c < r.size(); ++c) width[c] = std::max(width[c], r[c].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (std::size_t c = 0; c < r.size(); ++c) {
      bool right = std::find(right_align.begin(), right_align.end(), c) != right_align.end();
      std::string pad(width[c] - r[c].size(), ' ');
      if (c) line += "  ";
      line += right ? pad + r[c] : (c + 1 == r.size() ? r[c] : r[c] + pad);
    }
    out << line << '\n';
  }
}

std::string FormatTime(double unix_seconds) {
  if (unix_seconds <= 0) return "-";
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string FormatShape(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string FormatSeconds(double s) {
  char buf[32];
  if (s < 1) std::snprintf(buf, sizeof buf, "%.0f ms", s * 1000);
  else if (s < 120) std::snprintf(buf, sizeof buf, "%.2f s", s);
  else if (s < 7200) std::snprintf(buf, sizeof buf, "%.1f min", s / 60);
  else std::snprintf(buf, sizeof buf, "%.1f h", s / 3600);
  return buf;
}

bool StderrIsTty() { return ::isatty(2) == 1; }

std::string Wrap(const std::string& head, const std::string& text, std::size_t indent) {
  std::string out, line = head;
  if (head.size() + 1 > indent) {  // the text goes under a long head
    out = head + "\n";
    line.clear();
  }
  line.resize(indent, ' ');
  std::istringstream words(text);
  for (std::string w; words >> w;) {
    if (line.size() + w.size() + 1 > 76 && line.size() > indent) {
      out += line + "\n";
      line = std::string(indent, ' ');
    }
    if (!line.empty() && line.back() != ' ') line += ' ';
    line += w;
  }
  return out + line + "\n";
}

double MonotonicNow() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double UnixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Progress::Progress(std::ostream& err, bool enabled, std::string label)
    : err_(err), enabled_(enabled), label_(std::move(label)), start_(MonotonicNow()) {}

Progress::~Progress() { Finish(); }

void Progress::Update(std::uint64_t done, std::uint64_t total) {
  if (!enabled_) return;
  double now = MonotonicNow();
  if (now - last_ < 0.1 && done < total) return;  // at most 10 redraws a second
  last_ = now;
  double el = now - start_;
  double pct = total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100;
  double rate = el > 0 ? static_cast<double>(done) / el / 1e9 : 0;
  char buf[160];
  std::snprintf(buf, sizeof buf, "\r%s: %s / %s (%5.1f%%) %.2f GB/s ", label_.c_str(),
                FormatBytes(done).c_str(), FormatBytes(total).c_str(), pct, rate);
  err_ << buf << std::flush;
  shown_ = true;
}

void Progress::Finish() {
  if (enabled_ && shown_) {
    err_ << "\r\033[K" << std::flush;  // clear the line
    shown_ = false;
  }
}

}  // namespace shardwise::cli

namespace shardwise::cli {
int UsageError(std::ostream& err, const std::string& verb, const std::string& message) {
  err << "shardwise " << verb << ": " << message << "\n"
      << "Try 'shardwise " << verb << " --help'.\n";
  return 2;
}

int PathError(std::ostream& err, const std::string& verb, const std::string& message) {
  err << "shardwise " << verb << ": " << message << "\n";
  return 2;
}

int CheckpointGivenAsRoot(std::ostream& err, const std::string& verb, const std::string& root) {
  std::error_code ec;
  const std::filesystem::path p(root);
  if (!std::filesystem::is_regular_file(p / names::kManifest, ec)) return -1;
  std::filesystem::path dir = std::filesystem::absolute(p, ec).lexically_normal();
  if (!dir.has_filename()) dir = dir.parent_path();  // "ROOT/step-1/": drop the empty name
  return PathError(err, verb,
                   root + " is a checkpoint (it holds manifest.json), not a root; its root is " +
                       dir.parent_path().string());
}

}  // namespace shardwise::cli
