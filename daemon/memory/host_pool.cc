#include "daemon/memory/host_pool.h"

#include "common/status_macros.h"

namespace tidepool {

absl::StatusOr<HostPool> HostPool::Create(uint64_t bytes) {
  HostPool pool;
  TP_ASSIGN_OR_RETURN(pool.fd_, CreateMemfd("tidepool-host-pool", bytes));
  TP_ASSIGN_OR_RETURN(pool.mapping_, SharedMapping::Map(pool.fd_.get(), bytes));
  return pool;
}

}  // namespace tidepool
