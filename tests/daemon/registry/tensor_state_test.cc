#include "daemon/registry/tensor_state.h"

#include <set>
#include <utility>

#include "gtest/gtest.h"

namespace tidepool {
namespace {

constexpr TensorState kAll[] = {TensorState::kFree, TensorState::kCompute,
                                TensorState::kHold, TensorState::kHoldAfterBwd,
                                TensorState::kReadyForReduce};

// The legal transitions of the design, listed independently of the code.
const std::set<std::pair<TensorState, TensorState>>& Legal() {
  using S = TensorState;
  static const auto* legal = new std::set<std::pair<S, S>>{
      {S::kFree, S::kCompute},
      {S::kHold, S::kCompute},
      {S::kHoldAfterBwd, S::kCompute},
      {S::kCompute, S::kHold},
      {S::kCompute, S::kHoldAfterBwd},
      {S::kCompute, S::kFree},
      {S::kHoldAfterBwd, S::kReadyForReduce},
      {S::kReadyForReduce, S::kHold},
      {S::kHold, S::kFree},
      {S::kHoldAfterBwd, S::kFree},
      {S::kReadyForReduce, S::kFree},
  };
  return *legal;
}

TEST(TensorStateTest, EveryTransitionIsLegalExactlyWhenTheDesignSaysSo) {
  int legal = 0;
  for (TensorState from : kAll) {
    for (TensorState to : kAll) {
      const absl::Status s = CheckTransition(from, to);
      const bool expected = Legal().count({from, to}) > 0;
      EXPECT_EQ(s.ok(), expected)
          << TensorStateName(from) << " -> " << TensorStateName(to);
      if (!s.ok()) {
        EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
        EXPECT_NE(s.message().find(TensorStateName(from)),
                  absl::string_view::npos);
        EXPECT_NE(s.message().find(TensorStateName(to)),
                  absl::string_view::npos);
      }
      legal += s.ok();
    }
  }
  EXPECT_EQ(legal, static_cast<int>(Legal().size()));
}

TEST(TensorStateTest, CommonMistakesAreNamed) {
  EXPECT_NE(CheckTransition(TensorState::kCompute, TensorState::kCompute)
                .message()
                .find("already acquired"),
            absl::string_view::npos);
  EXPECT_NE(CheckTransition(TensorState::kHold, TensorState::kHold)
                .message()
                .find("double release"),
            absl::string_view::npos);
}

}  // namespace
}  // namespace tidepool
