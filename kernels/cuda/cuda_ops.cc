// Host side of the CUDA kernels: argument checks and cudaError_t ->
// absl::Status. Compiled by the C++ compiler, not nvcc.
#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/adamw_constants.h"
#include "kernels/cuda/cast_norm.h"
#include "kernels/cuda/fused_adamw.h"
#include "kernels/cuda/launch.h"

namespace tidepool::kernels {
namespace {

absl::Status FromCuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": ", cudaGetErrorName(e),
                                           ": ", cudaGetErrorString(e));
  switch (e) {
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorInvalidResourceHandle:
      return absl::InvalidArgumentError(message);
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorNoKernelImageForDevice:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status CheckDType(DType d, const char* what) {
  if (!IsValidDType(d)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": unknown dtype ", static_cast<int>(d)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status FusedAdamW(const AdamWParams& params, const AdamWChunk* chunks_dev,
                        int num_chunks, DType grad_dtype, DType param_dtype,
                        const float* grad_scale_dev, const int* skip_dev,
                        CUstream_st* stream) {
  if (absl::Status s = ValidateAdamWParams(params); !s.ok()) return s;
  if (absl::Status s = CheckDType(grad_dtype, "FusedAdamW grad"); !s.ok()) {
    return s;
  }
  if (param_dtype != DType::kF16 && param_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("FusedAdamW param_dtype must be f16 or bf16, got ",
                     DTypeName(param_dtype)));
  }
  if (num_chunks < 0) {
    return absl::InvalidArgumentError("FusedAdamW: negative chunk count");
  }
  if (num_chunks == 0) return absl::OkStatus();
  if (chunks_dev == nullptr) {
    return absl::InvalidArgumentError("FusedAdamW: null chunk array");
  }
  const internal::AdamWConstants c =
      internal::FoldAdamW(params.lr, params.beta1, params.beta2, params.eps,
                          params.weight_decay, params.step, params.grad_scale);
  return FromCuda(internal::LaunchFusedAdamW(c, chunks_dev, num_chunks,
                                             static_cast<int>(grad_dtype),
                                             static_cast<int>(param_dtype),
                                             grad_scale_dev, skip_dev, stream),
                  "FusedAdamW launch");
}

absl::Status CudaClipGradScale(const float* sum_squares_dev,
                               float inv_loss_scale, float max_norm,
                               float* scale_out_dev, float* norm_out_dev,
                               CUstream_st* stream) {
  if (sum_squares_dev == nullptr || scale_out_dev == nullptr) {
    return absl::InvalidArgumentError("CudaClipGradScale: null pointer");
  }
  return FromCuda(
      internal::LaunchClipGradScale(sum_squares_dev, inv_loss_scale, max_norm,
                                    scale_out_dev, norm_out_dev, stream),
      "CudaClipGradScale launch");
}

absl::Status CudaSumSquares(const NormBuffer* buffers_dev, int num_buffers,
                            DType dtype, float* sum_dev, int* nonfinite_dev,
                            CUstream_st* stream) {
  if (absl::Status s = CheckDType(dtype, "CudaSumSquares"); !s.ok()) return s;
  if (num_buffers < 0) {
    return absl::InvalidArgumentError("CudaSumSquares: negative buffer count");
  }
  if (num_buffers == 0) return absl::OkStatus();
  if (buffers_dev == nullptr || sum_dev == nullptr) {
    return absl::InvalidArgumentError("CudaSumSquares: null pointer");
  }
  return FromCuda(internal::LaunchSumSquares(buffers_dev, num_buffers,
                                             static_cast<int>(dtype), sum_dev,
                                             nonfinite_dev, stream),
                  "CudaSumSquares launch");
}

absl::Status CudaCastToF32(const void* src_dev, DType src_dtype, float* dst_dev,
                           int64_t n, CUstream_st* stream) {
  if (absl::Status s = CheckDType(src_dtype, "CudaCastToF32"); !s.ok())
    return s;
  if (n < 0) return absl::InvalidArgumentError("CudaCastToF32: negative n");
  if (n == 0) return absl::OkStatus();
  if (src_dev == nullptr || dst_dev == nullptr) {
    return absl::InvalidArgumentError("CudaCastToF32: null pointer");
  }
  return FromCuda(internal::LaunchCastToF32(
                      src_dev, static_cast<int>(src_dtype), dst_dev, n, stream),
                  "CudaCastToF32 launch");
}

absl::Status CudaCastFromF32(const float* src_dev, void* dst_dev,
                             DType dst_dtype, int64_t n, CUstream_st* stream) {
  if (absl::Status s = CheckDType(dst_dtype, "CudaCastFromF32"); !s.ok()) {
    return s;
  }
  if (n < 0) return absl::InvalidArgumentError("CudaCastFromF32: negative n");
  if (n == 0) return absl::OkStatus();
  if (src_dev == nullptr || dst_dev == nullptr) {
    return absl::InvalidArgumentError("CudaCastFromF32: null pointer");
  }
  return FromCuda(internal::LaunchCastFromF32(
                      src_dev, dst_dev, static_cast<int>(dst_dtype), n, stream),
                  "CudaCastFromF32 launch");
}

}  // namespace tidepool::kernels
