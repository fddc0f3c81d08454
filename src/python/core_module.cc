// shardwise._core: the thin binding between Python and the C++ core. It
// converts types, releases the GIL around every blocking call, and maps C++
// errors to Python exceptions in exactly one place (Raise). It never sees
// torch: Python passes data pointers and sizes and keeps the memory alive.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <sstream>
#include <type_traits>

#include "shardwise/cli.h"
#include "shardwise/utf8.h"
#include "shardwise/shardwise.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace shardwise::python {
namespace {

PyObject* g_corrupt_error = nullptr;  // shardwise.CorruptCheckpointError

// The one place where a Status becomes a Python exception.
[[noreturn]] void Raise(const Status& s) {
  nb::gil_scoped_acquire gil;
  // Messages may quote untrusted bytes (file names, damaged files): Python
  // strings must be valid UTF-8.
  const std::string msg = ToValidUtf8(s.message());
  const std::string path = ToValidUtf8(s.path());
  switch (s.code()) {
    case StatusCode::kCorrupt: {
      nb::object exc = nb::borrow(g_corrupt_error)(msg);
      exc.attr("path") = path.empty() ? nb::object(nb::none()) : nb::object(nb::str(path.c_str()));
      PyErr_SetObject(g_corrupt_error, exc.ptr());
      break;
    }
    case StatusCode::kIoError:
    case StatusCode::kNotFound:
    case StatusCode::kAlreadyExists: {
      int err = s.err() != 0 ? s.err()
                : s.code() == StatusCode::kNotFound ? ENOENT
                : s.code() == StatusCode::kAlreadyExists ? EEXIST
                                                         : EIO;
      // OSError(errno, strerror, filename) picks the right subclass
      // (FileNotFoundError, FileExistsError, ...).
      nb::object args = path.empty() ? nb::make_tuple(err, msg) : nb::make_tuple(err, msg, path);
      PyErr_SetObject(PyExc_OSError, args.ptr());
      break;
    }
    case StatusCode::kInvalidArgument: PyErr_SetString(PyExc_ValueError, msg.c_str()); break;
    case StatusCode::kTimeout: PyErr_SetString(PyExc_TimeoutError, msg.c_str()); break;
    default:
      PyErr_SetString(PyExc_RuntimeError,
                      (std::string(StatusCodeName(s.code())) + ": " + msg).c_str());
  }
  throw nb::python_error();
}

void Check(const Status& s) {
  if (!s.ok()) Raise(s);
}
template <typename T>
T Take(Result<T>&& r) {
  if (!r.ok()) Raise(r.status());
  return std::move(r).value();
}

// Runs fn() with the GIL released (fn must not touch Python objects) and
// raises its error; returns its value.
template <typename Fn>
auto Unlocked(Fn&& fn) {
  using R = decltype(fn());
  R r = [&] {
    nb::gil_scoped_release release;
    return fn();
  }();
  if constexpr (std::is_same_v<R, Status>) {
    Check(r);
  } else {
    return Take(std::move(r));
  }
}

Options MakeOptions(const nb::dict& d) {
  auto base = Options::FromEnv();
  if (!base.ok()) Raise(base.status());
  Options o = *base;
  for (auto [k, v] : d) {
    std::string key = nb::cast<std::string>(k);
    if (v.is_none()) continue;
    auto size = [&](nb::handle h) -> std::uint64_t {
      if (nb::isinstance<nb::str>(h)) return Take(ParseSize(nb::cast<std::string>(h)));
      return nb::cast<std::uint64_t>(h);
    };
    if (key == "io_backend") o.io_backend = Take(ParseIoBackendKind(nb::cast<std::string>(v)));
    else if (key == "queue_depth") o.queue_depth = nb::cast<int>(v);
    else if (key == "threads") o.threads = nb::cast<int>(v);
    else if (key == "io_unit") o.io_unit_bytes = size(v);
    else if (key == "checksum_block") o.checksum_block_bytes = size(v);
    else if (key == "direct_io") {
      std::string m = nb::cast<std::string>(v);
      if (m == "auto") o.direct_io = DirectIoMode::kAuto;
      else if (m == "on") o.direct_io = DirectIoMode::kOn;
      else if (m == "off") o.direct_io = DirectIoMode::kOff;
      else Raise(InvalidArgument("direct_io must be auto, on or off"));
    } else if (key == "commit_timeout_s") o.commit_timeout_s = nb::cast<double>(v);
    else if (key == "staging_grace_s") o.staging_grace_s = nb::cast<double>(v);
    else Raise(InvalidArgument("unknown option '" + key + "'"));
  }
  Check(o.Validate());
  return o;
}

SaveSpec MakeSpec(const nb::dict& d) {
  SaveSpec s;
  for (auto [k, v] : d) {
    std::string key = nb::cast<std::string>(k);
    if (v.is_none()) continue;
    if (key == "name") s.name = nb::cast<std::string>(v);
    else if (key == "step") s.step = nb::cast<std::int64_t>(v);
    else if (key == "save_id") s.save_id = nb::cast<std::string>(v);
    else if (key == "world_size") s.world_size = nb::cast<std::int32_t>(v);
    else if (key == "rank") s.rank = nb::cast<std::int32_t>(v);
    else if (key == "replace") s.replace = nb::cast<bool>(v);
    else if (key == "user_json") s.user_json = nb::cast<std::string>(v);
    else if (key == "dcp_json") s.dcp_json = nb::cast<std::string>(v);
    else Raise(InvalidArgument("unknown save spec field '" + key + "'"));
  }
  return s;
}

using ItemTuple = std::tuple<std::string, std::string, std::string, std::vector<std::int64_t>,
                             std::vector<std::int64_t>, std::vector<std::int64_t>, std::uintptr_t,
                             std::uint64_t>;

std::vector<WriteItem> MakeItems(const std::vector<ItemTuple>& in) {
  std::vector<WriteItem> out;
  out.reserve(in.size());
  for (const auto& [name, kind, dtype, shape, offsets, sizes, ptr, nbytes] : in) {
    WriteItem w;
    w.name = name;
    if (kind == "bytes") w.kind = ItemKind::kBytes;
    else if (kind != "tensor") Raise(InvalidArgument("item kind must be tensor or bytes"));
    w.dtype = Take(ParseDType(dtype));
    w.global_shape = shape;
    w.chunk_offsets = offsets;
    w.chunk_sizes = sizes;
    w.data = reinterpret_cast<const void*>(ptr);
    w.nbytes = nbytes;
    out.push_back(std::move(w));
  }
  return out;
}

// A one-shot signal set from C++ threads without the GIL (e.g. "the items'
// memory is free") and waited for from Python with the GIL released.
class PyEvent {
 public:
  void Set() {
    std::lock_guard lock(mu_);
    set_ = true;
    cv_.notify_all();
  }
  bool IsSet() const {
    std::lock_guard lock(mu_);
    return set_;
  }
  // True once set; false after timeout_s (negative: no limit).
  bool Wait(double timeout_s) {
    nb::gil_scoped_release release;
    std::unique_lock lock(mu_);
    if (timeout_s < 0) {
      cv_.wait(lock, [&] { return set_; });
      return true;
    }
    return cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return set_; });
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

class PyRepository {
 public:
  PyRepository(const std::string& root, const nb::dict& options, bool create) {
    repo_ = Take(Repository::Open(root, MakeOptions(options), create));
  }
  std::string root() const { return repo_->root(); }

  nb::dict WriteRank(const nb::dict& spec_d, const std::vector<ItemTuple>& items_t,
                     PyEvent* released) {
    SaveSpec spec = MakeSpec(spec_d);
    std::vector<WriteItem> items = MakeItems(items_t);
    std::function<void()> on_released;
    if (released) on_released = [released] { released->Set(); };
    RankResult v = Unlocked([&] { return repo_->WriteRank(spec, items, on_released); });
    nb::dict out;
    out["shard_path"] = v.shard_path;
    out["bytes"] = v.bytes;
    out["seconds"] = v.seconds;
    out["backend"] = v.backend;
    out["direct_io"] = v.direct_io;
    out["copied_bytes"] = v.copied_bytes;
    return out;
  }

  nb::dict Commit(const nb::dict& spec_d) {
    SaveSpec spec = MakeSpec(spec_d);
    CommitResult v = Unlocked([&] { return repo_->Commit(spec); });
    nb::dict out;
    out["name"] = v.name;
    out["dir"] = v.dir;
    out["bytes"] = v.bytes;
    out["latest_updated"] = v.latest_updated;
    return out;
  }

  void WaitCommitted(const nb::dict& spec_d, double timeout_s) {
    SaveSpec spec = MakeSpec(spec_d);
    Unlocked([&] { return repo_->WaitCommitted(spec, timeout_s); });
  }

  void LockForWriting() { Check(repo_->LockForWriting()); }
  std::string FilesystemSummary() { return repo_->FilesystemSummary(); }
  void ReportFailure(const nb::dict& spec_d, const std::string& why) {
    Check(repo_->ReportFailure(MakeSpec(spec_d), Status(StatusCode::kAborted, why)));
  }

  nb::list List() {
    std::vector<CheckpointInfo> all = Take(repo_->List());
    nb::list out;
    for (const auto& c : all) {
      nb::dict e;
      e["name"] = c.name;
      e["dir_name"] = c.dir_name;
      e["state"] = std::string(CheckpointStateName(c.state));
      e["step"] = c.step;
      e["world_size"] = c.world_size;
      e["bytes"] = c.bytes;
      e["time_unix"] = c.created_unix;
      e["save_id"] = c.save_id;
      e["latest"] = c.is_latest;
      e["active"] = c.active;
      e["problem"] = c.problem;
      out.append(e);
    }
    return out;
  }

  std::optional<std::string> Latest() { return Take(repo_->Latest()); }

  nb::dict Gc(std::optional<int> keep_last, std::optional<int> keep_every, bool dry_run,
              std::optional<double> grace, bool verify) {
    GcOptions gc;
    gc.keep_last = keep_last;
    gc.keep_every = keep_every;
    gc.dry_run = dry_run;
    gc.staging_grace_s = grace;
    gc.full_verify = verify;
    GcReport v = Unlocked([&] { return repo_->Gc(gc); });
    nb::dict out;
    out["removed_staging"] = v.removed_staging;
    out["removed_checkpoints"] = v.removed_checkpoints;
    out["kept"] = v.kept;
    out["newest_valid"] = v.newest_valid;
    return out;
  }

 private:
  std::unique_ptr<Repository> repo_;
};

using ReadTuple = std::tuple<std::string, std::size_t, std::vector<std::int64_t>,
                             std::vector<std::int64_t>, std::uintptr_t, std::uint64_t,
                             std::vector<std::int64_t>, std::vector<std::int64_t>>;

class PyReader {
 public:
  PyReader(const std::string& dir, const nb::dict& options) {
    Options o = MakeOptions(options);
    reader_ = Unlocked([&] { return CheckpointReader::Open(dir, o); });
  }

  // The validated manifest as JSON text (parsed by Python's json module; no
  // pickle anywhere).
  std::string ManifestJson() const { return reader_->ManifestJson(); }

  // requests: (item name, chunk index, offsets, lengths, dst ptr, dst bytes,
  // dst shape, dst offsets)
  void Read(const std::vector<ReadTuple>& reqs) {
    const Manifest& m = reader_->manifest();
    std::vector<ReadRequest> out;
    out.reserve(reqs.size());
    for (const auto& [name, chunk, offsets, lengths, ptr, nbytes, dshape, doffs] : reqs) {
      const ItemRecord* it = m.FindItem(name);
      if (!it) Raise(NotFound("no item '" + name + "' in " + reader_->dir()));
      ReadRequest q;
      q.item = it;
      q.chunk = chunk;
      q.offsets = offsets;
      q.lengths = lengths;
      q.dst = reinterpret_cast<void*>(ptr);
      q.dst_bytes = nbytes;
      q.dst_shape = dshape;
      q.dst_offsets = doffs;
      out.push_back(std::move(q));
    }
    Unlocked([&] { return reader_->Read(out); });
  }

  void CheckFiles() {
    Unlocked([&] { return reader_->CheckFiles(); });
  }

  nb::list Verify() {
    VerifyReport v = Unlocked([&] { return reader_->Verify(); });
    nb::list problems;
    for (const auto& p : v.problems)
      problems.append(nb::make_tuple(p.file, std::string(StatusCodeName(p.status.code())),
                                     p.status.message()));
    return problems;
  }

 private:
  std::unique_ptr<CheckpointReader> reader_;
};

// -- staging memory (include/shardwise/staging.h) ------------------------------

// Python objects held by C++ (the owner of allocator memory): released with
// the GIL, and never after the interpreter is gone (then leaked).
bool PythonAlive() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsInitialized() && !Py_IsFinalizing();
#else
  return Py_IsInitialized() && !_Py_IsFinalizing();
#endif
}

std::shared_ptr<void> HoldPython(nb::object obj) {
  return std::shared_ptr<void>(obj.release().ptr(), [](void* p) {
    if (!PythonAlive()) return;
    nb::gil_scoped_acquire gil;
    Py_DECREF(static_cast<PyObject*>(p));
  });
}

using CopyTuple = std::tuple<std::uintptr_t, std::uint64_t, std::uint64_t>;

std::vector<StagingLease::Copy> MakeCopies(const std::vector<CopyTuple>& in) {
  std::vector<StagingLease::Copy> out;
  out.reserve(in.size());
  for (const auto& [src, offset, bytes] : in)
    out.push_back({reinterpret_cast<const void*>(src), offset, bytes});
  return out;
}

// One save's slab, as Python sees it.
class PyLease {
 public:
  explicit PyLease(std::shared_ptr<StagingLease> lease) : lease_(std::move(lease)) {}
  std::uintptr_t address() const { return reinterpret_cast<std::uintptr_t>(lease_->data()); }
  std::uint64_t size() const { return lease_->size(); }
  bool fresh() const { return lease_->fresh(); }
  bool staged() const { return lease_->staged(); }
  bool released() const { return lease_->released(); }
  std::uint64_t copied_bytes() const { return lease_->copied_bytes(); }

  // The slab as a 1-D uint8 array (buffer protocol and DLPack) that keeps
  // this lease leased for as long as the array (or a tensor made from it)
  // lives: staged tensors hold their own save's memory.
  nb::object Memory() {
    auto* keep = new std::shared_ptr<StagingLease>(lease_);
    nb::capsule owner(keep, [](void* p) noexcept {
      delete static_cast<std::shared_ptr<StagingLease>*>(p);
    });
    std::size_t shape[1] = {static_cast<std::size_t>(lease_->size())};
    nb::ndarray<std::uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> arr(
        lease_->data(), 1, shape, owner);
    return nb::cast(arr);
  }

  void Stage(const std::vector<CopyTuple>& copies, int threads) {
    auto c = MakeCopies(copies);
    Unlocked([&] { return lease_->Stage(c, threads); });
  }
  void StageInBackground(const std::vector<CopyTuple>& copies, int threads) {
    auto c = MakeCopies(copies);
    Unlocked([&] { return lease_->StageInBackground(std::move(c), threads); });
  }
  void WaitStaged() {
    Unlocked([&] { return lease_->WaitStaged(); });
  }
  void Release() {
    nb::gil_scoped_release release;
    lease_->Release();
  }

 private:
  std::shared_ptr<StagingLease> lease_;
};

PyLease AcquireStaging(const std::string& kind, std::uint64_t bytes) {
  StagingPool& pool = StagingPool::ForProcess(kind);
  return PyLease(Unlocked([&] { return pool.Acquire(bytes); }));
}

// allocate(nbytes) -> (address, size, owner): memory from Python (torch's
// pinned or shared-memory allocator), kept alive through `owner`.
void SetStagingAllocator(const std::string& kind, nb::callable allocate) {
  StagingPool::ForProcess(kind).SetAllocator(
      [fn = HoldPython(std::move(allocate))](std::uint64_t bytes) -> Result<StagingMemory> {
        nb::gil_scoped_acquire gil;
        try {
          nb::object r = nb::borrow(static_cast<PyObject*>(fn.get()))(bytes);
          auto [addr, size, owner] =
              nb::cast<std::tuple<std::uintptr_t, std::uint64_t, nb::object>>(r);
          return StagingMemory{reinterpret_cast<std::byte*>(addr), size, HoldPython(owner)};
        } catch (const std::exception& e) {
          return Status(StatusCode::kIoError,
                        "cannot allocate " + FormatBytes(bytes) + " of staging memory: " +
                            ToValidUtf8(e.what()),
                        ENOMEM);
        }
      });
}

nb::dict StagingStatsOf(const std::string& kind) {
  StagingStats st = StagingPool::ForProcess(kind).stats();
  nb::dict out;
  out["allocations"] = st.allocations;
  out["reserved_bytes"] = st.reserved_bytes;
  out["leased_bytes"] = st.leased_bytes;
  out["slabs"] = st.slabs;
  out["leased"] = st.leased;
  return out;
}

// Releases the leases holding any of these addresses (a save's items, once
// written). Returns the addresses of the leases released.
std::vector<std::uintptr_t> ReleaseStaged(const std::vector<std::uintptr_t>& addresses) {
  nb::gil_scoped_release release;
  std::vector<std::shared_ptr<StagingLease>> found;
  for (auto a : addresses)
    if (auto l = StagingLease::Find(reinterpret_cast<const void*>(a), 1))
      if (std::find(found.begin(), found.end(), l) == found.end()) found.push_back(std::move(l));
  std::vector<std::uintptr_t> out;
  for (auto& l : found) {
    out.push_back(reinterpret_cast<std::uintptr_t>(l->data()));
    l->Release();
  }
  return out;
}

// Memory staged by another process (shared memory mapped here): a lease
// over it whose extents are known, so writes go straight from it. None when
// a lease of this process holds that memory already.
std::optional<PyLease> AdoptStaged(std::uintptr_t address, std::uint64_t size,
                    const std::vector<std::pair<std::uint64_t, std::uint64_t>>& extents) {
  if (StagingLease::Find(reinterpret_cast<const void*>(address), 1)) return std::nullopt;
  auto pool = Take(StagingPool::Wrap(reinterpret_cast<void*>(address), size));
  auto lease = Take(pool->Acquire(size));
  std::vector<StagingLease::Copy> records;
  for (const auto& [offset, bytes] : extents) records.push_back({nullptr, offset, bytes});
  Check(lease->Adopt(records));
  return PyLease(std::move(lease));  // the lease keeps the pool's state alive
}

void ReleaseAllStaging() {
  nb::gil_scoped_release release;
  StagingPool::ReleaseAllFree();
}

int CliMain(const std::vector<std::string>& argv) {
  std::ostringstream out, err;
  int rc;
  {
    nb::gil_scoped_release release;
    rc = cli::RunCli(argv, out, err);
  }
  nb::module_::import_("sys").attr("stdout").attr("write")(out.str());
  nb::module_::import_("sys").attr("stderr").attr("write")(err.str());
  return rc;
}

}  // namespace
}  // namespace shardwise::python

NB_MODULE(_core, m) {
  using namespace shardwise::python;
  m.doc() = "shardwise C++ core (internal; use the shardwise package)";
  g_corrupt_error = PyErr_NewExceptionWithDoc(
      "shardwise.CorruptCheckpointError",
      "A checkpoint is damaged: a checksum mismatch, a missing or truncated file, or an "
      "invalid manifest. The message names the file (and the item, for data); `path` holds "
      "the file.",
      PyExc_Exception, nullptr);
  m.attr("CorruptCheckpointError") = nb::handle(g_corrupt_error);

  nb::class_<PyEvent>(m, "Event")
      .def(nb::init<>())
      .def("set", &PyEvent::Set)
      .def("is_set", &PyEvent::IsSet)
      .def("wait", &PyEvent::Wait, "timeout_s"_a = -1.0);

  nb::class_<PyRepository>(m, "Repository")
      .def(nb::init<const std::string&, const nb::dict&, bool>(), "root"_a, "options"_a,
           "create"_a = true)
      .def_prop_ro("root", &PyRepository::root)
      .def("write_rank", &PyRepository::WriteRank, "spec"_a, "items"_a,
           "released"_a = nb::none())
      .def("commit", &PyRepository::Commit, "spec"_a)
      .def("wait_committed", &PyRepository::WaitCommitted, "spec"_a, "timeout_s"_a)
      .def("report_failure", &PyRepository::ReportFailure, "spec"_a, "why"_a)
      .def("lock_for_writing", &PyRepository::LockForWriting)
      .def("filesystem_summary", &PyRepository::FilesystemSummary)
      .def("list", &PyRepository::List)
      .def("latest", &PyRepository::Latest)
      .def("gc", &PyRepository::Gc, "keep_last"_a = nb::none(), "keep_every"_a = nb::none(),
           "dry_run"_a = false, "grace_s"_a = nb::none(), "verify"_a = false);

  nb::class_<PyReader>(m, "Reader")
      .def(nb::init<const std::string&, const nb::dict&>(), "dir"_a, "options"_a)
      .def("manifest_json", &PyReader::ManifestJson)
      .def("read", &PyReader::Read, "requests"_a)
      .def("check_files", &PyReader::CheckFiles)
      .def("verify", &PyReader::Verify);

  nb::class_<PyLease>(m, "StagingLease")
      .def_prop_ro("address", &PyLease::address)
      .def_prop_ro("size", &PyLease::size)
      .def_prop_ro("fresh", &PyLease::fresh)
      .def_prop_ro("staged", &PyLease::staged)
      .def_prop_ro("released", &PyLease::released)
      .def_prop_ro("copied_bytes", &PyLease::copied_bytes)
      .def("memory", &PyLease::Memory)
      .def("stage", &PyLease::Stage, "copies"_a, "threads"_a = 0)
      .def("stage_in_background", &PyLease::StageInBackground, "copies"_a, "threads"_a = 0)
      .def("wait_staged", &PyLease::WaitStaged)
      .def("release", &PyLease::Release);
  m.def("acquire_staging", &AcquireStaging, "kind"_a, "nbytes"_a);
  m.def("set_staging_allocator", &SetStagingAllocator, "kind"_a, "allocate"_a);
  m.def("staging_stats", &StagingStatsOf, "kind"_a = "pageable");
  m.def("release_staged", &ReleaseStaged, "addresses"_a);
  m.def("adopt_staged", &AdoptStaged, "address"_a, "size"_a, "extents"_a);
  m.def("release_staging", &ReleaseAllStaging);
  m.def("copied_state_bytes", &shardwise::CopiedStateBytes);
  m.def("parse_size", [](const std::string& text) -> std::uint64_t { return Take(shardwise::ParseSize(text)); }, "text"_a);

  m.def("cli_main", &CliMain, "argv"_a);
}
