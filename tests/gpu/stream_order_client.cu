// A client that never synchronises its CPU with the GPU while it works: for
// every layer it acquires on its own stream, launches a kernel that checks
// and rewrites the layer in device memory, and releases on the stream. Only
// the interprocess events order its kernels against the daemon's copies;
// any ordering bug shows up as a wrong word. Exits 0 when all words matched.
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "tidepool/session.h"

ABSL_FLAG(std::string, socket, "", "daemon socket");
ABSL_FLAG(int, layers, 64, "layers");
ABSL_FLAG(int64_t, layer_bytes, 32 << 20, "bytes per layer");
ABSL_FLAG(int, steps, 3, "steps");

namespace {

__device__ unsigned Expected(unsigned layer, size_t i, unsigned version) {
  return static_cast<unsigned>(i * 2654435761u) ^ (layer << 20) ^ version;
}

// Checks the layer holds `version` and, when `next` differs, writes `next`.
__global__ void CheckAndRewrite(unsigned* words, size_t n, unsigned layer,
                                unsigned version, unsigned next,
                                unsigned long long* bad) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    if (version != 0xffffffffu && words[i] != Expected(layer, i, version)) {
      atomicAdd(bad, 1ull);
    }
    if (next != version) words[i] = Expected(layer, i, next);
  }
}

int Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(3);
  }
  return 0;
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "stream_order_client: %s\n", s.ToString().c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  tidepool::SessionOptions options;
  options.socket = absl::GetFlag(FLAGS_socket);
  options.policy = tidepool::Policy::kCpu;
  auto session = tidepool::Session::Open(options);
  if (!session.ok()) return Fail(session.status());
  tidepool::Session& s = **session;
  const int layers = absl::GetFlag(FLAGS_layers);
  const int64_t words = absl::GetFlag(FLAGS_layer_bytes) / 4;
  std::vector<tidepool::TensorSpec> specs;
  for (int l = 0; l < layers; ++l) {
    specs.push_back({absl::StrCat("l", l),
                     tidepool::DType::kI32,
                     {words},
                     tidepool::Group::kParam});
  }
  auto t = s.Register(specs);
  if (!t.ok()) return Fail(t.status());
  cudaStream_t stream;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  unsigned long long* bad;
  Check(cudaMalloc(&bad, sizeof(*bad)), "cudaMalloc");
  Check(cudaMemsetAsync(bad, 0, sizeof(*bad), stream), "memset");
  auto pass = [&](int l, tidepool::AccessMode mode, unsigned version,
                  unsigned next, tidepool::TensorState target) -> int {
    const uint64_t id = (*t)[l].id;
    auto got = s.Acquire({&id, 1}, mode, stream);
    if (!got.ok()) return Fail(got.status());
    CheckAndRewrite<<<264, 512, 0, stream>>>(
        static_cast<unsigned*>((*got)[0].data), words, l, version, next, bad);
    Check(cudaGetLastError(), "launch");
    if (auto r = s.Release({&id, 1}, target, stream); !r.ok()) return Fail(r);
    return 0;
  };
  const auto RW = tidepool::AccessMode::kReadWrite;
  const auto R = tidepool::AccessMode::kRead;
  for (int l = 0; l < layers; ++l) {
    if (pass(l, RW, 0xffffffffu, 0, tidepool::TensorState::kHold)) return 2;
  }
  const int steps = absl::GetFlag(FLAGS_steps);
  for (int step = 0; step < steps; ++step) {
    for (int l = 0; l < layers; ++l) {
      if (pass(l, R, step, step, tidepool::TensorState::kHold)) return 2;
    }
    for (int l = layers - 1; l >= 0; --l) {
      if (pass(l, RW, step, step + 1, tidepool::TensorState::kHoldAfterBwd)) {
        return 2;
      }
    }
  }
  for (int l = 0; l < layers; ++l) {
    if (pass(l, R, steps, steps, tidepool::TensorState::kHold)) return 2;
  }
  unsigned long long host_bad = 0;
  Check(cudaMemcpyAsync(&host_bad, bad, sizeof(host_bad),
                        cudaMemcpyDeviceToHost, stream),
        "copy");
  Check(cudaStreamSynchronize(stream), "sync");
  auto st = s.Stats();
  if (!st.ok()) return Fail(st.status());
  std::printf("STATS to_device=%lu to_host=%lu evictions=%lu bad_words=%llu\n",
              (unsigned long)st->bytes_to_device,
              (unsigned long)st->bytes_to_host, (unsigned long)st->evictions,
              host_bad);
  return host_bad == 0 ? 0 : 1;
}
