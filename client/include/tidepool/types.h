// Vocabulary shared by libtidepool and tidepoold: placement policies, tensor
// dtypes and groups, access modes and the tensor state machine's states.
//
//   tidepool::TensorSpec spec{"layer0.weight", tidepool::DType::kBF16,
//                             {4096, 4096}, tidepool::Group::kParam};
//   size_t bytes = tidepool::DTypeSize(spec.dtype) * 4096 * 4096;
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tidepool {

// Where a session's chunks live (see docs/architecture.md).
enum class Policy {
  kCuda,    // everything resident on the GPU; refuses what does not fit
  kCpu,     // host home, on the GPU only while acquired (and until evicted)
  kStatic,  // fixed fractions offloaded
  kAuto,    // traced warm-up, then planned eviction and prefetch
};

enum class DType { kF32, kF16, kBF16, kF64, kI32, kI64, kU8, kI8 };

// Chunks hold tensors of one group only.
enum class Group { kParam, kMaster, kOptimState, kGrad, kOther };

enum class AccessMode {
  kRead,       // the chunk's device copy stays clean: eviction is free
  kReadWrite,  // the device copy becomes dirty: eviction writes it back
};

// FREE -> COMPUTE (acquire) -> HOLD | HOLD_AFTER_BWD | FREE (release);
// HOLD* -> COMPUTE; HOLD_AFTER_BWD -> READY_FOR_REDUCE -> HOLD.
enum class TensorState {
  kFree,
  kCompute,
  kHold,
  kHoldAfterBwd,
  kReadyForReduce,
};

struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  Group group = Group::kOther;
};

inline size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF64:
    case DType::kI64:
      return 8;
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kU8:
    case DType::kI8:
      return 1;
  }
  return 0;
}

}  // namespace tidepool
