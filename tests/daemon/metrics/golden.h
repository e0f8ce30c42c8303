// Golden-file comparison for the metrics tests: the expected output lives
// in tests/daemon/metrics/testdata/ and is compared byte for byte.
//
//   ExpectMatchesGolden(SerializeText(registry.Collect()), "counters.prom");
//
// TIDEPOOL_UPDATE_GOLDEN=1 rewrites the golden instead (review the diff).
#pragma once

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include "gtest/gtest.h"

namespace tidepool::metrics::testing {

inline std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

inline void ExpectMatchesGolden(const std::string& actual,
                                std::string_view name) {
  const std::string path =
      std::string(TIDEPOOL_METRICS_TESTDATA) + "/" + std::string(name);
  if (const char* update = std::getenv("TIDEPOOL_UPDATE_GOLDEN");
      update != nullptr && std::string_view(update) == "1") {
    std::ofstream(path, std::ios::binary) << actual;
    return;
  }
  std::ifstream probe(path);
  ASSERT_TRUE(probe.good())
      << "missing golden " << path << "; run with TIDEPOOL_UPDATE_GOLDEN=1";
  EXPECT_EQ(actual, ReadFileOrEmpty(path))
      << "output differs from golden " << path
      << "; if the change is intended, rerun with TIDEPOOL_UPDATE_GOLDEN=1 "
         "and review the diff";
}

}  // namespace tidepool::metrics::testing
