// Status and Result<T>: the error model of shardwise. The core never throws;
// every fallible call returns one of these, and each layer adds context so a
// message reads like "fsync ROOT/.step-12.staging-ab12/rank-00003.shard: EIO".
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace shardwise {

enum class StatusCode {
  kOk = 0,
  kIoError,          // a syscall failed; errno() says which
  kNotFound,         // file, checkpoint or item missing
  kAlreadyExists,    // refusing to overwrite
  kInvalidArgument,  // bad input from the caller
  kCorrupt,          // checksum mismatch, bad manifest, malformed checkpoint
  kTimeout,          // waiting for ranks or a lock took too long
  kAborted,          // another rank failed, or a save was skipped
  kUnavailable,      // a facility (io_uring, O_DIRECT) cannot be used here
  kInternal,         // a bug in shardwise
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message, int err = 0,
         std::string path = {})
      : code_(code), errno_(err), message_(std::move(message)),
        path_(std::move(path)) {}

  static Status Ok() { return {}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  // The errno of the failed syscall, or 0.
  int err() const { return errno_; }
  // The file the error is about, or empty.
  const std::string& path() const { return path_; }
  const std::string& message() const { return message_; }

  // Prepends "context: " to the message; keeps code, errno and path.
  Status WithContext(std::string_view context) const&;
  Status WithContext(std::string_view context) &&;

  // "CORRUPT: <message>" style, for logs and the CLI.
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  int errno_ = 0;
  std::string message_;
  std::string path_;
};

// Builders for the common cases.
Status IoError(std::string_view op, const std::string& path, int err);
Status Corrupt(std::string message, std::string path = {});
Status InvalidArgument(std::string message, std::string path = {});
Status NotFound(std::string message, std::string path = {});

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    assert(!std::get<Status>(v_).ok() && "Result from an OK status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const& {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  Status status() && {
    return ok() ? Status() : std::move(std::get<Status>(v_));
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace shardwise

#define SW_CONCAT_INNER(a, b) a##b
#define SW_CONCAT(a, b) SW_CONCAT_INNER(a, b)

#define SW_RETURN_IF_ERROR(expr)                     \
  do {                                               \
    ::shardwise::Status sw_status_ = (expr);         \
    if (!sw_status_.ok()) return sw_status_;         \
  } while (0)

// Adds context to an error on its way up.
#define SW_RETURN_IF_ERROR_CTX(expr, ctx)                       \
  do {                                                          \
    ::shardwise::Status sw_status_ = (expr);                    \
    if (!sw_status_.ok()) return sw_status_.WithContext(ctx);   \
  } while (0)

#define SW_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return std::move(tmp).status(); \
  lhs = std::move(tmp).value()

#define SW_ASSIGN_OR_RETURN(lhs, expr) \
  SW_ASSIGN_OR_RETURN_IMPL(SW_CONCAT(sw_result_, __LINE__), lhs, expr)
