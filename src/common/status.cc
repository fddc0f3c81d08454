#include "shardwise/status.h"

#include <cstring>

namespace shardwise {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kIoError: return "IO_ERROR";
    case StatusCode::kNotFound: return "NOT_FOUND";
    case StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case StatusCode::kCorrupt: return "CORRUPT";
    case StatusCode::kTimeout: return "TIMEOUT";
    case StatusCode::kAborted: return "ABORTED";
    case StatusCode::kUnavailable: return "UNAVAILABLE";
    case StatusCode::kInternal: return "INTERNAL";
  }
  return "UNKNOWN";
}

Status Status::WithContext(std::string_view context) const& {
  Status s = *this;
  return std::move(s).WithContext(context);
}

Status Status::WithContext(std::string_view context) && {
  if (ok() || context.empty()) return std::move(*this);
  message_ = std::string(context) + ": " + message_;
  return std::move(*this);
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return std::string(StatusCodeName(code_)) + ": " + message_;
}

static std::string ErrnoName(int err) {
  // Short symbolic names read better in logs than strerror's sentences.
  switch (err) {
    case EIO: return "EIO";
    case ENOSPC: return "ENOSPC";
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EINVAL: return "EINVAL";
    case ENOTEMPTY: return "ENOTEMPTY";
    case EROFS: return "EROFS";
    case EDQUOT: return "EDQUOT";
    case EBADF: return "EBADF";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case ELOOP: return "ELOOP";
    case EXDEV: return "EXDEV";
    case EAGAIN: return "EAGAIN";
    case ENOSYS: return "ENOSYS";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    default: return std::strerror(err);
  }
}

Status IoError(std::string_view op, const std::string& path, int err) {
  std::string msg(op);
  msg += ' ';
  msg += path;
  msg += ": ";
  msg += ErrnoName(err);
  StatusCode code = StatusCode::kIoError;
  if (err == ENOENT) code = StatusCode::kNotFound;
  if (err == EEXIST || err == ENOTEMPTY) code = StatusCode::kAlreadyExists;
  return Status(code, std::move(msg), err, path);
}

Status Corrupt(std::string message, std::string path) {
  return Status(StatusCode::kCorrupt, std::move(message), 0, std::move(path));
}
Status InvalidArgument(std::string message, std::string path) {
  return Status(StatusCode::kInvalidArgument, std::move(message), 0,
                std::move(path));
}
Status NotFound(std::string message, std::string path) {
  return Status(StatusCode::kNotFound, std::move(message), ENOENT,
                std::move(path));
}

}  // namespace shardwise
