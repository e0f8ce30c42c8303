// The main job of `make demo`: trains a deep tanh MLP whose weights are
// several times larger than the device pool, streaming its layers through
// tidepoold: forward acquires each layer read-only, backward acquires it
// read-write and applies SGD in place, so the daemon must page weights in
// and write updated ones back every step. The same model is trained in
// plain memory alongside, and the two must agree.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <random>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "tidepool/session.h"
#ifdef TIDEPOOL_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

ABSL_FLAG(std::string, socket, tidepool::kDefaultSocket, "tidepoold socket");
ABSL_FLAG(int, layers, 64, "number of layers");
ABSL_FLAG(int, width, 1024, "layer width (weights are width x width fp32)");
ABSL_FLAG(int, batch, 8, "batch size");
ABSL_FLAG(int, steps, 5, "training steps");
ABSL_FLAG(double, lr, 0.05, "SGD learning rate");
ABSL_FLAG(bool, verify, true, "train the same model in memory and compare");
ABSL_FLAG(double, min_ratio, 4.0,
          "refuse to run unless the model is this many times the device pool");

namespace {

using Clock = std::chrono::steady_clock;

// One layer's math on host memory. x: batch x d inputs; w: d x d.
void Forward(const float* w, const std::vector<float>& x, std::vector<float>& y,
             int d, int batch) {
  y.assign(static_cast<size_t>(batch) * d, 0);
  for (int b = 0; b < batch; ++b) {
    const float* xb = &x[static_cast<size_t>(b) * d];
    for (int i = 0; i < d; ++i) {
      const float* wi = w + static_cast<size_t>(i) * d;
      float acc = 0;
      for (int j = 0; j < d; ++j) acc += wi[j] * xb[j];
      y[static_cast<size_t>(b) * d + i] = std::tanh(acc);
    }
  }
}

// Given dL/dy for y = tanh(W x): returns dL/dx and applies W -= lr * dL/dW.
void BackwardAndUpdate(float* w, const std::vector<float>& x,
                       const std::vector<float>& y, std::vector<float>& dy,
                       std::vector<float>& dx, int d, int batch, float lr) {
  for (size_t k = 0; k < dy.size(); ++k) dy[k] *= 1 - y[k] * y[k];  // tanh'
  dx.assign(static_cast<size_t>(batch) * d, 0);
  for (int i = 0; i < d; ++i) {
    const float* wi = w + static_cast<size_t>(i) * d;
    for (int b = 0; b < batch; ++b) {
      const float g = dy[static_cast<size_t>(b) * d + i];
      float* dxb = &dx[static_cast<size_t>(b) * d];
      for (int j = 0; j < d; ++j) dxb[j] += wi[j] * g;
    }
  }
  for (int i = 0; i < d; ++i) {
    float* wi = w + static_cast<size_t>(i) * d;
    for (int b = 0; b < batch; ++b) {
      const float g = lr * dy[static_cast<size_t>(b) * d + i];
      const float* xb = &x[static_cast<size_t>(b) * d];
      for (int j = 0; j < d; ++j) wi[j] -= g * xb[j];
    }
  }
}

float Loss(const std::vector<float>& out, const std::vector<float>& target,
           std::vector<float>* grad) {
  double loss = 0;
  if (grad) grad->resize(out.size());
  for (size_t k = 0; k < out.size(); ++k) {
    const float diff = out[k] - target[k];
    loss += 0.5 * diff * diff;
    if (grad) (*grad)[k] = diff / static_cast<float>(out.size());
  }
  return static_cast<float>(loss / out.size());
}

void InitLayer(int layer, int d, float* w) {
  std::mt19937 rng(1000 + layer);
  std::normal_distribution<float> dist(0.f, 1.2f / std::sqrt(float(d)));
  for (size_t k = 0; k < static_cast<size_t>(d) * d; ++k) w[k] = dist(rng);
}

// Moves a layer between where the daemon put it and host memory: the same
// pointer on sim; device memory behind a cudaMemcpy on cuda.
struct LayerIo {
  bool cuda = false;
  std::vector<float> staging;
  float* ToHost(void* data, size_t floats) {
    if (!cuda) return static_cast<float*>(data);
    staging.resize(floats);
#ifdef TIDEPOOL_HAVE_CUDA
    Check(cudaMemcpy(staging.data(), data, floats * 4, cudaMemcpyDeviceToHost));
#endif
    return staging.data();
  }
  void Back(void* data, const float* host, size_t floats) {
    if (!cuda) return;
#ifdef TIDEPOOL_HAVE_CUDA
    Check(cudaMemcpy(data, host, floats * 4, cudaMemcpyHostToDevice));
#endif
  }
#ifdef TIDEPOOL_HAVE_CUDA
  static void Check(cudaError_t e) {
    if (e != cudaSuccess) {
      std::cerr << "CUDA: " << cudaGetErrorString(e) << "\n";
      std::exit(3);
    }
  }
#endif
};

std::string Bytes(uint64_t b) {
  if (b >= (1ull << 30))
    return absl::StrFormat("%.2f GiB", b / double(1 << 30));
  return absl::StrFormat("%.1f MiB", b / double(1 << 20));
}

int Fail(const absl::Status& s) {
  std::cerr << "stream_trainer: " << s << "\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int layers = absl::GetFlag(FLAGS_layers);
  const int d = absl::GetFlag(FLAGS_width);
  const int batch = absl::GetFlag(FLAGS_batch);
  const int steps = absl::GetFlag(FLAGS_steps);
  const float lr = static_cast<float>(absl::GetFlag(FLAGS_lr));
  const size_t floats = static_cast<size_t>(d) * d;

  tidepool::SessionOptions options;
  options.socket = absl::GetFlag(FLAGS_socket);
  options.policy = tidepool::Policy::kCpu;
  options.client_name = "stream_trainer";
  auto opened = tidepool::Session::Open(options);
  if (!opened.ok()) return Fail(opened.status());
  tidepool::Session& s = **opened;
  const uint64_t model_bytes = static_cast<uint64_t>(layers) * floats * 4;
  const uint64_t capacity = s.device().capacity_bytes;
  std::printf(
      "tidepool demo: %d-layer MLP, width %d, %s of weights on %s "
      "(%s backend, device pool %s: %.1fx oversubscribed)\n",
      layers, d, Bytes(model_bytes).c_str(), s.device().name.c_str(),
      s.device().backend.c_str(), Bytes(capacity).c_str(),
      double(model_bytes) / capacity);
  if (model_bytes < absl::GetFlag(FLAGS_min_ratio) * capacity) {
    return Fail(absl::FailedPreconditionError(absl::StrFormat(
        "the model must be at least %.1fx the device pool; raise --layers",
        absl::GetFlag(FLAGS_min_ratio))));
  }

  std::vector<tidepool::TensorSpec> specs;
  for (int l = 0; l < layers; ++l) {
    specs.push_back({absl::StrFormat("layer%d.weight", l),
                     tidepool::DType::kF32,
                     {d, d},
                     tidepool::Group::kParam});
  }
  auto tensors = s.Register(specs);
  if (!tensors.ok()) return Fail(tensors.status());
  LayerIo io{.cuda = s.device().backend == "cuda"};
  std::vector<std::vector<float>> reference;
  for (int l = 0; l < layers; ++l) {
    const uint64_t id = (*tensors)[l].id;
    auto got = s.Acquire({&id, 1}, tidepool::AccessMode::kReadWrite);
    if (!got.ok()) return Fail(got.status());
    float* w = io.ToHost((*got)[0].data, floats);
    InitLayer(l, d, w);
    io.Back((*got)[0].data, w, floats);
    if (absl::GetFlag(FLAGS_verify)) reference.emplace_back(w, w + floats);
    if (auto r = s.Release({&id, 1}, tidepool::TensorState::kHold); !r.ok()) {
      return Fail(r);
    }
  }

  std::mt19937 rng(7);
  std::normal_distribution<float> dist;
  std::vector<float> input(static_cast<size_t>(batch) * d),
      target(input.size());
  for (auto& v : input) v = dist(rng);
  for (auto& v : target) v = 0.5f * std::tanh(dist(rng));

  // acts[l] = input of layer l; acts[layers] = output.
  std::vector<std::vector<float>> acts(layers + 1), ref_acts(layers + 1);
  std::vector<float> dy, dx;
  const auto start = Clock::now();
  float loss = 0, ref_loss = 0;
  for (int step = 0; step < steps; ++step) {
    acts[0] = input;
    for (int l = 0; l < layers; ++l) {
      const uint64_t id = (*tensors)[l].id;
      auto got = s.Acquire({&id, 1}, tidepool::AccessMode::kRead);
      if (!got.ok()) return Fail(got.status());
      Forward(io.ToHost((*got)[0].data, floats), acts[l], acts[l + 1], d,
              batch);
      if (auto r = s.Release({&id, 1}, tidepool::TensorState::kHold); !r.ok()) {
        return Fail(r);
      }
    }
    loss = Loss(acts[layers], target, &dy);
    for (int l = layers - 1; l >= 0; --l) {
      const uint64_t id = (*tensors)[l].id;
      auto got = s.Acquire({&id, 1}, tidepool::AccessMode::kReadWrite);
      if (!got.ok()) return Fail(got.status());
      float* w = io.ToHost((*got)[0].data, floats);
      BackwardAndUpdate(w, acts[l], acts[l + 1], dy, dx, d, batch, lr);
      io.Back((*got)[0].data, w, floats);
      dy.swap(dx);
      if (auto r = s.Release({&id, 1}, tidepool::TensorState::kHoldAfterBwd);
          !r.ok()) {
        return Fail(r);
      }
    }
    if (absl::GetFlag(FLAGS_verify)) {
      ref_acts[0] = input;
      for (int l = 0; l < layers; ++l) {
        Forward(reference[l].data(), ref_acts[l], ref_acts[l + 1], d, batch);
      }
      ref_loss = Loss(ref_acts[layers], target, &dy);
      for (int l = layers - 1; l >= 0; --l) {
        BackwardAndUpdate(reference[l].data(), ref_acts[l], ref_acts[l + 1], dy,
                          dx, d, batch, lr);
        dy.swap(dx);
      }
    }
    auto st = s.Stats();
    if (!st.ok()) return Fail(st.status());
    std::printf("step %d/%d  loss %.6f%s  moved in %s, out %s, evictions %lu\n",
                step + 1, steps, loss,
                absl::GetFlag(FLAGS_verify)
                    ? absl::StrFormat(" (in-memory %.6f)", ref_loss).c_str()
                    : "",
                Bytes(st->bytes_to_device).c_str(),
                Bytes(st->bytes_to_host).c_str(),
                static_cast<unsigned long>(st->evictions));
    std::fflush(stdout);
  }
  const double seconds =
      std::chrono::duration<double>(Clock::now() - start).count();

  // Compare every weight with the in-memory run.
  double max_diff = 0;
  if (absl::GetFlag(FLAGS_verify)) {
    for (int l = 0; l < layers; ++l) {
      const uint64_t id = (*tensors)[l].id;
      auto got = s.Acquire({&id, 1}, tidepool::AccessMode::kRead);
      if (!got.ok()) return Fail(got.status());
      const float* w = io.ToHost((*got)[0].data, floats);
      for (size_t k = 0; k < floats; ++k) {
        max_diff =
            std::max<double>(max_diff, std::fabs(w[k] - reference[l][k]));
      }
      if (auto r = s.Release({&id, 1}, tidepool::TensorState::kHold); !r.ok()) {
        return Fail(r);
      }
    }
  }
  auto st = s.Stats();
  if (!st.ok()) return Fail(st.status());
  std::printf(
      "\nsummary: %d steps in %.2f s (%.2f s/step)\n"
      "  model %s, device pool %s (%.1fx)\n"
      "  moved host->device %s, device->host %s\n"
      "  evictions %lu (%lu clean, free of transfer)\n"
      "  peak device use %s of %s\n",
      steps, seconds, seconds / steps, Bytes(model_bytes).c_str(),
      Bytes(capacity).c_str(), double(model_bytes) / capacity,
      Bytes(st->bytes_to_device).c_str(), Bytes(st->bytes_to_host).c_str(),
      static_cast<unsigned long>(st->evictions),
      static_cast<unsigned long>(st->clean_evictions),
      Bytes(st->peak_device_bytes).c_str(), Bytes(capacity).c_str());
  if (absl::GetFlag(FLAGS_verify)) {
    const bool same = max_diff == 0;
    std::printf("  weights vs in-memory training: max |diff| %.3g -> %s\n",
                max_diff, same ? "identical" : "MISMATCH");
    if (!same) return 1;
  }
  return 0;
}
