// bench/transfer: how fast tidepool moves chunks, next to a raw copy of the
// same sizes measured in the same run. For each chunk size it starts a
// tidepoold (cuda backend where a GPU is, sim elsewhere), registers twice
// the device pool in chunks of that size and sweeps them: every acquire
// loads a chunk that is not resident (evicting a clean one, which costs no
// transfer). The baseline is cudaMemcpyAsync from cudaMallocHost memory
// (cuda) or memcpy between two shared mappings (sim).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/support/process.h"
#include "tidepool/session.h"
#ifdef TIDEPOOL_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

ABSL_FLAG(std::string, sizes_mib, "4,16,64,256", "chunk sizes in MiB");
ABSL_FLAG(int, pool_mib, 1024, "device pool in MiB");
ABSL_FLAG(int, sweeps, 3, "sweeps over all chunks (best is reported)");
ABSL_FLAG(std::string, device, "auto", "auto | sim | cuda:<n>");
ABSL_FLAG(std::string, daemon_args, "",
          "extra tidepoold flags, comma-separated (e.g. "
          "--sim_copy_workers=1, to compare copy workers in one run)");
ABSL_FLAG(bool, latency_only, false,
          "only the resident pair latency (first size), no sweeps");

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double LoadAverage() {
  double load = 0;
  return getloadavg(&load, 1) == 1 ? load : -1;
}

#ifdef TIDEPOOL_HAVE_CUDA
bool HaveGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
#else
bool HaveGpu() { return false; }
#endif

// Raw copies of `count` chunks of `bytes` host to device, in GB/s: chunk i
// of a host buffer as large as the registered model goes to slot i of a
// device buffer as large as the pool, as tidepool's sweep does.
double RawGbps(bool cuda, uint64_t bytes, int count, uint64_t pool) {
  const uint64_t slots = pool / bytes;
  const uint64_t host_bytes = bytes * count;
#ifdef TIDEPOOL_HAVE_CUDA
  if (cuda) {
    uint8_t* host = nullptr;
    uint8_t* dev = nullptr;
    cudaStream_t s;
    if (cudaMallocHost(reinterpret_cast<void**>(&host), host_bytes) !=
            cudaSuccess ||
        cudaMalloc(reinterpret_cast<void**>(&dev), pool) != cudaSuccess ||
        cudaStreamCreate(&s) != cudaSuccess) {
      return 0;
    }
    std::memset(host, 1, host_bytes);
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
      const auto t = Clock::now();
      for (int i = 0; i < count; ++i) {
        cudaMemcpyAsync(dev + (i % slots) * bytes, host + i * bytes, bytes,
                        cudaMemcpyHostToDevice, s);
      }
      cudaStreamSynchronize(s);
      best = std::max(best, host_bytes / Since(t) / 1e9);
    }
    cudaFreeHost(host);
    cudaFree(dev);
    cudaStreamDestroy(s);
    return best;
  }
#endif
  // Two shared mappings, as the sim backend copies between memfds.
  auto* a =
      static_cast<uint8_t*>(mmap(nullptr, host_bytes, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  auto* b = static_cast<uint8_t*>(mmap(nullptr, pool, PROT_READ | PROT_WRITE,
                                       MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  std::memset(a, 1, host_bytes);
  std::memset(b, 2, pool);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t = Clock::now();
    for (int i = 0; i < count; ++i) {
      std::memcpy(b + (i % slots) * bytes, a + i * bytes, bytes);
    }
    best = std::max(best, host_bytes / Since(t) / 1e9);
  }
  munmap(a, host_bytes);
  munmap(b, pool);
  return best;
}

struct SweepResult {
  double first_gbps = 0;  // sweep 0: every slot new (backed, mapped)
  double best_gbps = 0;   // the best later sweep: slots reused
};

// Registers `count` chunks of `chunk` bytes (twice the pool) and sweeps
// them read-only, in GB/s.
absl::StatusOr<SweepResult> Sweep(tidepool::Session& s, bool cuda,
                                  uint64_t chunk, int count) {
  std::vector<tidepool::TensorSpec> specs;
  for (int i = 0; i < count; ++i) {
    specs.push_back({absl::StrCat("c", i),
                     tidepool::DType::kU8,
                     {static_cast<int64_t>(chunk)},
                     tidepool::Group::kParam});
  }
  auto t = s.Register(specs);
  if (!t.ok()) return t.status();
  tidepool::CudaStream stream = nullptr;
#ifdef TIDEPOOL_HAVE_CUDA
  cudaStream_t cs = nullptr;
  if (cuda) {
    cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking);
    stream = reinterpret_cast<tidepool::CudaStream>(cs);
  }
#endif
  SweepResult result;
  for (int sweep = 0; sweep <= absl::GetFlag(FLAGS_sweeps); ++sweep) {
    const auto start = Clock::now();
    for (const auto& info : *t) {
      const uint64_t id = info.id;
      auto got = s.Acquire({&id, 1}, tidepool::AccessMode::kRead, stream);
      if (!got.ok()) return got.status();
      absl::Status r =
          s.Release({&id, 1}, tidepool::TensorState::kHold, stream);
      if (!r.ok()) return r;
    }
#ifdef TIDEPOOL_HAVE_CUDA
    if (cuda) cudaStreamSynchronize(cs);
#endif
    const double gbps = chunk * double(count) / Since(start) / 1e9;
    if (sweep == 0) {
      result.first_gbps = gbps;
    } else {
      result.best_gbps = std::max(result.best_gbps, gbps);
    }
  }
  return result;
}

// Acquire+release pairs of one resident chunk: p50 and p99 in microseconds.
// With `flush`, each pair also waits for its release to complete (on the
// hot path a release is otherwise only posted; the next acquire waits).
absl::StatusOr<std::pair<double, double>> PairLatency(tidepool::Session& s,
                                                      bool flush = false) {
  auto t = s.Register(
      {{"resident", tidepool::DType::kU8, {1 << 20}, tidepool::Group::kParam}});
  if (!t.ok()) return t.status();
  const uint64_t id = (*t)[0].id;
  std::vector<double> us;
  for (int i = 0; i < 3000; ++i) {
    const auto start = Clock::now();
    auto got = s.Acquire({&id, 1}, tidepool::AccessMode::kRead);
    if (!got.ok()) return got.status();
    absl::Status r = s.Release({&id, 1}, tidepool::TensorState::kHold);
    if (r.ok() && flush) r = s.Flush();
    if (!r.ok()) return r;
    if (i >= 500) us.push_back(Since(start) * 1e6);  // after a warm-up
  }
  std::sort(us.begin(), us.end());
  return std::make_pair(us[us.size() / 2], us[us.size() * 99 / 100]);
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const bool cuda = absl::GetFlag(FLAGS_device) != "sim" && HaveGpu();
  const uint64_t pool = uint64_t(absl::GetFlag(FLAGS_pool_mib)) << 20;
  std::printf(
      "bench/transfer: %s backend, device pool %d MiB, host->device "
      "chunk loads vs raw %s\n",
      cuda ? "cuda" : "sim", absl::GetFlag(FLAGS_pool_mib),
      cuda ? "cudaMemcpyAsync from cudaMallocHost memory"
           : "memcpy between shared mappings");
  if (!absl::GetFlag(FLAGS_daemon_args).empty()) {
    std::printf("tidepoold flags: %s\n",
                absl::GetFlag(FLAGS_daemon_args).c_str());
  }
  std::printf("%10s %8s %12s %12s %12s %8s %8s %12s %6s\n", "chunk", "chunks",
              "hot GB/s", "gRPC GB/s", "raw GB/s", "hot/raw", "gRPC/raw",
              "1st sweep", "load");
  std::pair<double, double> latency[2] = {{0, 0}, {0, 0}};
  std::pair<double, double> flushed = {0, 0};
  const double load_before = LoadAverage();
  int first_mib = 0;
  for (absl::string_view size_text :
       absl::StrSplit(absl::GetFlag(FLAGS_sizes_mib), ',')) {
    int mib = 0;
    if (!absl::SimpleAtoi(size_text, &mib) || mib <= 0) {
      std::fprintf(stderr, "bad size '%s'\n", std::string(size_text).c_str());
      return 2;
    }
    if (first_mib == 0) first_mib = mib;
    const uint64_t chunk = uint64_t(mib) << 20;
    const int count = static_cast<int>(2 * pool / chunk);
    if (count < 4) continue;
    tidepool::testing::DaemonOptions options;
    options.device = cuda ? "cuda:0" : "sim";
    options.sim_capacity = absl::StrCat(absl::GetFlag(FLAGS_pool_mib), "MiB");
    options.host_pool = absl::StrCat(3 * absl::GetFlag(FLAGS_pool_mib), "MiB");
    options.chunk_size = absl::StrCat(mib, "MiB");
    if (cuda) {
      options.extra_args = {
          absl::StrCat("--device_pool=", absl::GetFlag(FLAGS_pool_mib), "MiB")};
    }
    if (!absl::GetFlag(FLAGS_daemon_args).empty()) {
      for (absl::string_view arg :
           absl::StrSplit(absl::GetFlag(FLAGS_daemon_args), ',')) {
        options.extra_args.emplace_back(arg);
      }
    }
    auto daemon = tidepool::testing::DaemonProcess::Start(options);
    if (!daemon.ok()) {
      std::fprintf(stderr, "%s\n", daemon.status().ToString().c_str());
      return 1;
    }
    // The same sweep through the shared-memory hot path and through gRPC.
    SweepResult gbps[2];
    for (int path = 0; path < 2; ++path) {
      tidepool::SessionOptions so;
      so.socket = (*daemon)->socket();
      so.policy = tidepool::Policy::kCpu;
      so.hot_path = path == 0;
      auto s = tidepool::Session::Open(so);
      if (!s.ok()) {
        std::fprintf(stderr, "%s\n", s.status().ToString().c_str());
        return 1;
      }
      if (!absl::GetFlag(FLAGS_latency_only)) {
        auto best = Sweep(**s, cuda, chunk, count);
        if (!best.ok()) {
          std::fprintf(stderr, "%s\n", best.status().ToString().c_str());
          return 1;
        }
        gbps[path] = *best;
      }
      if (path == 0 && mib == first_mib) {
        auto lat = PairLatency(**s);
        if (lat.ok()) latency[0] = *lat;
        lat = PairLatency(**s, /*flush=*/true);
        if (lat.ok()) flushed = *lat;
      }
      if (path == 1 && mib == first_mib) {
        auto lat = PairLatency(**s);
        if (lat.ok()) latency[1] = *lat;
      }
    }
    if (absl::GetFlag(FLAGS_latency_only)) break;
    const double raw = RawGbps(cuda, chunk, count, pool);
    // "1st sweep": the hot path's first pass, where every slot is new
    // (a fresh memfd, mapped by the daemon and delivered to the client),
    // against its later passes, where parked slots are reused.
    std::printf(
        "%7d MiB %8d %12.2f %12.2f %12.2f %7.1f%% %7.1f%% %11.1f%% %6.2f\n",
        mib, count, gbps[0].best_gbps, gbps[1].best_gbps, raw,
        100 * gbps[0].best_gbps / raw, 100 * gbps[1].best_gbps / raw,
        100 * gbps[0].first_gbps / gbps[0].best_gbps, LoadAverage());
    std::fflush(stdout);
  }
  if (latency[0].first > 0) {
    std::printf(
        "resident acquire+release pair (1 MiB chunk, %d MiB run): hot path "
        "p50 %.1f us p99 %.1f us; gRPC p50 %.1f us p99 %.1f us; gRPC/hot "
        "%.1fx\n",
        first_mib, latency[0].first, latency[0].second, latency[1].first,
        latency[1].second, latency[1].first / latency[0].first);
  }
  if (flushed.first > 0) {
    std::printf(
        "  hot path with each release waited for (Flush): p50 %.1f us p99 "
        "%.1f us\n",
        flushed.first, flushed.second);
  }
  std::printf("load average (1 min) %.2f at start, %.2f at end, %ld CPUs\n",
              load_before, LoadAverage(), sysconf(_SC_NPROCESSORS_ONLN));
  return 0;
}
