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
  auto policy = ParseConfig("default_policy = \"fast\"\n", "f");
  ASSERT_TRUE(policy.ok());
  EXPECT_FALSE(policy->Validate().ok());
  EXPECT_EQ(LoadConfigFile("/nonexistent/tidepoold.toml").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace tidepool
