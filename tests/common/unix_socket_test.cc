#include "common/unix_socket.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "tests/support/temp_dir.h"

namespace tidepool {
namespace {

class TempDir : public testing::TempDir {
 public:
  TempDir() : testing::TempDir("tidepool-unix-socket") {}
};

// Under umask 000 the socket is still never open to others, it accepts
// connections as soon as its name exists, and nothing else is left in the
// directory.
TEST(ListenUnixTest, TheSocketAppearsListeningWithItsMode) {
  TempDir dir;
  const std::string path = dir.path() + "/d.sock";
  std::ofstream(path) << "stale";
  const mode_t saved = ::umask(0);
  auto fd = ListenUnix(path, 0660);
  ::umask(saved);
  ASSERT_TRUE(fd.ok()) << fd.status();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_TRUE(ConnectUnix(path).ok());
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    EXPECT_EQ(e.path().filename(), "d.sock");
    ++entries;
  }
  EXPECT_EQ(entries, 1);
}

TEST(ListenUnixTest, ALongPathIsMadeInPlace) {
  TempDir dir;
  // 107 bytes, the most sun_path takes: no room for a temporary name.
  std::string path = dir.path() + "/";
  path += std::string(107 - path.size(), 's');
  auto fd = ListenUnix(path, 0600);
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_TRUE(ConnectUnix(path).ok());
  EXPECT_FALSE(ListenUnix(path + "x", 0600).ok());  // too long
}

}  // namespace
}  // namespace tidepool
