// The descriptor structs that GPU launches read from device memory, shared
// by the public headers and the kernels (free of Abseil so nvcc can parse
// it).
//
//   AdamWChunk c{master, m, v, grad, param_bf16, n};  // then copy to device
#pragma once

#include <cstdint>

namespace tidepool::kernels {

// One chunk of a fused AdamW launch. The array of these must be in device
// memory (or host memory the device can read, e.g. mapped pinned memory).
struct AdamWChunk {
  float* master;
  float* m;
  float* v;
  const void* grad;  // grad_dtype of the launch
  void* param_out;   // param_dtype of the launch; nullptr: not written
  int64_t n;
};
static_assert(sizeof(AdamWChunk) == 48, "layout shared with the kernel");

// One buffer of a sum-of-squares launch; the array lives in device memory.
struct NormBuffer {
  const void* data;
  int64_t n;
};
static_assert(sizeof(NormBuffer) == 16, "layout shared with the kernel");

}  // namespace tidepool::kernels
