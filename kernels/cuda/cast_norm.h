// GPU casts between fp32 and bf16/fp16, and the global gradient L2 norm
// over many buffers in one launch (sum of squares into one device float
// plus a non-finite flag for fp16 overflow detection).
//
//   CudaCastFromF32(master_dev, param_bf16_dev, DType::kBF16, n, stream);
//
//   NormBuffer bufs[k] = {{grad0_dev, n0}, ...};  // copied to bufs_dev
//   cudaMemsetAsync(sum_dev, 0, sizeof(float), stream);
//   cudaMemsetAsync(bad_dev, 0, sizeof(int), stream);
//   CudaSumSquares(bufs_dev, k, DType::kBF16, sum_dev, bad_dev, stream);
//
// Plain C++: no CUDA headers needed to include this.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/dtype.h"
#include "kernels/cuda/descriptors.h"  // NormBuffer

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace tidepool::kernels {

// Adds sum(x^2) over every buffer to *sum_dev (accumulated per thread and
// block in double, one float atomic per block) and sets *nonfinite_dev = 1
// if any element is Inf or NaN. Neither is cleared first, so several
// launches (say, one per dtype) accumulate; zero them once per step.
// nonfinite_dev may be null.
absl::Status CudaSumSquares(const NormBuffer* buffers_dev, int num_buffers,
                            DType dtype, float* sum_dev, int* nonfinite_dev,
                            CUstream_st* stream);

// dst[i] = float(src[i]).
absl::Status CudaCastToF32(const void* src_dev, DType src_dtype, float* dst_dev,
                           int64_t n, CUstream_st* stream);

// dst[i] = round_to_nearest_even(src[i]) in dst_dtype.
absl::Status CudaCastFromF32(const float* src_dev, void* dst_dev,
                             DType dst_dtype, int64_t n, CUstream_st* stream);

}  // namespace tidepool::kernels
