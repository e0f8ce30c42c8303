#include "daemon/config/config.h"

#include "gtest/gtest.h"

namespace tidepool {
namespace {

TEST(ParseSizeTest, UnitsAndErrors) {
  EXPECT_EQ(*ParseSize("4096"), 4096u);
  EXPECT_EQ(*ParseSize("64MiB"), 64ull << 20);
  EXPECT_EQ(*ParseSize("16GiB"), 16ull << 30);
  EXPECT_EQ(*ParseSize("1.5G"), 3ull << 29);
  EXPECT_EQ(*ParseSize("2GB"), 2000000000ull);
  EXPECT_EQ(*ParseSize(" 0 "), 0u);
  EXPECT_FALSE(ParseSize("").ok());
  EXPECT_FALSE(ParseSize("GiB").ok());
  EXPECT_FALSE(ParseSize("12QB").ok());
  EXPECT_FALSE(ParseSize("-5MiB").ok());
  EXPECT_FALSE(ParseSize("99999999999TiB").ok());
}

TEST(ConfigTest, ReadsEveryKey) {
  auto c = ParseConfig(R"(
socket = "/run/tp/d.sock"
fd_socket = "/run/tp/d.fd.sock"
metrics_address = "127.0.0.1:9400"
host_pool_bytes = "2GiB"
chunk_size_bytes = "32MiB"
default_policy = "cpu"
attach_timeout_seconds = 5

[[device]]
name = "sim0"
backend = "sim"
pool_bytes = "1GiB"
sim_link_gbps = 25
sim_copy_workers = 3

[[device]]
name = "cuda:1"
backend = "cuda"
reserve_bytes = "1GiB"
)",
                       "test.toml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->socket, "/run/tp/d.sock");
  EXPECT_EQ(c->fd_socket, "/run/tp/d.fd.sock");
  EXPECT_EQ(c->metrics_address, "127.0.0.1:9400");
  EXPECT_EQ(c->host_pool_bytes, 2ull << 30);
  EXPECT_EQ(c->chunk_size_bytes, 32ull << 20);
  EXPECT_EQ(c->attach_timeout_seconds, 5);
  ASSERT_EQ(c->devices.size(), 2u);
  EXPECT_EQ(c->devices[0].backend, "sim");
  EXPECT_EQ(c->devices[0].pool_bytes, 1ull << 30);
  EXPECT_DOUBLE_EQ(c->devices[0].sim_link_gbps, 25);
  EXPECT_EQ(c->devices[0].sim_copy_workers, 3);
  EXPECT_EQ(c->devices[1].sim_copy_workers, 0);  // the default
  EXPECT_EQ(c->devices[1].name, "cuda:1");
  EXPECT_EQ(c->devices[1].reserve_bytes, 1ull << 30);
  EXPECT_TRUE(c->Validate().ok());
}

TEST(ConfigTest, BadFilesAreClearErrors) {
  auto typo = ParseConfig("host_pool_byte = \"1GiB\"\n", "f.toml");
  EXPECT_EQ(typo.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(typo.status().message().find("host_pool_byte"),
            absl::string_view::npos);
  auto syntax = ParseConfig("socket = \n", "f.toml");
  EXPECT_FALSE(syntax.ok());
  EXPECT_NE(syntax.status().message().find("f.toml"), absl::string_view::npos);
  EXPECT_FALSE(ParseConfig("host_pool_bytes = true\n", "f").ok());
  EXPECT_FALSE(ParseConfig("[[device]]\nbogus = 1\n", "f").ok());
  EXPECT_FALSE(ParseConfig("[[device]]\nsim_copy_workers = 17\n", "f").ok());
  auto policy = ParseConfig("default_policy = \"fast\"\n", "f");
  ASSERT_TRUE(policy.ok());
  EXPECT_FALSE(policy->Validate().ok());
  // As --hot_path_threads sets it, past the file's checks.
  DaemonConfig threads;
  threads.hot_path_threads = 2000;
  EXPECT_NE(threads.Validate().message().find("hot_path_threads must be in"),
            absl::string_view::npos);
  EXPECT_EQ(LoadConfigFile("/nonexistent/tidepoold.toml").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ConfigTest, LimitsHaveSafeDefaults) {
  auto c = ParseConfig("", "empty.toml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->max_sessions, 1024);
  EXPECT_EQ(c->max_sessions_per_pid, 64);
  EXPECT_EQ(c->max_sessions_per_uid, 256);
  EXPECT_EQ(c->max_tensors_per_session, 1u << 19);
  EXPECT_EQ(c->max_metadata_bytes_per_session, 64ull << 20);
  EXPECT_EQ(c->max_trace_ops_per_session, 1u << 16);
  EXPECT_EQ(c->max_trace_bytes_per_session, 16ull << 20);
  EXPECT_EQ(c->max_request_bytes, 64ull << 20);
  EXPECT_EQ(c->max_streams_per_connection, 64);
  EXPECT_EQ(c->max_rpc_threads, 128);
}

TEST(ConfigTest, ReadsEveryLimit) {
  auto c = ParseConfig(R"(
max_sessions = 100
max_sessions_per_pid = 4
max_sessions_per_uid = 8
max_tensors_per_session = 5000
max_metadata_bytes_per_session = "2MiB"
max_trace_ops_per_session = 300
max_trace_bytes_per_session = "1MiB"
max_request_bytes = "8MiB"
max_streams_per_connection = 16
max_rpc_threads = 32
hot_path_threads = 3
)",
                       "limits.toml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->max_sessions, 100);
  EXPECT_EQ(c->max_sessions_per_pid, 4);
  EXPECT_EQ(c->max_sessions_per_uid, 8);
  EXPECT_EQ(c->max_tensors_per_session, 5000u);
  EXPECT_EQ(c->max_metadata_bytes_per_session, 2ull << 20);
  EXPECT_EQ(c->max_trace_ops_per_session, 300u);
  EXPECT_EQ(c->max_trace_bytes_per_session, 1ull << 20);
  EXPECT_EQ(c->max_request_bytes, 8ull << 20);
  EXPECT_EQ(c->max_streams_per_connection, 16);
  EXPECT_EQ(c->max_rpc_threads, 32);
  EXPECT_EQ(c->hot_path_threads, 3);
}

TEST(ConfigTest, LimitsOutOfRangeNameTheKeyAndTheRange) {
  auto zero = ParseConfig("max_sessions_per_pid = 0\n", "f");
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(zero.status().message().find("max_sessions_per_pid must be in 1.."),
            absl::string_view::npos)
      << zero.status();
  auto text = ParseConfig("max_rpc_threads = \"many\"\n", "f");
  EXPECT_NE(text.status().message().find("max_rpc_threads must be an integer"),
            absl::string_view::npos)
      << text.status();
  EXPECT_FALSE(ParseConfig("hot_path_threads = -1\n", "f").ok());
  // gRPC takes the request limit as an int.
  EXPECT_FALSE(ParseConfig("max_request_bytes = \"4GiB\"\n", "f").ok());
  EXPECT_FALSE(ParseConfig("max_request_bytes = \"4KiB\"\n", "f").ok());
  EXPECT_TRUE(ParseConfig("max_request_bytes = \"1GiB\"\n", "f").ok());
  EXPECT_FALSE(ParseConfig("max_rpc_threads = 2\n", "f").ok());
  EXPECT_FALSE(ParseConfig("max_sessions_per_pids = 2\n", "f").ok());
}

// The example configuration operators install documents every limit with
// its default.
TEST(ConfigTest, TheShippedConfigParsesWithTheDefaultLimits) {
  auto shipped =
      LoadConfigFile(TIDEPOOL_SOURCE_DIR "/deploy/config/tidepoold.toml");
  ASSERT_TRUE(shipped.ok()) << shipped.status();
  EXPECT_TRUE(shipped->Validate().ok());
  const DaemonConfig d;
  EXPECT_EQ(shipped->max_sessions, d.max_sessions);
  EXPECT_EQ(shipped->max_sessions_per_pid, d.max_sessions_per_pid);
  EXPECT_EQ(shipped->max_sessions_per_uid, d.max_sessions_per_uid);
  EXPECT_EQ(shipped->max_tensors_per_session, d.max_tensors_per_session);
  EXPECT_EQ(shipped->max_metadata_bytes_per_session,
            d.max_metadata_bytes_per_session);
  EXPECT_EQ(shipped->max_trace_ops_per_session, d.max_trace_ops_per_session);
  EXPECT_EQ(shipped->max_trace_bytes_per_session,
            d.max_trace_bytes_per_session);
  EXPECT_EQ(shipped->max_request_bytes, d.max_request_bytes);
  EXPECT_EQ(shipped->max_streams_per_connection, d.max_streams_per_connection);
  EXPECT_EQ(shipped->max_rpc_threads, d.max_rpc_threads);
  EXPECT_EQ(shipped->hot_path_threads, d.hot_path_threads);
}

}  // namespace
}  // namespace tidepool
