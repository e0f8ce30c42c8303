# Sanitizer builds (docs/build.md, "Sanitizers"; `make test-asan`,
# `make test-tsan`): -DTIDEPOOL_SANITIZE=address,undefined or =thread
# instruments every target of the build, the tidepoold and the client
# programs that the integration tests start included.
#
# Every executable also links tidepool_sanitizer_runtime
# (common/sanitizers/): the runtimes' default options, so that a report
# ends the process with a non-zero exit status however it was started
# (a test that sees its daemon exit non-zero fails), and in TSan builds
# the absl::Mutex annotations without which TSan cannot see the project's
# locks (Debian's Abseil is not built with TSan).
#
# Included before TidepoolDependencies: sanitizer builds are CPU builds.
# The CUDA backend cannot run without a GPU, and the CUDA runtime under
# ASan needs its own shadow-gap settings.
set(TIDEPOOL_SANITIZE "" CACHE STRING
    "Sanitizers for every target: address,undefined | thread | empty (none)")
# The libFuzzer targets of fuzz/ (docs/build.md, "Fuzzing"; `make fuzz`):
# clang only, with a sanitizer; every target then carries libFuzzer's
# coverage instrumentation.
option(TIDEPOOL_FUZZ "Build the libFuzzer targets of fuzz/ (clang)" OFF)
if(TIDEPOOL_FUZZ)
  include(CheckCXXSourceCompiles)
  set(CMAKE_REQUIRED_FLAGS -fsanitize=fuzzer)
  check_cxx_source_compiles([=[
    #include <cstddef>
    #include <cstdint>
    extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }
  ]=] TIDEPOOL_HAVE_LIBFUZZER)
  unset(CMAKE_REQUIRED_FLAGS)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang" OR NOT TIDEPOOL_HAVE_LIBFUZZER)
    message(FATAL_ERROR "TIDEPOOL_FUZZ needs clang with libFuzzer "
                        "(clang-14 and libclang-rt-14-dev on Debian 12)")
  endif()
  if(NOT TIDEPOOL_SANITIZE)
    message(FATAL_ERROR "TIDEPOOL_FUZZ needs TIDEPOOL_SANITIZE "
                        "(address,undefined)")
  endif()
  add_compile_options("$<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=fuzzer-no-link>")
endif()
if(NOT TIDEPOOL_SANITIZE)
  return()
endif()

string(REPLACE "," ";" tidepool_sanitizers "${TIDEPOOL_SANITIZE}")
foreach(sanitizer IN LISTS tidepool_sanitizers)
  if(NOT sanitizer MATCHES "^(address|undefined|thread)$")
    message(FATAL_ERROR "TIDEPOOL_SANITIZE: unknown sanitizer '${sanitizer}' "
                        "(address, undefined, thread)")
  endif()
endforeach()
if("thread" IN_LIST tidepool_sanitizers AND
   "address" IN_LIST tidepool_sanitizers)
  message(FATAL_ERROR "TIDEPOOL_SANITIZE: thread and address exclude each other")
endif()

set(TIDEPOOL_WITH_CUDA OFF)
# No recovery: the first report ends the process, whichever sanitizer made
# it, so that it cannot scroll by in a log of a test that still passes.
add_compile_options(
  "$<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=${TIDEPOOL_SANITIZE};-fno-omit-frame-pointer;-fno-sanitize-recover=all>")
add_link_options(-fsanitize=${TIDEPOOL_SANITIZE})
message(STATUS "tidepool: sanitizers ${TIDEPOOL_SANITIZE} (CUDA off)")

# Runs when the top-level CMakeLists.txt has been read, so every
# executable exists and Abseil has been found.
function(tidepool_link_sanitizer_runtime)
  set(sources ${PROJECT_SOURCE_DIR}/common/sanitizers/default_options.cc)
  if("thread" IN_LIST tidepool_sanitizers)
    list(APPEND sources ${PROJECT_SOURCE_DIR}/common/sanitizers/tsan_absl_mutex.cc)
  endif()
  add_library(tidepool_sanitizer_runtime OBJECT ${sources})
  target_compile_options(tidepool_sanitizer_runtime PRIVATE
                         ${TIDEPOOL_WARNINGS} -Werror)
  target_link_libraries(tidepool_sanitizer_runtime PUBLIC
                        absl::synchronization ${CMAKE_DL_LIBS})
  # An executable exports only what the shared libraries it links use;
  # these must be found by the runtimes and by Abseil's and gRPC's own
  # calls as well.
  target_link_options(tidepool_sanitizer_runtime INTERFACE
      "LINKER:--export-dynamic-symbol=__*san_default_*"
      "LINKER:--export-dynamic-symbol=_ZN4absl*5Mutex*"
      "LINKER:--export-dynamic-symbol=_ZN4absl*7CondVar*"
      "LINKER:--export-dynamic-symbol=_ZN*4absl*12Notification*")

  set(dirs ${PROJECT_SOURCE_DIR})
  while(dirs)
    list(POP_FRONT dirs dir)
    get_property(subdirs DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
    list(APPEND dirs ${subdirs})
    get_property(targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
    foreach(target IN LISTS targets)
      get_target_property(type ${target} TYPE)
      if(type STREQUAL "EXECUTABLE")
        # An object library's objects go into the executable itself: its
        # definitions take precedence over the shared libraries' for every
        # caller (the runtimes' option hooks, Abseil's Mutex members).
        target_link_libraries(${target} PRIVATE tidepool_sanitizer_runtime)
        # GCC's -Wmaybe-uninitialized sees the instrumented code and
        # reports false positives (libstdc++'s <regex> under ASan), which
        # -Werror, which the tests build with, would make errors.
        if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
          target_compile_options(${target} PRIVATE
                                 $<$<COMPILE_LANGUAGE:CXX>:-Wno-maybe-uninitialized>)
        endif()
      endif()
    endforeach()
  endwhile()
endfunction()
cmake_language(DEFER CALL tidepool_link_sanitizer_runtime)
