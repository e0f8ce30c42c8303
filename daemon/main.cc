// tidepoold: the per-node memory daemon. See docs/operations.md.
#include <glog/logging.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "daemon/config/config.h"
#include "daemon/core/memory_manager.h"
#include "daemon/metrics/exposer.h"
#include "daemon/metrics/tidepool_metrics.h"
#include "daemon/server/fd_server.h"
#include "daemon/server/grpc_listener.h"
#include "daemon/server/grpc_service.h"
#include "daemon/server/metrics_bridge.h"

ABSL_FLAG(std::string, config, "", "TOML config file (flags override it)");
ABSL_FLAG(bool, mutex_deadlock_detection, false,
          "check the lock order on every lock (a debugging aid: it takes one "
          "process-wide lock per acquisition; the tests turn it on)");
ABSL_FLAG(std::string, socket, "", "gRPC Unix socket path");
ABSL_FLAG(std::string, fd_socket, "", "fd socket path (default <socket>.fd)");
ABSL_FLAG(std::string, metrics_address, "",
          "host:port of the Prometheus /metrics endpoint");
ABSL_FLAG(std::string, host_pool, "", "host pool size, e.g. 16GiB");
ABSL_FLAG(std::string, chunk_size, "", "chunk size, e.g. 64MiB");
ABSL_FLAG(std::string, device, "",
          "auto | sim | cuda:<ordinal> | GPU-<uuid> (replaces the config's "
          "devices)");
ABSL_FLAG(std::string, sim_capacity, "1GiB",
          "capacity of the sim device (with --device=sim or auto without GPU)");
ABSL_FLAG(double, sim_link_gbps, 0,
          "sim device: modelled link bandwidth in GB/s, 0 = unthrottled");
ABSL_FLAG(int, sim_copy_workers, 0,
          "sim device: threads copying a batch at once (1-16); 0 = the "
          "config's, else as many as cores, at most 4");
ABSL_FLAG(std::string, device_pool, "",
          "cuda device pool size; default: free memory minus 2GiB");
ABSL_FLAG(std::string, default_policy, "", "cuda | cpu (default cpu)");
ABSL_FLAG(int, hot_path_threads, -1,
          "threads serving the sessions' hot paths (0: one per CPU)");
ABSL_FLAG(int, attach_timeout, 0,
          "seconds an opened session may take to attach");

namespace tidepool {
namespace {

absl::StatusOr<DaemonConfig> BuildConfig() {
  DaemonConfig config;
  if (!absl::GetFlag(FLAGS_config).empty()) {
    TP_ASSIGN_OR_RETURN(config, LoadConfigFile(absl::GetFlag(FLAGS_config)));
  }
  auto set_string = [](const std::string& flag, std::string* out) {
    if (!flag.empty()) *out = flag;
  };
  set_string(absl::GetFlag(FLAGS_socket), &config.socket);
  set_string(absl::GetFlag(FLAGS_fd_socket), &config.fd_socket);
  set_string(absl::GetFlag(FLAGS_metrics_address), &config.metrics_address);
  set_string(absl::GetFlag(FLAGS_default_policy), &config.default_policy);
  if (!absl::GetFlag(FLAGS_host_pool).empty()) {
    TP_ASSIGN_OR_RETURN(config.host_pool_bytes,
                        ParseSize(absl::GetFlag(FLAGS_host_pool)));
  }
  if (!absl::GetFlag(FLAGS_chunk_size).empty()) {
    TP_ASSIGN_OR_RETURN(config.chunk_size_bytes,
                        ParseSize(absl::GetFlag(FLAGS_chunk_size)));
  }
  if (absl::GetFlag(FLAGS_attach_timeout) > 0) {
    config.attach_timeout_seconds = absl::GetFlag(FLAGS_attach_timeout);
  }
  // -1: not given (Validate refuses any other negative value).
  if (absl::GetFlag(FLAGS_hot_path_threads) != -1) {
    config.hot_path_threads = absl::GetFlag(FLAGS_hot_path_threads);
  }
  if (config.fd_socket.empty()) config.fd_socket = config.socket + ".fd";
  TP_ASSIGN_OR_RETURN(const uint64_t sim_capacity,
                      ParseSize(absl::GetFlag(FLAGS_sim_capacity)));
  if (!absl::GetFlag(FLAGS_device).empty() || config.devices.empty()) {
    BackendOptions d;
    d.name = absl::GetFlag(FLAGS_device).empty() ? "auto"
                                                 : absl::GetFlag(FLAGS_device);
    if (d.name == "sim") d.backend = "sim";
    config.devices = {d};
  }
  for (auto& d : config.devices) {
    const bool sim =
        d.backend == "sim" || (d.backend == "auto" && !CudaDeviceAvailable());
    if (sim && d.pool_bytes == 0) d.pool_bytes = sim_capacity;
    if (absl::GetFlag(FLAGS_sim_link_gbps) > 0) {
      d.sim_link_gbps = absl::GetFlag(FLAGS_sim_link_gbps);
    }
    if (absl::GetFlag(FLAGS_sim_copy_workers) > 0) {
      d.sim_copy_workers = absl::GetFlag(FLAGS_sim_copy_workers);
    }
    if (!sim && !absl::GetFlag(FLAGS_device_pool).empty()) {
      TP_ASSIGN_OR_RETURN(d.pool_bytes,
                          ParseSize(absl::GetFlag(FLAGS_device_pool)));
    }
  }
  for (size_t i = 0; i < config.devices.size(); ++i) {
    config.devices[i].sim_index = static_cast<int>(i);
  }
  TP_RETURN_IF_ERROR(config.Validate());
  return config;
}

std::string Octal(mode_t mode) { return absl::StrFormat("%04o", mode); }

// Whether `dir` holds nothing but (stale) sockets of ours: then it is the
// daemon's own and may be corrected. A shared directory (/tmp, /run) must
// not be: the daemon, run as root, would lock everyone else out of it.
bool OnlyOurSockets(const std::filesystem::path& dir,
                    const std::set<std::string>& ours) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    // A socket ListenUnix did not get to rename into place.
    const bool unfinished =
        name.starts_with(".") && name.ends_with(".listening");
    if (!ours.contains(name) && !unfinished) return false;
  }
  return !ec;
}

// The sockets' directory decides who reaches them, and who could replace
// them: it must be 0750, the daemon's user's and group's (systemd's
// RuntimeDirectory= makes it so). A missing one is created so (missing
// parents 0755); an existing one of the daemon's own is corrected; any
// other is refused, with what to do.
absl::Status EnsureSocketDirectory(const std::filesystem::path& dir,
                                   const std::set<std::string>& sockets) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT) {
      return absl::ErrnoToStatus(errno, "socket directory " + dir.string());
    }
    std::filesystem::path path;
    for (const auto& part : dir) {
      path /= part;
      const bool last = path == dir;
      if (::mkdir(path.c_str(), last ? 0750 : 0755) == 0) {
        // mkdir applies the umask (0077 here); the mode is meant as is.
        ::chmod(path.c_str(), last ? 0750 : 0755);
      } else if (errno != EEXIST) {
        return absl::PermissionDeniedError(
            absl::StrCat("cannot create socket directory ", path.string(), ": ",
                         std::strerror(errno)));
      }
    }
    if (::stat(dir.c_str(), &st) != 0) {
      return absl::ErrnoToStatus(errno, "socket directory " + dir.string());
    }
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("socket directory ", dir.string(), " is not a directory"));
  }
  const mode_t mode = st.st_mode & 07777;
  if (mode == 0750 && st.st_gid == ::getegid()) return absl::OkStatus();
  const std::string wanted =
      absl::StrCat("it must be mode 0750, owned by the daemon's user (uid ",
                   ::geteuid(), ") and group (gid ", ::getegid(),
                   "), so that only they reach the "
                   "sockets");
  const std::string is =
      absl::StrCat("socket directory ", dir.string(), " has mode ", Octal(mode),
                   ", uid ", st.st_uid, ", gid ", st.st_gid);
  if (st.st_uid != ::geteuid()) {
    return absl::FailedPreconditionError(absl::StrCat(
        is, ": ", wanted, ". Run `chown ", ::geteuid(), ":", ::getegid(), " ",
        dir.string(), " && chmod 0750 ", dir.string(),
        "`, or put the sockets in a directory of their own (socket, "
        "fd_socket)"));
  }
  if (!OnlyOurSockets(dir, sockets)) {
    return absl::FailedPreconditionError(absl::StrCat(
        is, " and holds other files: ", wanted,
        "; put the sockets in a directory of their own (socket, fd_socket), "
        "which the daemon then creates"));
  }
  if ((st.st_gid != ::getegid() && ::chown(dir.c_str(), -1, ::getegid())) ||
      ::chmod(dir.c_str(), 0750) != 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        is, ": ", wanted, "; cannot change it: ", std::strerror(errno)));
  }
  LOG(WARNING) << is << "; changed to 0750 and gid " << ::getegid();
  return absl::OkStatus();
}

absl::Status EnsureSocketDirectories(const DaemonConfig& config) {
  std::map<std::filesystem::path, std::set<std::string>> dirs;
  for (const std::string& socket : {config.socket, config.fd_socket}) {
    const std::filesystem::path path =
        std::filesystem::absolute(std::filesystem::path(socket));
    dirs[path.parent_path()].insert(path.filename().string());
  }
  for (const auto& [dir, sockets] : dirs) {
    TP_RETURN_IF_ERROR(EnsureSocketDirectory(dir, sockets));
  }
  return absl::OkStatus();
}

ManagerOptions LimitsOf(const DaemonConfig& config, ManagerOptions options) {
  options.max_sessions = config.max_sessions;
  options.max_sessions_per_pid = config.max_sessions_per_pid;
  options.max_sessions_per_uid = config.max_sessions_per_uid;
  options.max_tensors_per_session = config.max_tensors_per_session;
  options.max_metadata_bytes_per_session =
      config.max_metadata_bytes_per_session;
  options.placement.max_trace_ops = config.max_trace_ops_per_session;
  options.placement.max_trace_bytes = config.max_trace_bytes_per_session;
  return options;
}

absl::Status Run() {
  // Nothing the daemon creates is for others, unless it says so (the
  // sockets are chmod'ed 0660, their directory 0750).
  ::umask(0077);
  TP_ASSIGN_OR_RETURN(DaemonConfig config, BuildConfig());
  TP_RETURN_IF_ERROR(EnsureSocketDirectories(config));

  // Signals are taken by sigwait below, never by a random thread.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  TP_ASSIGN_OR_RETURN(HostPool host_pool,
                      HostPool::Create(config.host_pool_bytes));
  std::vector<std::unique_ptr<DeviceBackend>> devices;
  for (const auto& d : config.devices) {
    TP_ASSIGN_OR_RETURN(auto backend, CreateDeviceBackend(d, host_pool.data(),
                                                          host_pool.size()));
    const auto& desc = backend->description();
    LOG(INFO) << "device " << desc.name << " (" << desc.backend << "): pool "
              << desc.capacity_bytes << " bytes";
    devices.push_back(std::move(backend));
  }
  ManagerOptions options;
  options.chunk_size = config.chunk_size_bytes;
  TP_ASSIGN_OR_RETURN(options.default_policy,
                      ParsePolicy(config.default_policy));
  options.attach_timeout = absl::Seconds(config.attach_timeout_seconds);
  options = LimitsOf(config, std::move(options));
  MemoryManager manager(options, std::move(host_pool), std::move(devices));

  metrics::TidepoolMetrics metrics(
      TIDEPOOL_VERSION, manager.devices().front()->description().backend);
  MetricsBridge bridge(&metrics, &manager);
  std::unique_ptr<metrics::Exposer> exposer;
  if (!config.metrics_address.empty()) {
    exposer = std::make_unique<metrics::Exposer>(
        metrics::ExposerOptions{.address = config.metrics_address});
    exposer->AddCollectable(metrics.collectable());
    TP_RETURN_IF_ERROR(exposer->Start());
    LOG(INFO) << "metrics on http://" << config.metrics_address << "/metrics";
  }

  FdServer fd_server(&manager, bridge.MakeRpcObserver(),
                     {.hot_path_threads = config.hot_path_threads});
  TP_RETURN_IF_ERROR(fd_server.Start(config.fd_socket));
  GrpcService service(&manager, config.fd_socket, bridge.MakeRpcObserver());
  // The daemon accepts the gRPC socket's connections itself, to know who
  // calls (per-process and per-user session limits).
  TP_ASSIGN_OR_RETURN(std::unique_ptr<GrpcListener> listener,
                      GrpcListener::Listen(config.socket));
  service.SetPeerLookup(
      [&listener](const std::string& peer) { return listener->Lookup(peer); });
  grpc::ServerBuilder builder;
  builder.RegisterService(&service);
  // Bounds on what one client can make the server hold: a request's bytes,
  // streams per connection, and threads (each RPC in progress holds one;
  // beyond the quota new RPCs fail with RESOURCE_EXHAUSTED).
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_request_bytes));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             config.max_streams_per_connection);
  grpc::ResourceQuota quota("tidepoold");
  quota.SetMaxThreads(config.max_rpc_threads);
  builder.SetResourceQuota(quota);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    return absl::UnavailableError("cannot serve gRPC on " + config.socket);
  }
  listener->Start(server.get());

  std::cout << "tidepoold ready: socket " << config.socket << ", host pool "
            << config.host_pool_bytes << " bytes, " << manager.devices().size()
            << " device(s)" << std::endl;
  sd_notify(0, "READY=1");

  int sig = 0;
  sigwait(&signals, &sig);
  LOG(INFO) << "signal " << sig << ": shutting down";
  sd_notify(0, "STOPPING=1");
  listener->Stop();
  server->Shutdown();
  fd_server.Stop();
  if (exposer) exposer->Stop();
  ::unlink(config.socket.c_str());
  ::unlink(config.fd_socket.c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace tidepool

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "tidepoold: per-node GPU/host memory daemon.\n"
      "  tidepoold --config=/etc/tidepool/tidepoold.toml\n"
      "  tidepoold --device=sim --sim_capacity=1GiB --socket=/tmp/tp.sock");
  absl::ParseCommandLine(argc, argv);
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  // Abseil built without NDEBUG (as distributions ship it) checks the lock
  // order on every Mutex::Lock, under one process-wide lock: every
  // session's request would serialise on it.
  absl::SetMutexDeadlockDetectionMode(
      absl::GetFlag(FLAGS_mutex_deadlock_detection)
          ? absl::OnDeadlockCycle::kAbort
          : absl::OnDeadlockCycle::kIgnore);
  absl::Status status = tidepool::Run();
  if (!status.ok()) {
    std::cerr << "tidepoold: " << status << std::endl;
    return 1;
  }
  return 0;
}
