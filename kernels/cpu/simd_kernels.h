// Internal: the per-ISA kernel tables behind the public CPU API. Each table
// is compiled in its own file with target attributes, so only the chosen
// path ever executes wide instructions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/adamw_constants.h"
#include "kernels/cpu/dtype.h"
#include "kernels/cpu/isa.h"

namespace tidepool::kernels::internal {

using AdamWFn = void (*)(const AdamWConstants& c, float* master, float* m,
                         float* v, const void* grad, void* param_out, size_t n);
using ToF32Fn = void (*)(const void* src, float* dst, size_t n);
using FromF32Fn = void (*)(const float* src, void* dst, size_t n);
using SumSquaresFn = double (*)(const void* src, size_t n);

// Tables are indexed by DType value; adamw's second index is the
// param_out type with the kF32 slot meaning "no param_out".
struct IsaKernels {
  AdamWFn adamw[3][3];
  ToF32Fn to_f32[3];
  FromF32Fn from_f32[3];
  SumSquaresFn sum_squares[3];
};

const IsaKernels& ScalarKernels();
// nullptr where the build has no such path (not x86-64).
const IsaKernels* Avx2Kernels();
const IsaKernels* Avx512Kernels();

// The table for ActiveIsa().
const IsaKernels& ActiveKernels();

inline int Index(DType d) { return static_cast<int>(d); }

}  // namespace tidepool::kernels::internal
