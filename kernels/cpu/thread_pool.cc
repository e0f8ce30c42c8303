#include "kernels/cpu/thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace tidepool::kernels {
namespace {

// How long a waiter polls before sleeping in the kernel: rounds come in
// bursts (one per chunk), and a futex wake costs several microseconds.
constexpr int kSpinIterations = 4000;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Parses a kernel cpulist such as "0-3,8,10-11".
std::vector<int> ParseCpuList(const std::string& text) {
  std::vector<int> cpus;
  for (absl::string_view part :
       absl::StrSplit(text, absl::ByAnyChar(",\n"), absl::SkipWhitespace())) {
    std::pair<absl::string_view, absl::string_view> range =
        absl::StrSplit(part, absl::MaxSplits('-', 1));
    int lo = 0;
    int hi = 0;
    if (!absl::SimpleAtoi(range.first, &lo)) continue;
    hi = lo;
    if (!range.second.empty() && !absl::SimpleAtoi(range.second, &hi)) continue;
    for (int c = lo; c <= hi; ++c) cpus.push_back(c);
  }
  return cpus;
}

}  // namespace

ThreadPool::ThreadPool(std::vector<int> cpus, bool pin)
    : cpus_(std::move(cpus)) {
  const int n = std::max<int>(1, static_cast<int>(cpus_.size()));
  workers_.reserve(n);
  for (int i = 0; i < n; ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(i); });
    if (pin && i < static_cast<int>(cpus_.size())) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(cpus_[i], &set);
      // Best effort: an unpinned worker is slower, not wrong.
      pthread_setaffinity_np(workers_.back().native_handle(), sizeof(set),
                             &set);
    }
  }
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < kSpinIterations; ++spin) {
      CpuRelax();
      gen = generation_.load(std::memory_order_acquire);
    }
    while (gen == seen) {
      generation_.wait(seen, std::memory_order_acquire);
      gen = generation_.load(std::memory_order_acquire);
    }
    seen = gen;
    if (stop_.load(std::memory_order_acquire)) return;
    (*job_)(index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      pending_.notify_one();
    }
  }
}

void ThreadPool::RunOnAll(absl::FunctionRef<void(int)> fn) {
  absl::MutexLock lock(&run_mu_);
  job_ = &fn;
  pending_.store(num_threads(), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  int left = pending_.load(std::memory_order_acquire);
  for (int spin = 0; left != 0 && spin < kSpinIterations; ++spin) {
    CpuRelax();
    left = pending_.load(std::memory_order_acquire);
  }
  while (left != 0) {
    pending_.wait(left, std::memory_order_acquire);
    left = pending_.load(std::memory_order_acquire);
  }
  job_ = nullptr;
}

void ThreadPool::SplitRange(size_t n, size_t align, int num_threads,
                            int thread_index, size_t* begin, size_t* end) {
  if (align == 0) align = 1;
  const size_t t = static_cast<size_t>(std::max(1, num_threads));
  size_t per = (n + t - 1) / t;
  per = (per + align - 1) / align * align;
  *begin = std::min(n, per * static_cast<size_t>(thread_index));
  *end = std::min(n, *begin + per);
}

void ThreadPool::ParallelFor(size_t n, size_t align,
                             absl::FunctionRef<void(size_t, size_t)> fn,
                             size_t serial_below) {
  if (n == 0) return;
  if (n < serial_below || num_threads() == 1) {
    fn(0, n);
    return;
  }
  const int threads = num_threads();
  RunOnAll([&](int index) {
    size_t begin = 0;
    size_t end = 0;
    SplitRange(n, align, threads, index, &begin, &end);
    if (begin < end) fn(begin, end);
  });
}

std::vector<int> AllowedCpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
    }
  }
  if (cpus.empty()) {
    const int n = std::max(1u, std::thread::hardware_concurrency());
    for (int c = 0; c < n; ++c) cpus.push_back(c);
  }
  return cpus;
}

std::vector<std::vector<int>> NumaNodeCpus() {
  const std::vector<int> allowed = AllowedCpus();
  // Node ids can have holes, so list the directory instead of counting.
  std::vector<std::pair<int, std::vector<int>>> found;
  std::error_code ec;
  for (const auto& entry :
       std::filesystem::directory_iterator("/sys/devices/system/node", ec)) {
    const std::string name = entry.path().filename().string();
    int node = 0;
    if (name.rfind("node", 0) != 0) continue;
    if (!absl::SimpleAtoi(absl::string_view(name).substr(4), &node)) continue;
    std::ifstream in(entry.path() / "cpulist");
    std::string text((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
    std::vector<int> cpus;
    for (int c : ParseCpuList(text)) {
      if (std::binary_search(allowed.begin(), allowed.end(), c)) {
        cpus.push_back(c);
      }
    }
    if (!cpus.empty()) found.emplace_back(node, std::move(cpus));
  }
  std::sort(found.begin(), found.end());
  std::vector<std::vector<int>> nodes;
  for (auto& [node, cpus] : found) nodes.push_back(std::move(cpus));
  if (nodes.empty()) nodes.push_back(allowed);
  return nodes;
}

ThreadPool* DefaultThreadPool() {
  static ThreadPool* pool = new ThreadPool(AllowedCpus());
  return pool;
}

}  // namespace tidepool::kernels
