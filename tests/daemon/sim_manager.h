// A MemoryManager on one sim device, for the daemon's unit tests that drive
// the manager (or what sits on it) without a daemon.
//
//   std::unique_ptr<MemoryManager> manager = NewSimManager(64 << 20, 1 << 20);
//   ASSERT_NE(manager, nullptr);
//
//   SimManager sim = NewSimManager({.pool_bytes = 8 << 20,
//                                   .chunk_size = 4 << 20,
//                                   .link_gbps = 0.05});
//   ASSERT_NE(sim.manager, nullptr);
//   sim.device[0] ...;  // the device pool's bytes, as the test may check them
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "daemon/backend/sim_backend.h"
#include "daemon/core/memory_manager.h"
#include "gtest/gtest.h"

namespace tidepool {

struct SimManagerSpec {
  uint64_t host_bytes = 64 << 20;
  uint64_t pool_bytes = 16 << 20;
  uint64_t chunk_size = 64 << 10;  // overrides options.chunk_size
  double link_gbps = 0;            // the sim link's speed; 0: unthrottled
  ManagerOptions options = {};
};

struct SimManager {
  std::unique_ptr<MemoryManager> manager;  // null if a pool cannot be made
  uint8_t* host = nullptr;                 // the host pool's memory
  uint8_t* device = nullptr;               // the sim device pool's memory
};

// A manager as `spec` says; a null manager (and a test failure) if a pool
// cannot be made.
inline SimManager NewSimManager(SimManagerSpec spec) {
  SimManager sim;
  auto host = HostPool::Create(spec.host_bytes);
  EXPECT_TRUE(host.ok()) << host.status();
  if (!host.ok()) return sim;
  BackendOptions b;
  b.pool_bytes = spec.pool_bytes;
  b.sim_link_gbps = spec.link_gbps;
  auto backend = SimBackend::Create(b, host->data(), host->size());
  EXPECT_TRUE(backend.ok()) << backend.status();
  if (!backend.ok()) return sim;
  sim.host = host->data();
  sim.device = (*backend)->HostVisibleDeviceMemory();
  std::vector<std::unique_ptr<DeviceBackend>> devices;
  devices.push_back(std::move(*backend));
  spec.options.chunk_size = spec.chunk_size;
  sim.manager = std::make_unique<MemoryManager>(spec.options, std::move(*host),
                                                std::move(devices));
  return sim;
}

// 64 KiB chunks, a host pool of `host_bytes`, a device pool of `pool_bytes`.
inline std::unique_ptr<MemoryManager> NewSimManager(uint64_t host_bytes,
                                                    uint64_t pool_bytes) {
  return NewSimManager({.host_bytes = host_bytes, .pool_bytes = pool_bytes})
      .manager;
}

}  // namespace tidepool
