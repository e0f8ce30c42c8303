# Project-wide compile options and the test helper.

set(TIDEPOOL_WARNINGS -Wall -Wextra -Wno-unused-parameter
    -Wno-missing-field-initializers)
# GCC 12 at -O3 reports -Wrestrict inside libstdc++ for `"x" +
# std::to_string(i)` (a known false positive), which -Werror would turn
# into a failed Release build of the tests.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  list(APPEND TIDEPOOL_WARNINGS -Wno-restrict)
endif()

# tidepool_library(NAME SOURCES ... DEPS ...): a static library built with
# the project's warnings.
function(tidepool_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;PUBLIC_INCLUDES" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_compile_options(${name} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:${TIDEPOOL_WARNINGS}>)
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR}
                             ${ARG_PUBLIC_INCLUDES})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
  set_target_properties(${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
endfunction()

# tidepool_add_test(NAME SOURCES ... DEPS ... [LABELS ...] [TIMEOUT s]):
# a GoogleTest binary, warnings as errors, registered with CTest. Tests
# labelled `gpu` need a CUDA device and are skipped by `make test` here.
function(tidepool_add_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_compile_options(${name} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:${TIDEPOOL_WARNINGS} -Werror>)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest
                        GTest::gmock GTest::gtest_main)
  add_test(NAME ${name} COMMAND ${name})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  # TSan runs the suite 5-15x slower (optimizer_test: 4 s of auto
  # placement take 69 s): its timeouts scale, so that a loaded machine's
  # slowness is not reported as a hang.
  if(TIDEPOOL_SANITIZE MATCHES "thread")
    math(EXPR ARG_TIMEOUT "${ARG_TIMEOUT} * 4")
  endif()
  set_tests_properties(${name} PROPERTIES TIMEOUT ${ARG_TIMEOUT}
      ENVIRONMENT "TIDEPOOL_BIN_DIR=${PROJECT_BINARY_DIR}/bin")
  if(ARG_LABELS)
    set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}")
  endif()
endfunction()

set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
