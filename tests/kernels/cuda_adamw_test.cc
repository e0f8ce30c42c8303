// GPU kernels against the CPU ones (labelled gpu: needs a CUDA device).
// FusedAdamW runs the CPU kernel's exact expression with FMA and IEEE
// sqrt/divide, so it must match CpuAdamW's AVX2/AVX-512 paths to the bit.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/convert.h"
#include "kernels/cpu/grad_stats.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/isa.h"
#include "kernels/cuda/cast_norm.h"
#include "kernels/cuda/fused_adamw.h"

namespace tidepool::kernels {
namespace {

#define CUDA_OK(expr)                                                      \
  do {                                                                     \
    const cudaError_t e_ = (expr);                                         \
    ASSERT_EQ(e_, cudaSuccess) << #expr << ": " << cudaGetErrorString(e_); \
  } while (0)

// A device allocation freed on scope exit.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) {
    if (cudaMalloc(&ptr_, bytes == 0 ? 1 : bytes) != cudaSuccess)
      ptr_ = nullptr;
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

class CudaKernelsTest : public testing::Test {
 protected:
  void SetUp() override {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      GTEST_SKIP() << "no CUDA device; skipped";
    }
  }
};

std::vector<uint8_t> EncodeAll(DType d, const std::vector<float>& x) {
  std::vector<uint8_t> out(x.size() * DTypeSize(d));
  for (size_t i = 0; i < x.size(); ++i) {
    if (d == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &x[i], 4);
    } else {
      const uint16_t h =
          d == DType::kBF16 ? F32ToBF16Bits(x[i]) : F32ToF16Bits(x[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

// Host copy of one chunk's state, run through CpuAdamW alongside.
struct HostChunk {
  std::vector<float> master, m, v;
  std::vector<uint8_t> grad;
  std::vector<uint16_t> out;
  bool has_out;
};

void CheckAdamW(DType gd, DType od) {
  // Sizes with odd tails; one chunk starts one element into its buffers so
  // the kernel's unaligned (scalar) path runs too; one has no param_out.
  const std::vector<size_t> sizes = {1, 17, 1000003, 4096, 5000};
  const size_t kMisaligned = 4;
  const size_t kNoOut = 3;
  std::mt19937 rng(
      static_cast<uint32_t>(static_cast<int>(gd) * 3 + static_cast<int>(od)));
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);

  std::vector<HostChunk> host(sizes.size());
  std::vector<std::unique_ptr<DeviceBuffer>> bufs;
  std::vector<AdamWChunk> chunks(sizes.size());
  for (size_t c = 0; c < sizes.size(); ++c) {
    const size_t n = sizes[c];
    const size_t off = c == kMisaligned ? 1 : 0;
    HostChunk& h = host[c];
    h.has_out = c != kNoOut;
    h.master.resize(n);
    h.m.resize(n);
    h.v.resize(n);
    for (size_t i = 0; i < n; ++i) {
      h.master[i] = unit(rng);
      h.m[i] = 0.1f * unit(rng);
      h.v[i] = 0.01f * std::abs(unit(rng));
    }
    h.out.assign(h.has_out ? n : 0, 0);
    for (int k = 0; k < 5; ++k) {
      bufs.push_back(std::make_unique<DeviceBuffer>((n + off) * 4));
      ASSERT_NE(bufs.back()->get(), nullptr);
    }
    const size_t base = bufs.size() - 5;
    chunks[c].master = bufs[base]->get<float>() + off;
    chunks[c].m = bufs[base + 1]->get<float>() + off;
    chunks[c].v = bufs[base + 2]->get<float>() + off;
    chunks[c].grad = bufs[base + 3]->get<char>() + off * DTypeSize(gd);
    chunks[c].param_out =
        h.has_out ? bufs[base + 4]->get<char>() + off * 2 : nullptr;
    chunks[c].n = static_cast<int64_t>(n);
    CUDA_OK(cudaMemcpy(chunks[c].master, h.master.data(), n * 4,
                       cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(chunks[c].m, h.m.data(), n * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(chunks[c].v, h.v.data(), n * 4, cudaMemcpyHostToDevice));
  }
  DeviceBuffer chunks_dev(chunks.size() * sizeof(AdamWChunk));
  CUDA_OK(cudaMemcpy(chunks_dev.get(), chunks.data(),
                     chunks.size() * sizeof(AdamWChunk),
                     cudaMemcpyHostToDevice));
  // The clip coefficient lives on the device; the CPU gets the same product.
  const float host_scale = 0.5f;
  const float dev_scale = 0.75f;
  DeviceBuffer scale_dev(sizeof(float));
  CUDA_OK(cudaMemcpy(scale_dev.get(), &dev_scale, sizeof(float),
                     cudaMemcpyHostToDevice));

  AdamWParams p;
  p.lr = 1e-2f;
  p.beta2 = 0.95f;
  p.weight_decay = 0.1f;
  for (int step = 1; step <= 3; ++step) {
    p.step = step;
    for (size_t c = 0; c < sizes.size(); ++c) {
      std::vector<float> g(sizes[c]);
      for (float& x : g) x = 4.0f * unit(rng);
      host[c].grad = EncodeAll(gd, g);
      CUDA_OK(cudaMemcpy(const_cast<void*>(chunks[c].grad), host[c].grad.data(),
                         host[c].grad.size(), cudaMemcpyHostToDevice));
    }
    p.grad_scale = host_scale;
    ASSERT_TRUE(FusedAdamW(p, chunks_dev.get<AdamWChunk>(),
                           static_cast<int>(chunks.size()), gd, od,
                           scale_dev.get<float>(), nullptr, nullptr)
                    .ok());
    p.grad_scale = host_scale * dev_scale;
    for (HostChunk& h : host) {
      ASSERT_TRUE(
          CpuAdamW(p, h.master.data(), h.m.data(), h.v.data(), h.grad.data(),
                   gd, h.has_out ? h.out.data() : nullptr, od, h.master.size())
              .ok());
    }
  }
  CUDA_OK(cudaDeviceSynchronize());

  const bool bitwise = ActiveIsa() != Isa::kScalar;
  for (size_t c = 0; c < sizes.size(); ++c) {
    const size_t n = sizes[c];
    const HostChunk& h = host[c];
    std::vector<float> master(n), m(n), v(n);
    std::vector<uint16_t> out(n);
    CUDA_OK(cudaMemcpy(master.data(), chunks[c].master, n * 4,
                       cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(m.data(), chunks[c].m, n * 4, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(v.data(), chunks[c].v, n * 4, cudaMemcpyDeviceToHost));
    if (h.has_out) {
      CUDA_OK(cudaMemcpy(out.data(), chunks[c].param_out, n * 2,
                         cudaMemcpyDeviceToHost));
    }
    size_t differ = 0;
    for (size_t i = 0; i < n; ++i) {
      if (master[i] != h.master[i] || m[i] != h.m[i] || v[i] != h.v[i] ||
          (h.has_out && out[i] != h.out[i])) {
        ++differ;
      }
      ASSERT_NEAR(master[i], h.master[i], 1e-6 * (std::abs(h.master[i]) + p.lr))
          << "chunk " << c << " element " << i;
      ASSERT_NEAR(m[i], h.m[i], 1e-6) << "chunk " << c << " element " << i;
      ASSERT_NEAR(v[i], h.v[i], 1e-6 * (h.v[i] + 1e-6))
          << "chunk " << c << " element " << i;
    }
    if (bitwise) {
      EXPECT_EQ(differ, 0u)
          << "chunk " << c << " (n=" << n << ") has " << differ
          << " elements not bit-identical to CpuAdamW(" << IsaName(ActiveIsa())
          << ")";
    }
  }
}

TEST_F(CudaKernelsTest, FusedAdamWMatchesCpu) {
  for (DType gd : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (DType od : {DType::kBF16, DType::kF16}) {
      SCOPED_TRACE(testing::Message()
                   << "grad " << DTypeName(gd) << " out " << DTypeName(od));
      CheckAdamW(gd, od);
      if (HasFatalFailure()) return;
    }
  }
}

TEST_F(CudaKernelsTest, SkipFlagLeavesEverythingUntouched) {
  const size_t n = 1000;
  std::vector<float> ones(n, 1.0f);
  DeviceBuffer master(n * 4), m(n * 4), v(n * 4), g(n * 4), skip(sizeof(int));
  for (DeviceBuffer* b : {&master, &m, &v, &g}) {
    CUDA_OK(cudaMemcpy(b->get(), ones.data(), n * 4, cudaMemcpyHostToDevice));
  }
  const int one = 1;
  CUDA_OK(cudaMemcpy(skip.get(), &one, sizeof(int), cudaMemcpyHostToDevice));
  AdamWChunk chunk{
      master.get<float>(),    m.get<float>(), v.get<float>(), g.get(), nullptr,
      static_cast<int64_t>(n)};
  DeviceBuffer chunk_dev(sizeof(chunk));
  CUDA_OK(cudaMemcpy(chunk_dev.get(), &chunk, sizeof(chunk),
                     cudaMemcpyHostToDevice));
  AdamWParams p;
  ASSERT_TRUE(FusedAdamW(p, chunk_dev.get<AdamWChunk>(), 1, DType::kF32,
                         DType::kBF16, nullptr, skip.get<int>(), nullptr)
                  .ok());
  std::vector<float> back(n);
  CUDA_OK(cudaMemcpy(back.data(), master.get(), n * 4, cudaMemcpyDeviceToHost));
  EXPECT_EQ(back, ones);
}

TEST_F(CudaKernelsTest, SumSquaresAndClipMatchCpu) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> unit(-2.0f, 2.0f);
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16}) {
    const std::vector<size_t> sizes = {1, 17, 1000003, 300};
    std::vector<std::vector<uint8_t>> host;
    std::vector<std::unique_ptr<DeviceBuffer>> dev;
    std::vector<NormBuffer> descs;
    double cpu_sum = 0;
    for (size_t n : sizes) {
      std::vector<float> x(n);
      for (float& f : x) f = unit(rng);
      host.push_back(EncodeAll(d, x));
      dev.push_back(std::make_unique<DeviceBuffer>(host.back().size()));
      CUDA_OK(cudaMemcpy(dev.back()->get(), host.back().data(),
                         host.back().size(), cudaMemcpyHostToDevice));
      descs.push_back({dev.back()->get(), static_cast<int64_t>(n)});
      absl::StatusOr<GradStats> st = CpuGradStats(host.back().data(), d, n);
      ASSERT_TRUE(st.ok());
      cpu_sum += st->sum_squares;
    }
    DeviceBuffer descs_dev(descs.size() * sizeof(NormBuffer));
    CUDA_OK(cudaMemcpy(descs_dev.get(), descs.data(),
                       descs.size() * sizeof(NormBuffer),
                       cudaMemcpyHostToDevice));
    DeviceBuffer sum(sizeof(float)), bad(sizeof(int)), scale(sizeof(float)),
        norm(sizeof(float));
    CUDA_OK(cudaMemset(sum.get(), 0, sizeof(float)));
    CUDA_OK(cudaMemset(bad.get(), 0, sizeof(int)));
    ASSERT_TRUE(CudaSumSquares(descs_dev.get<NormBuffer>(),
                               static_cast<int>(descs.size()), d,
                               sum.get<float>(), bad.get<int>(), nullptr)
                    .ok());
    const float inv_loss = 1.0f / 8.0f;
    ASSERT_TRUE(CudaClipGradScale(sum.get<float>(), inv_loss, 1.0f,
                                  scale.get<float>(), norm.get<float>(),
                                  nullptr)
                    .ok());
    float gpu_sum = 0, gpu_scale = 0, gpu_norm = 0;
    int gpu_bad = -1;
    CUDA_OK(
        cudaMemcpy(&gpu_sum, sum.get(), sizeof(float), cudaMemcpyDeviceToHost));
    CUDA_OK(
        cudaMemcpy(&gpu_bad, bad.get(), sizeof(int), cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(&gpu_scale, scale.get(), sizeof(float),
                       cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(&gpu_norm, norm.get(), sizeof(float),
                       cudaMemcpyDeviceToHost));
    EXPECT_NEAR(gpu_sum, cpu_sum, 1e-6 * cpu_sum) << DTypeName(d);
    EXPECT_EQ(gpu_bad, 0);
    // Same float input, same double arithmetic: identical coefficient.
    EXPECT_EQ(gpu_scale, ClipGradScale(gpu_sum, inv_loss, 1.0f));
    EXPECT_NEAR(gpu_norm, std::sqrt(cpu_sum) * inv_loss,
                1e-6 * std::sqrt(cpu_sum));

    // An Inf in the last element of one buffer sets the flag.
    const float inf = INFINITY;
    std::vector<uint8_t> bad_bytes = EncodeAll(d, {inf});
    CUDA_OK(cudaMemcpy(dev[2]->get<char>() + (sizes[2] - 1) * DTypeSize(d),
                       bad_bytes.data(), bad_bytes.size(),
                       cudaMemcpyHostToDevice));
    ASSERT_TRUE(CudaSumSquares(descs_dev.get<NormBuffer>(),
                               static_cast<int>(descs.size()), d,
                               sum.get<float>(), bad.get<int>(), nullptr)
                    .ok());
    CUDA_OK(
        cudaMemcpy(&gpu_bad, bad.get(), sizeof(int), cudaMemcpyDeviceToHost));
    EXPECT_EQ(gpu_bad, 1) << DTypeName(d);
  }
}

TEST_F(CudaKernelsTest, CastsMatchCpu) {
  for (DType d : {DType::kBF16, DType::kF16}) {
    // Widening: every 16-bit pattern.
    std::vector<uint16_t> all(65536);
    for (int i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
    DeviceBuffer src(all.size() * 2), wide(all.size() * 4),
        narrow(all.size() * 2);
    CUDA_OK(cudaMemcpy(src.get(), all.data(), all.size() * 2,
                       cudaMemcpyHostToDevice));
    ASSERT_TRUE(
        CudaCastToF32(src.get(), d, wide.get<float>(), 65536, nullptr).ok());
    std::vector<float> gpu(65536), cpu(65536);
    CUDA_OK(
        cudaMemcpy(gpu.data(), wide.get(), 65536 * 4, cudaMemcpyDeviceToHost));
    ASSERT_TRUE(CpuConvertToF32(all.data(), d, cpu.data(), 65536).ok());
    for (int i = 0; i < 65536; ++i) {
      if (std::isnan(cpu[i])) {
        ASSERT_TRUE(std::isnan(gpu[i]));
      } else {
        ASSERT_EQ(gpu[i], cpu[i]) << DTypeName(d) << " " << i;
      }
    }
    // Narrowing: random fp32 values spanning the 16-bit ranges.
    std::mt19937 rng(11);
    std::vector<float> x(1 << 20);
    for (float& f : x) {
      uint32_t bits = rng();
      if (d == DType::kF16)
        bits = (bits & 0x87ffffffu) | 0x30000000u;  // |x| ~ 2^-31..2^16
      std::memcpy(&f, &bits, 4);
    }
    DeviceBuffer xs(x.size() * 4), ys(x.size() * 2);
    CUDA_OK(
        cudaMemcpy(xs.get(), x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    ASSERT_TRUE(CudaCastFromF32(xs.get<float>(), ys.get(), d,
                                static_cast<int64_t>(x.size()), nullptr)
                    .ok());
    std::vector<uint16_t> gpu16(x.size()), cpu16(x.size());
    CUDA_OK(cudaMemcpy(gpu16.data(), ys.get(), x.size() * 2,
                       cudaMemcpyDeviceToHost));
    ASSERT_TRUE(CpuConvertFromF32(x.data(), cpu16.data(), d, x.size()).ok());
    for (size_t i = 0; i < x.size(); ++i) {
      if (std::isnan(x[i])) continue;  // NaN payloads may differ
      ASSERT_EQ(gpu16[i], cpu16[i]) << DTypeName(d) << " of " << x[i];
    }
  }
}

// Not a correctness check: prints the fused kernel's effective bandwidth,
// for docs/kernels.md.
TEST_F(CudaKernelsTest, ReportsThroughput) {
  const size_t n = size_t{256} << 20;
  DeviceBuffer master(n * 4), m(n * 4), v(n * 4), g(n * 4), out(n * 2);
  for (DeviceBuffer* b : {&master, &m, &v, &g}) {
    ASSERT_NE(b->get(), nullptr);
    CUDA_OK(cudaMemset(b->get(), 0, n * 4));
  }
  // Several chunks, as the optimizer would pass them.
  const int kChunks = 16;
  std::vector<AdamWChunk> chunks;
  for (int c = 0; c < kChunks; ++c) {
    const size_t off = n / kChunks * c;
    chunks.push_back({master.get<float>() + off, m.get<float>() + off,
                      v.get<float>() + off, g.get<float>() + off,
                      out.get<uint16_t>() + off,
                      static_cast<int64_t>(n / kChunks)});
  }
  DeviceBuffer chunks_dev(sizeof(AdamWChunk) * kChunks);
  CUDA_OK(cudaMemcpy(chunks_dev.get(), chunks.data(),
                     sizeof(AdamWChunk) * kChunks, cudaMemcpyHostToDevice));
  cudaEvent_t start, stop;
  CUDA_OK(cudaEventCreate(&start));
  CUDA_OK(cudaEventCreate(&stop));
  AdamWParams p;
  for (int with_out = 0; with_out < 2; ++with_out) {
    if (!with_out) {
      for (AdamWChunk& c : chunks) c.param_out = nullptr;
    } else {
      for (int c = 0; c < kChunks; ++c) {
        chunks[c].param_out = out.get<uint16_t>() + n / kChunks * c;
        chunks[c].grad =
            reinterpret_cast<uint16_t*>(g.get<char>()) + n / kChunks * c;
      }
    }
    CUDA_OK(cudaMemcpy(chunks_dev.get(), chunks.data(),
                       sizeof(AdamWChunk) * kChunks, cudaMemcpyHostToDevice));
    const DType gd = with_out ? DType::kBF16 : DType::kF32;
    ASSERT_TRUE(FusedAdamW(p, chunks_dev.get<AdamWChunk>(), kChunks, gd,
                           DType::kBF16, nullptr, nullptr, nullptr)
                    .ok());
    const int iters = 10;
    CUDA_OK(cudaEventRecord(start));
    for (int i = 0; i < iters; ++i) {
      p.step = i + 1;
      ASSERT_TRUE(FusedAdamW(p, chunks_dev.get<AdamWChunk>(), kChunks, gd,
                             DType::kBF16, nullptr, nullptr, nullptr)
                      .ok());
    }
    CUDA_OK(cudaEventRecord(stop));
    CUDA_OK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
    const double sec = ms / 1e3 / iters;
    const double bytes = with_out ? 28.0 : 28.0;  // 16+12, or 14+14
    std::printf(
        "FusedAdamW %s: %.1f Gparam/s, %.0f GB/s (%zu params, %d chunks)\n",
        with_out ? "bf16 grad + bf16 param_out" : "fp32 grad", n / sec / 1e9,
        n * bytes / sec / 1e9, n, kChunks);
  }
  CUDA_OK(cudaEventDestroy(start));
  CUDA_OK(cudaEventDestroy(stop));
}

}  // namespace
}  // namespace tidepool::kernels
