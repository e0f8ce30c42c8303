// Linked into every executable of a sanitizer build
// (cmake/TidepoolSanitizers.cmake). The runtimes call these hooks at start
// for their defaults; ASAN_OPTIONS, UBSAN_OPTIONS, TSAN_OPTIONS and
// LSAN_OPTIONS in the environment still override them.
//
// Why defaults and not environment variables set by the tests: a tidepoold
// started by hand, by a test or by a Python fixture gets the same
// behaviour. The first report ends the process with a non-zero status
// (UBSan and TSan would otherwise print and go on, and TSan's exit status
// 66 comes only at exit), which is what the integration tests check when
// they stop their daemon.

extern "C" {

__attribute__((used, visibility("default"))) const char*
__asan_default_options() {
  return "halt_on_error=1:detect_leaks=1:print_summary=1:"
         "handle_abort=1:check_initialization_order=1";
}

__attribute__((used, visibility("default"))) const char*
__ubsan_default_options() {
  return "halt_on_error=1:print_stacktrace=1:print_summary=1";
}

__attribute__((used, visibility("default"))) const char*
__tsan_default_options() {
  return "halt_on_error=1:second_deadlock_stack=1:print_summary=1";
}

// TSan: the libraries built without it. Their own handoffs between
// threads (lock-free queues, atomics) are invisible to TSan, so the libc
// calls they make (sendmsg, realloc, epoll_wait), which TSan intercepts,
// look racy; called_from_lib treats those calls as the library's own,
// unchecked. Project code stays checked. gRPC carries its errors as
// absl::Status, so a status it makes on one thread (seen: inside gRPC on the fd
// listener's) is copied by libabsl_status on another after such a
// handoff: that library's calls too. And Abseil's deadlock detector
// (GraphCycles), whose nodes gRPC's threads remove at shutdown under a
// base_internal::SpinLock that TSan does not see either, and its time
// zone cache (cctz), whose mutex gRPC's threads create and take behind
// Abseil's call_once.
__attribute__((used, visibility("default"))) const char*
__tsan_default_suppressions() {
  return "called_from_lib:libgrpc.so\n"
         "called_from_lib:libgpr.so\n"
         "called_from_lib:libgrpc++.so\n"
         "called_from_lib:libabsl_status.so\n"
         "called_from_lib:libabsl_graphcycles_internal.so\n"
         "called_from_lib:libabsl_time_zone.so\n"
         "race:tzset_internal\n";
}

}  // extern "C"
