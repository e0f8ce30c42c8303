// Test helpers: run a parameterized test once per CPU SIMD path, skipping
// (and saying so) the paths this CPU lacks.
#pragma once

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/isa.h"

namespace tidepool::kernels {

inline std::vector<Isa> AllIsas() {
  return {Isa::kScalar, Isa::kAvx2, Isa::kAvx512};
}

inline std::string IsaParamName(const testing::TestParamInfo<Isa>& info) {
  return IsaName(info.param);
}

// Forces the path named by GetParam() for the test's duration.
class IsaTest : public testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!IsaSupported(GetParam())) {
      GTEST_SKIP() << "this CPU lacks the " << IsaName(GetParam())
                   << " path; skipped";
    }
    ASSERT_TRUE(SetIsaForTesting(GetParam()).ok());
  }
  void TearDown() override { ASSERT_TRUE(SetIsaForTesting(Isa::kAuto).ok()); }
};

}  // namespace tidepool::kernels
