// Host side of examples/mlp_cuda.h: buffers, cuBLAS GEMMs and kernel
// launches, every CUDA and cuBLAS call checked and turned into
// absl::Status. Compiled by the C++ compiler, not nvcc.
#include "examples/mlp_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "examples/mlp_cuda_launch.h"
#include "kernels/cuda/cast_norm.h"

namespace tidepool::examples {
namespace {

absl::Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("mlp_cuda: ", what, ": ",
                                          cudaGetErrorName(e), ": ",
                                          cudaGetErrorString(e)));
}

absl::Status Cublas(cublasStatus_t e, const char* what) {
  if (e == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("mlp_cuda: ", what, ": ",
                                          cublasGetStatusName(e), ": ",
                                          cublasGetStatusString(e)));
}

class CudaMlpImpl : public CudaMlp {
 public:
  explicit CudaMlpImpl(const Options& o)
      : o_(o),
        act_(static_cast<size_t>(o.rows) * o.d),
        dd_(static_cast<size_t>(o.d) * o.d) {}

  ~CudaMlpImpl() override {
    // Teardown cannot report errors; a failed free only leaks.
    if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
    if (blas_ != nullptr) (void)cublasDestroy(blas_);
    if (arena_ != nullptr) (void)cudaFree(arena_);
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }

  absl::Status Init() {
    if (o_.d <= 0 || o_.layers <= 0 || o_.rows <= 0 || o_.global_batch <= 0) {
      return absl::InvalidArgumentError("mlp_cuda: empty model or batch");
    }
    if (!kernels::IsValidDType(o_.param_dtype)) {
      return absl::InvalidArgumentError("mlp_cuda: unknown parameter dtype");
    }
    // Default flags: ordered with the legacy default stream (see header).
    TP_RETURN_IF_ERROR(Cuda(cudaStreamCreate(&stream_), "cudaStreamCreate"));
    TP_RETURN_IF_ERROR(Cublas(cublasCreate(&blas_), "cublasCreate"));
    TP_RETURN_IF_ERROR(
        Cublas(cublasSetStream(blas_, stream_), "cublasSetStream"));
    // Plain fp32 (no TF32 tensor cores): the CPU reference is fp32, and
    // TF32's 10-bit mantissa would put the curves 1e-3 apart on its own.
    TP_RETURN_IF_ERROR(Cublas(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH),
                              "cublasSetMathMode"));
    TP_RETURN_IF_ERROR(Cublas(
        cublasSetPointerMode(blas_, CUBLAS_POINTER_MODE_HOST), "pointer mode"));
    // One allocation outside the daemon's pool for everything the model
    // keeps (the activations of every layer are needed by backward).
    const size_t n = dd_ + o_.d;
    const size_t floats = static_cast<size_t>(o_.layers + 1) * act_  // h
                          + static_cast<size_t>(o_.layers) * act_    // a
                          + 4 * act_  // y, dout, dprev, dz
                          + 2 * n;    // widened parameters, gradient
    const size_t bytes = floats * sizeof(float) + sizeof(double);
    TP_RETURN_IF_ERROR(Cuda(cudaMalloc(&arena_, bytes), "cudaMalloc"));
    loss_ = static_cast<double*>(arena_);  // first: 8-byte aligned
    float* p =
        reinterpret_cast<float*>(static_cast<char*>(arena_) + sizeof(double));
    auto take = [&p](size_t count) { return std::exchange(p, p + count); };
    h_ = take(static_cast<size_t>(o_.layers + 1) * act_);
    a_ = take(static_cast<size_t>(o_.layers) * act_);
    y_ = take(act_);
    dout_ = take(act_);
    dprev_ = take(act_);
    dz_ = take(act_);
    w_ = take(n);
    grad_ = take(n);
    return absl::OkStatus();
  }

  CUstream_st* stream() const override { return stream_; }

  absl::Status StartBatch(const float* x, const float* y) override {
    const size_t bytes = act_ * sizeof(float);
    TP_RETURN_IF_ERROR(Cuda(
        cudaMemcpyAsync(h_, x, bytes, cudaMemcpyHostToDevice, stream_), "x"));
    return Cuda(cudaMemcpyAsync(y_, y, bytes, cudaMemcpyHostToDevice, stream_),
                "y");
  }

  absl::Status Forward(int layer, const void* params_dev) override {
    TP_RETURN_IF_ERROR(CheckLayer(layer));
    TP_RETURN_IF_ERROR(Widen(params_dev));
    const float* h = H(layer);
    float* a = A(layer);
    // Row-major arrays are column-major transposes: with H' = h^T (d x rows)
    // and W' = W^T, z^T = W H', i.e. C = op_T(W') * H'.
    const float one = 1.0f, zero = 0.0f;
    TP_RETURN_IF_ERROR(
        Cublas(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, o_.d, o_.rows, o_.d,
                           &one, w_, o_.d, h, o_.d, &zero, a, o_.d),
               "cublasSgemm (forward)"));
    return Cuda(
        internal::LaunchBiasTanhResidual(a, w_ + dd_, h, H(layer + 1), o_.d,
                                         o_.rows, o_.res_scale, stream_),
        "bias/tanh/residual kernel");
  }

  absl::Status LossAndGradient(float loss_scale) override {
    const double norm = 1.0 / (static_cast<double>(o_.global_batch) * o_.d);
    return Cuda(internal::LaunchLossGrad(H(o_.layers), y_, dout_,
                                         static_cast<int64_t>(act_), norm,
                                         loss_scale, loss_, stream_),
                "loss kernel");
  }

  absl::Status Backward(int layer, void* params_dev) override {
    TP_RETURN_IF_ERROR(CheckLayer(layer));
    TP_RETURN_IF_ERROR(Widen(params_dev));
    const float* h = H(layer);
    const float one = 1.0f, zero = 0.0f;
    TP_RETURN_IF_ERROR(
        Cuda(internal::LaunchTanhBackward(dout_, A(layer), dz_,
                                          static_cast<int64_t>(act_),
                                          o_.res_scale, stream_),
             "tanh backward kernel"));
    // dW[i][j] = sum_r dz[r][i] h[r][j]; column-major dW^T = H' * DZ'^T.
    TP_RETURN_IF_ERROR(
        Cublas(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_T, o_.d, o_.d, o_.rows,
                           &one, h, o_.d, dz_, o_.d, &zero, grad_, o_.d),
               "cublasSgemm (dW)"));
    TP_RETURN_IF_ERROR(
        Cuda(internal::LaunchBiasGrad(dz_, grad_ + dd_, o_.d, o_.rows, stream_),
             "bias gradient kernel"));
    // dh = dout + dz W; column-major DH' = W' * DZ' + DOUT'.
    TP_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(dprev_, dout_, act_ * sizeof(float),
                                            cudaMemcpyDeviceToDevice, stream_),
                            "dout copy"));
    TP_RETURN_IF_ERROR(
        Cublas(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_N, o_.d, o_.rows, o_.d,
                           &one, w_, o_.d, dz_, o_.d, &one, dprev_, o_.d),
               "cublasSgemm (dh)"));
    std::swap(dout_, dprev_);
    // The gradient over the parameters, rounded to their dtype (the CPU
    // path's CpuConvertFromF32; a plain copy for fp32).
    return kernels::CudaCastFromF32(grad_, params_dev, o_.param_dtype,
                                    static_cast<int64_t>(dd_ + o_.d), stream_);
  }

  absl::StatusOr<double> FinishLoss() override {
    double loss = 0;
    TP_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(&loss, loss_, sizeof(loss),
                                            cudaMemcpyDeviceToHost, stream_),
                            "loss copy"));
    TP_RETURN_IF_ERROR(
        Cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"));
    return loss;
  }

 private:
  absl::Status CheckLayer(int layer) const {
    if (layer < 0 || layer >= o_.layers) {
      return absl::OutOfRangeError(absl::StrCat("mlp_cuda: layer ", layer));
    }
    return absl::OkStatus();
  }
  // The layer's parameters widened to fp32 in w_ (a copy for fp32, so the
  // gradient may overwrite the tensor while dh still reads the weights).
  absl::Status Widen(const void* params_dev) {
    return kernels::CudaCastToF32(params_dev, o_.param_dtype, w_,
                                  static_cast<int64_t>(dd_ + o_.d), stream_);
  }
  float* H(int l) { return h_ + static_cast<size_t>(l) * act_; }
  float* A(int l) { return a_ + static_cast<size_t>(l) * act_; }

  const Options o_;
  const size_t act_;  // rows * d
  const size_t dd_;   // d * d
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  void* arena_ = nullptr;
  double* loss_ = nullptr;
  float* h_ = nullptr;  // layers + 1 activations: input, each layer's output
  float* a_ = nullptr;  // each layer's tanh
  float* y_ = nullptr;
  float* dout_ = nullptr;  // dL/d(output of the layer backward is at)
  float* dprev_ = nullptr;
  float* dz_ = nullptr;
  float* w_ = nullptr;
  float* grad_ = nullptr;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CudaMlp>> CudaMlp::Create(
    const Options& options) {
  auto mlp = std::make_unique<CudaMlpImpl>(options);
  TP_RETURN_IF_ERROR(mlp->Init());
  return std::unique_ptr<CudaMlp>(std::move(mlp));
}

}  // namespace tidepool::examples
