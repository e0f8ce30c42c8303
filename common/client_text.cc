#include "common/client_text.h"

#include <cstdint>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace tidepool {
namespace {

struct Sequence {
  size_t length;  // bytes it spans (at least 1)
  bool valid;
};

bool InRange(uint8_t b, uint8_t lo, uint8_t hi) { return b >= lo && b <= hi; }

// The UTF-8 sequence starting at text[i] (RFC 3629, Unicode table 3-7). An
// invalid one spans the lead byte and the continuation bytes that were
// acceptable before the first that was not ("maximal subpart").
Sequence NextSequence(absl::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t lead = byte(i);
  if (lead < 0x80) return {1, true};
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;  // range of the second byte
  if (InRange(lead, 0xC2, 0xDF)) {
    need = 1;
  } else if (lead == 0xE0) {
    need = 2, lo = 0xA0;  // no overlong forms
  } else if (InRange(lead, 0xE1, 0xEC) || InRange(lead, 0xEE, 0xEF)) {
    need = 2;
  } else if (lead == 0xED) {
    need = 2, hi = 0x9F;  // no surrogates
  } else if (lead == 0xF0) {
    need = 3, lo = 0x90;
  } else if (InRange(lead, 0xF1, 0xF3)) {
    need = 3;
  } else if (lead == 0xF4) {
    need = 3, hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return {1, false};
  }
  size_t k = i + 1;
  for (size_t n = 0; n < need; ++n, ++k) {
    if (k >= text.size()) return {k - i, false};
    const bool ok =
        n == 0 ? InRange(byte(k), lo, hi) : InRange(byte(k), 0x80, 0xBF);
    if (!ok) return {k - i, false};
  }
  return {need + 1, true};
}

}  // namespace

std::optional<Utf8Error> FindInvalidUtf8(absl::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const Sequence s = NextSequence(text, i);
    if (!s.valid) return Utf8Error{i, i + s.length};
    i += s.length;
  }
  return std::nullopt;
}

std::string QuoteClientText(absl::string_view text, size_t max_bytes) {
  std::string out = "'";
  size_t i = 0;
  while (i < text.size()) {
    const Sequence s = NextSequence(text, i);
    if (i + s.length > max_bytes) break;
    const absl::string_view piece = text.substr(i, s.length);
    const uint8_t lead = static_cast<uint8_t>(piece[0]);
    // C1 controls (U+0080..U+009F) are as unprintable as C0 ones.
    const bool c1 =
        s.valid && lead == 0xC2 && static_cast<uint8_t>(piece[1]) < 0xA0;
    if (s.valid && lead >= 0x80 && !c1) {
      out.append(piece.data(), piece.size());
    } else if (s.valid && lead >= 0x20 && lead < 0x7F) {
      out.append(absl::CEscape(piece));  // ' and \ need a backslash
    } else {
      out.append(absl::CHexEscape(piece));
    }
    i += s.length;
  }
  out += "'";
  if (i < text.size()) absl::StrAppend(&out, "... (", text.size(), " bytes)");
  return out;
}

absl::Status CheckUtf8(absl::string_view what, absl::string_view text) {
  const std::optional<Utf8Error> bad = FindInvalidUtf8(text);
  if (!bad) return absl::OkStatus();
  const std::string where =
      bad->end - bad->begin == 1
          ? absl::StrCat("byte ", bad->begin)
          : absl::StrCat("bytes ", bad->begin, "..", bad->end - 1);
  return absl::InvalidArgumentError(absl::StrCat(
      what, " is not valid UTF-8 (", where, "): ", QuoteClientText(text)));
}

}  // namespace tidepool
