// The residual tanh MLP of sharded_trainer.cc with its layer math on a
// CUDA device: cuBLAS fp32 GEMMs (no TF32) and small kernels, activations
// kept in device memory, parameters read straight from the device memory
// of an acquired parameter tensor and gradients written back over it in
// its dtype. Everything runs on one stream, which the trainer passes to
// Session::Acquire/Release so the math is ordered after the daemon's
// copies and the daemon's later copies after the math, without a CPU sync
// per layer.
//
//   auto mlp = CudaMlp::Create({.d = 256, .layers = 37, .rows = 4,
//                               .global_batch = 4, .res_scale = 0.16f,
//                               .param_dtype = DType::kBF16});
//   (*mlp)->StartBatch(x, y);                      // host arrays
//   for l: Acquire(id, kRead, stream); Forward(l, data); Release(.., stream)
//   (*mlp)->LossAndGradient(loss_scale);
//   for l down: Acquire(kReadWrite, stream); Backward(l, data); Release
//   double loss = *(*mlp)->FinishLoss();           // waits for the stream
//
// Same definitions as the CPU LayerForward/LayerBackward: a = tanh(W h + b),
// out = h + res_scale * a; dz = dout * res_scale * (1 - a^2), dW = dz^T h,
// db = sum_rows dz, dh = dout + dz W. Results differ from the CPU code only
// by fp32 summation order in the GEMMs and tanhf's rounding.
//
// Plain C++: no CUDA headers needed to include this. Only built where
// CUDA is (TIDEPOOL_HAVE_CUDA).
#pragma once

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/dtype.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace tidepool::examples {

class CudaMlp {
 public:
  struct Options {
    int d = 0;             // width
    int layers = 0;        // residual layers
    int rows = 0;          // samples on this rank
    int global_batch = 0;  // samples over all ranks (the loss's mean)
    float res_scale = 1.0f;
    kernels::DType param_dtype = kernels::DType::kBF16;
  };

  // On the calling thread's current device (the session's: Session::Open
  // selects it). Creates a stream that synchronizes with the legacy default
  // stream, because ShardedAdamW's worker reads and writes the parameter
  // tensors with cudaMemcpy there, and releases on it: a non-blocking
  // stream would race those copies, and the session's one release event,
  // re-recorded by the worker on the legacy stream, would no longer cover
  // this stream's work.
  static absl::StatusOr<std::unique_ptr<CudaMlp>> Create(
      const Options& options);
  virtual ~CudaMlp() = default;

  virtual CUstream_st* stream() const = 0;

  // Copies this step's inputs and targets (rows * d floats each, host).
  virtual absl::Status StartBatch(const float* x, const float* y) = 0;
  // Layer `layer` forward from its parameter tensor (d*d weights, then d
  // biases, in param_dtype, device memory). Enqueued on stream().
  virtual absl::Status Forward(int layer, const void* params_dev) = 0;
  // After the last Forward: the loss and dL/dout (times loss_scale).
  virtual absl::Status LossAndGradient(float loss_scale) = 0;
  // Layer `layer` backward, top layer first: reads the parameters, then
  // writes the layer's gradient over them in param_dtype. Enqueued.
  virtual absl::Status Backward(int layer, void* params_dev) = 0;
  // Waits for the stream and returns this rank's share of the loss.
  virtual absl::StatusOr<double> FinishLoss() = 0;
};

}  // namespace tidepool::examples
