// Text that came from a client (tensor names, device names, op keys), made
// safe to put in an error message or a log line, and checked for UTF-8.
//
// A status message travels back in gRPC metadata, which has a size limit:
// echoing a 20 KB name made the client see "received initial metadata size
// exceeds limit" instead of our error. Bytes that are not printable would
// garble terminals and logs, and invalid UTF-8 in a proto3 `string` field
// makes the whole message unparsable. So every client string the daemon
// echoes goes through QuoteClientText, and every name it keeps is checked
// with CheckUtf8 first.
//
//   return absl::NotFoundError(
//       absl::StrCat("no device ", QuoteClientText(name)));
//   // no device 'GPU-xyz...' (20480 bytes)
//   TP_RETURN_IF_ERROR(CheckUtf8("tensor #3 name", name));
//   // tensor #3 name is not valid UTF-8 (bytes 12..13): 'ab\xff...'
#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tidepool {

// Bytes of client text an error message shows at most.
inline constexpr size_t kQuotedClientBytes = 64;

// `text` in single quotes, at most `max_bytes` of it (cut at a character
// boundary, then "..." and the full length in bytes), with control
// characters, quotes, backslashes and bytes that are not UTF-8 escaped
// (\n, \', \\, \xff). Valid non-ASCII characters stay as they are. The
// result is always valid UTF-8.
std::string QuoteClientText(absl::string_view text,
                            size_t max_bytes = kQuotedClientBytes);

// The first byte sequence of `text` that is not UTF-8, as [begin, end)
// byte offsets; nothing when all of it is. Overlong forms, surrogates and
// code points above U+10FFFF are invalid (as for protobuf's string fields).
struct Utf8Error {
  size_t begin = 0;
  size_t end = 0;
};
std::optional<Utf8Error> FindInvalidUtf8(absl::string_view text);

// INVALID_ARGUMENT "<what> is not valid UTF-8 (bytes B..E): '<quoted>'"
// when `text` is not UTF-8; OK otherwise.
absl::Status CheckUtf8(absl::string_view what, absl::string_view text);

}  // namespace tidepool
