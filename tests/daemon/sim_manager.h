// A MemoryManager of 64 KiB chunks on one sim device, for the daemon's unit
// tests that drive the manager (or what sits on it) without a daemon.
//
//   std::unique_ptr<MemoryManager> manager = NewSimManager(64 << 20, 1 << 20);
//   ASSERT_NE(manager, nullptr);
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "daemon/backend/sim_backend.h"
#include "daemon/core/memory_manager.h"
#include "gtest/gtest.h"

namespace tidepool {

// Host pool of `host_bytes`, device pool of `pool_bytes`; null (and a test
// failure) if a pool cannot be made.
inline std::unique_ptr<MemoryManager> NewSimManager(uint64_t host_bytes,
                                                    uint64_t pool_bytes) {
  auto host = HostPool::Create(host_bytes);
  EXPECT_TRUE(host.ok()) << host.status();
  if (!host.ok()) return nullptr;
  BackendOptions b;
  b.pool_bytes = pool_bytes;
  auto sim = SimBackend::Create(b, host->data(), host->size());
  EXPECT_TRUE(sim.ok()) << sim.status();
  if (!sim.ok()) return nullptr;
  std::vector<std::unique_ptr<DeviceBackend>> devices;
  devices.push_back(std::move(*sim));
  ManagerOptions options;
  options.chunk_size = 64 << 10;
  return std::make_unique<MemoryManager>(options, std::move(*host),
                                         std::move(devices));
}

}  // namespace tidepool
