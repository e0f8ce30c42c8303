// Early-return helpers for absl::Status and absl::StatusOr.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TP_CONCAT_INNER(a, b) a##b
#define TP_CONCAT(a, b) TP_CONCAT_INNER(a, b)

// Returns `expr` from the enclosing function when it is not OK.
#define TP_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status tp_status_ = (expr);      \
    if (!tp_status_.ok()) return tp_status_; \
  } while (0)

// `lhs = value of rexpr`, or returns its error.
#define TP_ASSIGN_OR_RETURN(lhs, rexpr) \
  TP_ASSIGN_OR_RETURN_IMPL(TP_CONCAT(tp_statusor_, __LINE__), lhs, rexpr)
#define TP_ASSIGN_OR_RETURN_IMPL(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                             \
  if (!tmp.ok()) return std::move(tmp).status();  \
  lhs = std::move(tmp).value()
