// A real client process for integration tests: registers a model of
// `--layers` layers (tensors of mixed sizes, some larger than a chunk),
// writes a known pattern, then runs `--steps` forward (read, verify) and
// backward (verify, rewrite with the next version) passes, layer by layer,
// and checks every byte. With --placed=N, each step ends with placed
// acquires (Session::AcquireWherePlaced, as an optimizer update would) of
// the first N layers, verified wherever the policy put them. Exits 0 only
// if every byte checked out; prints one "STATS" line for the test to parse.
// With --hold, it acquires a layer and waits to be killed mid-step.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "tidepool/session.h"
#ifdef TIDEPOOL_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

ABSL_FLAG(std::string, socket, "", "daemon socket");
ABSL_FLAG(std::string, policy, "cpu", "cpu or cuda");
ABSL_FLAG(int, layers, 16, "layers");
ABSL_FLAG(int64_t, layer_bytes, 4 << 20, "approximate bytes per layer");
ABSL_FLAG(int, steps, 3, "training steps");
ABSL_FLAG(uint32_t, seed, 1, "pattern seed");
ABSL_FLAG(bool, hold, false, "acquire a layer mid-step and wait to be killed");
ABSL_FLAG(bool, hot_path, true, "acquire/release through shared memory");
ABSL_FLAG(int, placed, 0, "layers read with AcquireWherePlaced each step");

namespace {

using tidepool::AccessMode;
using tidepool::TensorState;

uint32_t Word(uint32_t seed, uint64_t tensor, uint64_t i, uint32_t version) {
  uint64_t x = (seed * 0x9E3779B97F4A7C15ull) ^ (tensor << 40) ^ i;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return static_cast<uint32_t>(x) + version;
}

// Reads and writes tensor bytes wherever the backend put them: host memory
// on sim, device memory on cuda.
class Bytes {
 public:
  explicit Bytes(bool cuda) : cuda_(cuda) {}
  void Read(const void* src, std::vector<uint32_t>& out, size_t bytes) {
    out.resize(bytes / 4);
#ifdef TIDEPOOL_HAVE_CUDA
    if (cuda_) {
      Check(cudaMemcpy(out.data(), src, bytes, cudaMemcpyDeviceToHost));
      return;
    }
#endif
    std::memcpy(out.data(), src, bytes);
  }
  void Write(void* dst, const std::vector<uint32_t>& in) {
#ifdef TIDEPOOL_HAVE_CUDA
    if (cuda_) {
      Check(cudaMemcpy(dst, in.data(), in.size() * 4, cudaMemcpyHostToDevice));
      return;
    }
#endif
    std::memcpy(dst, in.data(), in.size() * 4);
  }

 private:
#ifdef TIDEPOOL_HAVE_CUDA
  static void Check(cudaError_t e) {
    if (e != cudaSuccess) {
      std::cerr << "CUDA: " << cudaGetErrorString(e) << std::endl;
      std::exit(3);
    }
  }
#endif
  bool cuda_;
};

int Fail(const absl::Status& s) {
  std::cerr << "pattern_client: " << s << std::endl;
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  tidepool::SessionOptions options;
  options.socket = absl::GetFlag(FLAGS_socket);
  options.policy = absl::GetFlag(FLAGS_policy) == "cuda"
                       ? tidepool::Policy::kCuda
                       : tidepool::Policy::kCpu;
  options.client_name = "pattern_client";
  options.hot_path = absl::GetFlag(FLAGS_hot_path);
  auto session = tidepool::Session::Open(options);
  if (!session.ok()) return Fail(session.status());
  tidepool::Session& s = **session;
  const uint32_t seed = absl::GetFlag(FLAGS_seed);
  const int layers = absl::GetFlag(FLAGS_layers);
  const int64_t layer_bytes = absl::GetFlag(FLAGS_layer_bytes);

  // Per layer: a weight (60%), a bias (tiny), a norm (small) and, every
  // fourth layer, an embedding-like tensor 1.5 chunks long.
  std::vector<tidepool::TensorSpec> specs;
  std::vector<std::vector<size_t>> layer_tensors(layers);
  for (int l = 0; l < layers; ++l) {
    auto add = [&](const std::string& name, int64_t words) {
      layer_tensors[l].push_back(specs.size());
      specs.push_back({absl::StrCat("layer", l, ".", name),
                       tidepool::DType::kI32,
                       {std::max<int64_t>(words, 1)},
                       tidepool::Group::kParam});
    };
    add("weight", layer_bytes * 6 / 10 / 4);
    add("bias", 257 + l);
    add("norm", layer_bytes / 40 / 4);
    if (l % 4 == 3) add("big", static_cast<int64_t>(s.chunk_size()) * 3 / 8);
  }
  auto tensors = s.Register(specs);
  if (!tensors.ok()) return Fail(tensors.status());
  Bytes bytes(s.device().backend == "cuda");
  Bytes host_bytes(false);  // placed acquires served in the host homes
  std::vector<uint32_t> buf;
  int64_t mismatches = 0;
  auto fill = [&](size_t t, uint32_t version) {
    buf.resize((*tensors)[t].bytes / 4);
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = Word(seed, t, i, version);
  };
  auto verify = [&](size_t t, const void* data, uint32_t version,
                    Bytes* from = nullptr) {
    (from ? from : &bytes)->Read(data, buf, (*tensors)[t].bytes);
    for (size_t i = 0; i < buf.size(); ++i) {
      if (buf[i] != Word(seed, t, i, version)) ++mismatches;
    }
  };
  auto ids_of = [&](int l) {
    std::vector<uint64_t> ids;
    for (size_t t : layer_tensors[l]) ids.push_back((*tensors)[t].id);
    return ids;
  };

  // Initial write: version 0.
  for (int l = 0; l < layers; ++l) {
    const auto ids = ids_of(l);
    auto got = s.Acquire(ids, AccessMode::kReadWrite);
    if (!got.ok()) return Fail(got.status());
    for (size_t k = 0; k < ids.size(); ++k) {
      fill(layer_tensors[l][k], 0);
      bytes.Write((*got)[k].data, buf);
    }
    if (auto r = s.Release(ids, TensorState::kHold); !r.ok()) return Fail(r);
  }
  if (absl::GetFlag(FLAGS_hold)) {
    auto got = s.Acquire(ids_of(0), AccessMode::kReadWrite);
    if (!got.ok()) return Fail(got.status());
    std::cout << "HOLDING" << std::endl;
    for (;;) ::pause();
  }
  const int steps = absl::GetFlag(FLAGS_steps);
  const int placed = std::min(absl::GetFlag(FLAGS_placed), layers);
  uint64_t placed_on_device = 0;
  uint64_t placed_on_host = 0;
  for (int step = 0; step < steps; ++step) {
    const uint32_t v = static_cast<uint32_t>(step);
    for (int l = 0; l < layers; ++l) {  // forward: read only
      const auto ids = ids_of(l);
      auto got = s.Acquire(ids, AccessMode::kRead);
      if (!got.ok()) return Fail(got.status());
      for (size_t k = 0; k < ids.size(); ++k) {
        verify(layer_tensors[l][k], (*got)[k].data, v);
      }
      if (auto r = s.Release(ids, TensorState::kHold); !r.ok()) return Fail(r);
    }
    for (int l = layers - 1; l >= 0; --l) {  // backward: read and update
      const auto ids = ids_of(l);
      auto got = s.Acquire(ids, AccessMode::kReadWrite);
      if (!got.ok()) return Fail(got.status());
      for (size_t k = 0; k < ids.size(); ++k) {
        verify(layer_tensors[l][k], (*got)[k].data, v);
        fill(layer_tensors[l][k], v + 1);
        bytes.Write((*got)[k].data, buf);
      }
      if (auto r = s.Release(ids, TensorState::kHoldAfterBwd); !r.ok()) {
        return Fail(r);
      }
    }
    for (int l = 0; l < placed; ++l) {  // "optimizer updates": read only
      const auto ids = ids_of(l);
      auto got = s.AcquireWherePlaced(ids, AccessMode::kRead);
      if (!got.ok()) return Fail(got.status());
      ++(got->on_device ? placed_on_device : placed_on_host);
      for (size_t k = 0; k < ids.size(); ++k) {
        verify(layer_tensors[l][k], got->tensors[k].data, v + 1,
               got->on_device ? &bytes : &host_bytes);
      }
      if (auto r = s.Release(ids, TensorState::kHold); !r.ok()) return Fail(r);
    }
  }
  // Final check of every tensor, read-only.
  for (int l = 0; l < layers; ++l) {
    const auto ids = ids_of(l);
    auto got = s.Acquire(ids, AccessMode::kRead);
    if (!got.ok()) return Fail(got.status());
    for (size_t k = 0; k < ids.size(); ++k) {
      verify(layer_tensors[l][k], (*got)[k].data, static_cast<uint32_t>(steps));
    }
    if (auto r = s.Release(ids, TensorState::kHold); !r.ok()) return Fail(r);
  }
  auto stats = s.Stats();
  if (!stats.ok()) return Fail(stats.status());
  uint64_t model_bytes = 0;
  for (const auto& t : *tensors) model_bytes += t.bytes;
  std::cout << "STATS model_bytes=" << model_bytes
            << " device_capacity=" << s.device().capacity_bytes
            << " to_device=" << stats->bytes_to_device
            << " to_host=" << stats->bytes_to_host
            << " evictions=" << stats->evictions
            << " clean_evictions=" << stats->clean_evictions
            << " placed_on_device=" << placed_on_device
            << " placed_on_host=" << placed_on_host
            << " mismatches=" << mismatches << std::endl;
  if (auto c = s.Close(); !c.ok()) return Fail(c);
  return mismatches == 0 ? 0 : 1;
}
