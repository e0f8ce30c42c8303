// A trainer built outside the tidepool tree against an installed
// libtidepool (find_package or pkg-config; tests/packaging): it opens a
// session on the daemon whose socket it is given, moves bytes through the
// daemon's pools and sums them with the installed optimizer library's Gloo
// communicator. Prints "trainer ok" and exits 0 when every byte is where it
// should be.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "tidepool/communicator.h"
#include "tidepool/session.h"

namespace {

int Fail(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "trainer: %s: %s\n", what.c_str(),
               status.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: trainer SOCKET GLOO_STORE_DIR\n");
    return 2;
  }
  tidepool::SessionOptions options;
  options.socket = argv[1];
  options.policy = tidepool::Policy::kCpu;
  options.client_name = "packaging-consumer";
  auto session = tidepool::Session::Open(options);
  if (!session.ok()) return Fail("Open", session.status());

  constexpr int64_t kCount = 1 << 16;
  auto tensors = (*session)->Register(
      {{"w", tidepool::DType::kF32, {kCount}, tidepool::Group::kParam}});
  if (!tensors.ok()) return Fail("Register", tensors.status());
  const uint64_t id = (*tensors)[0].id;

  // Write on the device copy, release, then read the host home: the bytes
  // must have travelled back through the daemon.
  auto got = (*session)->Acquire({&id, 1}, tidepool::AccessMode::kReadWrite);
  if (!got.ok()) return Fail("Acquire", got.status());
  float* w = static_cast<float*>((*got)[0].data);
  for (int64_t i = 0; i < kCount; ++i) w[i] = static_cast<float>(i % 1000);
  absl::Status released =
      (*session)->Release({&id, 1}, tidepool::TensorState::kHold);
  if (!released.ok()) return Fail("Release", released);

  auto host =
      (*session)->AcquireOnHost({&id, 1}, tidepool::AccessMode::kReadWrite);
  if (!host.ok()) return Fail("AcquireOnHost", host.status());
  float* h = static_cast<float*>((*host)[0].data);
  for (int64_t i = 0; i < kCount; ++i) {
    if (h[i] != static_cast<float>(i % 1000)) {
      std::fprintf(stderr, "trainer: element %lld is %f on the host\n",
                   static_cast<long long>(i), h[i]);
      return 1;
    }
  }

  // The optimizer library: a one-rank Gloo all-reduce over the host copy
  // leaves it unchanged.
  tidepool::GlooOptions gloo;
  gloo.store_dir = argv[2];
  auto comm = tidepool::OpenGlooCommunicator(gloo);
  if (!comm.ok()) return Fail("OpenGlooCommunicator", comm.status());
  absl::Status reduced =
      (*comm)->AllReduceSum(h, kCount, tidepool::DType::kF32);
  if (!reduced.ok()) return Fail("AllReduceSum", reduced);
  if (h[999] != 999.0f) {
    std::fprintf(stderr, "trainer: all-reduce changed 999 into %f\n", h[999]);
    return 1;
  }
  released = (*session)->Release({&id, 1}, tidepool::TensorState::kFree);
  if (!released.ok()) return Fail("Release (host)", released);

  auto stats = (*session)->Stats();
  if (!stats.ok()) return Fail("Stats", stats.status());
  std::printf("trainer ok: %s backend, %llu bytes to the device, %llu back\n",
              (*session)->device().backend.c_str(),
              static_cast<unsigned long long>(stats->bytes_to_device),
              static_cast<unsigned long long>(stats->bytes_to_host));
  return stats->bytes_to_host > 0 ? 0 : 1;
}
