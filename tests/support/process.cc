#include "tests/support/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

extern char** environ;

namespace tidepool::testing {

std::string BinDir() {
  if (const char* dir = std::getenv("TIDEPOOL_BIN_DIR")) return dir;
  return std::filesystem::read_symlink("/proc/self/exe").parent_path();
}

// fork and exec rather than posix_spawn, which cannot set the parent-death
// signal. Between the two the child only makes async-signal-safe calls (the
// test is multithreaded); a failed exec reports its errno through a
// close-on-exec pipe, as posix_spawn would return it.
absl::StatusOr<ChildProcess> ChildProcess::Spawn(std::vector<std::string> argv,
                                                 bool stdout_to_stderr) {
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return absl::ErrnoToStatus(errno, "pipe2");
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    return absl::ErrnoToStatus(err, "fork " + argv[0]);
  }
  if (pid == 0) {
    ::close(pipe_fds[0]);
    int err = 0;
    // The parent may have died before prctl: then getppid() is init's
    // (or a subreaper's) pid and the signal would never come.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
      err = errno;
    } else if (stdout_to_stderr && ::dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
      err = errno;
    } else if (::getppid() != parent) {
      ::_exit(127);
    } else {
      ::execve(args[0], args.data(), environ);
      err = errno;
    }
    (void)!::write(pipe_fds[1], &err, sizeof(err));
    ::_exit(127);
  }
  ::close(pipe_fds[1]);
  int err = 0;
  ssize_t n;
  while ((n = ::read(pipe_fds[0], &err, sizeof(err))) < 0 && errno == EINTR) {
  }
  ::close(pipe_fds[0]);
  ChildProcess child;
  child.pid_ = pid;
  if (n > 0) {
    child.Wait();
    return absl::ErrnoToStatus(err, "exec " + argv[0]);
  }
  return child;
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(other.pid_), status_(other.status_), handled_(other.handled_) {
  other.pid_ = -1;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && Running()) {
    Kill(SIGKILL);
    Wait();
  }
}

void ChildProcess::Reap(int status) {
  pid_ = -1;
  status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int ChildProcess::Wait() {
  handled_ = true;
  if (pid_ <= 0) return status_;
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  Reap(status);
  return status_;
}

void ChildProcess::Kill(int signal) {
  handled_ = true;
  if (pid_ > 0) ::kill(pid_, signal);
}

bool ChildProcess::Running() {
  if (pid_ <= 0) return false;
  int status = 0;
  const pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == 0) return true;
  if (r == pid_) Reap(status);
  return false;
}

absl::StatusOr<std::unique_ptr<DaemonProcess>> DaemonProcess::Start(
    const DaemonOptions& options) {
  auto d = std::make_unique<DaemonProcess>();
  char tmpl[] = "/tmp/tidepool-test-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return absl::ErrnoToStatus(errno, "mkdtemp");
  d->dir_ = tmpl;
  d->socket_ = d->dir_ + "/tidepoold.sock";
  d->fd_socket_ = d->dir_ + "/tidepoold.fd.sock";
  std::vector<std::string> argv = {
      BinDir() + "/tidepoold", "--device=" + options.device,
      "--sim_capacity=" + options.sim_capacity,
      "--host_pool=" + options.host_pool, "--chunk_size=" + options.chunk_size,
      "--socket=" + d->socket_, "--fd_socket=" + d->fd_socket_,
      // A lock-order inversion aborts the test.
      "--mutex_deadlock_detection"};
  argv.insert(argv.end(), options.extra_args.begin(), options.extra_args.end());
  // Its stdout ("tidepoold ready: ...") joins its log on stderr: a bench
  // prints its table on stdout, and `2>/dev/null` then leaves the table.
  auto child = ChildProcess::Spawn(argv, /*stdout_to_stderr=*/true);
  if (!child.ok()) return child.status();
  d->process_ = std::make_unique<ChildProcess>(std::move(*child));
  // Ready once both sockets exist (the gRPC one is bound last).
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!(std::filesystem::exists(d->socket_) &&
           std::filesystem::exists(d->fd_socket_))) {
    if (!d->process_->Running()) {
      return absl::InternalError(
          absl::StrCat("tidepoold exited during start-up with status ",
                       d->process_->Wait()));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      d->process_->Kill(SIGKILL);
      d->process_->Wait();
      return absl::DeadlineExceededError("tidepoold did not become ready");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return d;
}

DaemonProcess::~DaemonProcess() {
  if (process_ && process_->Running()) {
    process_->Kill(SIGTERM);
    const int code = process_->Wait();
    EXPECT_EQ(code, 0) << "tidepoold exited with status " << code
                       << " on SIGTERM (its stderr above says why)";
  } else if (process_ && !process_->handled()) {
    ADD_FAILURE() << "tidepoold died during the test with status "
                  << process_->Wait() << " (its stderr above says why)";
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace tidepool::testing
