// A persistent pool of worker threads, one pinned to each CPU it is given,
// for the memory-bound CPU optimizer kernels.
//
// Pinning plus a static split of every range means the same thread touches
// the same slice of a buffer on every step, so pages first touched by that
// thread stay on its NUMA node and its cache. For several NUMA nodes, make
// one pool per node (NumaNodeCpus()) and give each the shards whose memory
// lives there.
//
//   ThreadPool* pool = DefaultThreadPool();  // every CPU we may run on
//   pool->ParallelFor(n, /*align=*/64, [&](size_t begin, size_t end) {
//     for (size_t i = begin; i < end; ++i) y[i] += x[i];
//   });
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace tidepool::kernels {

class ThreadPool {
 public:
  // One worker per entry of `cpus`, pinned to that CPU id when `pin` is
  // true. An empty `cpus` means one unpinned worker.
  explicit ThreadPool(std::vector<int> cpus, bool pin = true);
  ~ThreadPool();

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()); }
  const std::vector<int>& cpus() const { return cpus_; }

  // Runs fn(thread_index) once on every worker and returns when all are
  // done. Calls from several threads are serialized.
  void RunOnAll(absl::FunctionRef<void(int thread_index)> fn);

  // Splits [0, n) into one contiguous piece per worker, each starting at a
  // multiple of `align`, and runs fn(begin, end) on them. Ranges below
  // `serial_below` elements run on the calling thread: waking the pool
  // costs more than it saves there.
  void ParallelFor(size_t n, size_t align,
                   absl::FunctionRef<void(size_t begin, size_t end)> fn,
                   size_t serial_below = 16384);

  // Piece `thread_index` of ParallelFor's split of [0, n), so callers can
  // keep per-thread results (e.g. partial sums) in the same order.
  static void SplitRange(size_t n, size_t align, int num_threads,
                         int thread_index, size_t* begin, size_t* end);

 private:
  void WorkerLoop(int index);

  std::vector<int> cpus_;
  std::vector<std::thread> workers_;
  absl::Mutex run_mu_;  // one RunOnAll at a time
  // Bumped to start a round; workers wait on it with futex-backed
  // atomic::wait after a short spin.
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  absl::FunctionRef<void(int)>* job_ = nullptr;  // valid during a round
};

// CPU ids this process may run on (sched_getaffinity), ascending.
std::vector<int> AllowedCpus();

// Allowed CPU ids grouped by NUMA node (from /sys); one group holding
// AllowedCpus() where the system reports no nodes.
std::vector<std::vector<int>> NumaNodeCpus();

// A process-wide pool over AllowedCpus(), created on first use.
ThreadPool* DefaultThreadPool();

}  // namespace tidepool::kernels
