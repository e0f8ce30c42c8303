# The two commands of README.md: `make demo` and `make test`.
BUILD ?= build
JOBS ?= $(shell nproc)
BUILD_TYPE ?= RelWithDebInfo
# GPU-labelled tests run only where a GPU answers.
HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
CTEST_LABELS := $(if $(HAVE_GPU),,-LE gpu)

.PHONY: all deps build demo test clean gpu-bundle gpu-check test-asan test-tsan \
	fuzz

all: build

deps:
	@scripts/setup.sh

# The Python package (tidepool, tidepool.torch) builds against the cached
# environment that scripts/python_env.sh prepares (torch, transformers).
build: deps
	@py=$$(scripts/python_env.sh) && \
	  cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DTIDEPOOL_PYTHON=$$py >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

demo: build
	@scripts/demo.sh $(BUILD)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j$(JOBS) $(CTEST_LABELS)

# Sanitizers (docs/build.md): the C++ suite, the daemons that its
# integration tests start included, under ASan + UBSan or TSan, each in its
# own CPU-only build directory. No Python package (torch does not run
# under these runtimes) and no packaging tests (an instrumented build is
# not what gets packaged, and their consumers link uninstrumented).
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
test-asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
	  -DTIDEPOOL_SANITIZE=address,undefined >/dev/null
	@cmake --build $(ASAN_BUILD) -j$(JOBS)
	@cd $(ASAN_BUILD) && ctest --output-on-failure -j$(JOBS) -LE 'gpu|packaging'

test-tsan: deps
	@cmake -S . -B $(TSAN_BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
	  -DTIDEPOOL_SANITIZE=thread >/dev/null
	@cmake --build $(TSAN_BUILD) -j$(JOBS)
	@cd $(TSAN_BUILD) && ctest --output-on-failure -j$(JOBS) -LE 'gpu|packaging'

# libFuzzer targets (docs/build.md, "Fuzzing"): a clang build (ASan +
# UBSan) of what the targets of fuzz/ link, the daemon's libraries, in its
# own build directory; each target runs FUZZ_SECONDS as a CTest test.
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 25
fuzz:
	@scripts/setup.sh fuzz
	@cxx=$$(command -v clang++-14 || command -v clang++) && \
	  cc=$$(command -v clang-14 || command -v clang) && \
	  cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
	    -DCMAKE_C_COMPILER=$$cc -DCMAKE_CXX_COMPILER=$$cxx \
	    -DTIDEPOOL_SANITIZE=address,undefined -DTIDEPOOL_FUZZ=ON \
	    -DTIDEPOOL_FUZZ_SECONDS=$(FUZZ_SECONDS) >/dev/null
	@cmake --build $(FUZZ_BUILD) -j$(JOBS) --target tidepool_fuzzers
	@cd $(FUZZ_BUILD) && ctest --output-on-failure -j$(JOBS) -L fuzz

# The GPU check (docs/build.md): gpu-bundle builds build-gpu/ (Release,
# sm_90, Python 3.12 abi3 extension) and lays out .carry/ for the GPU test
# machine, then checks it here as far as a machine without a GPU can;
# gpu-check runs the check itself (on the GPU machine; OUT=dir).
gpu-bundle: deps
	@scripts/gpu_bundle.sh

gpu-check:
	@bash scripts/gpu_check.sh

# Debian packages (docs/build.md, Install and package): tidepoold,
# libtidepool0 and libtidepool-dev in $(BUILD)/packages/, from the build.
.PHONY: package
package: build
	@cd $(BUILD) && cpack -G DEB

clean:
	rm -rf $(BUILD)
