// bench/latency: what one acquire+release pair of a resident tensor costs,
// over the shared-memory hot path and over gRPC (the baseline, measured in
// the same run), as the sessions grow in chunks and in number. For each
// row {chunks per session} x {sessions} and each path it starts a fresh
// tidepoold (sim backend), spawns one worker process per session (this
// binary, re-run with --worker), each of which opens a session with a small
// chunk size, registers that many one-chunk tensors, makes the first one
// resident, and then, all workers at once, times pairs of it for a fixed
// time. It prints the pairs' p50 and p99, pairs/s of all sessions together,
// the daemon's CPU per pair (utime+stime from /proc/PID/stat around the
// timed window) and the load. Every row runs against whatever tidepoold
// the build holds, so a change in the daemon is measured by running the
// same command before and after it.
//
// With --planned_ops=N (auto, static) each pair is an op of an N-op step
// over N tensors, marked as steps, and the timed pairs follow the plan:
// what an `auto` trainer's acquires cost once warmed up.
//
// Processes rather than threads: each client's own CPU then stays out of
// the daemon's figure, and each has its own mapping limits. A row that
// cannot be set up (the daemon or a client runs out of fds or mappings:
// every chunk's host home is a memfd of its own, mapped as its own VMA)
// prints the error and the run goes on.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "tests/support/process.h"
#include "tidepool/policy.h"
#include "tidepool/session.h"

ABSL_FLAG(std::string, chunks, "10,1000,100000", "chunks per session");
ABSL_FLAG(std::string, sessions, "1,4,16", "sessions (one process each)");
ABSL_FLAG(double, seconds, 1.5, "timed seconds per row and path");
ABSL_FLAG(int, chunk_kib, 64, "session chunk size in KiB (64 is the least)");
ABSL_FLAG(int, setup_seconds, 30,
          "how long a row's sessions may take to register and warm up");
ABSL_FLAG(std::string, daemon_args, "",
          "extra tidepoold flags, comma-separated");
ABSL_FLAG(bool, quick, false,
          "chunks 10,1000, sessions 1,4, 0.4 s a row (a smoke run)");
// The worker's side, set by the parent.
ABSL_FLAG(bool, worker, false, "internal: run as one session's worker");
ABSL_FLAG(std::string, socket, "", "internal: the daemon's socket");
ABSL_FLAG(bool, hot_path, true, "internal: the worker's path");
ABSL_FLAG(int, worker_chunks, 0, "internal: chunks to register");
ABSL_FLAG(bool, evicting, false,
          "every acquire must evict: each session cycles through up to 64 "
          "of its tensors on a device of 8 chunks per session");
ABSL_FLAG(std::string, policy, "cpu",
          "the sessions' policy (cpu, auto, static, cuda)");
ABSL_FLAG(int, planned_ops, 0,
          "auto/static: each pair is an op (BeginOp) of a step of this many "
          "ops over as many tensors, with MarkStep after each, so that the "
          "timed pairs follow the plan; 0: no ops (auto stays recording)");

namespace {

using Clock = std::chrono::steady_clock;

int64_t NowNs() {
  // steady_clock is CLOCK_MONOTONIC: one timeline for all the processes.
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             Clock::now().time_since_epoch())
      .count();
}

void WriteAll(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

// ---- The worker: one session, talking to the parent over stdin/stdout.
// Protocol (lines on stdout): "R <chunks>" once set up, then after a byte
// on stdin the timed pairs, then "D <pairs> <start_ns> <end_ns>" and one
// sample (microseconds) a line; "E <message>" on any error. It closes its
// session once stdin reaches EOF, so no session goes while others are
// still timed.

void WorkerFail(const std::string& what, const absl::Status& status) {
  std::string line = absl::StrCat("E ", what, ": ", status.ToString());
  std::replace(line.begin(), line.end(), '\n', ' ');
  WriteAll(1, line + "\n");
}

void WaitForParentByte() {
  char c;
  while (::read(0, &c, 1) < 0 && errno == EINTR) {
  }
}

int WorkerMain() {
  const uint64_t chunk = uint64_t(absl::GetFlag(FLAGS_chunk_kib)) << 10;
  const int count = absl::GetFlag(FLAGS_worker_chunks);
  tidepool::SessionOptions so;
  so.socket = absl::GetFlag(FLAGS_socket);
  absl::StatusOr<tidepool::Policy> policy =
      tidepool::ParsePolicy(absl::GetFlag(FLAGS_policy));
  if (!policy.ok()) {
    WorkerFail("policy", policy.status());
    return 1;
  }
  so.policy = *policy;
  so.hot_path = absl::GetFlag(FLAGS_hot_path);
  so.chunk_size_bytes = chunk;
  so.client_name = "bench_latency";
  auto s = tidepool::Session::Open(so);
  if (!s.ok()) {
    WorkerFail("open", s.status());
    return 1;
  }
  // One tensor a chunk; registered in batches to stay well inside the
  // daemon's request size.
  // The tensors the timed pairs go through: one (resident), or up to 64
  // in turn (--evicting: the device holds 8 per session, so every acquire
  // evicts the least recently used and loads).
  std::vector<uint64_t> cycle;
  const int planned_ops = absl::GetFlag(FLAGS_planned_ops);
  const size_t cycle_length = planned_ops > 0
                                  ? static_cast<size_t>(planned_ops)
                                  : (absl::GetFlag(FLAGS_evicting) ? 64 : 1);
  constexpr int kBatch = 8192;
  for (int first = 0; first < count; first += kBatch) {
    std::vector<tidepool::TensorSpec> specs;
    for (int i = first; i < std::min(count, first + kBatch); ++i) {
      specs.push_back({absl::StrCat("t", i),
                       tidepool::DType::kU8,
                       {static_cast<int64_t>(chunk)},
                       tidepool::Group::kParam});
    }
    auto t = (*s)->Register(specs);
    if (!t.ok()) {
      WorkerFail(absl::StrCat("register chunks ", first, "..",
                              first + specs.size() - 1),
                 t.status());
      return 1;
    }
    for (size_t k = 0; k < t->size() && cycle.size() < cycle_length; ++k) {
      cycle.push_back((*t)[k].id);
    }
  }
  auto stats = (*s)->Stats();
  if (!stats.ok()) {
    WorkerFail("stats", stats.status());
    return 1;
  }
  size_t next = 0;
  std::string state;  // the placement's, after the last step mark
  auto pair = [&]() -> absl::Status {
    const size_t k = next++ % cycle.size();
    const uint64_t tensor = cycle[k];
    if (planned_ops > 0) (*s)->BeginOp(absl::StrCat("op", k));
    auto got = (*s)->Acquire({&tensor, 1}, tidepool::AccessMode::kRead);
    if (!got.ok()) return got.status();
    absl::Status released =
        (*s)->Release({&tensor, 1}, tidepool::TensorState::kHold);
    if (!released.ok() || planned_ops == 0 || k + 1 < cycle.size()) {
      return released;
    }
    auto step = (*s)->MarkStep();
    if (!step.ok()) return step.status();
    state = step->state;
    return absl::OkStatus();
  };
  // The first pairs load the chunks; more warm both sides' caches (and,
  // planned, record the step and plan it).
  const auto warm_until = Clock::now() + std::chrono::milliseconds(100);
  const size_t warm_pairs = std::max<size_t>(200, 3 * cycle.size());
  for (size_t i = 0;
       i < warm_pairs &&
       (Clock::now() < warm_until || (planned_ops > 0 && i < 3 * cycle.size()));
       ++i) {
    absl::Status r = pair();
    if (!r.ok()) {
      WorkerFail("warm-up pair", r);
      return 1;
    }
  }
  if (planned_ops > 0 && state != "planned") {
    WorkerFail("warm-up", absl::FailedPreconditionError(absl::StrCat(
                              "the placement is ", state,
                              " after the warm-up steps, not planned")));
    return 1;
  }
  WriteAll(1, absl::StrCat("R ", stats->chunks, "\n"));
  WaitForParentByte();

  const int64_t budget_ns =
      static_cast<int64_t>(absl::GetFlag(FLAGS_seconds) * 1e9);
  std::vector<float> us;
  us.reserve(1 << 16);
  const int64_t start = NowNs();
  int64_t now = start;
  while (now - start < budget_ns) {
    absl::Status r = pair();
    const int64_t end = NowNs();
    if (!r.ok()) {
      WorkerFail(absl::StrCat("pair ", us.size()), r);
      return 1;
    }
    us.push_back(static_cast<float>((end - now) / 1e3));
    now = end;
  }
  std::string out = absl::StrCat("D ", us.size(), " ", start, " ", now, "\n");
  for (float v : us) absl::StrAppend(&out, v, "\n");
  WriteAll(1, out);
  WaitForParentByte();  // EOF: every worker is done
  return 0;
}

// ---- The parent.

// A worker process with a pipe each way.
class Worker {
 public:
  static absl::StatusOr<std::unique_ptr<Worker>> Spawn(
      const std::vector<std::string>& argv_in) {
    std::vector<std::string> argv = argv_in;
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    int to_child[2], from_child[2];
    if (::pipe2(to_child, O_CLOEXEC) != 0 ||
        ::pipe2(from_child, O_CLOEXEC) != 0) {
      return absl::ErrnoToStatus(errno, "pipe2");
    }
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) return absl::ErrnoToStatus(errno, "fork");
    if (pid == 0) {
      // Async-signal-safe calls only until exec.
      ::dup2(to_child[0], 0);
      ::dup2(from_child[1], 1);
      if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) {
        ::_exit(127);
      }
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(to_child[0]);
    ::close(from_child[1]);
    auto w = std::unique_ptr<Worker>(new Worker());
    w->pid_ = pid;
    w->in_ = to_child[1];
    w->out_ = from_child[0];
    return w;
  }
  ~Worker() {
    CloseInput();
    if (out_ >= 0) ::close(out_);
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
  }

  // The next line, waiting until `deadline` at most.
  absl::StatusOr<std::string> ReadLine(Clock::time_point deadline) {
    for (;;) {
      const size_t nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - Clock::now());
      if (left.count() <= 0) {
        return absl::DeadlineExceededError("worker did not answer in time");
      }
      pollfd p{out_, POLLIN, 0};
      const int r = ::poll(&p, 1, static_cast<int>(left.count()));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) continue;
      char chunk[1 << 16];
      const ssize_t n = ::read(out_, chunk, sizeof(chunk));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        int status = 0;
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
        return absl::UnavailableError(absl::StrCat(
            "worker exited (",
            WIFEXITED(status) ? absl::StrCat("status ", WEXITSTATUS(status))
                              : absl::StrCat("signal ", WTERMSIG(status)),
            ")"));
      }
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }
  void Go() { WriteAll(in_, "g"); }
  void CloseInput() {
    if (in_ >= 0) ::close(in_);
    in_ = -1;
  }
  void Reap() {
    CloseInput();
    if (pid_ > 0) {
      while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
      }
      pid_ = -1;
    }
  }

 private:
  Worker() = default;
  pid_t pid_ = -1;
  int in_ = -1;
  int out_ = -1;
  std::string buffer_;
};

// utime + stime of a process, in seconds (dead threads included).
double ProcessCpuSeconds(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(f)),
                   std::istreambuf_iterator<char>());
  // Fields after the command name, which may hold spaces: state is field 3,
  // utime 14 and stime 15.
  const size_t close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::vector<std::string> fields = absl::StrSplit(text.substr(close + 2), ' ');
  if (fields.size() < 13) return 0;
  double utime = 0, stime = 0;
  if (!absl::SimpleAtod(fields[11], &utime) ||
      !absl::SimpleAtod(fields[12], &stime)) {
    return 0;
  }
  return (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

std::string Load() {
  std::ifstream f("/proc/loadavg");
  std::string first;
  f >> first;
  return first;
}

struct Row {
  double p50_us = 0;
  double p99_us = 0;
  double pairs_per_s = 0;
  double daemon_cpu_us = 0;  // per pair
  uint64_t pairs = 0;
  std::string load;
};

absl::StatusOr<Row> RunRow(int chunks, int sessions, bool hot_path) {
  const uint64_t chunk = uint64_t(absl::GetFlag(FLAGS_chunk_kib)) << 10;
  tidepool::testing::DaemonOptions options;
  options.device = "sim";
  options.sim_capacity =
      absl::GetFlag(FLAGS_evicting)
          ? absl::StrCat(8 * sessions * absl::GetFlag(FLAGS_chunk_kib), "KiB")
          : "256MiB";
  // Room for every home; a memfd's untouched pages cost no memory.
  const uint64_t host_mib = std::max<uint64_t>(
      1024, (uint64_t(sessions) * chunks * chunk >> 20) * 5 / 4 + 256);
  options.host_pool = absl::StrCat(host_mib, "MiB");
  options.chunk_size = "64MiB";
  if (!absl::GetFlag(FLAGS_daemon_args).empty()) {
    for (absl::string_view arg :
         absl::StrSplit(absl::GetFlag(FLAGS_daemon_args), ',')) {
      options.extra_args.emplace_back(arg);
    }
  }
  auto daemon = tidepool::testing::DaemonProcess::Start(options);
  if (!daemon.ok()) return daemon.status();
  const pid_t daemon_pid = (*daemon)->process().pid();

  const std::string self =
      std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < sessions; ++i) {
    auto w = Worker::Spawn(
        {self, "--worker", absl::StrCat("--socket=", (*daemon)->socket()),
         absl::StrCat("--hot_path=", hot_path ? "true" : "false"),
         absl::StrCat("--worker_chunks=", chunks),
         absl::StrCat("--chunk_kib=", absl::GetFlag(FLAGS_chunk_kib)),
         absl::StrCat("--policy=", absl::GetFlag(FLAGS_policy)),
         absl::StrCat("--evicting=", absl::GetFlag(FLAGS_evicting)),
         absl::StrCat("--planned_ops=", absl::GetFlag(FLAGS_planned_ops)),
         absl::StrCat("--seconds=", absl::GetFlag(FLAGS_seconds))});
    if (!w.ok()) return w.status();
    workers.push_back(std::move(*w));
  }
  const auto setup_deadline =
      Clock::now() + std::chrono::seconds(absl::GetFlag(FLAGS_setup_seconds));
  for (int i = 0; i < sessions; ++i) {
    auto line = workers[i]->ReadLine(setup_deadline);
    if (!line.ok()) {
      return absl::Status(
          line.status().code(),
          absl::StrCat(
              "session ", i, " of ", sessions,
              " setting up: ", line.status().message(),
              (*daemon)->process().Running() ? "" : " (the daemon died)"));
    }
    if (line->starts_with("E ")) {
      return absl::InternalError(
          absl::StrCat("session ", i, " of ", sessions, ": ", line->substr(2)));
    }
    uint64_t got = 0;
    if (!line->starts_with("R ") || !absl::SimpleAtoi(line->substr(2), &got) ||
        got != static_cast<uint64_t>(chunks)) {
      return absl::InternalError(absl::StrCat("session ", i, " set up ", *line,
                                              " instead of R ", chunks));
    }
  }

  const double cpu_before = ProcessCpuSeconds(daemon_pid);
  for (auto& w : workers) w->Go();
  std::vector<float> us;
  int64_t first_start = INT64_MAX, last_end = 0;
  const auto deadline =
      Clock::now() +
      std::chrono::milliseconds(
          static_cast<int>(absl::GetFlag(FLAGS_seconds) * 1000) + 30000);
  for (int i = 0; i < sessions; ++i) {
    auto line = workers[i]->ReadLine(deadline);
    if (!line.ok()) return line.status();
    if (line->starts_with("E ")) {
      return absl::InternalError(
          absl::StrCat("session ", i, " timing: ", line->substr(2)));
    }
    std::vector<std::string> f = absl::StrSplit(*line, ' ');
    uint64_t n = 0;
    int64_t start = 0, end = 0;
    if (f.size() != 4 || f[0] != "D" || !absl::SimpleAtoi(f[1], &n) ||
        !absl::SimpleAtoi(f[2], &start) || !absl::SimpleAtoi(f[3], &end)) {
      return absl::InternalError(absl::StrCat("worker said '", *line, "'"));
    }
    first_start = std::min(first_start, start);
    last_end = std::max(last_end, end);
    for (uint64_t k = 0; k < n; ++k) {
      auto sample = workers[i]->ReadLine(deadline);
      if (!sample.ok()) return sample.status();
      float v = 0;
      if (!absl::SimpleAtof(*sample, &v)) {
        return absl::InternalError("bad sample from a worker");
      }
      us.push_back(v);
    }
  }
  // Before any session closes: the window holds the timed pairs only.
  const double cpu_after = ProcessCpuSeconds(daemon_pid);
  Row row;
  row.load = Load();
  for (auto& w : workers) w->Reap();
  if (us.empty()) return absl::InternalError("no pairs timed");
  std::sort(us.begin(), us.end());
  row.pairs = us.size();
  row.p50_us = us[us.size() / 2];
  row.p99_us = us[us.size() * 99 / 100];
  row.pairs_per_s = us.size() / ((last_end - first_start) / 1e9);
  row.daemon_cpu_us = (cpu_after - cpu_before) * 1e6 / us.size();
  return row;
}

std::vector<int> ParseList(const std::string& text, const char* what) {
  std::vector<int> out;
  for (absl::string_view v : absl::StrSplit(text, ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(v, &n) || n <= 0) {
      std::fprintf(stderr, "bad %s '%s'\n", what, std::string(v).c_str());
      std::exit(2);
    }
    out.push_back(n);
  }
  return out;
}

int ReadIntFile(const char* path) {
  std::ifstream f(path);
  int v = 0;
  f >> v;
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_worker)) return WorkerMain();
  ::signal(SIGPIPE, SIG_IGN);  // a worker that died is reported, not fatal
  if (absl::GetFlag(FLAGS_quick)) {
    absl::SetFlag(&FLAGS_chunks, "10,1000");
    absl::SetFlag(&FLAGS_sessions, "1,4");
    absl::SetFlag(&FLAGS_seconds, 0.4);
  }
  if (absl::GetFlag(FLAGS_chunk_kib) < 64) {
    std::fprintf(stderr, "--chunk_kib must be at least 64\n");
    return 2;
  }
  if (absl::GetFlag(FLAGS_planned_ops) < 0 ||
      (absl::GetFlag(FLAGS_planned_ops) > 0 &&
       absl::GetFlag(FLAGS_policy) != "auto" &&
       absl::GetFlag(FLAGS_policy) != "static")) {
    std::fprintf(stderr,
                 "--planned_ops needs --policy=auto or static (and >= 0)\n");
    return 2;
  }
  const std::vector<int> chunk_counts =
      ParseList(absl::GetFlag(FLAGS_chunks), "chunk count");
  const std::vector<int> session_counts =
      ParseList(absl::GetFlag(FLAGS_sessions), "session count");
  rlimit files{};
  ::getrlimit(RLIMIT_NOFILE, &files);
  std::printf(
      "bench/latency: sim backend, policy %s, %s acquire+release "
      "pairs of %d KiB tensors, %.1f s per row and path, "
      "every session a "
      "process; hot path vs gRPC (the baseline) on a fresh tidepoold each\n"
      "limits: open files %llu (soft) %llu (hard), vm.max_map_count %d; "
      "%ld cores\n",
      absl::GetFlag(FLAGS_policy).c_str(),
      absl::GetFlag(FLAGS_evicting) ? "evicting (each acquire evicts one)"
                                    : "resident",
      absl::GetFlag(FLAGS_chunk_kib), absl::GetFlag(FLAGS_seconds),
      static_cast<unsigned long long>(files.rlim_cur),
      static_cast<unsigned long long>(files.rlim_max),
      ReadIntFile("/proc/sys/vm/max_map_count"),
      ::sysconf(_SC_NPROCESSORS_ONLN));
  if (absl::GetFlag(FLAGS_planned_ops) > 0) {
    std::printf(
        "planned: each pair an op of a %d-op step over as many "
        "tensors, a step mark after each step; timed after the plan\n",
        absl::GetFlag(FLAGS_planned_ops));
  }
  if (!absl::GetFlag(FLAGS_daemon_args).empty()) {
    std::printf("tidepoold flags: %s\n",
                absl::GetFlag(FLAGS_daemon_args).c_str());
  }
  std::printf("%8s %8s %5s %10s %10s %11s %13s %9s %6s\n", "chunks", "sessions",
              "path", "p50 us", "p99 us", "pairs/s", "daemon us/pr", "p50/hot",
              "load");
  std::fflush(stdout);
  const auto run_start = Clock::now();
  int failed = 0;
  for (int chunks : chunk_counts) {
    for (int sessions : session_counts) {
      double hot_p50 = 0;
      for (int path = 0; path < 2; ++path) {
        const bool hot = path == 0;
        auto row = RunRow(chunks, sessions, hot);
        if (!row.ok()) {
          ++failed;
          std::printf("%8d %8d %5s FAILED: %s (load %s)\n", chunks, sessions,
                      hot ? "hot" : "gRPC", row.status().ToString().c_str(),
                      Load().c_str());
        } else {
          if (hot) hot_p50 = row->p50_us;
          const std::string ratio =
              !hot && hot_p50 > 0
                  ? absl::StrFormat("%8.1fx", row->p50_us / hot_p50)
                  : std::string(9, ' ');
          std::printf("%8d %8d %5s %10.1f %10.1f %11.0f %13.1f %s %6s\n",
                      chunks, sessions, hot ? "hot" : "gRPC", row->p50_us,
                      row->p99_us, row->pairs_per_s, row->daemon_cpu_us,
                      ratio.c_str(), row->load.c_str());
        }
        std::fflush(stdout);
      }
    }
  }
  std::printf("%d row(s) failed; whole run %.0f s\n", failed,
              std::chrono::duration<double>(Clock::now() - run_start).count());
  return failed == 0 ? 0 : 1;
}
