// The public CPU kernels: argument checks, the split over the thread pool,
// and dispatch to the active ISA's table.
#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/adamw_constants.h"
#include "kernels/cpu/convert.h"
#include "kernels/cpu/grad_stats.h"
#include "kernels/cpu/simd_kernels.h"

namespace tidepool::kernels {
namespace {

// Every thread's slice starts on a multiple of 64 elements: a whole number
// of cache lines for fp32 and 16-bit buffers alike, so no two threads write
// the same line.
constexpr size_t kAlign = 64;

ThreadPool* PoolOrDefault(ThreadPool* pool) {
  return pool != nullptr ? pool : DefaultThreadPool();
}

absl::Status CheckDType(DType d, const char* what) {
  if (!IsValidDType(d)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": unknown dtype ", static_cast<int>(d)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateAdamWParams(const AdamWParams& p) {
  if (p.step < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("AdamW step must be >= 1 (1-based), got ", p.step));
  }
  if (!(p.beta1 >= 0.0f && p.beta1 < 1.0f) ||
      !(p.beta2 >= 0.0f && p.beta2 < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AdamW betas must be in [0, 1), got ", p.beta1, ", ", p.beta2));
  }
  if (!(p.eps >= 0.0f) || !std::isfinite(p.eps) || !std::isfinite(p.lr) ||
      !std::isfinite(p.weight_decay) || !std::isfinite(p.grad_scale)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AdamW lr, eps, weight_decay and grad_scale must be finite (eps >= "
        "0), got lr=",
        p.lr, " eps=", p.eps, " weight_decay=", p.weight_decay,
        " grad_scale=", p.grad_scale));
  }
  return absl::OkStatus();
}

absl::Status CpuAdamW(const AdamWParams& params, float* master, float* m,
                      float* v, const void* grad, DType grad_dtype,
                      void* param_out, DType param_dtype, size_t n,
                      ThreadPool* pool) {
  if (absl::Status s = ValidateAdamWParams(params); !s.ok()) return s;
  if (absl::Status s = CheckDType(grad_dtype, "CpuAdamW grad"); !s.ok()) {
    return s;
  }
  if (param_out != nullptr && param_dtype != DType::kF16 &&
      param_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("CpuAdamW param_out must be f16 or bf16, got ",
                     DTypeName(param_dtype)));
  }
  if (n == 0) return absl::OkStatus();
  if (master == nullptr || m == nullptr || v == nullptr || grad == nullptr) {
    return absl::InvalidArgumentError("CpuAdamW: null buffer");
  }
  const internal::AdamWConstants c =
      internal::FoldAdamW(params.lr, params.beta1, params.beta2, params.eps,
                          params.weight_decay, params.step, params.grad_scale);
  const int out_index = param_out == nullptr ? internal::Index(DType::kF32)
                                             : internal::Index(param_dtype);
  const internal::AdamWFn fn =
      internal::ActiveKernels().adamw[internal::Index(grad_dtype)][out_index];
  const size_t grad_size = DTypeSize(grad_dtype);
  const size_t out_size = DTypeSize(param_dtype);
  PoolOrDefault(pool)->ParallelFor(n, kAlign, [&](size_t begin, size_t end) {
    fn(c, master + begin, m + begin, v + begin,
       static_cast<const char*>(grad) + begin * grad_size,
       param_out == nullptr ? nullptr
                            : static_cast<char*>(param_out) + begin * out_size,
       end - begin);
  });
  return absl::OkStatus();
}

absl::Status CpuConvertToF32(const void* src, DType src_dtype, float* dst,
                             size_t n, ThreadPool* pool) {
  if (absl::Status s = CheckDType(src_dtype, "CpuConvertToF32"); !s.ok()) {
    return s;
  }
  if (n == 0) return absl::OkStatus();
  if (src == nullptr || dst == nullptr) {
    return absl::InvalidArgumentError("CpuConvertToF32: null buffer");
  }
  const internal::ToF32Fn fn =
      internal::ActiveKernels().to_f32[internal::Index(src_dtype)];
  const size_t size = DTypeSize(src_dtype);
  PoolOrDefault(pool)->ParallelFor(n, kAlign, [&](size_t begin, size_t end) {
    fn(static_cast<const char*>(src) + begin * size, dst + begin, end - begin);
  });
  return absl::OkStatus();
}

absl::Status CpuConvertFromF32(const float* src, void* dst, DType dst_dtype,
                               size_t n, ThreadPool* pool) {
  if (absl::Status s = CheckDType(dst_dtype, "CpuConvertFromF32"); !s.ok()) {
    return s;
  }
  if (n == 0) return absl::OkStatus();
  if (src == nullptr || dst == nullptr) {
    return absl::InvalidArgumentError("CpuConvertFromF32: null buffer");
  }
  const internal::FromF32Fn fn =
      internal::ActiveKernels().from_f32[internal::Index(dst_dtype)];
  const size_t size = DTypeSize(dst_dtype);
  PoolOrDefault(pool)->ParallelFor(n, kAlign, [&](size_t begin, size_t end) {
    fn(src + begin, static_cast<char*>(dst) + begin * size, end - begin);
  });
  return absl::OkStatus();
}

absl::StatusOr<GradStats> CpuGradStats(const void* grad, DType dtype, size_t n,
                                       ThreadPool* pool) {
  if (absl::Status s = CheckDType(dtype, "CpuGradStats"); !s.ok()) return s;
  GradStats stats;
  if (n == 0) return stats;
  if (grad == nullptr) {
    return absl::InvalidArgumentError("CpuGradStats: null buffer");
  }
  const internal::SumSquaresFn fn =
      internal::ActiveKernels().sum_squares[internal::Index(dtype)];
  const size_t size = DTypeSize(dtype);
  ThreadPool* p = PoolOrDefault(pool);
  // One slot per thread, a cache line apart; summed in thread order so the
  // result does not depend on which thread finishes first.
  struct alignas(64) Partial {
    double sum = 0;
  };
  const int threads = p->num_threads();
  std::vector<Partial> partial(threads);
  if (n < 16384 || threads == 1) {
    partial[0].sum = fn(grad, n);
  } else {
    p->RunOnAll([&](int index) {
      size_t begin = 0;
      size_t end = 0;
      ThreadPool::SplitRange(n, kAlign, threads, index, &begin, &end);
      if (begin < end) {
        partial[index].sum =
            fn(static_cast<const char*>(grad) + begin * size, end - begin);
      }
    });
  }
  for (const Partial& part : partial) stats.sum_squares += part.sum;
  // Squares summed in double cannot overflow for finite fp32/fp16/bf16
  // inputs, so a non-finite sum means an Inf or NaN element.
  stats.all_finite = std::isfinite(stats.sum_squares);
  return stats;
}

float ClipGradScale(double sum_squares, float inv_loss_scale, float max_norm) {
  // A NaN coefficient falls through std::min as 1: a non-finite norm means
  // the caller skips the step anyway.
  if (max_norm <= 0.0f) return inv_loss_scale;
  const double norm = std::sqrt(sum_squares) * inv_loss_scale;
  const double coef = static_cast<double>(max_norm) / (norm + 1e-6);
  return static_cast<float>(inv_loss_scale * std::min(1.0, coef));
}

}  // namespace tidepool::kernels
