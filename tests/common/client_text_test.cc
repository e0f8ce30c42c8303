#include "common/client_text.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tidepool {
namespace {

using ::testing::HasSubstr;

TEST(QuoteClientTextTest, ShortPrintableTextIsQuotedAsIs) {
  EXPECT_EQ(QuoteClientText("layer3.mlp/fwd"), "'layer3.mlp/fwd'");
  EXPECT_EQ(QuoteClientText(""), "''");
  // Valid non-ASCII characters stay readable.
  EXPECT_EQ(QuoteClientText("gewicht.\xc3\xa4"), "'gewicht.\xc3\xa4'");
}

TEST(QuoteClientTextTest, LongTextIsCutAndItsLengthGiven) {
  const std::string q = QuoteClientText(std::string(20480, 'x'));
  EXPECT_EQ(q, "'" + std::string(64, 'x') + "'... (20480 bytes)");
  // Cut at a character boundary: 63 ASCII bytes and a 2-byte character
  // would be 65 bytes, so the character is left out whole.
  const std::string text = std::string(63, 'a') + "\xc3\xa4" + "tail";
  EXPECT_EQ(QuoteClientText(text),
            "'" + std::string(63, 'a') + "'... (69 bytes)");
}

TEST(QuoteClientTextTest, UnprintableAndInvalidBytesAreEscaped) {
  EXPECT_EQ(QuoteClientText("a\nb\x01"), "'a\\nb\\x01'");
  EXPECT_EQ(QuoteClientText("it's \\"), "'it\\'s \\\\'");
  EXPECT_EQ(QuoteClientText("bad\xff\xfe"), "'bad\\xff\\xfe'");
  EXPECT_EQ(QuoteClientText("\xc2\x85"), "'\\xc2\\x85'");  // C1 control
  // Whatever goes in, what comes out is UTF-8 (proto3 strings need it).
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_FALSE(FindInvalidUtf8(QuoteClientText(all, 1024)).has_value());
}

TEST(FindInvalidUtf8Test, FindsTheFirstBadSequence) {
  EXPECT_FALSE(FindInvalidUtf8("plain ascii").has_value());
  EXPECT_FALSE(FindInvalidUtf8("\xe2\x82\xac \xf0\x9f\x98\x80").has_value());
  auto lone = FindInvalidUtf8("abc\xff");
  ASSERT_TRUE(lone.has_value());
  EXPECT_EQ(lone->begin, 3u);
  EXPECT_EQ(lone->end, 4u);
  // A 3-byte lead followed by one good continuation and then ASCII: the
  // two bytes that started the sequence are the bad part.
  auto cut = FindInvalidUtf8("ab\xe2\x82z");
  ASSERT_TRUE(cut.has_value());
  EXPECT_EQ(cut->begin, 2u);
  EXPECT_EQ(cut->end, 4u);
  EXPECT_TRUE(FindInvalidUtf8("\xc0\xaf").has_value());          // overlong
  EXPECT_TRUE(FindInvalidUtf8("\xed\xa0\x80").has_value());      // surrogate
  EXPECT_TRUE(FindInvalidUtf8("\xf4\x90\x80\x80").has_value());  // > U+10FFFF
  EXPECT_TRUE(FindInvalidUtf8("\xe2\x82").has_value());          // truncated
}

TEST(CheckUtf8Test, NamesTheFieldAndTheBytes) {
  EXPECT_TRUE(CheckUtf8("tensor #0 name", "w").ok());
  absl::Status s = CheckUtf8("tensor #3 name", "layer.weight\xe2\x82");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor #3 name is not valid UTF-8"));
  EXPECT_THAT(s.message(), HasSubstr("(bytes 12..13)"));
  EXPECT_THAT(s.message(), HasSubstr("'layer.weight\\xe2\\x82'"));
  EXPECT_THAT(CheckUtf8("op key", "\xff").message(), HasSubstr("(byte 0)"));
}

}  // namespace
}  // namespace tidepool
