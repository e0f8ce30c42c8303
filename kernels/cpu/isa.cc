#include "kernels/cpu/isa.h"

#include <atomic>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/simd_kernels.h"

namespace tidepool::kernels {
namespace {

// kAuto when nothing is forced.
std::atomic<Isa> g_forced{Isa::kAuto};

bool CpuHas(Isa isa) {
#if defined(__x86_64__)
  // __builtin_cpu_supports also checks that the OS saves the wide registers
  // (XGETBV), so a kernel without AVX-512 state support reads "no".
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    default:
      return true;
  }
#else
  return isa == Isa::kScalar || isa == Isa::kAuto;
#endif
}

}  // namespace

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAuto:
      return "auto";
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "?";
}

bool IsaSupported(Isa isa) {
  static const bool avx2 = CpuHas(Isa::kAvx2) && internal::Avx2Kernels();
  static const bool avx512 = CpuHas(Isa::kAvx512) && internal::Avx512Kernels();
  switch (isa) {
    case Isa::kAvx2:
      return avx2;
    case Isa::kAvx512:
      return avx512;
    default:
      return true;
  }
}

Isa BestIsa() {
  if (IsaSupported(Isa::kAvx512)) return Isa::kAvx512;
  if (IsaSupported(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

Isa ActiveIsa() {
  const Isa forced = g_forced.load(std::memory_order_relaxed);
  return forced == Isa::kAuto ? BestIsa() : forced;
}

absl::Status SetIsaForTesting(Isa isa) {
  if (!IsaSupported(isa)) {
    return absl::FailedPreconditionError(
        absl::StrCat("this CPU cannot run the ", IsaName(isa), " path"));
  }
  g_forced.store(isa, std::memory_order_relaxed);
  return absl::OkStatus();
}

namespace internal {

const IsaKernels& ActiveKernels() {
  switch (ActiveIsa()) {
    case Isa::kAvx512:
      return *Avx512Kernels();
    case Isa::kAvx2:
      return *Avx2Kernels();
    default:
      return ScalarKernels();
  }
}

}  // namespace internal
}  // namespace tidepool::kernels
