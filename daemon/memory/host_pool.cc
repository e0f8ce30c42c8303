#include "daemon/memory/host_pool.h"

#include "common/status_macros.h"

namespace tidepool {

absl::StatusOr<HostPool> HostPool::Create(uint64_t bytes) {
  HostPool pool;
  TP_ASSIGN_OR_RETURN(pool.region_,
                      ReservedRegion::Reserve(bytes, ReservedRegion::kDaemon));
  return pool;
}

absl::StatusOr<UniqueFd> HostPool::Back(uint64_t offset, uint64_t bytes) {
  TP_ASSIGN_OR_RETURN(UniqueFd fd, CreateMemfd("tidepool-host-home", bytes));
  TP_RETURN_IF_ERROR(region_.MapAt(offset, bytes, fd.get()));
  return fd;
}

absl::Status HostPool::Withdraw(uint64_t offset, uint64_t bytes) {
  return region_.Withdraw(offset, bytes);
}

}  // namespace tidepool
