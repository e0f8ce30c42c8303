// The element-wise parts of the residual tanh MLP on the device (the GEMMs
// are cuBLAS, in mlp_cuda.cc). Each kernel rounds like the CPU code in
// sharded_trainer.cc: explicit _rn intrinsics keep nvcc from contracting
// a * b + c into one fma, so these steps round as the reference does and
// only the GEMMs' summation order (and tanhf's last bit) differ.
#include <cuda_runtime.h>

#include <cstdint>

#include "examples/mlp_cuda_launch.h"

namespace tidepool::examples::internal {
namespace {

constexpr int kThreads = 256;

int BlocksFor(int64_t n) {
  // Grid-stride loops: a few thousand blocks at most is plenty for the
  // demo's activations (rows * width elements).
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

__global__ void BiasTanhResidualKernel(float* __restrict__ z,
                                       const float* __restrict__ bias,
                                       const float* __restrict__ h,
                                       float* __restrict__ out, int d,
                                       int64_t n, float res_scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       k < n; k += stride) {
    const float t = tanhf(__fadd_rn(z[k], bias[k % d]));
    z[k] = t;
    out[k] = __fadd_rn(h[k], __fmul_rn(res_scale, t));
  }
}

__global__ void TanhBackwardKernel(const float* __restrict__ dout,
                                   const float* __restrict__ a,
                                   float* __restrict__ dz, int64_t n,
                                   float res_scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       k < n; k += stride) {
    // (dout * res_scale) * (1 - a * a), in the CPU's order.
    dz[k] = __fmul_rn(__fmul_rn(dout[k], res_scale),
                      __fsub_rn(1.0f, __fmul_rn(a[k], a[k])));
  }
}

__global__ void BiasGradKernel(const float* __restrict__ dz,
                               float* __restrict__ db, int d, int rows) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < d; i += stride) {
    float g = 0.0f;  // rows in order, as LayerBackward sums them
    for (int r = 0; r < rows; ++r) {
      g = __fadd_rn(g, dz[static_cast<int64_t>(r) * d + i]);
    }
    db[i] = g;
  }
}

// One block: the loss is one double, and the output is rows * width
// elements (a few thousand), so a single block's reduction is cheap and
// needs no atomics or second pass.
__global__ void __launch_bounds__(kThreads)
    LossGradKernel(const float* __restrict__ out, const float* __restrict__ y,
                   float* __restrict__ dout, int64_t n, double norm,
                   float loss_scale, double* loss) {
  double acc = 0.0;
  for (int64_t k = threadIdx.x; k < n; k += kThreads) {
    const double diff = static_cast<double>(__fsub_rn(out[k], y[k]));
    acc =
        __dadd_rn(acc, __dmul_rn(__dmul_rn(__dmul_rn(0.5, diff), diff), norm));
    dout[k] = __fmul_rn(static_cast<float>(__dmul_rn(diff, norm)), loss_scale);
  }
  __shared__ double sums[kThreads];
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss = sums[0];
}

}  // namespace

cudaError_t LaunchBiasTanhResidual(float* z, const float* bias, const float* h,
                                   float* out, int d, int rows, float res_scale,
                                   cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(d) * rows;
  if (n == 0) return cudaSuccess;
  BiasTanhResidualKernel<<<BlocksFor(n), kThreads, 0, stream>>>(
      z, bias, h, out, d, n, res_scale);
  return cudaGetLastError();
}

cudaError_t LaunchTanhBackward(const float* dout, const float* a, float* dz,
                               int64_t n, float res_scale,
                               cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  TanhBackwardKernel<<<BlocksFor(n), kThreads, 0, stream>>>(dout, a, dz, n,
                                                            res_scale);
  return cudaGetLastError();
}

cudaError_t LaunchBiasGrad(const float* dz, float* db, int d, int rows,
                           cudaStream_t stream) {
  if (d == 0) return cudaSuccess;
  BiasGradKernel<<<BlocksFor(d), kThreads, 0, stream>>>(dz, db, d, rows);
  return cudaGetLastError();
}

cudaError_t LaunchLossGrad(const float* out, const float* y, float* dout,
                           int64_t n, double norm, float loss_scale,
                           double* loss, cudaStream_t stream) {
  LossGradKernel<<<1, kThreads, 0, stream>>>(out, y, dout, n, norm, loss_scale,
                                             loss);
  return cudaGetLastError();
}

}  // namespace tidepool::examples::internal
