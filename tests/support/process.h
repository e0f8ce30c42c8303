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

// A child of the test process. It is killed (SIGKILL) when the thread that
// spawned it exits, which the test's main thread does only with the test:
// a test that CTest kills on its timeout, or that crashes, leaves no
// tidepoold or client behind, though its destructors never run.
class ChildProcess {
 public:
  // Starts `argv[0]` (a path) with arguments; stdout/stderr are inherited,
  // or with `stdout_to_stderr` both go to the caller's stderr (so that a
  // bench's table on stdout is never cut by a daemon's lines).
  static absl::StatusOr<ChildProcess> Spawn(std::vector<std::string> argv,
                                            bool stdout_to_stderr = false);
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&&) = delete;
  ~ChildProcess();  // kills and reaps a child that is still running

  pid_t pid() const { return pid_; }
  // Waits for exit; returns the exit code, or 128+signal.
  int Wait();
  void Kill(int signal);
  bool Running();
  // Whether the test signalled or waited for the child itself (it then
  // owns the outcome).
  bool handled() const { return handled_; }

 private:
  ChildProcess() = default;
  void Reap(int status);
  pid_t pid_ = -1;
  int status_ = -1;
  bool handled_ = false;
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
  // SIGTERM, then reap; removes the socket directory. The test fails
  // unless the daemon then exits with status 0, or it died during the test
  // without the test signalling or waiting for it: in a sanitizer build
  // (docs/build.md) that is how a report in the daemon fails the test.
  ~DaemonProcess();

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
