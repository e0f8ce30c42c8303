// Element types the optimizer kernels read and write.
//
//   DType d = DType::kBF16;
//   size_t bytes = n * DTypeSize(d);  // 2
#pragma once

#include <cstddef>
#include <cstdint>

namespace tidepool::kernels {

enum class DType : uint8_t {
  kF32 = 0,
  kF16 = 1,   // IEEE binary16
  kBF16 = 2,  // bfloat16: the top half of an fp32
};

constexpr size_t DTypeSize(DType d) { return d == DType::kF32 ? 4 : 2; }

constexpr const char* DTypeName(DType d) {
  switch (d) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
  }
  return "?";
}

constexpr bool IsValidDType(DType d) {
  return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16;
}

}  // namespace tidepool::kernels
