#include "tests/support/process.h"

#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"

extern char** environ;

namespace tidepool::testing {

std::string BinDir() {
  if (const char* dir = std::getenv("TIDEPOOL_BIN_DIR")) return dir;
  return std::filesystem::read_symlink("/proc/self/exe").parent_path();
}

absl::StatusOr<ChildProcess> ChildProcess::Spawn(
    std::vector<std::string> argv) {
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  ChildProcess child;
  const int err = ::posix_spawn(&child.pid_, args[0], nullptr, nullptr,
                                args.data(), environ);
  if (err != 0) return absl::ErrnoToStatus(err, "posix_spawn " + argv[0]);
  return child;
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(other.pid_), status_(other.status_) {
  other.pid_ = -1;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && Running()) {
    Kill(SIGKILL);
    Wait();
  }
}

int ChildProcess::Wait() {
  if (pid_ <= 0) return status_;
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return status_;
}

void ChildProcess::Kill(int signal) {
  if (pid_ > 0) ::kill(pid_, signal);
}

bool ChildProcess::Running() {
  if (pid_ <= 0) return false;
  int status = 0;
  const pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == 0) return true;
  if (r == pid_) {
    pid_ = -1;
    status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
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
  std::vector<std::string> argv = {BinDir() + "/tidepoold",
                                   "--device=" + options.device,
                                   "--sim_capacity=" + options.sim_capacity,
                                   "--host_pool=" + options.host_pool,
                                   "--chunk_size=" + options.chunk_size,
                                   "--socket=" + d->socket_,
                                   "--fd_socket=" + d->fd_socket_};
  argv.insert(argv.end(), options.extra_args.begin(), options.extra_args.end());
  auto child = ChildProcess::Spawn(argv);
  if (!child.ok()) return child.status();
  d->process_ = std::make_unique<ChildProcess>(std::move(*child));
  // Ready once both sockets exist (the gRPC one is bound last).
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!(std::filesystem::exists(d->socket_) &&
           std::filesystem::exists(d->fd_socket_))) {
    if (!d->process_->Running()) {
      return absl::InternalError("tidepoold exited during start-up");
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return absl::DeadlineExceededError("tidepoold did not become ready");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return d;
}

DaemonProcess::~DaemonProcess() {
  if (process_ && process_->Running()) {
    process_->Kill(SIGTERM);
    process_->Wait();
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace tidepool::testing
