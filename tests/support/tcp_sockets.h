// This process's TCP sockets (Gloo's pairs), for communicator tests: what
// they received, a cap on their kernel buffers, and the values the
// late-peer reduce-scatter test (gloo_communicator_test) and its peer
// process (optimizer_rank --late-reduce-scatter) send.
//
//   uint64_t before = tidepool::testing::TcpBytesReceived();
//   tidepool::testing::CapTcpBuffers(64 << 10);  // after Gloo connected
//   float x = tidepool::testing::LateReduceScatterValue(rank, i, round);
#pragma once

#include <cstddef>
#include <cstdint>

namespace tidepool::testing {

// Bytes received over all of this process's TCP sockets.
uint64_t TcpBytesReceived();

// Caps the kernel buffers of this process's TCP sockets, so that a send to
// a peer that is not reading stays mostly in the sender's memory.
void CapTcpBuffers(int bytes);

// Element i of rank r's reduce-scatter input in round k (small integers:
// every sum is exact).
inline float LateReduceScatterValue(int r, size_t i, int k) {
  return (r + 1) * float((i * 7 + r + k) % 13) - 6;
}

}  // namespace tidepool::testing
