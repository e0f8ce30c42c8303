// The fd socket: where an opened session attaches, and where its client then
// fetches the pieces of the pools its chunks live in.
//
// Attaching: the client proves it owns the session (token, and SO_PEERCRED
// pid equal to the pid it opened with) and receives its control and
// hot-path pages with SCM_RIGHTS. It keeps the connection open; when the
// connection closes, whether the client exited, crashed or was SIGKILLed,
// the session is reclaimed at once. Afterwards the client sends MapRequests
// and gets its session's pending pieces (MemoryManager::TakeGrants), and no
// one else's.
//
// One thread serves every connection with non-blocking sockets: a
// handshake has a deadline, unauthenticated connections are bounded, and a
// resource failure (fds, threads, memory) refuses a connection with a log
// line instead of taking the daemon down.
//
//   FdServer server(&manager);
//   TP_RETURN_IF_ERROR(server.Start("/run/tidepool/tidepoold.fd.sock"));
#pragma once

#include <array>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/unique_fd.h"
#include "daemon/core/memory_manager.h"
#include "daemon/server/hot_path_poller.h"
#include "daemon/server/hot_path_server.h"

namespace tidepool {

struct FdServerLimits {
  // Connections that have not attached yet, in all and per uid. Past
  // either bound the oldest such connection (of that uid) is closed to make
  // room: an honest client sends its request at once, so idle connections
  // cannot keep anyone else out.
  size_t max_pending = 128;
  size_t max_pending_per_uid = 32;
  // A peer gets this long to send its attach request.
  absl::Duration handshake_timeout = absl::Seconds(5);
  // Threads that serve the attached sessions' hot paths (0: one per CPU;
  // hot_path_poller.h).
  int hot_path_threads = 0;
};

class FdServer {
 public:
  // `observer` (may be empty) times hot-path requests like RPCs.
  explicit FdServer(MemoryManager* manager, RpcObserver observer = nullptr,
                    FdServerLimits limits = {})
      : manager_(manager),
        observer_(std::move(observer)),
        limits_(limits),
        hot_path_pollers_(limits.hot_path_threads) {}
  ~FdServer();

  // Listens on `path` (mode 0660) and starts the serving thread.
  absl::Status Start(const std::string& path);
  void Stop();

  // Serves an already connected socket as if it had been accepted (tests
  // and fuzzing drive the handshake through a socketpair). After Start.
  void Adopt(UniqueFd conn);

  // Connections open now, attached or not (for tests).
  size_t connection_count() const;

 private:
  struct Conn {
    UniqueFd fd;
    absl::Time deadline;  // handshakes only
    bool attached = false;
    uint64_t order = 0;  // handshakes: accept order
    uint32_t uid = 0;
    uint64_t session = 0;
    std::unique_ptr<HotPathServer> hot_path;
    // What arrived so far of the message being read.
    std::array<uint8_t, sizeof(wire::AttachRequest)> buffer{};
    size_t got = 0;
  };

  void Loop();
  void Accept();
  void Add(UniqueFd fd);
  // Closes the oldest handshake in `orders` (accept order -> fd).
  void DropOldest(const std::map<uint64_t, int>& orders, absl::string_view why);
  // Reads what `conn` sent; false: the connection ends.
  bool OnReadable(Conn& conn);
  absl::Status Attach(Conn& conn);
  absl::Status SendPieces(Conn& conn);
  void Close(int fd);
  void Unpend(const Conn& conn);

  MemoryManager* manager_;
  RpcObserver observer_;
  const FdServerLimits limits_;
  // Before conns_: it outlives the rings they hold.
  HotPathPollers hot_path_pollers_;
  UniqueFd listen_fd_;
  UniqueFd epoll_fd_;
  UniqueFd wake_fd_;   // eventfd: stop, or adopted connections waiting
  UniqueFd spare_fd_;  // given up to accept (and close) when out of fds
  std::thread thread_;
  // Owned by the serving thread.
  std::map<int, Conn> conns_;
  size_t pending_ = 0;
  uint64_t next_order_ = 0;
  std::map<uint64_t, int> pending_order_;  // handshakes by accept order
  std::map<uint32_t, std::map<uint64_t, int>> pending_by_uid_;
  absl::Time next_refusal_log_;

  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<UniqueFd> adopted_ ABSL_GUARDED_BY(mu_);
  size_t connections_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tidepool
