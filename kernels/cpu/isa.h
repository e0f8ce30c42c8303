// Run-time choice of the SIMD path the CPU kernels use.
//
// The best path the CPU supports is picked once (cpuid, plus the OS's
// XSAVE support for the wider registers). Tests force each path in turn:
//
//   if (IsaSupported(Isa::kAvx2)) {
//     ASSERT_TRUE(SetIsaForTesting(Isa::kAvx2).ok());
//     ...  // every kernel now runs its AVX2 path
//     SetIsaForTesting(Isa::kAuto).IgnoreError();
//   }
#pragma once

#include "absl/status/status.h"

namespace tidepool::kernels {

enum class Isa {
  kAuto = 0,  // the best supported path (only meaningful for forcing)
  kScalar,    // portable C++, any x86-64 or other CPU
  kAvx2,      // AVX2 + FMA + F16C (Haswell, Zen 1 and later)
  kAvx512,    // AVX-512 F/BW/VL (Skylake-SP, Zen 4 and later)
};

const char* IsaName(Isa isa);

// Whether this CPU (and OS) can run `isa`. kScalar and kAuto are always true.
bool IsaSupported(Isa isa);

// The best path this CPU supports.
Isa BestIsa();

// The path the kernels use now: the forced one, else BestIsa().
Isa ActiveIsa();

// Forces every CPU kernel onto `isa` (kAuto undoes it). Process-wide; meant
// for tests and benchmarks. FailedPrecondition if the CPU lacks `isa`.
absl::Status SetIsaForTesting(Isa isa);

}  // namespace tidepool::kernels
