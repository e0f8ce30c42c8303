// bench_adam: CPU AdamW throughput of the tidepool kernel next to the
// machine's memory-bandwidth limit, measured in the same run.
//
//   bench_adam --n=268435456 --iters=5      # all allowed CPUs
//   bench_adam --n=$((64<<20)) --threads=8 --isa=avx2 --tsv
//
// AdamW is memory bound: fp32 master, m, v and grad are read and master,
// m, v written back, 28 bytes per parameter (bf16 grad + bf16 param_out:
// 14 read + 14 written, also 28). The bound comes from two STREAM-like
// triads on the same pinned threads, 12 bytes per element each:
//   a[i] = b[i] + s * c[i]  with non-temporal stores (STREAM's triad, no
//                           write-allocate traffic), and
//   a[i] = a[i] + s * c[i]  in place, AdamW's own pattern: every line
//                           written was just read, so nothing is
//                           write-allocated.
// The faster of the two is the machine's bandwidth for this access
// pattern; bound in Gparam/s = that GB/s / bytes per param.
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"

ABSL_FLAG(int64_t, n, int64_t{256} << 20, "parameters per step");
ABSL_FLAG(int, iters, 5, "timed repetitions (median reported)");
ABSL_FLAG(int, threads, 0, "worker threads; 0 = every allowed CPU");
ABSL_FLAG(std::string, isa, "auto", "auto, scalar, avx2 or avx512");
ABSL_FLAG(bool, tsv, false, "machine-readable output for run.sh");

namespace tidepool::kernels {
namespace {

using Clock = std::chrono::steady_clock;

// Page-aligned, huge pages requested: TLB misses would otherwise cost a
// few percent on multi-GiB buffers.
template <typename T>
T* Alloc(size_t n) {
  const size_t bytes =
      (n * sizeof(T) + (2u << 20) - 1) / (2u << 20) * (2u << 20);
  void* p = std::aligned_alloc(2u << 20, bytes);
  if (p == nullptr) {
    std::fprintf(stderr, "out of memory allocating %zu bytes\n", bytes);
    std::exit(1);
  }
  madvise(p, bytes, MADV_HUGEPAGE);
  return static_cast<T*>(p);
}

__attribute__((target("avx2"))) void TriadAvx2(float* a, const float* b,
                                               const float* c, float s,
                                               size_t n) {
  const __m256 vs = _mm256_set1_ps(s);
  size_t i = 0;
  // Streaming stores need 32-byte alignment; the pool's slices keep it.
  for (; i + 8 <= n; i += 8) {
    _mm256_stream_ps(a + i,
                     _mm256_add_ps(_mm256_loadu_ps(b + i),
                                   _mm256_mul_ps(vs, _mm256_loadu_ps(c + i))));
  }
  for (; i < n; ++i) a[i] = b[i] + s * c[i];
  _mm_sfence();
}

void TriadPlain(float* a, const float* b, const float* c, float s, size_t n) {
  for (size_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}

__attribute__((target("avx2"))) void InPlaceTriadAvx2(float* a, const float* c,
                                                      float s, size_t n) {
  const __m256 vs = _mm256_set1_ps(s);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(a + i,
                     _mm256_add_ps(_mm256_loadu_ps(a + i),
                                   _mm256_mul_ps(vs, _mm256_loadu_ps(c + i))));
  }
  for (; i < n; ++i) a[i] = a[i] + s * c[i];
}

void InPlaceTriadPlain(float* a, const float* c, float s, size_t n) {
  for (size_t i = 0; i < n; ++i) a[i] = a[i] + s * c[i];
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename Fn>
double TimeMedian(int iters, Fn fn) {
  fn();  // warm-up: page faults, huge-page promotion, thread wake-up
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    const auto start = Clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  return Median(t);
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      return line.substr(line.find(':') + 2);
    }
  }
  return "unknown CPU";
}

int Main() {
  const size_t n = static_cast<size_t>(absl::GetFlag(FLAGS_n));
  const int iters = std::max(1, absl::GetFlag(FLAGS_iters));
  const bool tsv = absl::GetFlag(FLAGS_tsv);
  std::vector<int> cpus = AllowedCpus();
  if (const int t = absl::GetFlag(FLAGS_threads);
      t > 0 && t < static_cast<int>(cpus.size())) {
    cpus.resize(t);
  }
  ThreadPool pool(cpus);
  const std::string isa_name = absl::GetFlag(FLAGS_isa);
  Isa isa = Isa::kAuto;
  for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (isa_name == IsaName(i)) isa = i;
  }
  if (isa == Isa::kAuto && isa_name != "auto") {
    std::fprintf(stderr, "unknown --isa=%s\n", isa_name.c_str());
    return 2;
  }
  if (absl::Status s = SetIsaForTesting(isa); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 2;
  }

  float* master = Alloc<float>(n);
  float* m = Alloc<float>(n);
  float* v = Alloc<float>(n);
  float* grad = Alloc<float>(n);
  uint16_t* grad16 = Alloc<uint16_t>(n);
  uint16_t* out16 = Alloc<uint16_t>(n);
  // First touch from the pool, split as the kernels split, so each page
  // sits on the NUMA node of the thread that will use it.
  pool.ParallelFor(n, 64, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      master[i] = 0.01f * static_cast<float>(i % 1000);
      m[i] = 0.0f;
      v[i] = 0.0f;
      grad[i] = 1e-3f * static_cast<float>(static_cast<int>(i % 777) - 388);
      grad16[i] = F32ToBF16Bits(grad[i]);
      out16[i] = 0;
    }
  });

  // Triad over master, m, v; they are reset before the AdamW runs.
  const bool avx2 = IsaSupported(Isa::kAvx2);
  const double t_triad = TimeMedian(iters, [&] {
    pool.ParallelFor(n, 64, [&](size_t b, size_t e) {
      if (avx2) {
        TriadAvx2(master + b, m + b, v + b, 0.5f, e - b);
      } else {
        TriadPlain(master + b, m + b, v + b, 0.5f, e - b);
      }
    });
  });
  const double t_inplace = TimeMedian(iters, [&] {
    pool.ParallelFor(n, 64, [&](size_t b, size_t e) {
      if (avx2) {
        InPlaceTriadAvx2(master + b, v + b, 1e-3f, e - b);
      } else {
        InPlaceTriadPlain(master + b, v + b, 1e-3f, e - b);
      }
    });
  });
  const double nt_triad_gbs = 12.0 * n / t_triad / 1e9;
  const double inplace_gbs = 12.0 * n / t_inplace / 1e9;
  const double triad_gbs = std::max(nt_triad_gbs, inplace_gbs);
  pool.ParallelFor(n, 64, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      master[i] = 0.01f * static_cast<float>(i % 1000);
      m[i] = 0.0f;
      v[i] = 0.0f;
    }
  });

  AdamWParams p;
  p.lr = 1e-4f;
  p.weight_decay = 0.01f;
  int64_t step = 0;
  auto run = [&](const void* g, DType gd, void* out) {
    p.step = ++step;
    absl::Status s =
        CpuAdamW(p, master, m, v, g, gd, out, DType::kBF16, n, &pool);
    if (!s.ok()) {
      std::fprintf(stderr, "CpuAdamW: %s\n", s.ToString().c_str());
      std::exit(1);
    }
  };
  const double t_f32 =
      TimeMedian(iters, [&] { run(grad, DType::kF32, nullptr); });
  const double t_bf16 =
      TimeMedian(iters, [&] { run(grad16, DType::kBF16, out16); });

  struct Row {
    std::string name;
    double gparams;
    double bytes;
  };
  const std::vector<Row> rows = {
      {"tidepool CpuAdamW, fp32 grad", n / t_f32 / 1e9, 28},
      {"tidepool CpuAdamW, bf16 grad + bf16 param_out", n / t_bf16 / 1e9, 28},
  };
  if (tsv) {
    std::printf("machine\t%s, %d threads, %s path\n", CpuModel().c_str(),
                pool.num_threads(), IsaName(ActiveIsa()));
    std::printf("triad_gbs\t%.3f\n", triad_gbs);
    std::printf("triad_detail\tnon-temporal %.1f GB/s, in-place %.1f GB/s\n",
                nt_triad_gbs, inplace_gbs);
    for (const Row& r : rows) {
      std::printf("row\t%s\t%.4f\t%.0f\n", r.name.c_str(), r.gparams, r.bytes);
    }
    return 0;
  }
  std::printf(
      "%s, %d threads (pinned), %s path, n = %zu params, median of %d\n",
      CpuModel().c_str(), pool.num_threads(), IsaName(ActiveIsa()), n, iters);
  std::printf("triad a = b + s*c, non-temporal stores: %.1f GB/s\n",
              nt_triad_gbs);
  std::printf("triad a = a + s*c, in place:            %.1f GB/s\n",
              inplace_gbs);
  std::printf("bound uses the faster: %.1f GB/s\n\n", triad_gbs);
  std::printf("%-48s %10s %8s %8s %10s %8s\n", "implementation", "Gparam/s",
              "B/param", "GB/s", "bound", "of bound");
  for (const Row& r : rows) {
    const double bound = triad_gbs / r.bytes;
    std::printf("%-48s %10.3f %8.0f %8.1f %10.3f %7.0f%%\n", r.name.c_str(),
                r.gparams, r.bytes, r.gparams * r.bytes, bound,
                100.0 * r.gparams / bound);
  }
  return 0;
}

}  // namespace
}  // namespace tidepool::kernels

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return tidepool::kernels::Main();
}
