#include "common/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace tidepool {

SharedMapping::SharedMapping(SharedMapping&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

SharedMapping& SharedMapping::operator=(SharedMapping&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SharedMapping::~SharedMapping() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

namespace {

absl::StatusOr<SharedMapping> MapWith(int fd, size_t size, int prot);

}  // namespace

absl::StatusOr<SharedMapping> SharedMapping::Map(int fd, size_t size) {
  return MapWith(fd, size, PROT_READ | PROT_WRITE);
}

absl::StatusOr<SharedMapping> SharedMapping::MapReadOnly(int fd, size_t size) {
  return MapWith(fd, size, PROT_READ);
}

namespace {

absl::StatusOr<SharedMapping> MapWith(int fd, size_t size, int prot) {
  if (size == 0) return absl::InvalidArgumentError("cannot map 0 bytes");
  // A file shorter than `size` would fault on access instead of failing
  // here; the daemon's memfds are sealed, so their size is the truth.
  auto actual = FdSize(fd);
  if (!actual.ok()) return actual.status();
  if (*actual < size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot map ", size, " bytes of a ", *actual, "-byte file"));
  }
  void* p = ::mmap(nullptr, size, prot, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    return absl::ErrnoToStatus(errno, absl::StrCat("mmap of ", size, " bytes"));
  }
  return SharedMapping::Adopt(static_cast<uint8_t*>(p), size);
}

}  // namespace

absl::StatusOr<UniqueFd> CreateMemfd(const std::string& name, size_t size) {
  UniqueFd fd(::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "memfd_create " + name);
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return absl::ErrnoToStatus(errno,
                               absl::StrCat("ftruncate ", name, " to ", size));
  }
  // Without these a client's ftruncate(fd, 0) would SIGBUS the daemon and
  // every other process mapping the file.
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) {
    return absl::ErrnoToStatus(errno, "sealing " + name);
  }
  return fd;
}

absl::Status SealAgainstWrites(int fd) {
  if (::fcntl(fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) != 0) {
    return absl::ErrnoToStatus(errno, "sealing against writes");
  }
  return absl::OkStatus();
}

ReservedRegion::ReservedRegion(ReservedRegion&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      kind_(other.kind_) {}

ReservedRegion& ReservedRegion::operator=(ReservedRegion&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    kind_ = other.kind_;
  }
  return *this;
}

ReservedRegion::~ReservedRegion() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

namespace {

int ReservedProt(ReservedRegion::Kind kind) {
  return kind == ReservedRegion::kDaemon ? PROT_READ | PROT_WRITE : PROT_NONE;
}

constexpr int kReservedFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;

}  // namespace

absl::StatusOr<ReservedRegion> ReservedRegion::Reserve(size_t size, Kind kind) {
  if (size == 0) return absl::InvalidArgumentError("cannot reserve 0 bytes");
  void* p = ::mmap(nullptr, size, ReservedProt(kind), kReservedFlags, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ErrnoToStatus(errno,
                               absl::StrCat("reserving ", size, " bytes"));
  }
  ReservedRegion r;
  r.data_ = static_cast<uint8_t*>(p);
  r.size_ = size;
  r.kind_ = kind;
  return r;
}

absl::Status ReservedRegion::Check(uint64_t offset, uint64_t bytes) const {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  if (bytes == 0 || offset % page != 0 || bytes % page != 0 || offset > size_ ||
      bytes > size_ - offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        "range [", offset, ", +", bytes,
        ") is not page-aligned inside a region of ", size_, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status ReservedRegion::MapAt(uint64_t offset, uint64_t bytes, int fd) {
  if (absl::Status s = Check(offset, bytes); !s.ok()) return s;
  auto actual = FdSize(fd);
  if (!actual.ok()) return actual.status();
  if (*actual < bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot map ", bytes, " bytes of a ", *actual, "-byte file"));
  }
  void* p = ::mmap(data_ + offset, bytes, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_FIXED, fd, 0);
  if (p == MAP_FAILED) {
    // Each piece is a mapping of its own: ENOMEM is usually the kernel's
    // limit on mappings per process, not memory.
    return absl::ErrnoToStatus(
        errno,
        absl::StrCat("mapping ", bytes, " bytes at offset ", offset,
                     errno == ENOMEM ? " (each chunk is a mapping of its "
                                       "own: raise vm.max_map_count or the "
                                       "chunk size)"
                                     : ""));
  }
  return absl::OkStatus();
}

absl::Status ReservedRegion::Unback(uint64_t offset, uint64_t bytes) {
  void* p = ::mmap(data_ + offset, bytes, ReservedProt(kind_),
                   kReservedFlags | MAP_FIXED, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ErrnoToStatus(
        errno, absl::StrCat("unmapping ", bytes, " bytes at offset ", offset));
  }
  return absl::OkStatus();
}

absl::Status ReservedRegion::Withdraw(uint64_t offset, uint64_t bytes) {
  if (absl::Status s = Check(offset, bytes); !s.ok()) return s;
  // Frees the pages in the memfd itself: a client that still maps it reads
  // zeros (and what it writes there is its own memory from then on).
  if (::madvise(data_ + offset, bytes, MADV_REMOVE) != 0) {
    return absl::ErrnoToStatus(
        errno, absl::StrCat("freeing ", bytes, " bytes at offset ", offset));
  }
  return Unback(offset, bytes);
}

absl::StatusOr<size_t> FdSize(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, "fstat");
  return static_cast<size_t>(st.st_size);
}

}  // namespace tidepool
