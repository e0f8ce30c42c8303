// tidepoold: the per-node memory daemon. See docs/operations.md.
#include <glog/logging.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "daemon/config/config.h"
#include "daemon/core/memory_manager.h"
#include "daemon/metrics/exposer.h"
#include "daemon/metrics/tidepool_metrics.h"
#include "daemon/server/fd_server.h"
#include "daemon/server/grpc_service.h"
#include "daemon/server/metrics_bridge.h"

ABSL_FLAG(std::string, config, "", "TOML config file (flags override it)");
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
ABSL_FLAG(std::string, device_pool, "",
          "cuda device pool size; default: free memory minus 2GiB");
ABSL_FLAG(std::string, default_policy, "", "cuda | cpu (default cpu)");
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

absl::Status EnsureSocketDirectory(const std::string& socket) {
  const std::filesystem::path dir = std::filesystem::path(socket).parent_path();
  if (dir.empty() || std::filesystem::exists(dir)) return absl::OkStatus();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat(
        "cannot create socket directory ", dir.string(), ": ", ec.message()));
  }
  ::chmod(dir.c_str(), 0750);
  return absl::OkStatus();
}

absl::Status Run() {
  TP_ASSIGN_OR_RETURN(DaemonConfig config, BuildConfig());
  TP_RETURN_IF_ERROR(EnsureSocketDirectory(config.socket));
  TP_RETURN_IF_ERROR(EnsureSocketDirectory(config.fd_socket));

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

  FdServer fd_server(&manager, bridge.MakeRpcObserver());
  TP_RETURN_IF_ERROR(fd_server.Start(config.fd_socket));
  GrpcService service(&manager, config.fd_socket, bridge.MakeRpcObserver());
  grpc::ServerBuilder builder;
  ::unlink(config.socket.c_str());
  builder.AddListeningPort("unix:" + config.socket,
                           grpc::InsecureServerCredentials());
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    return absl::UnavailableError("cannot serve gRPC on " + config.socket);
  }
  ::chmod(config.socket.c_str(), 0660);

  std::cout << "tidepoold ready: socket " << config.socket << ", host pool "
            << config.host_pool_bytes << " bytes, " << manager.devices().size()
            << " device(s)" << std::endl;
  sd_notify(0, "READY=1");

  int sig = 0;
  sigwait(&signals, &sig);
  LOG(INFO) << "signal " << sig << ": shutting down";
  sd_notify(0, "STOPPING=1");
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
  absl::Status status = tidepool::Run();
  if (!status.ok()) {
    std::cerr << "tidepoold: " << status << std::endl;
    return 1;
  }
  return 0;
}
