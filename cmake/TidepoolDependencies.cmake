# Finds every dependency once. CUDA is optional: where nvcc exists the CUDA
# backend and kernels are compiled, elsewhere the build still succeeds with
# the sim backend alone.
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_package(GTest CONFIG REQUIRED)
find_package(benchmark CONFIG QUIET)
find_package(glog CONFIG REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(TOMLPP REQUIRED IMPORTED_TARGET tomlplusplus)

# The daemon and its tests (not needed to build the Python package alone):
# prometheus-cpp for the metrics (its CMake package finds civetweb, zlib and
# libcurl itself), nlohmann-json, libcurl and yaml-cpp for the tests that
# read the dashboard, scrape /metrics and query Prometheus, and read the
# rules.
if(NOT SKBUILD)
  macro(tidepool_require_package package debian)
    find_package(${package} CONFIG QUIET)
    if(NOT ${package}_FOUND)
      message(FATAL_ERROR "${package} not found: install the Debian package "
                          "${debian} (scripts/setup.sh does)")
    endif()
  endmacro()
  tidepool_require_package(prometheus-cpp prometheus-cpp-dev)
  tidepool_require_package(nlohmann_json nlohmann-json3-dev)
  tidepool_require_package(yaml-cpp libyaml-cpp-dev)
  find_package(CURL QUIET)
  if(NOT CURL_FOUND)
    message(FATAL_ERROR "libcurl not found: install the Debian package "
                        "libcurl4-openssl-dev (scripts/setup.sh does)")
  endif()
endif()

include(CheckLanguage)
option(TIDEPOOL_WITH_CUDA "Build the CUDA backend and kernels when nvcc is found" ON)
set(TIDEPOOL_HAVE_CUDA OFF)
if(TIDEPOOL_WITH_CUDA)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    # CMake 3.25 does not know nvcc's C++20 flag; tell it.
    if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
      set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    endif()
    set(CMAKE_CUDA_STANDARD 20)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_library(TIDEPOOL_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR}
                 /usr/local/cuda/lib64 /usr/local/cuda/lib)
    set(TIDEPOOL_HAVE_CUDA ON)
  endif()
endif()
message(STATUS "tidepool: CUDA backend ${TIDEPOOL_HAVE_CUDA}")
