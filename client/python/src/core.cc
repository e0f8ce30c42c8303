// tidepool._core: the Python face of libtidepool (nanobind). One class per
// C++ object (Session, Communicator, ShardedAdamW), every call made with
// the GIL released, every absl::Status turned into an exception of the
// matching tidepool error class with the same message. Tensor memory
// crosses as DLPack: acquires return torch tensors that view the chunk's
// bytes in this process's mapping (CPU tensors on the sim backend and for
// host acquires, CUDA tensors on the cuda backend), valid until release.
// No header of torch is used, so one build works with any torch.
//
//   from tidepool import _core
//   s = _core.Session(socket="/tmp/tp.sock", policy="auto")
//   (w,) = s.register([("w", "bf16", [1024, 1024], "param")])
//   (t,) = s.acquire([w.id], write=True)   # a torch.Tensor view
//   t.fill_(1)
//   s.release([w.id], "hold")
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "tidepool/communicator.h"
#include "tidepool/optimizer.h"
#include "tidepool/policy.h"
#include "tidepool/session.h"
#include "tidepool/types.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace tidepool::python {
namespace {

// ---- errors ----

// One Python class per status code a client sees; all derive from
// tidepool.Error (a RuntimeError) and, where one fits, a builtin class.
struct ErrorClasses {
  PyObject* base = nullptr;
  std::unordered_map<int, PyObject*> by_code;
};
ErrorClasses& Errors() {
  static ErrorClasses* errors = new ErrorClasses;  // lives with the module
  return *errors;
}

// Carries a status from a GIL-free section to the translator.
struct StatusError {
  absl::Status status;
};

void Check(const absl::Status& status) {
  if (!status.ok()) throw StatusError{status};
}
template <typename T>
T Check(absl::StatusOr<T> v) {
  if (!v.ok()) throw StatusError{v.status()};
  return *std::move(v);
}

void RegisterErrors(nb::module_& m) {
  ErrorClasses& e = Errors();
  e.base =
      PyErr_NewException("tidepool._core.Error", PyExc_RuntimeError, nullptr);
  m.attr("Error") = nb::handle(e.base);
  struct Kind {
    absl::StatusCode code;
    const char* name;
    PyObject* builtin;
  };
  const Kind kinds[] = {
      {absl::StatusCode::kInvalidArgument, "InvalidArgumentError",
       PyExc_ValueError},
      {absl::StatusCode::kOutOfRange, "OutOfRangeError", PyExc_IndexError},
      {absl::StatusCode::kNotFound, "NotFoundError", PyExc_LookupError},
      {absl::StatusCode::kAlreadyExists, "AlreadyExistsError", nullptr},
      {absl::StatusCode::kFailedPrecondition, "FailedPreconditionError",
       nullptr},
      {absl::StatusCode::kResourceExhausted, "ResourceExhaustedError",
       PyExc_MemoryError},
      {absl::StatusCode::kPermissionDenied, "PermissionDeniedError",
       PyExc_PermissionError},
      {absl::StatusCode::kUnauthenticated, "UnauthenticatedError",
       PyExc_PermissionError},
      {absl::StatusCode::kUnavailable, "UnavailableError",
       PyExc_ConnectionError},
      {absl::StatusCode::kDeadlineExceeded, "DeadlineExceededError",
       PyExc_TimeoutError},
      {absl::StatusCode::kDataLoss, "DataLossError", nullptr},
      {absl::StatusCode::kUnimplemented, "UnimplementedError",
       PyExc_NotImplementedError},
      {absl::StatusCode::kAborted, "AbortedError", nullptr},
      {absl::StatusCode::kInternal, "InternalError", nullptr},
  };
  for (const Kind& k : kinds) {
    PyObject* bases = k.builtin ? PyTuple_Pack(2, e.base, k.builtin)
                                : PyTuple_Pack(1, e.base);
    PyObject* cls = PyErr_NewException(
        absl::StrCat("tidepool._core.", k.name).c_str(), bases, nullptr);
    Py_DECREF(bases);
    e.by_code[static_cast<int>(k.code)] = cls;
    m.attr(k.name) = nb::handle(cls);
  }
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const StatusError& s) {
      ErrorClasses& e = Errors();
      auto it = e.by_code.find(static_cast<int>(s.status.code()));
      PyObject* cls = it == e.by_code.end() ? e.base : it->second;
      const std::string message(s.status.message());
      PyErr_SetString(cls,
                      message.empty()
                          ? absl::StatusCodeToString(s.status.code()).c_str()
                          : message.c_str());
    }
  });
}

// ---- vocabulary ----

template <typename E>
E Parse(const std::string& text,
        std::initializer_list<std::pair<const char*, E>> names,
        const char* what) {
  for (const auto& [name, value] : names) {
    if (text == name) return value;
  }
  std::string known;
  for (const auto& [name, value] : names) {
    absl::StrAppend(&known, known.empty() ? "" : ", ", name);
  }
  throw StatusError{absl::InvalidArgumentError(
      absl::StrCat("unknown ", what, " '", text, "' (one of: ", known, ")"))};
}

DType ParseDType(const std::string& s) {
  return Parse<DType>(s,
                      {{"f32", DType::kF32},
                       {"f16", DType::kF16},
                       {"bf16", DType::kBF16},
                       {"f64", DType::kF64},
                       {"i32", DType::kI32},
                       {"i64", DType::kI64},
                       {"u8", DType::kU8},
                       {"i8", DType::kI8}},
                      "dtype");
}
Group ParseGroup(const std::string& s) {
  return Parse<Group>(s,
                      {{"param", Group::kParam},
                       {"master", Group::kMaster},
                       {"optim_state", Group::kOptimState},
                       {"grad", Group::kGrad},
                       {"other", Group::kOther}},
                      "group");
}
TensorState ParseTarget(const std::string& s) {
  return Parse<TensorState>(s,
                            {{"hold", TensorState::kHold},
                             {"hold_after_bwd", TensorState::kHoldAfterBwd},
                             {"free", TensorState::kFree}},
                            "release target");
}
nb::dlpack::dtype ToDlpack(DType d) {
  using C = nb::dlpack::dtype_code;
  auto t = [](C code, int bits) {
    return nb::dlpack::dtype{static_cast<uint8_t>(code),
                             static_cast<uint8_t>(bits), 1};
  };
  switch (d) {
    case DType::kF32:
      return t(C::Float, 32);
    case DType::kF16:
      return t(C::Float, 16);
    case DType::kBF16:
      return t(C::Bfloat, 16);
    case DType::kF64:
      return t(C::Float, 64);
    case DType::kI32:
      return t(C::Int, 32);
    case DType::kI64:
      return t(C::Int, 64);
    case DType::kU8:
      return t(C::UInt, 8);
    case DType::kI8:
      return t(C::Int, 8);
  }
  return t(C::UInt, 8);
}

// ---- Session ----

using Tensor = nb::ndarray<nb::pytorch>;

// A Session plus what Python needs to view its tensors: each registered
// tensor's dtype and shape.
class PySession {
 public:
  PySession(std::unique_ptr<Session> session, int cuda_device)
      : session_(std::move(session)),
        cuda_device_(cuda_device),
        cuda_backend_(session_->device().backend == "cuda") {}

  Session& get() {
    if (!session_) {
      throw StatusError{
          absl::FailedPreconditionError("the tidepool session is closed")};
    }
    return *session_;
  }

  std::vector<TensorInfo> Register(
      const std::vector<std::tuple<std::string, std::string,
                                   std::vector<int64_t>, std::string>>& specs) {
    std::vector<TensorSpec> parsed;
    parsed.reserve(specs.size());
    for (const auto& [name, dtype, shape, group] : specs) {
      parsed.push_back({name, ParseDType(dtype), shape, ParseGroup(group)});
    }
    std::vector<TensorInfo> infos;
    {
      nb::gil_scoped_release release;
      infos = Check(get().Register(parsed));
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < infos.size(); ++i) {
      views_[infos[i].id] = View{parsed[i].dtype, parsed[i].shape};
    }
    return infos;
  }

  // kind: 0 device (Acquire), 1 host (AcquireOnHost), 2 placed.
  std::pair<bool, std::vector<Tensor>> Acquire(int kind,
                                               const std::vector<uint64_t>& ids,
                                               bool write, uintptr_t stream) {
    const AccessMode mode = write ? AccessMode::kReadWrite : AccessMode::kRead;
    std::vector<AcquiredTensor> got;
    bool on_device = kind == 0;
    {
      nb::gil_scoped_release release;
      Session& s = get();
      auto* cuda_stream = reinterpret_cast<CudaStream>(stream);
      if (kind == 0) {
        got = Check(s.Acquire(ids, mode, cuda_stream));
      } else if (kind == 1) {
        got = Check(s.AcquireOnHost(ids, mode));
      } else {
        PlacedTensors placed =
            Check(s.AcquireWherePlaced(ids, mode, cuda_stream));
        on_device = placed.on_device;
        got = std::move(placed.tensors);
      }
    }
    const bool device_memory = on_device && cuda_backend_;
    std::vector<Tensor> out;
    out.reserve(got.size());
    // The session owns the views (an ndarray without an owner would be
    // copied on its way to Python); they are valid until release.
    nb::handle owner = nb::find(this);
    std::lock_guard<std::mutex> lock(mu_);
    for (const AcquiredTensor& t : got) {
      auto it = views_.find(t.id);
      if (it == views_.end()) {
        throw StatusError{absl::InternalError(
            absl::StrCat("tensor ", t.id, " was not registered here"))};
      }
      const View& v = it->second;
      std::vector<size_t> shape(v.shape.begin(), v.shape.end());
      out.emplace_back(
          t.data, shape.size(), shape.data(), owner, nullptr, ToDlpack(v.dtype),
          device_memory ? nb::device::cuda::value : nb::device::cpu::value,
          device_memory ? cuda_device_ : 0);
    }
    return {on_device, std::move(out)};
  }

  void Release(const std::vector<uint64_t>& ids, const std::string& target,
               uintptr_t stream) {
    const TensorState t = ParseTarget(target);
    nb::gil_scoped_release release;
    // Posted without waiting, as in C++: the trainer computes while the
    // daemon serves it (waiting cost a sleep and wake-up of both ends per
    // release, a quarter of a CPU step of the demo). A failure is raised by
    // the session's next call.
    Check(get().Release(ids, t, reinterpret_cast<CudaStream>(stream)));
  }

  void Flush() {
    nb::gil_scoped_release release;
    Check(get().Flush());
  }

  void Close() {
    std::unique_ptr<Session> s = std::move(session_);
    if (!s) return;
    nb::gil_scoped_release release;
    Check(s->Close());
  }

  int cuda_device() const { return cuda_device_; }

 private:
  struct View {
    DType dtype;
    std::vector<int64_t> shape;
  };
  std::unique_ptr<Session> session_;
  const int cuda_device_;
  const bool cuda_backend_;  // device acquires return device memory
  std::mutex mu_;
  std::unordered_map<uint64_t, View> views_;
};

nb::dict StatsDict(const SessionStats& s) {
  nb::dict d;
  d["bytes_to_device"] = s.bytes_to_device;
  d["bytes_to_host"] = s.bytes_to_host;
  d["evictions"] = s.evictions;
  d["clean_evictions"] = s.clean_evictions;
  d["device_bytes"] = s.device_bytes;
  d["peak_device_bytes"] = s.peak_device_bytes;
  d["host_bytes"] = s.host_bytes;
  d["chunks"] = s.chunks;
  d["tensors"] = s.tensors;
  d["acquires"] = s.acquires;
  d["device_pool_capacity"] = s.device_pool_capacity;
  d["device_pool_used"] = s.device_pool_used;
  d["host_pool_capacity"] = s.host_pool_capacity;
  d["host_pool_used"] = s.host_pool_used;
  d["sessions"] = s.sessions;
  d["prefetches"] = s.prefetches;
  d["prefetch_bytes"] = s.prefetch_bytes;
  d["prefetch_hits"] = s.prefetch_hits;
  d["prefetch_late"] = s.prefetch_late;
  d["prefetch_late_short_lead"] = s.prefetch_late_short_lead;
  d["prefetch_wasted"] = s.prefetch_wasted;
  return d;
}

nb::dict PlacementDict(const PlacementStatus& p) {
  nb::dict d;
  d["state"] = p.state;
  d["plan_ops"] = p.plan_ops;
  d["replans"] = p.replans;
  d["planned_ops"] = p.planned_ops;
  d["unplanned_ops"] = p.unplanned_ops;
  d["updates_on_device"] = p.updates_on_device;
  d["updates_on_host"] = p.updates_on_host;
  d["kept_bytes"] = p.kept_bytes;
  d["resyncs"] = p.resyncs;
  d["steps"] = p.steps;
  d["last_divergence"] = p.last_divergence;
  return d;
}

std::unique_ptr<PySession> OpenSession(
    const std::string& socket, std::optional<std::string> policy,
    const std::string& device, uint64_t chunk_size, uint64_t device_quota,
    uint64_t host_quota, const std::string& client_name, uint32_t warmup_steps,
    std::optional<double> margin_ratio, bool prefetch, uint32_t lookahead_ops,
    std::optional<double> static_param_offload,
    std::optional<double> static_optim_offload, bool hot_path,
    int cuda_device) {
  SessionOptions o;
  o.socket = socket.empty() ? kDefaultSocket : socket;
  o.device = device;
  if (policy) o.policy = Check(ParsePolicy(*policy));
  o.chunk_size_bytes = chunk_size;
  o.device_quota_bytes = device_quota;
  o.host_quota_bytes = host_quota;
  o.client_name = client_name;
  o.hot_path = hot_path;
  PlacementOptions p;
  p.warmup_steps = warmup_steps;
  p.margin_ratio = margin_ratio;
  p.prefetch = prefetch;
  p.lookahead_ops = lookahead_ops;
  p.static_param_offload = static_param_offload;
  p.static_optim_offload = static_optim_offload;
  o.placement = p;
  std::unique_ptr<Session> s;
  {
    nb::gil_scoped_release release;
    s = Check(Session::Open(o));
  }
  return std::make_unique<PySession>(std::move(s), cuda_device);
}

// ---- Communicators and ShardedAdamW ----

struct PyCommunicator {
  std::unique_ptr<Communicator> comm;
};

struct PyOptimizer {
  std::unique_ptr<ShardedAdamW> opt;
  ShardedAdamW& get() {
    if (!opt) {
      throw StatusError{
          absl::FailedPreconditionError("the optimizer is closed")};
    }
    return *opt;
  }
};

nb::dict StepDict(const StepResult& r) {
  nb::dict d;
  d["applied"] = r.applied;
  d["grad_norm"] = r.grad_norm;
  d["loss_scale"] = r.loss_scale;
  d["step"] = r.step;
  d["blocks_updated"] = r.blocks_updated;
  d["blocks_without_grad"] = r.blocks_without_grad;
  d["blocks_on_device"] = r.blocks_on_device;
  d["blocks_on_host"] = r.blocks_on_host;
  return d;
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "libtidepool's Python face; see tidepool and tidepool.torch.";
  // Models hold sessions in reference cycles (hooks -> engine -> model)
  // that the interpreter may not collect at exit; the daemon reclaims such
  // sessions when the process's connection closes.
  nb::set_leak_warnings(false);
  RegisterErrors(m);
  m.attr("DEFAULT_SOCKET") = kDefaultSocket;

  nb::class_<TensorInfo>(m, "TensorInfo")
      .def_ro("id", &TensorInfo::id)
      .def_ro("chunk_id", &TensorInfo::chunk_id)
      .def_ro("offset_in_chunk", &TensorInfo::offset_in_chunk)
      .def_ro("bytes", &TensorInfo::bytes)
      .def("__repr__", [](const TensorInfo& t) {
        return absl::StrCat("TensorInfo(id=", t.id, ", chunk_id=", t.chunk_id,
                            ", offset_in_chunk=", t.offset_in_chunk,
                            ", bytes=", t.bytes, ")");
      });

  nb::class_<PySession>(m, "Session")
      .def(nb::new_(&OpenSession), "socket"_a = "", "policy"_a = nb::none(),
           "device"_a = "", "chunk_size"_a = 0, "device_quota"_a = 0,
           "host_quota"_a = 0, "client_name"_a = "", "warmup_steps"_a = 0,
           "margin_ratio"_a = nb::none(), "prefetch"_a = true,
           "lookahead_ops"_a = 0, "static_param_offload"_a = nb::none(),
           "static_optim_offload"_a = nb::none(), "hot_path"_a = true,
           "cuda_device"_a = 0,
           "Connects to tidepoold on `socket` and opens a session.")
      .def("register", &PySession::Register, "specs"_a,
           "Registers (name, dtype, shape, group) tensors in first-use order; "
           "returns a TensorInfo each.")
      .def(
          "acquire",
          [](PySession& s, const std::vector<uint64_t>& ids, bool write,
             uintptr_t stream) {
            return s.Acquire(0, ids, write, stream).second;
          },
          "ids"_a, "write"_a = false, "stream"_a = 0,
          "COMPUTE on the device: returns a tensor view each, valid until "
          "release.")
      .def(
          "acquire_on_host",
          [](PySession& s, const std::vector<uint64_t>& ids, bool write) {
            return s.Acquire(1, ids, write, 0).second;
          },
          "ids"_a, "write"_a = false,
          "COMPUTE in the host homes: CPU tensor views.")
      .def(
          "acquire_where_placed",
          [](PySession& s, const std::vector<uint64_t>& ids, bool write,
             uintptr_t stream) { return s.Acquire(2, ids, write, stream); },
          "ids"_a, "write"_a = false, "stream"_a = 0,
          "COMPUTE where the policy places the update: (on_device, views).")
      .def("release", &PySession::Release, "ids"_a, "target"_a = "hold",
           "stream"_a = 0,
           "Ends COMPUTE; target is 'hold', 'hold_after_bwd' or 'free'. "
           "Posted without waiting: a failure is raised by the session's "
           "next call, its message starting 'an earlier Release failed'.")
      .def("flush", &PySession::Flush,
           "Waits until every posted release is served; raises the first "
           "that failed.")
      .def(
          "begin_op",
          [](PySession& s, std::string key, uint64_t non_model_bytes) {
            Session& session = s.get();
            nb::gil_scoped_release release;
            session.BeginOp(std::move(key), non_model_bytes);
          },
          "key"_a, "non_model_bytes"_a = 0,
          "Names the op the next acquires belong to (module name + phase).")
      .def("mark_step",
           [](PySession& s) {
             PlacementStatus p;
             {
               Session& session = s.get();
               nb::gil_scoped_release release;
               p = Check(session.MarkStep());
             }
             return PlacementDict(p);
           })
      .def("stats",
           [](PySession& s) {
             SessionStats st;
             {
               Session& session = s.get();
               nb::gil_scoped_release release;
               st = Check(session.Stats());
             }
             return StatsDict(st);
           })
      .def("placement",
           [](PySession& s) {
             PlacementStatus p;
             {
               Session& session = s.get();
               nb::gil_scoped_release release;
               p = Check(session.Placement());
             }
             return PlacementDict(p);
           })
      .def("chunks",
           [](PySession& s) {
             std::vector<ChunkState> chunks;
             {
               Session& session = s.get();
               nb::gil_scoped_release release;
               chunks = Check(session.Chunks());
             }
             nb::list out;
             for (const ChunkState& c : chunks) {
               nb::dict d;
               d["id"] = c.id;
               d["bytes"] = c.bytes;
               d["group"] = static_cast<int>(c.group);
               d["on_device"] = c.on_device;
               d["dirty"] = c.dirty;
               out.append(d);
             }
             return out;
           })
      .def("close", &PySession::Close, "Closes the session now.")
      .def_prop_ro("id", [](PySession& s) { return s.get().id(); })
      .def_prop_ro("policy",
                   [](PySession& s) {
                     return std::string(PolicyName(s.get().policy()));
                   })
      .def_prop_ro("chunk_size",
                   [](PySession& s) { return s.get().chunk_size(); })
      .def_prop_ro("cuda_device", &PySession::cuda_device)
      .def_prop_ro("device", [](PySession& s) {
        const DeviceInfo& d = s.get().device();
        nb::dict out;
        out["name"] = d.name;
        out["uuid"] = d.uuid;
        out["backend"] = d.backend;
        out["capacity_bytes"] = d.capacity_bytes;
        return out;
      });

  nb::class_<PyCommunicator>(m, "Communicator")
      .def_prop_ro("rank", [](PyCommunicator& c) { return c.comm->rank(); })
      .def_prop_ro("world", [](PyCommunicator& c) { return c.comm->world(); })
      .def_prop_ro("backend",
                   [](PyCommunicator& c) { return c.comm->backend(); })
      .def("barrier", [](PyCommunicator& c) {
        nb::gil_scoped_release release;
        Check(c.comm->Barrier());
      });
  m.def("local_communicator",
        [] { return PyCommunicator{MakeLocalCommunicator()}; });
  m.def(
      "gloo_communicator",
      [](int rank, int world, const std::string& store_dir,
         const std::string& hostname, double timeout_s) {
        GlooOptions o{.rank = rank,
                      .world = world,
                      .store_dir = store_dir,
                      .hostname = hostname,
                      .timeout = std::chrono::milliseconds(
                          static_cast<int64_t>(timeout_s * 1000))};
        nb::gil_scoped_release release;
        return PyCommunicator{Check(OpenGlooCommunicator(o))};
      },
      "rank"_a, "world"_a, "store_dir"_a, "hostname"_a = "127.0.0.1",
      "timeout_s"_a = 120.0,
      "Gloo over TCP; store_dir is a fresh directory shared by all ranks.");
  m.def(
      "nccl_communicator",
      [](int rank, int world, const std::string& id_dir, uintptr_t stream,
         double timeout_s) {
        NcclOptions o{.rank = rank,
                      .world = world,
                      .id_dir = id_dir,
                      .stream = reinterpret_cast<void*>(stream),
                      .timeout = std::chrono::milliseconds(
                          static_cast<int64_t>(timeout_s * 1000))};
        nb::gil_scoped_release release;
        return PyCommunicator{Check(OpenNcclCommunicator(o))};
      },
      "rank"_a, "world"_a, "id_dir"_a, "stream"_a = 0, "timeout_s"_a = 120.0);

  nb::class_<PyOptimizer>(m, "ShardedAdamW")
      .def(
          "__init__",
          [](PyOptimizer* self, PySession& session, PyCommunicator& comm,
             const std::vector<
                 std::tuple<uint64_t, size_t, std::string, uint64_t>>& blocks,
             float lr, float beta1, float beta2, float eps, float weight_decay,
             float max_grad_norm, bool overlap, bool dynamic_loss_scale) {
            std::vector<ParamBlock> parsed;
            for (const auto& [id, count, dtype, chunk] : blocks) {
              parsed.push_back({id, count, ParseDType(dtype), chunk});
            }
            ShardedAdamWOptions o{.lr = lr,
                                  .beta1 = beta1,
                                  .beta2 = beta2,
                                  .eps = eps,
                                  .weight_decay = weight_decay,
                                  .max_grad_norm = max_grad_norm,
                                  .overlap = overlap};
            o.loss_scale.dynamic = dynamic_loss_scale;
            Session& s = session.get();
            nb::gil_scoped_release release;
            new (self) PyOptimizer{
                Check(ShardedAdamW::Create(&s, comm.comm.get(), parsed, o))};
          },
          "session"_a, "comm"_a, "blocks"_a, "lr"_a = 1e-3f, "beta1"_a = 0.9f,
          "beta2"_a = 0.999f, "eps"_a = 1e-8f, "weight_decay"_a = 0.0f,
          "max_grad_norm"_a = 0.0f, "overlap"_a = true,
          "dynamic_loss_scale"_a = false, nb::keep_alive<1, 2>(),
          nb::keep_alive<1, 3>(),
          "blocks: (tensor_id, count, dtype, chunk_id) of each parameter.")
      .def("init_from_params",
           [](PyOptimizer& o) {
             ShardedAdamW& opt = o.get();
             nb::gil_scoped_release release;
             Check(opt.InitFromParams());
           })
      .def(
          "init_from_values",
          [](PyOptimizer& o, int block,
             nb::ndarray<const float, nb::c_contig, nb::device::cpu> values) {
            ShardedAdamW& opt = o.get();
            const float* data = values.data();
            const size_t n = values.size();
            nb::gil_scoped_release release;
            Check(opt.InitFromValues(block, std::span<const float>(data, n)));
          },
          "block"_a, "values"_a,
          "master = values (a contiguous fp32 CPU tensor of the whole block)")
      .def(
          "on_gradients_ready",
          [](PyOptimizer& o, int block, std::optional<uint64_t> grad_tensor,
             const std::string& grad_dtype) {
            ShardedAdamW& opt = o.get();
            const DType dt = ParseDType(grad_dtype);
            nb::gil_scoped_release release;
            if (grad_tensor) {
              Check(opt.OnGradientsReady(block, *grad_tensor, dt));
            } else {
              Check(opt.OnGradientsReady(block));
            }
          },
          "block"_a, "grad_tensor"_a = nb::none(), "grad_dtype"_a = "f32")
      .def("step",
           [](PyOptimizer& o) {
             ShardedAdamW& opt = o.get();
             StepResult r;
             {
               nb::gil_scoped_release release;
               r = Check(opt.Step());
             }
             return StepDict(r);
           })
      .def("set_lr",
           [](PyOptimizer& o, float lr) { Check(o.get().SetLearningRate(lr)); })
      .def_prop_ro("lr", [](PyOptimizer& o) { return o.get().learning_rate(); })
      .def_prop_ro("loss_scale",
                   [](PyOptimizer& o) { return o.get().loss_scale(); })
      .def_prop_ro("steps", [](PyOptimizer& o) { return o.get().step(); })
      .def_prop_ro("iterations",
                   [](PyOptimizer& o) { return o.get().iterations(); })
      .def("save_checkpoint",
           [](PyOptimizer& o, const std::string& dir) {
             ShardedAdamW& opt = o.get();
             nb::gil_scoped_release release;
             Check(opt.SaveCheckpoint(dir));
           })
      .def("load_checkpoint",
           [](PyOptimizer& o, const std::string& dir) {
             ShardedAdamW& opt = o.get();
             nb::gil_scoped_release release;
             Check(opt.LoadCheckpoint(dir));
           })
      .def("close", [](PyOptimizer& o) {
        std::unique_ptr<ShardedAdamW> opt = std::move(o.opt);
        nb::gil_scoped_release release;
        opt.reset();  // joins the worker
      });
}

}  // namespace tidepool::python
