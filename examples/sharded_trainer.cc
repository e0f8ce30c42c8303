// The main job of `make demo`: a deep residual tanh MLP with bf16 (or fp16,
// fp32) parameters, fp32 master weights and AdamW moments, whose
// parameters plus optimizer states are several times the device pool,
// trained through libtidepool with ShardedAdamW:
//   - forward acquires each layer's parameter tensor read-only;
//   - backward acquires it read-write, writes the layer's gradient over
//     its parameters (they are not needed again this step), releases it and
//     hands the block to the optimizer, whose worker reduce-scatters and
//     updates it while backward continues with the layers below;
//   - Step() finishes the step (clipping, fp16 overflow skip).
// With --world > 1 every rank is a process that trains on its slice of the
// global batch, the ranks talking through Gloo. With --verify (rank 0 of a
// world of one), the same model is trained in plain memory with the same
// kernels, and the loss curves must agree.
//
// --math picks where the layer math runs. cpu: plain CPU code; on the sim
// backend the acquired memory is host memory, on cuda the layer is staged
// through host copies. cuda (the default on the cuda backend): cuBLAS and
// small kernels (examples/mlp_cuda.h) on the acquired device memory, with
// the activations on the device; the in-memory reference stays on the CPU,
// so its loss curve is compared within --cuda_tolerance instead.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/convert.h"
#include "kernels/cpu/grad_stats.h"
#include "tidepool/communicator.h"
#include "tidepool/optimizer.h"
#include "tidepool/session.h"
#ifdef TIDEPOOL_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "examples/mlp_cuda.h"
#endif

ABSL_FLAG(std::string, socket, tidepool::kDefaultSocket, "tidepoold socket");
ABSL_FLAG(int, layers, 37, "residual layers");
ABSL_FLAG(int, width, 256, "layer width");
ABSL_FLAG(int, batch, 4, "global batch (split across ranks)");
ABSL_FLAG(int, steps, 300, "training iterations");
ABSL_FLAG(std::string, dtype, "bf16", "parameter dtype: bf16, fp16 or fp32");
ABSL_FLAG(double, lr, 2e-3, "AdamW learning rate");
ABSL_FLAG(double, weight_decay, 0.01, "AdamW weight decay");
ABSL_FLAG(double, max_grad_norm, 0, "global-norm clipping; 0: none");
ABSL_FLAG(bool, overlap, true, "update blocks while backward continues");
ABSL_FLAG(bool, verify, true,
          "train the same model in memory and compare (world 1 only)");
ABSL_FLAG(double, tolerance, 1e-5,
          "allowed relative loss difference (--math=cpu)");
// Why 1e-3 for the device math: its fp32 GEMMs sum in another order than
// the CPU loops and tanhf may round differently, so the first losses should
// differ only at fp32 rounding level (~1e-7 relative, an estimate). Later
// steps drift further, but slowly: Adam's updates follow the gradient's
// relative error, and parameters are rounded to bf16/fp16 after each
// update, so a difference grows only where it flips a rounding, mostly in
// weights whose small gradients barely move the loss. A real bug (missing
// bias, transposed GEMM, dropped residual or scale) changes the loss by far
// more than 1e-3 within a few steps. Estimated, not yet measured on a GPU.
ABSL_FLAG(double, cuda_tolerance, 1e-3,
          "allowed relative loss difference (--math=cuda)");
ABSL_FLAG(std::string, math, "auto",
          "where the layer math runs: cpu, cuda (cuBLAS on the acquired "
          "device memory; cuda backend only) or auto (cuda on the cuda "
          "backend, cpu on sim)");
ABSL_FLAG(double, min_ratio, 4.0,
          "refuse to run unless params + optimizer state are this many "
          "times the device pool (0: no check)");
ABSL_FLAG(int, rank, 0, "this process's rank");
ABSL_FLAG(int, world, 1, "number of ranks");
ABSL_FLAG(std::string, gloo_store, "", "Gloo rendezvous dir (world > 1)");
ABSL_FLAG(std::string, save_dir, "", "save a checkpoint here at the end");
ABSL_FLAG(std::string, load_dir, "", "resume from the checkpoint here");
ABSL_FLAG(std::string, dump_params, "",
          "write the final parameters to <path>.rank<r> (raw, in order)");
ABSL_FLAG(int, print_every, 25, "print progress every N steps");
ABSL_FLAG(std::string, policy, "cpu",
          "session policy: cpu (every update in the host homes) or auto "
          "(updates on the device where they fit beside the parameters)");

namespace {

using Clock = std::chrono::steady_clock;
using tidepool::DType;
namespace k = tidepool::kernels;

k::DType KType(DType d) {
  return d == DType::kF32   ? k::DType::kF32
         : d == DType::kF16 ? k::DType::kF16
                            : k::DType::kBF16;
}

// ---------------------------------------------------------------- math

// One residual layer on `rows` samples: a = tanh(W h + b),
// out = h + res_scale * a (res_scale = 1/sqrt(layers) keeps a deep stack's
// output at the targets' scale).
void LayerForward(const float* w, const float* bias, const float* h, float* a,
                  float* out, int d, int rows, float res_scale) {
  for (int r = 0; r < rows; ++r) {
    const float* hr = h + static_cast<size_t>(r) * d;
    for (int i = 0; i < d; ++i) {
      const float* wi = w + static_cast<size_t>(i) * d;
      // Eight partial sums in a fixed order: vectorizes, stays deterministic.
      float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int j = 0;
      for (; j + 8 <= d; j += 8) {
        for (int t = 0; t < 8; ++t) part[t] += wi[j + t] * hr[j + t];
      }
      float acc = bias[i];
      for (; j < d; ++j) acc += wi[j] * hr[j];
      acc += ((part[0] + part[1]) + (part[2] + part[3])) +
             ((part[4] + part[5]) + (part[6] + part[7]));
      const float t = std::tanh(acc);
      a[static_cast<size_t>(r) * d + i] = t;
      out[static_cast<size_t>(r) * d + i] = hr[i] + res_scale * t;
    }
  }
}

// Given dL/dout: dW, db (the layer's gradient, d*d + d floats) and dL/dh.
void LayerBackward(const float* w, const float* h, const float* a,
                   const float* dout, float* grad, float* dh, int d, int rows,
                   float res_scale) {
  const size_t dd = static_cast<size_t>(d) * d;
  std::vector<float> dz(static_cast<size_t>(rows) * d);
  for (size_t k = 0; k < dz.size(); ++k) {
    dz[k] = dout[k] * res_scale * (1 - a[k] * a[k]);
  }
  std::fill(grad, grad + dd + d, 0.0f);
  for (int r = 0; r < rows; ++r) {
    const float* hr = h + static_cast<size_t>(r) * d;
    const float* dzr = &dz[static_cast<size_t>(r) * d];
    for (int i = 0; i < d; ++i) {
      float* gi = grad + static_cast<size_t>(i) * d;
      const float g = dzr[i];
      for (int j = 0; j < d; ++j) gi[j] += g * hr[j];
      grad[dd + i] += g;
    }
  }
  for (int r = 0; r < rows; ++r) {
    float* dhr = dh + static_cast<size_t>(r) * d;
    const float* dzr = &dz[static_cast<size_t>(r) * d];
    std::copy_n(dout + static_cast<size_t>(r) * d, d, dhr);
    for (int i = 0; i < d; ++i) {
      const float* wi = w + static_cast<size_t>(i) * d;
      const float g = dzr[i];
      for (int j = 0; j < d; ++j) dhr[j] += wi[j] * g;
    }
  }
}

// The batch of iteration `it`: inputs N(0, 1), targets from a fixed random
// teacher, so a resumed run sees the same data.
struct Batch {
  std::vector<float> x, y;
};
Batch MakeBatch(int it, int d, int batch, int row0, int rows,
                const std::vector<float>& teacher) {
  std::mt19937 rng(1234 + it);
  std::normal_distribution<float> dist;
  std::vector<float> all(static_cast<size_t>(batch) * d);
  for (auto& v : all) v = dist(rng);
  Batch b;
  b.x.assign(all.begin() + static_cast<size_t>(row0) * d,
             all.begin() + static_cast<size_t>(row0 + rows) * d);
  b.y.resize(b.x.size());
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < d; ++i) {
      float acc = 0;
      for (int j = 0; j < d; ++j) {
        acc += teacher[static_cast<size_t>(i) * d + j] *
               b.x[static_cast<size_t>(r) * d + j];
      }
      b.y[static_cast<size_t>(r) * d + i] = 2.0f * std::tanh(acc);
    }
  }
  return b;
}

void InitLayer(int layer, int d, std::vector<float>& p) {
  std::mt19937 rng(1000 + layer);
  std::normal_distribution<float> dist(0.f, 0.5f / std::sqrt(float(d)));
  p.assign(static_cast<size_t>(d) * d + d, 0.0f);
  for (size_t k = 0; k < static_cast<size_t>(d) * d; ++k) p[k] = dist(rng);
}

// Runs forward and backward of the whole model; the two callbacks get a
// layer's parameters (fp32, widened) and hand back its gradient (fp32, to
// be stored in the parameter dtype). Returns this rank's share of the loss.
struct Model {
  int d, layers, rows, global_batch;
  float res_scale;
};
template <typename LoadFn, typename GradFn>
absl::StatusOr<double> ForwardBackward(const Model& m, const Batch& batch,
                                       float loss_scale, LoadFn load,
                                       GradFn store_grad) {
  const size_t act = static_cast<size_t>(m.rows) * m.d;
  const size_t dd = static_cast<size_t>(m.d) * m.d;
  std::vector<std::vector<float>> h(m.layers + 1, std::vector<float>(act)),
      a(m.layers, std::vector<float>(act));
  h[0] = batch.x;
  std::vector<float> w;
  for (int l = 0; l < m.layers; ++l) {
    if (absl::Status s = load(l, /*for_backward=*/false, w); !s.ok()) return s;
    LayerForward(w.data(), w.data() + dd, h[l].data(), a[l].data(),
                 h[l + 1].data(), m.d, m.rows, m.res_scale);
  }
  double loss = 0;
  const double norm = 1.0 / (static_cast<double>(m.global_batch) * m.d);
  std::vector<float> dh(act), dprev(act), grad(dd + m.d);
  for (size_t k = 0; k < act; ++k) {
    const double diff = h[m.layers][k] - batch.y[k];
    loss += 0.5 * diff * diff * norm;
    dh[k] = static_cast<float>(diff * norm) * loss_scale;
  }
  for (int l = m.layers - 1; l >= 0; --l) {
    if (absl::Status s = load(l, /*for_backward=*/true, w); !s.ok()) return s;
    LayerBackward(w.data(), h[l].data(), a[l].data(), dh.data(), grad.data(),
                  dprev.data(), m.d, m.rows, m.res_scale);
    if (absl::Status s = store_grad(l, grad); !s.ok()) return s;
    dh.swap(dprev);
  }
  return loss;
}

#ifdef TIDEPOOL_HAVE_CUDA
// ForwardBackward with the layer math on the device (--math=cuda). Each
// layer is acquired and released on the model's stream: the math waits
// for the daemon's copies on the GPU, the daemon's next copies of the chunk
// wait for the math, and the CPU waits only once, for the loss. Gradients
// go over the parameters in the tensor's dtype, as the CPU path's store().
absl::StatusOr<double> CudaForwardBackward(
    const Model& m, const Batch& batch, float loss_scale, tidepool::Session& s,
    const std::vector<tidepool::TensorInfo>& tensors,
    tidepool::ShardedAdamW& opt, tidepool::examples::CudaMlp& mlp) {
  const tidepool::CudaStream stream = mlp.stream();
  if (absl::Status st = mlp.StartBatch(batch.x.data(), batch.y.data());
      !st.ok()) {
    return st;
  }
  for (int l = 0; l < m.layers; ++l) {
    const uint64_t id = tensors[l].id;
    s.BeginOp(absl::StrCat("layer", l, "/fwd"));
    auto got = s.Acquire({&id, 1}, tidepool::AccessMode::kRead, stream);
    if (!got.ok()) return got.status();
    absl::Status st = mlp.Forward(l, (*got)[0].data);
    absl::Status r = s.Release({&id, 1}, tidepool::TensorState::kHold, stream);
    if (!st.ok()) return st;
    if (!r.ok()) return r;
  }
  if (absl::Status st = mlp.LossAndGradient(loss_scale); !st.ok()) return st;
  for (int l = m.layers - 1; l >= 0; --l) {
    const uint64_t id = tensors[l].id;
    s.BeginOp(absl::StrCat("layer", l, "/bwd"));
    auto got = s.Acquire({&id, 1}, tidepool::AccessMode::kReadWrite, stream);
    if (!got.ok()) return got.status();
    absl::Status st = mlp.Backward(l, (*got)[0].data);
    // The optimizer's worker reads the gradient with cudaMemcpy on the
    // legacy default stream, which waits for the model's (blocking) stream.
    absl::Status r =
        s.Release({&id, 1}, tidepool::TensorState::kHoldAfterBwd, stream);
    if (!st.ok()) return st;
    if (!r.ok()) return r;
    if (absl::Status o = opt.OnGradientsReady(l); !o.ok()) return o;
  }
  return mlp.FinishLoss();
}
#endif

// ---------------------------------------------------------------- reference

// The same model and optimizer in plain memory: parameters in their dtype,
// gradients rounded to it, fp32 master/m/v, CpuAdamW over whole layers.
class Reference {
 public:
  Reference(const Model& m, DType dtype, const tidepool::ShardedAdamWOptions& o)
      : m_(m),
        dtype_(dtype),
        o_(o),
        n_(static_cast<size_t>(m.d) * m.d + m.d),
        scaler_([&] {
          tidepool::LossScalerOptions ls = o.loss_scale;
          ls.dynamic = ls.dynamic || dtype == DType::kF16;
          return ls;
        }()),
        deferred_(dtype == DType::kF16 || o.loss_scale.dynamic ||
                  o.max_grad_norm > 0) {
    const size_t es = tidepool::DTypeSize(dtype);
    for (int l = 0; l < m.layers; ++l) {
      std::vector<float> init;
      InitLayer(l, m.d, init);
      params_.emplace_back(n_ * es);
      Narrow(init.data(), params_.back().data());
      master_.emplace_back(n_);
      Widen(params_.back().data(), master_.back().data());
      mom_.emplace_back(n_, 0.0f);
      var_.emplace_back(n_, 0.0f);
      grads_.emplace_back(n_ * es);
    }
  }

  absl::StatusOr<double> Train(int it, const std::vector<float>& teacher) {
    Batch b = MakeBatch(it, m_.d, m_.global_batch, 0, m_.global_batch, teacher);
    const float scale = scaler_.scale();
    auto loss = ForwardBackward(
        m_, b, scale,
        [&](int l, bool, std::vector<float>& w) {
          w.resize(n_);
          Widen(params_[l].data(), w.data());
          return absl::OkStatus();
        },
        [&](int l, const std::vector<float>& g) {
          Narrow(g.data(), grads_[l].data());
          return absl::OkStatus();
        });
    if (!loss.ok()) return loss;
    // Statistics in the order the optimizer sees the blocks (backward).
    double sum_sq = 0;
    bool finite = true;
    std::vector<std::vector<float>> wide(m_.layers, std::vector<float>(n_));
    for (int l = m_.layers - 1; l >= 0; --l) {
      Widen(grads_[l].data(), wide[l].data());
      auto st = k::CpuGradStats(wide[l].data(), k::DType::kF32, n_);
      if (!st.ok()) return st.status();
      sum_sq += st->sum_squares;
      finite &= st->all_finite;
    }
    const bool skip = deferred_ ? scaler_.Update(!finite) : false;
    if (!skip) {
      const float gs =
          deferred_ ? k::ClipGradScale(sum_sq, 1.0f / scale, o_.max_grad_norm)
                    : 1.0f;
      ++step_;
      for (int l = m_.layers - 1; l >= 0; --l) {
        k::AdamWParams p{.lr = o_.lr,
                         .beta1 = o_.beta1,
                         .beta2 = o_.beta2,
                         .eps = o_.eps,
                         .weight_decay = o_.weight_decay,
                         .step = step_,
                         .grad_scale = gs};
        absl::Status s;
        if (dtype_ == DType::kF32) {
          s = k::CpuAdamW(p, master_[l].data(), mom_[l].data(), var_[l].data(),
                          wide[l].data(), k::DType::kF32, nullptr,
                          k::DType::kBF16, n_);
          std::memcpy(params_[l].data(), master_[l].data(), n_ * 4);
        } else {
          s = k::CpuAdamW(p, master_[l].data(), mom_[l].data(), var_[l].data(),
                          wide[l].data(), k::DType::kF32, params_[l].data(),
                          KType(dtype_), n_);
        }
        if (!s.ok()) return s;
      }
    }
    return *loss;
  }

  const std::vector<char>& params(int l) const { return params_[l]; }

 private:
  void Widen(const char* src, float* dst) {
    if (dtype_ == DType::kF32) {
      std::memcpy(dst, src, n_ * 4);
    } else {
      k::CpuConvertToF32(src, KType(dtype_), dst, n_).IgnoreError();
    }
  }
  void Narrow(const float* src, char* dst) {
    if (dtype_ == DType::kF32) {
      std::memcpy(dst, src, n_ * 4);
    } else {
      k::CpuConvertFromF32(src, dst, KType(dtype_), n_).IgnoreError();
    }
  }

  Model m_;
  DType dtype_;
  tidepool::ShardedAdamWOptions o_;
  size_t n_;
  tidepool::LossScaler scaler_;
  bool deferred_;
  int64_t step_ = 0;
  std::vector<std::vector<char>> params_, grads_;
  std::vector<std::vector<float>> master_, mom_, var_;
};

// ---------------------------------------------------------------- helpers

// Host access to an acquired tensor: direct on sim, staged on cuda.
struct TensorIo {
  bool cuda = false;
  absl::Status Read(const void* data, void* host, size_t bytes) {
    if (!cuda) {
      std::memcpy(host, data, bytes);
      return absl::OkStatus();
    }
#ifdef TIDEPOOL_HAVE_CUDA
    if (cudaMemcpy(host, data, bytes, cudaMemcpyDeviceToHost) == cudaSuccess) {
      return absl::OkStatus();
    }
#endif
    return absl::InternalError("device-to-host copy failed");
  }
  absl::Status Write(void* data, const void* host, size_t bytes) {
    if (!cuda) {
      std::memcpy(data, host, bytes);
      return absl::OkStatus();
    }
#ifdef TIDEPOOL_HAVE_CUDA
    if (cudaMemcpy(data, host, bytes, cudaMemcpyHostToDevice) == cudaSuccess) {
      return absl::OkStatus();
    }
#endif
    return absl::InternalError("host-to-device copy failed");
  }
};

std::string Bytes(uint64_t b) {
  if (b >= (1ull << 30))
    return absl::StrFormat("%.2f GiB", b / double(1 << 30));
  return absl::StrFormat("%.1f MiB", b / double(1 << 20));
}

int Fail(const absl::Status& s) {
  std::cerr << "sharded_trainer: " << s << "\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int rank = absl::GetFlag(FLAGS_rank);
  const int world = absl::GetFlag(FLAGS_world);
  const int global_batch = absl::GetFlag(FLAGS_batch);
  if (world < 1 || global_batch % world != 0) {
    return Fail(absl::InvalidArgumentError("--batch must divide by --world"));
  }
  const Model model{
      .d = absl::GetFlag(FLAGS_width),
      .layers = absl::GetFlag(FLAGS_layers),
      .rows = global_batch / world,
      .global_batch = global_batch,
      .res_scale =
          1.0f / std::sqrt(static_cast<float>(absl::GetFlag(FLAGS_layers)))};
  const int steps = absl::GetFlag(FLAGS_steps);
  const std::string dtype_name = absl::GetFlag(FLAGS_dtype);
  const DType dtype = dtype_name == "fp32"   ? DType::kF32
                      : dtype_name == "fp16" ? DType::kF16
                                             : DType::kBF16;
  const size_t es = tidepool::DTypeSize(dtype);
  const size_t n = static_cast<size_t>(model.d) * model.d + model.d;
  const bool verify = absl::GetFlag(FLAGS_verify) && world == 1 &&
                      absl::GetFlag(FLAGS_load_dir).empty();
  const bool lead = rank == 0;

  // Communicator first: a rank that cannot join fails before touching the
  // daemon.
  tidepool::GlooOptions gloo{.rank = rank,
                             .world = world,
                             .store_dir = absl::GetFlag(FLAGS_gloo_store)};
  auto comm = tidepool::OpenGlooCommunicator(gloo);
  if (!comm.ok()) return Fail(comm.status());

  tidepool::SessionOptions options;
  options.socket = absl::GetFlag(FLAGS_socket);
  const std::string policy = absl::GetFlag(FLAGS_policy);
  if (policy != "cpu" && policy != "auto") {
    return Fail(absl::InvalidArgumentError("--policy must be cpu or auto"));
  }
  options.policy =
      policy == "auto" ? tidepool::Policy::kAuto : tidepool::Policy::kCpu;
  options.client_name = absl::StrCat("sharded_trainer.rank", rank);
  auto opened = tidepool::Session::Open(options);
  if (!opened.ok()) return Fail(opened.status());
  tidepool::Session& s = **opened;
  TensorIo io{.cuda = s.device().backend == "cuda"};
  const std::string math = absl::GetFlag(FLAGS_math);
  if (math != "auto" && math != "cpu" && math != "cuda") {
    return Fail(absl::InvalidArgumentError("--math must be auto, cpu or cuda"));
  }
#ifdef TIDEPOOL_HAVE_CUDA
  const bool cuda_math = math == "cuda" || (math == "auto" && io.cuda);
#else
  const bool cuda_math = false;
  if (math == "cuda") {
    return Fail(absl::UnimplementedError(
        "--math=cuda: sharded_trainer was built without CUDA"));
  }
#endif
  if (cuda_math && !io.cuda) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--math=cuda needs the cuda backend; this session's is ",
                     s.device().backend)));
  }

  const uint64_t param_bytes = model.layers * n * es;
  const uint64_t state_bytes = model.layers * n * 12;  // master, m, v (fp32)
  const uint64_t capacity = s.device().capacity_bytes;
  const uint64_t rank_bytes = param_bytes + state_bytes / world;
  if (lead) {
    std::printf(
        "tidepool sharded AdamW demo: %d-layer residual MLP, width %d, %s "
        "parameters, %d rank(s) over %s\n"
        "  parameters %s + master/m/v %s = %s per rank, device pool %s on "
        "%s (%s backend): %.1fx oversubscribed; policy %s\n",
        model.layers, model.d, dtype_name.c_str(), world, (*comm)->backend(),
        Bytes(param_bytes).c_str(), Bytes(state_bytes / world).c_str(),
        Bytes(rank_bytes).c_str(), Bytes(capacity).c_str(),
        s.device().name.c_str(), s.device().backend.c_str(),
        double(rank_bytes) / capacity, policy.c_str());
    if (cuda_math) {
      std::printf("  (layer math on the device: cuBLAS fp32 GEMMs)\n");
    } else if (io.cuda) {
      std::printf("  (layer math on the CPU through staging copies)\n");
    }
  }
  const double min_ratio = absl::GetFlag(FLAGS_min_ratio);
  if (min_ratio > 0 && rank_bytes < min_ratio * capacity) {
    return Fail(absl::FailedPreconditionError(absl::StrFormat(
        "parameters + optimizer state must be at least %.1fx the device "
        "pool; raise --layers",
        min_ratio)));
  }

  std::vector<tidepool::TensorSpec> specs;
  for (int l = 0; l < model.layers; ++l) {
    specs.push_back({absl::StrCat("layer", l, ".params"),
                     dtype,
                     {static_cast<int64_t>(n)},
                     tidepool::Group::kParam});
  }
  auto tensors = s.Register(specs);
  if (!tensors.ok()) return Fail(tensors.status());
  std::vector<tidepool::ParamBlock> blocks;
  for (int l = 0; l < model.layers; ++l) {
    blocks.push_back({(*tensors)[l].id, n, dtype, (*tensors)[l].chunk_id});
  }
  tidepool::ShardedAdamWOptions opt_options{
      .lr = static_cast<float>(absl::GetFlag(FLAGS_lr)),
      .weight_decay = static_cast<float>(absl::GetFlag(FLAGS_weight_decay)),
      .max_grad_norm = static_cast<float>(absl::GetFlag(FLAGS_max_grad_norm)),
      .overlap = absl::GetFlag(FLAGS_overlap)};
  auto opt =
      tidepool::ShardedAdamW::Create(&s, comm->get(), blocks, opt_options);
  if (!opt.ok()) return Fail(opt.status());

  // Initial parameters, rounded to the parameter dtype, then master =
  // float(parameter) (the reference does the same).
  std::vector<char> staging(n * es);
  for (int l = 0; l < model.layers; ++l) {
    std::vector<float> init;
    InitLayer(l, model.d, init);
    if (dtype == DType::kF32) {
      std::memcpy(staging.data(), init.data(), n * 4);
    } else {
      k::CpuConvertFromF32(init.data(), staging.data(), KType(dtype), n)
          .IgnoreError();
    }
    const uint64_t id = (*tensors)[l].id;
    auto got = s.Acquire({&id, 1}, tidepool::AccessMode::kReadWrite);
    if (!got.ok()) return Fail(got.status());
    if (auto w = io.Write((*got)[0].data, staging.data(), n * es); !w.ok()) {
      return Fail(w);
    }
    if (auto r = s.Release({&id, 1}, tidepool::TensorState::kHold); !r.ok()) {
      return Fail(r);
    }
  }
  if (auto r = (*opt)->InitFromParams(); !r.ok()) return Fail(r);
  if (!absl::GetFlag(FLAGS_load_dir).empty()) {
    if (auto r = (*opt)->LoadCheckpoint(absl::GetFlag(FLAGS_load_dir));
        !r.ok()) {
      return Fail(r);
    }
    if (lead) {
      std::printf("  resumed from %s at iteration %ld (step %ld)\n",
                  absl::GetFlag(FLAGS_load_dir).c_str(),
                  static_cast<long>((*opt)->iterations()),
                  static_cast<long>((*opt)->step()));
    }
  }

  std::vector<float> teacher(static_cast<size_t>(model.d) * model.d);
  {
    std::mt19937 rng(99);
    std::normal_distribution<float> dist(0.f, 1.0f / std::sqrt(float(model.d)));
    for (auto& v : teacher) v = dist(rng);
  }
  std::unique_ptr<Reference> ref;
  if (verify) ref = std::make_unique<Reference>(model, dtype, opt_options);
#ifdef TIDEPOOL_HAVE_CUDA
  // Created after Session::Open, which made the session's GPU current.
  std::unique_ptr<tidepool::examples::CudaMlp> mlp;
  if (cuda_math) {
    auto created =
        tidepool::examples::CudaMlp::Create({.d = model.d,
                                             .layers = model.layers,
                                             .rows = model.rows,
                                             .global_batch = model.global_batch,
                                             .res_scale = model.res_scale,
                                             .param_dtype = KType(dtype)});
    if (!created.ok()) return Fail(created.status());
    mlp = std::move(*created);
  }
#endif

  const int first = static_cast<int>((*opt)->iterations());
  const auto start = Clock::now();
  double max_rel = 0, first_loss = -1, last_loss = 0, last_ref = 0;
  double last_norm = 0;
  int skipped = 0, printed = 0;
  // Block updates run on the device (GPU AdamW) / in the host homes (CPU
  // AdamW), as the session's policy placed them.
  long updates_on_device = 0, updates_on_host = 0;
  const int print_every = std::max(1, absl::GetFlag(FLAGS_print_every));
  std::vector<char> raw(n * es);
  void* bwd_data = nullptr;  // the layer backward holds COMPUTE
  for (int it = first; it < steps; ++it) {
    Batch b = MakeBatch(it, model.d, global_batch, rank * model.rows,
                        model.rows, teacher);
    const float scale = (*opt)->loss_scale();
    auto load = [&](int l, bool for_backward,
                    std::vector<float>& w) -> absl::Status {
      const uint64_t id = (*tensors)[l].id;
      // Named ops, so that `auto` can plan (harmless under `cpu`).
      s.BeginOp(absl::StrCat("layer", l, for_backward ? "/bwd" : "/fwd"));
      auto got =
          s.Acquire({&id, 1}, for_backward ? tidepool::AccessMode::kReadWrite
                                           : tidepool::AccessMode::kRead);
      if (!got.ok()) return got.status();
      w.resize(n);
      absl::Status st = io.Read((*got)[0].data, raw.data(), n * es);
      if (st.ok() && dtype == DType::kF32) {
        std::memcpy(w.data(), raw.data(), n * 4);
      } else if (st.ok()) {
        st = k::CpuConvertToF32(raw.data(), KType(dtype), w.data(), n);
      }
      if (for_backward) {  // stays COMPUTE until its gradient is stored
        bwd_data = (*got)[0].data;
        return st;
      }
      absl::Status r = s.Release({&id, 1}, tidepool::TensorState::kHold);
      return st.ok() ? r : st;
    };
    // The gradient overwrites the parameters (not needed again this step);
    // the optimizer takes the block from here while backward goes on.
    auto store = [&](int l, const std::vector<float>& g) -> absl::Status {
      const uint64_t id = (*tensors)[l].id;
      absl::Status st;
      if (dtype == DType::kF32) {
        std::memcpy(raw.data(), g.data(), n * 4);
      } else {
        st = k::CpuConvertFromF32(g.data(), raw.data(), KType(dtype), n);
      }
      if (st.ok()) st = io.Write(bwd_data, raw.data(), n * es);
      absl::Status r =
          s.Release({&id, 1}, tidepool::TensorState::kHoldAfterBwd);
      if (!st.ok()) return st;
      if (!r.ok()) return r;
      return (*opt)->OnGradientsReady(l);
    };
#ifdef TIDEPOOL_HAVE_CUDA
    auto loss = mlp != nullptr ? CudaForwardBackward(model, b, scale, s,
                                                     *tensors, **opt, *mlp)
                               : ForwardBackward(model, b, scale, load, store);
#else
    auto loss = ForwardBackward(model, b, scale, load, store);
#endif
    if (!loss.ok()) return Fail(loss.status());
    auto result = (*opt)->Step();
    if (!result.ok()) return Fail(result.status());
    if (auto m = s.MarkStep(); !m.ok()) return Fail(m.status());
    // After Step(): the optimizer's worker is idle, so this collective is
    // issued in the same order on every rank.
    double total = *loss;
    if (auto r = (*comm)->AllReduceSum(&total, 1, DType::kF64); !r.ok()) {
      return Fail(r);
    }
    skipped += !result->applied;
    updates_on_device += result->blocks_on_device;
    updates_on_host += result->blocks_on_host;
    last_norm = result->grad_norm;
    if (first_loss < 0) first_loss = total;
    last_loss = total;
    std::string vs;
    if (ref) {
      auto rl = ref->Train(it, teacher);
      if (!rl.ok()) return Fail(rl.status());
      last_ref = *rl;
      const double rel =
          std::fabs(total - *rl) / std::max(1e-12, std::fabs(*rl));
      max_rel = std::max(max_rel, rel);
      vs = absl::StrFormat(" (in-memory %.6f)", *rl);
    }
    if (lead &&
        ((it + 1) % print_every == 0 || it == first || it + 1 == steps)) {
      auto st = s.Stats();
      if (!st.ok()) return Fail(st.status());
      std::printf(
          "step %4d/%d  loss %.6f%s  |g| %.4f%s  paged in %s, out %s  "
          "updates on device/host %d/%d\n",
          it + 1, steps, total, vs.c_str(), result->grad_norm,
          result->applied ? "" : " SKIPPED (overflow)",
          Bytes(st->bytes_to_device).c_str(), Bytes(st->bytes_to_host).c_str(),
          result->blocks_on_device, result->blocks_on_host);
      std::fflush(stdout);
      ++printed;
    }
  }
  const double seconds =
      std::chrono::duration<double>(Clock::now() - start).count();
  const int ran = steps - first;

  if (!absl::GetFlag(FLAGS_save_dir).empty()) {
    if (auto r = (*opt)->SaveCheckpoint(absl::GetFlag(FLAGS_save_dir));
        !r.ok()) {
      return Fail(r);
    }
  }
  // Final parameters: every rank holds all of them after the all-gather.
  double max_param_diff = 0;
  std::ofstream dump;
  if (!absl::GetFlag(FLAGS_dump_params).empty()) {
    dump.open(absl::StrCat(absl::GetFlag(FLAGS_dump_params), ".rank", rank),
              std::ios::binary | std::ios::trunc);
  }
  for (int l = 0; l < model.layers; ++l) {
    const uint64_t id = (*tensors)[l].id;
    auto got = s.Acquire({&id, 1}, tidepool::AccessMode::kRead);
    if (!got.ok()) return Fail(got.status());
    absl::Status st = io.Read((*got)[0].data, raw.data(), n * es);
    if (auto r = s.Release({&id, 1}, tidepool::TensorState::kHold); !r.ok()) {
      return Fail(r);
    }
    if (!st.ok()) return Fail(st);
    if (dump.is_open()) dump.write(raw.data(), raw.size());
    if (ref) {
      std::vector<float> mine(n), theirs(n);
      if (dtype == DType::kF32) {
        std::memcpy(mine.data(), raw.data(), n * 4);
        std::memcpy(theirs.data(), ref->params(l).data(), n * 4);
      } else {
        k::CpuConvertToF32(raw.data(), KType(dtype), mine.data(), n)
            .IgnoreError();
        k::CpuConvertToF32(ref->params(l).data(), KType(dtype), theirs.data(),
                           n)
            .IgnoreError();
      }
      for (size_t i = 0; i < n; ++i) {
        max_param_diff =
            std::max<double>(max_param_diff, std::fabs(mine[i] - theirs[i]));
      }
    }
  }
  if (dump.is_open() && !dump) return Fail(absl::DataLossError("dump failed"));
  auto st = s.Stats();
  if (!st.ok()) return Fail(st.status());
  if (lead) {
    std::printf(
        "\nsummary: %d steps in %.2f s (%.3f s/step), %d rank(s) over %s, "
        "%d skipped\n"
        "  loss %.6f -> %.6f, last |g| %.4f\n"
        "  per rank: parameters + optimizer state %s, device pool %s "
        "(%.1fx)\n"
        "  moved host->device %s, device->host %s; evictions %lu (%lu "
        "clean); peak device use %s\n"
        "  block updates on the device %ld, in the host homes %ld\n",
        ran, seconds, ran > 0 ? seconds / ran : 0.0, world, (*comm)->backend(),
        skipped, first_loss, last_loss, last_norm, Bytes(rank_bytes).c_str(),
        Bytes(capacity).c_str(), double(rank_bytes) / capacity,
        Bytes(st->bytes_to_device).c_str(), Bytes(st->bytes_to_host).c_str(),
        static_cast<unsigned long>(st->evictions),
        static_cast<unsigned long>(st->clean_evictions),
        Bytes(st->peak_device_bytes).c_str(), updates_on_device,
        updates_on_host);
  }
  if (ref) {
    const double tolerance = cuda_math ? absl::GetFlag(FLAGS_cuda_tolerance)
                                       : absl::GetFlag(FLAGS_tolerance);
    const bool same = max_rel <= tolerance;
    std::printf(
        "  loss curve vs in-memory training (%d steps, %s math): max relative "
        "diff %.3g (tolerance %.1g) -> %s; final loss %.6f vs %.6f; "
        "parameters max |diff| %.3g\n",
        ran, cuda_math ? "cuda" : "cpu", max_rel, tolerance,
        same ? "EQUAL" : "MISMATCH", last_loss, last_ref, max_param_diff);
    if (!same) return 1;
  }
  (void)printed;
  return 0;
}
