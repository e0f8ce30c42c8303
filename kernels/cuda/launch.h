// Internal: the kernel launchers the .cu files export to cuda_ops.cc. Kept
// free of Abseil so nvcc never parses it; errors come back as cudaError_t
// and are turned into absl::Status by the callers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cpu/adamw_constants.h"
#include "kernels/cuda/descriptors.h"

namespace tidepool::kernels::internal {

// dtype codes are DType's values: 0 f32, 1 f16, 2 bf16.
cudaError_t LaunchFusedAdamW(const AdamWConstants& c, const AdamWChunk* chunks,
                             int num_chunks, int grad_dtype, int param_dtype,
                             const float* grad_scale, const int* skip,
                             cudaStream_t stream);

cudaError_t LaunchClipGradScale(const float* sum_squares, float inv_loss_scale,
                                float max_norm, float* scale_out,
                                float* norm_out, cudaStream_t stream);

cudaError_t LaunchSumSquares(const NormBuffer* buffers, int num_buffers,
                             int dtype, float* sum, int* nonfinite,
                             cudaStream_t stream);

cudaError_t LaunchCastToF32(const void* src, int src_dtype, float* dst,
                            int64_t n, cudaStream_t stream);

cudaError_t LaunchCastFromF32(const float* src, void* dst, int dst_dtype,
                              int64_t n, cudaStream_t stream);

}  // namespace tidepool::kernels::internal
