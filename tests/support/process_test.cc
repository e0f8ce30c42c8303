// The test harness's own promises (tests/support/process.h): children die
// with the test process, and a daemon that dies or fails to stop cleanly
// fails the test that started it.
#include "tests/support/process.h"

#include <gtest/gtest-spi.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include "gtest/gtest.h"

namespace tidepool::testing {
namespace {

// What CTest does on a timeout: the test process is SIGKILLed, no
// destructor runs. Here the "test process" is a forked child that starts
// a real tidepoold and then blocks; this process, a subreaper, inherits
// the orphaned daemon and can wait for it.
TEST(ProcessTest, DaemonDiesWhenItsTestIsKilled) {
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const pid_t test = ::fork();
  ASSERT_GE(test, 0);
  if (test == 0) {
    ::close(pipe_fds[0]);
    auto d = DaemonProcess::Start({});
    const pid_t daemon = d.ok() ? (*d)->process().pid() : -1;
    (void)!::write(pipe_fds[1], &daemon, sizeof(daemon));
    ::pause();
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  pid_t daemon = -1;
  ASSERT_EQ(::read(pipe_fds[0], &daemon, sizeof(daemon)), sizeof(daemon));
  ::close(pipe_fds[0]);
  ASSERT_GT(daemon, 0) << "tidepoold did not start";

  ASSERT_EQ(::kill(test, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(test, &status, 0), test);
  // Without the parent-death signal the daemon would run on (this wait
  // would not return, and CTest would time the test out).
  ASSERT_EQ(::waitpid(daemon, &status, 0), daemon);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
}

// A sanitizer report ends the daemon with a non-zero status before the
// test stops it; here a signal the test did not send stands for it.
TEST(ProcessTest, DaemonThatDiedDuringTheTestFailsIt) {
  auto d = DaemonProcess::Start({});
  ASSERT_TRUE(d.ok()) << d.status();
  const pid_t pid = (*d)->process().pid();
  ASSERT_EQ(::kill(pid, SIGABRT), 0);
  // Reaped by Running(), as the daemon's exit would be noticed anywhere.
  while ((*d)->process().Running()) {
    ::usleep(10'000);
  }
  EXPECT_NONFATAL_FAILURE(d->reset(), "tidepoold died during the test");
}

TEST(ProcessTest, DaemonStoppedCleanlyPasses) {
  auto d = DaemonProcess::Start({});
  ASSERT_TRUE(d.ok()) << d.status();
  d->reset();  // SIGTERM: tidepoold exits 0
}

// The test owns the outcome of a daemon it killed itself.
TEST(ProcessTest, DaemonKilledByTheTestDoesNotFailIt) {
  auto d = DaemonProcess::Start({});
  ASSERT_TRUE(d.ok()) << d.status();
  (*d)->process().Kill(SIGKILL);
  EXPECT_EQ((*d)->process().Wait(), 128 + SIGKILL);
  d->reset();
}

TEST(ProcessTest, SpawnReportsAMissingProgram) {
  auto child = ChildProcess::Spawn({"/nonexistent/tidepool-program"});
  EXPECT_EQ(child.status().code(), absl::StatusCode::kNotFound)
      << child.status();
}

}  // namespace
}  // namespace tidepool::testing
