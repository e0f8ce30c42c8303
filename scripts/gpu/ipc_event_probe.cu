// Interprocess CUDA events between two processes, as tidepoold and a client
// use them (docs: DESIGN.md "Who moves bytes"): the child opens the parent's
// device buffer (legacy IPC) and the parent's interprocess event, launches a
// slow kernel that writes a pattern, records the event after it and tells
// the parent at once (before the kernel is done). The parent's stream waits
// on the event, then checks the pattern on that stream without any CPU
// sync: zero errors means the wait ordered the two processes' work. A
// second event goes the other way (parent records, child waits). Prints
// one "RESULT ipc-event ..." line per direction; supplements
// ../shared/gpu/probe.cu, which checks IPC memory, VMM fds and shared
// pinned memory but no events. Build (scripts/gpu_bundle.sh does):
//   nvcc -O2 -arch=sm_90 ipc_event_probe.cu -o ipc_event_probe
#include <cuda_runtime.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#define CK(x)                                                 \
  do {                                                        \
    cudaError_t e = (x);                                      \
    if (e != cudaSuccess) {                                   \
      printf("FAIL %s:%d %s -> %s\n", __FILE__, __LINE__, #x, \
             cudaGetErrorString(e));                          \
      fflush(stdout);                                         \
      ok = false;                                             \
    }                                                         \
  } while (0)

static const size_t kN = 1 << 22;  // 16 MiB of u32

// Spins for about `cycles` clock ticks, then writes v + i.
__global__ void slow_fill(unsigned* p, size_t n, unsigned v, long long cycles) {
  long long t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    p[i] = v + (unsigned)i;
}
__global__ void check(const unsigned* p, size_t n, unsigned v, unsigned* bad) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    if (p[i] != v + (unsigned)i) atomicAdd(bad, 1u);
}

struct Handles {
  cudaIpcMemHandle_t mem;
  cudaIpcEventHandle_t to_parent;  // child records, parent waits
  cudaIpcEventHandle_t to_child;   // parent records, child waits
  int valid;
};

static bool rd(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t r = read(fd, c, n);
    if (r <= 0) return false;
    c += r;
    n -= (size_t)r;
  }
  return true;
}
static bool wr(int fd, const void* p, size_t n) {
  return write(fd, p, n) == (ssize_t)n;
}

static const long long kSpin = 200000000LL;  // ~0.1 s at ~2 GHz

static int child(int sock) {
  bool ok = true;
  Handles h{};
  if (!rd(sock, &h, sizeof h) || !h.valid) {
    printf("child: no handles from the parent\n");
    return 1;
  }
  CK(cudaSetDevice(0));
  void* p = nullptr;
  cudaEvent_t to_parent = nullptr, to_child = nullptr;
  CK(cudaIpcOpenMemHandle(&p, h.mem, cudaIpcMemLazyEnablePeerAccess));
  CK(cudaIpcOpenEventHandle(&to_parent, h.to_parent));
  CK(cudaIpcOpenEventHandle(&to_child, h.to_child));
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  char byte = ok ? 1 : 0;
  if (ok) {
    // Direction 1: child writes, parent waits on the child's record.
    slow_fill<<<132, 256, 0, s>>>((unsigned*)p, kN, 7, kSpin);
    CK(cudaGetLastError());
    CK(cudaEventRecord(to_parent, s));
    const cudaError_t q = cudaEventQuery(to_parent);
    printf("child: recorded after the slow kernel; query right away: %s\n",
           cudaGetErrorString(q));
    (void)cudaGetLastError();
  }
  byte = ok ? 1 : 0;
  wr(sock, &byte, 1);
  // Direction 2: the parent writes and records; the child waits on it.
  char go = 0;
  rd(sock, &go, 1);
  unsigned* bad = nullptr;
  unsigned nbad = 999;
  if (ok && go == 1) {
    CK(cudaStreamWaitEvent(s, to_child, 0));
    CK(cudaMalloc(&bad, 4));
    CK(cudaMemsetAsync(bad, 0, 4, s));
    check<<<132, 256, 0, s>>>((const unsigned*)p, kN, 11, bad);
    CK(cudaMemcpyAsync(&nbad, bad, 4, cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
  }
  printf("RESULT ipc-event parent->child: %s, pattern errors %u\n",
         ok && go == 1 && nbad == 0 ? "OK" : "FAILED", nbad);
  fflush(stdout);
  if (p) cudaIpcCloseMemHandle(p);
  return ok && nbad == 0 ? 0 : 1;
}

int main() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
    perror("socketpair");
    return 1;
  }
  // Fork before any CUDA call: a CUDA context does not survive fork.
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    _exit(child(sv[1]));
  }
  close(sv[1]);
  const int sock = sv[0];
  bool ok = true;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    printf("RESULT ipc-event: no CUDA device (%s)\n", cudaGetErrorString(e));
    Handles h{};
    wr(sock, &h, sizeof h);
    close(sock);
    waitpid(pid, nullptr, 0);
    return 2;
  }
  CK(cudaSetDevice(0));
  unsigned* d = nullptr;
  CK(cudaMalloc(&d, kN * 4));
  CK(cudaMemset(d, 0, kN * 4));
  CK(cudaDeviceSynchronize());
  cudaEvent_t to_parent = nullptr, to_child = nullptr;
  const unsigned flags = cudaEventInterprocess | cudaEventDisableTiming;
  CK(cudaEventCreateWithFlags(&to_parent, flags));
  CK(cudaEventCreateWithFlags(&to_child, flags));
  Handles h{};
  CK(cudaIpcGetMemHandle(&h.mem, d));
  CK(cudaIpcGetEventHandle(&h.to_parent, to_parent));
  CK(cudaIpcGetEventHandle(&h.to_child, to_child));
  h.valid = ok ? 1 : 0;
  wr(sock, &h, sizeof h);
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  unsigned* bad = nullptr;
  CK(cudaMalloc(&bad, 4));
  char byte = 0;
  rd(sock, &byte, 1);
  unsigned nbad = 999;
  if (ok && byte == 1) {
    // The child's kernel is still spinning: wait on its event on the GPU.
    CK(cudaStreamWaitEvent(s, to_parent, 0));
    CK(cudaMemsetAsync(bad, 0, 4, s));
    check<<<132, 256, 0, s>>>(d, kN, 7, bad);
    CK(cudaMemcpyAsync(&nbad, bad, 4, cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
  }
  printf("RESULT ipc-event child->parent: %s, pattern errors %u\n",
         ok && byte == 1 && nbad == 0 ? "OK" : "FAILED", nbad);
  // Direction 2: a slow write here, recorded; the child waits on it.
  char go = 0;
  if (ok) {
    slow_fill<<<132, 256, 0, s>>>(d, kN, 11, kSpin);
    CK(cudaEventRecord(to_child, s));
    go = ok ? 1 : 0;
  }
  wr(sock, &go, 1);
  int status = 0;
  waitpid(pid, &status, 0);
  const bool child_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  printf("child exit status %d\n",
         WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  printf("DONE\n");
  return ok && nbad == 0 && child_ok ? 0 : 1;
}
