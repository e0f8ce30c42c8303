// Real processes for integration tests: a tidepoold on a private socket,
// and client programs spawned from the build's bin directory.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tidepool::testing {

// Where the build put tidepoold and the test clients.
std::string BinDir();

class ChildProcess {
 public:
  // Starts `argv[0]` (a path) with arguments; stdout/stderr are inherited.
  static absl::StatusOr<ChildProcess> Spawn(std::vector<std::string> argv);
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&&) = delete;
  ~ChildProcess();  // kills and reaps a child that is still running

  pid_t pid() const { return pid_; }
  // Waits for exit; returns the exit code, or 128+signal.
  int Wait();
  void Kill(int signal);
  bool Running();

 private:
  ChildProcess() = default;
  pid_t pid_ = -1;
  int status_ = -1;
};

struct DaemonOptions {
  std::string device = "sim";
  std::string sim_capacity = "64MiB";
  std::string host_pool = "1GiB";
  std::string chunk_size = "4MiB";
  std::vector<std::string> extra_args;
};

class DaemonProcess {
 public:
  static absl::StatusOr<std::unique_ptr<DaemonProcess>> Start(
      const DaemonOptions& options);
  ~DaemonProcess();  // SIGTERM, then reap; removes the socket directory

  const std::string& socket() const { return socket_; }
  const std::string& fd_socket() const { return fd_socket_; }
  ChildProcess& process() { return *process_; }

 private:
  std::string dir_;
  std::string socket_;
  std::string fd_socket_;
  std::unique_ptr<ChildProcess> process_;
};

}  // namespace tidepool::testing
