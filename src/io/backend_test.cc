// Backend selection: io_uring when it can be set up, the thread pool when it
// cannot. "Cannot" is produced for real, with the seccomp filter container
// runtimes use to block io_uring_setup.
#include "io/backend.h"

#include <gtest/gtest.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

namespace shardwise::io {
namespace {

// Makes io_uring_setup fail with EPERM in this process.
bool BlockIoUring() {
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])),
                            filter};
  return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

TEST(IoBackend, ThreadsOnRequest) {
  Options o;
  o.io_backend = IoBackendKind::kThreads;
  auto b = MakeIoBackend(o);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->name(), "threads");
}

TEST(IoBackend, FallsBackWhenIoUringIsBlocked) {
  pid_t pid = ::fork();
  if (pid == 0) {
    if (!BlockIoUring()) ::_exit(10);
    Options o;
    auto auto_backend = MakeIoBackend(o);
    if (!auto_backend.ok() || (*auto_backend)->name() != "threads") ::_exit(11);
    o.io_backend = IoBackendKind::kUring;
    auto forced = MakeIoBackend(o);
    if (forced.ok() || forced.status().code() != StatusCode::kUnavailable) ::_exit(12);
    ::_exit(0);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 0) << "10: seccomp unavailable, 11: no fallback, 12: kUring "
                                   "did not report kUnavailable";
}

}  // namespace
}  // namespace shardwise::io
