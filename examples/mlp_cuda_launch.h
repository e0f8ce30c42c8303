// Internal to examples/mlp_cuda.cc: the element-wise kernels of the
// residual tanh MLP, launched on a stream. Kept free of Abseil so that nvcc
// never parses it (as kernels/cuda/launch.h); errors come back as
// cudaError_t. Every array is row-major, `rows` samples of `d` features.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tidepool::examples::internal {

// z holds W h (per row) on entry and a = tanh(z + bias) on return;
// out = h + res_scale * a.
cudaError_t LaunchBiasTanhResidual(float* z, const float* bias, const float* h,
                                   float* out, int d, int rows, float res_scale,
                                   cudaStream_t stream);

// dz = dout * res_scale * (1 - a * a), element-wise.
cudaError_t LaunchTanhBackward(const float* dout, const float* a, float* dz,
                               int64_t n, float res_scale, cudaStream_t stream);

// db[i] = sum over rows of dz[r][i], summed in row order.
cudaError_t LaunchBiasGrad(const float* dz, float* db, int d, int rows,
                           cudaStream_t stream);

// Half mean squared error against y: *loss = sum 0.5 * diff^2 * norm
// (double), dout = float(diff * norm) * loss_scale, diff = out - y.
cudaError_t LaunchLossGrad(const float* out, const float* y, float* dout,
                           int64_t n, double norm, float loss_scale,
                           double* loss, cudaStream_t stream);

}  // namespace tidepool::examples::internal
