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

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <type_traits>
#include <unordered_map>

#include "shardwise/cli.h"
#include "shardwise/utf8.h"
#include "shardwise/shardwise.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace shardwise::python {
namespace {

PyObject* g_corrupt_error = nullptr;      // shardwise.CorruptCheckpointError
PyObject* g_aborted_error = nullptr;      // shardwise.AbortedError
PyObject* g_unavailable_error = nullptr;  // shardwise.UnavailableError

// The one place where a Status becomes a Python exception.
[[noreturn]] void Raise(const Status& s) {
  nb::gil_scoped_acquire gil;
  // Messages may quote untrusted bytes (file names, damaged files): Python
  // strings must be valid UTF-8.
  const std::string msg = ToValidUtf8(s.message());
  const std::string path = ToValidUtf8(s.path());
  auto raise_with_path = [&](PyObject* type) {
    nb::object exc = nb::borrow(type)(msg);
    exc.attr("path") = path.empty() ? nb::object(nb::none()) : nb::object(nb::str(path.c_str()));
    PyErr_SetObject(type, exc.ptr());
  };
  switch (s.code()) {
    case StatusCode::kCorrupt: raise_with_path(g_corrupt_error); break;
    case StatusCode::kAborted: raise_with_path(g_aborted_error); break;
    case StatusCode::kUnavailable: raise_with_path(g_unavailable_error); break;
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

// A Python option value as the option table's parsers read it.
std::string OptionText(const std::string& key, nb::handle v) {
  if (nb::isinstance<nb::bool_>(v)) return nb::cast<bool>(v) ? "1" : "0";
  if (nb::isinstance<nb::str>(v)) return nb::cast<std::string>(v);
  // Integers of any kind (numpy's included) through __index__, other
  // numbers through __float__.
  if (PyIndex_Check(v.ptr())) return nb::cast<std::string>(nb::str(nb::int_(v)));
  if (PyFloat_Check(v.ptr()) || PyObject_HasAttrString(v.ptr(), "__float__"))
    return nb::cast<std::string>(nb::repr(nb::float_(v)));
  nb::gil_scoped_acquire gil;
  PyErr_SetString(PyExc_TypeError, ("option " + key + ": expected a str, int, float or bool, "
                                    "not " + nb::cast<std::string>(nb::str(v.type()))).c_str());
  throw nb::python_error();
}

// Engine options: the SHARDWISE_* environment, then the keywords of the
// option table (`shardwise options`); None leaves an option as it is.
Options MakeOptions(const nb::dict& d) {
  Options o = Take(Options::FromEnv());
  for (auto [k, v] : d) {
    const std::string key = nb::cast<std::string>(k);
    if (v.is_none()) continue;
    const OptionInfo* row = FindOption(key);
    if (!row || row->keyword != key)
      Raise(InvalidArgument("unknown option '" + key + "' (`shardwise options` lists the "
                            "Python keywords)"));
    Check(SetOption(o, key, OptionText(key, v)));
  }
  Check(o.Validate());
  return o;
}

// One read as Python builds it: the item by name (ReadRequest holds a
// pointer into the manifest, which only the reader knows).
struct PyReadRequest {
  std::string item;
  std::size_t chunk = 0;
  std::vector<std::int64_t> offsets, lengths;
  std::uintptr_t address = 0;
  std::uint64_t nbytes = 0;
  std::vector<std::int64_t> dst_shape, dst_offsets;
  // Non-empty: the chunk is the one that starts at these offsets of the
  // item's global shape (found with a box lookup: in format 2 a few index
  // blocks, not the item's every record), and `chunk` is unused.
  std::vector<std::int64_t> chunk_at;
};

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

  RankResult WriteRank(const SaveSpec& spec, const std::vector<WriteItem>& items,
                       PyEvent* released) {
    std::function<void()> on_released;
    if (released) on_released = [released] { released->Set(); };
    return Unlocked([&] { return repo_->WriteRank(spec, items, on_released); });
  }
  CommitResult Commit(const SaveSpec& spec) {
    return Unlocked([&] { return repo_->Commit(spec); });
  }
  CommitResult CommitGathered(const SaveSpec& spec, const std::vector<nb::bytes>& indexes) {
    std::vector<std::string> copies;
    copies.reserve(indexes.size());
    for (const nb::bytes& b : indexes) copies.emplace_back(b.c_str(), b.size());
    return Unlocked([&] { return repo_->CommitGathered(spec, copies); });
  }
  void WaitCommitted(const SaveSpec& spec, double timeout_s) {
    Unlocked([&] { return repo_->WaitCommitted(spec, timeout_s); });
  }
  void LockForWriting() { Check(repo_->LockForWriting()); }
  std::string FilesystemSummary() { return repo_->FilesystemSummary(); }
  void ReportFailure(const SaveSpec& spec, const std::string& why) {
    Check(repo_->ReportFailure(spec, Status(StatusCode::kAborted, why)));
  }
  std::vector<CheckpointInfo> List(bool with_exports) {
    return Unlocked([&] { return repo_->List(with_exports); });
  }
  std::optional<std::string> Latest() { return Take(repo_->Latest()); }
  void Delete(const std::string& name, bool damaged_too) {
    Unlocked([&] { return repo_->Delete(name, damaged_too); });
  }
  // FILES: (name, offset, size) of each file inside DATA, one buffer as it
  // arrived (a partner's replica): viewed, not copied.
  void Install(const std::string& name,
               const std::vector<std::tuple<std::string, std::uint64_t, std::uint64_t>>& files,
               nb::ndarray<const std::uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> data) {
    const auto* base = reinterpret_cast<const char*>(data.data());
    const std::uint64_t total = data.shape(0);
    std::vector<std::pair<std::string, std::string_view>> views;
    views.reserve(files.size());
    for (const auto& [file, offset, size] : files) {
      if (offset > total || size > total - offset)
        Check(Status(StatusCode::kInvalidArgument, "checkpoint '" + name + "': file '" + file +
                                                       "' lies outside the buffer"));
      views.emplace_back(file, std::string_view(base + offset, size));
    }
    Unlocked([&] { return repo_->Install(name, views); });
  }
  GcReport Gc(std::optional<int> keep_last, std::optional<int> keep_every, bool dry_run,
              std::optional<double> grace, bool verify) {
    GcOptions gc;
    gc.keep_last = keep_last;
    gc.keep_every = keep_every;
    gc.dry_run = dry_run;
    gc.staging_grace_s = grace;
    gc.full_verify = verify;
    return Unlocked([&] { return repo_->Gc(gc); });
  }

 private:
  std::unique_ptr<Repository> repo_;
};

// Finds the item record and chunk number of each request of one read call.
// A chunk named by where it starts (chunk_at) is found with a box lookup of
// that point (format 2: a few index blocks; the call's lookups made together,
// ItemParts) where the call reads few chunks of its item; where it reads many (a consolidating load), in format 1, or
// for a chunk the point misses (one of no elements), the item's whole chunk
// list is resolved once and keyed by start. What the checkpoint lacks is
// damage of the checkpoint (the plan came from its metadata).
class ChunkLocator {
 public:
  using Found = std::pair<const ItemRecord*, std::size_t>;

  ChunkLocator(CheckpointReader& reader, const std::vector<PyReadRequest>& reqs)
      : reader_(reader), whole_always_(reader.manifest().format_version < 2) {
    for (const PyReadRequest& r : reqs)
      if (!r.chunk_at.empty()) ++reads_of_[r.item];
    if (whole_always_) return;
    std::vector<CheckpointReader::PartQuery> points;
    for (const PyReadRequest& r : reqs)
      if (!r.chunk_at.empty() && reads_of_[r.item] < kWholeFrom &&
          parts_.emplace(Key(r), Status(StatusCode::kInternal, "unread")).second)
        points.push_back({r.item, r.chunk_at, std::vector<std::int64_t>(r.chunk_at.size(), 1)});
    auto found = reader.ItemParts(points);
    for (std::size_t k = 0; k < points.size(); ++k)
      parts_.at({points[k].name, points[k].offsets}) = std::move(found[k]);
  }

  Result<Found> operator()(const PyReadRequest& r) {
    if (r.chunk_at.empty()) {
      SW_ASSIGN_OR_RETURN(const ItemRecord* it, Resolved(reader_.Item(r.item), r));
      return Found(it, r.chunk);
    }
    if (auto p = parts_.find(Key(r)); p != parts_.end()) {
      // A point outside the shape (an empty chunk at the item's edge) is
      // looked for in the whole list below.
      if (p->second.ok() || p->second.status().code() != StatusCode::kInvalidArgument) {
        SW_ASSIGN_OR_RETURN(const ItemRecord* it, Resolved(p->second, r));
        for (std::size_t k = 0; k < it->chunks.size(); ++k)
          if (it->chunks[k].offsets == r.chunk_at) return Found(it, k);
      }
    }
    auto w = whole_.find(r.item);
    if (w == whole_.end()) {
      SW_ASSIGN_OR_RETURN(const ItemRecord* it, Resolved(reader_.Item(r.item), r));
      Whole made{it, {}};
      for (std::size_t k = 0; k < it->chunks.size(); ++k) made.at.emplace(it->chunks[k].offsets, k);
      w = whole_.emplace(r.item, std::move(made)).first;
    }
    if (auto k = w->second.at.find(r.chunk_at); k != w->second.at.end())
      return Found(w->second.item, k->second);
    return Lacks(r);
  }

 private:
  static constexpr int kWholeFrom = 8;  // reads of one item's chunks in one call
  using PointKey = std::pair<std::string, std::vector<std::int64_t>>;
  static PointKey Key(const PyReadRequest& r) { return {r.item, r.chunk_at}; }
  struct Whole {
    const ItemRecord* item;
    std::map<std::vector<std::int64_t>, std::size_t> at;  // chunk number by start
  };

  Status Lacks(const PyReadRequest& r) const {
    std::string what = "item '" + r.item + "'";
    if (!r.chunk_at.empty()) {
      std::string at;
      for (std::int64_t v : r.chunk_at) at += (at.empty() ? "" : ", ") + std::to_string(v);
      what = "chunk of " + what + " at offsets [" + at + "]";
    }
    return Corrupt(reader_.dir() + ": the checkpoint has no " + what, reader_.dir());
  }

  // A lookup's record; an item not there, or a start outside its shape, is
  // what the checkpoint lacks.
  Result<const ItemRecord*> Resolved(Result<const ItemRecord*> it, const PyReadRequest& r) const {
    if (it.ok()) return *it;
    const StatusCode c = it.status().code();
    if (c != StatusCode::kNotFound && c != StatusCode::kInvalidArgument) return it.status();
    return Lacks(r);
  }

  CheckpointReader& reader_;
  const bool whole_always_;
  std::unordered_map<std::string, int> reads_of_;
  std::map<PointKey, Result<const ItemRecord*>> parts_;  // the point lookups made
  std::unordered_map<std::string, Whole> whole_;
};

class PyReader {
 public:
  PyReader(const std::string& dir, const nb::dict& options) {
    Options o = MakeOptions(options);
    reader_ = Unlocked([&] { return CheckpointReader::Open(dir, o); });
  }

  // The validated manifest as JSON text in the format-1 schema (parsed by
  // Python's json module; no pickle anywhere). Format 2: reads the whole
  // index; loading a checkpoint uses header() and item() instead.
  std::string ManifestJson() {
    return Unlocked([&] { return reader_->ManifestJson(); });
  }

  // The commit record: no files, items or chunks.
  nb::dict Header() const {
    const Manifest& m = reader_->manifest();
    nb::dict d;
    d["format_version"] = m.format_version;
    d["name"] = m.name;
    d["step"] = m.step;
    d["save_id"] = m.save_id;
    d["world_size"] = m.world_size;
    d["created_unix"] = m.created_unix;
    d["bytes"] = m.TotalBytes();
    d["items"] = reader_->ItemHeaders().size();
    d["user"] = m.user_json.empty() ? std::string("{}") : m.user_json;
    d["dcp"] = m.dcp_json.empty() ? nb::none() : nb::cast(m.dcp_json);
    return d;
  }

  // Every item's name, from the items table (no chunk records are read).
  std::vector<std::string> ItemNames() const {
    std::vector<std::string> out;
    out.reserve(reader_->ItemHeaders().size());
    for (const ItemRecord& it : reader_->ItemHeaders()) out.push_back(it.name);
    return out;
  }

  // One item: kind, dtype, shape and its chunks' boxes (format 2 reads only
  // this item's records). KeyError-like NotFound when absent.
  nb::dict Item(const std::string& name) {
    return ItemDict(Unlocked([&] { return reader_->Item(name); }));
  }

  // The same with only the chunks that overlap the box [offsets, offsets +
  // sizes) of the item's global shape: in format 2 a few index blocks
  // however many chunks the item has.
  nb::dict ItemPart(const std::string& name, const std::vector<std::int64_t>& offsets,
                    const std::vector<std::int64_t>& sizes) {
    return ItemDict(Unlocked([&] { return reader_->ItemPart(name, offsets, sizes); }));
  }

  // ItemPart for many (name, offsets, sizes) at once, the lookups in
  // parallel: a dict per query, or None where the box does not fit the
  // item (InvalidArgument) or the item is absent; other errors raise.
  nb::list ItemParts(const std::vector<std::tuple<std::string, std::vector<std::int64_t>,
                                                  std::vector<std::int64_t>>>& queries) {
    std::vector<CheckpointReader::PartQuery> q;
    q.reserve(queries.size());
    for (const auto& [name, offsets, sizes] : queries) q.push_back({name, offsets, sizes});
    std::vector<Result<const ItemRecord*>> found;
    {
      nb::gil_scoped_release release;
      found = reader_->ItemParts(q);
    }
    nb::list out;
    for (auto& f : found) {
      if (f.ok()) {
        out.append(ItemDict(*f));
        continue;
      }
      const StatusCode c = f.status().code();
      if (c != StatusCode::kInvalidArgument && c != StatusCode::kNotFound)
        Check(f.status());  // raises it, mapped as every error is
      out.append(nb::none());
    }
    return out;
  }

  // Every item's name, kind, dtype and shape, from the items table (no
  // chunk records are read).
  nb::list ItemHeaders() const {
    nb::list out;
    for (const ItemRecord& it : reader_->ItemHeaders())
      out.append(nb::make_tuple(it.name, std::string(ItemKindName(it.kind)),
                                std::string(DTypeName(it.dtype)), it.shape));
    return out;
  }

  std::uint64_t MetadataBytesRead() const { return reader_->metadata_bytes_read(); }

  void Read(const std::vector<PyReadRequest>& reqs) {
    Unlocked([&]() -> Status {
      std::vector<ReadRequest> out;
      out.reserve(reqs.size());
      ChunkLocator locate(*reader_, reqs);
      for (const PyReadRequest& r : reqs) {
        ReadRequest q;
        SW_ASSIGN_OR_RETURN(std::tie(q.item, q.chunk), locate(r));
        q.offsets = r.offsets;
        q.lengths = r.lengths;
        q.dst = reinterpret_cast<void*>(r.address);
        q.dst_bytes = r.nbytes;
        q.dst_shape = r.dst_shape;
        q.dst_offsets = r.dst_offsets;
        out.push_back(std::move(q));
      }
      return reader_->Read(out);
    });
  }

  void CheckFiles() {
    Unlocked([&] { return reader_->CheckFiles(); });
  }

  VerifyReport Verify() {
    return Unlocked([&] { return reader_->Verify(); });
  }

 private:
  static nb::dict ItemDict(const ItemRecord* it) {
    nb::dict d;
    d["name"] = it->name;
    d["kind"] = std::string(ItemKindName(it->kind));
    d["dtype"] = std::string(DTypeName(it->dtype));
    d["shape"] = it->shape;
    nb::list chunks;
    for (const ChunkRecord& c : it->chunks) chunks.append(nb::make_tuple(c.offsets, c.sizes));
    d["chunks"] = chunks;
    return d;
  }

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

StagingStats StagingStatsOf(const std::string& kind) {
  return StagingPool::ForProcess(kind).stats();
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

// The native CLI inside Python (the pip-installed `shardwise`). With
// `direct` (sys.stdout and sys.stderr are the process's fds 1 and 2), it
// writes to them as it goes, so progress shows while it works, and Ctrl-C
// stops it as it stops the native binary (Python's own SIGINT handler only
// notes the signal for later). Otherwise (output captured in Python) its
// output is written through sys.stdout and sys.stderr when it is done.
int CliMain(const std::vector<std::string>& argv, bool direct) {
  nb::module_ sys = nb::module_::import_("sys");
  if (direct) {
    sys.attr("stdout").attr("flush")();
    sys.attr("stderr").attr("flush")();
    struct sigaction dfl {}, old {};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(SIGINT, &dfl, &old);
    int rc;
    {
      nb::gil_scoped_release release;
      rc = cli::RunCli(argv, std::cout, std::cerr);
      std::cout.flush();
    }
    ::sigaction(SIGINT, &old, nullptr);
    return rc;
  }
  std::ostringstream out, err;
  int rc;
  {
    nb::gil_scoped_release release;
    rc = cli::RunCli(argv, out, err);
  }
  sys.attr("stdout").attr("write")(out.str());
  sys.attr("stderr").attr("write")(err.str());
  return rc;
}

}  // namespace
}  // namespace shardwise::python

namespace shardwise::python {
namespace {

// A Python exception class shardwise.NAME deriving from `base`, with a
// `path` attribute (None unless the error names a file).
PyObject* NewError(nb::module_& m, const char* name, const char* doc, PyObject* base) {
  PyObject* type = PyErr_NewExceptionWithDoc((std::string("shardwise.") + name).c_str(), doc,
                                             base, nullptr);
  nb::handle(type).attr("path") = nb::none();
  m.attr(name) = nb::handle(type);
  return type;
}

void BindErrors(nb::module_& m) {
  g_corrupt_error = NewError(
      m, "CorruptCheckpointError",
      "A checkpoint is damaged: a checksum mismatch, a missing or truncated file, or an "
      "invalid manifest. The message names the file (and the item, for data); `path` holds "
      "the file.",
      PyExc_Exception);
  g_aborted_error = NewError(
      m, "AbortedError",
      "A save was abandoned: another job holds the checkpoint root (the message names it), "
      "or a rank of this save failed (the message says which and why). `path` holds the "
      "file or directory concerned.",
      PyExc_RuntimeError);
  g_unavailable_error = NewError(
      m, "UnavailableError",
      "A facility the save needs is not available here (for example flock on a Lustre "
      "mount without -o flock, or io_uring where it was asked for). `path` holds the file "
      "concerned, when there is one.",
      PyExc_RuntimeError);
}

// SaveSpec and WriteItem: built from Python with keywords, read back by name.
void BindSaveTypes(nb::module_& m) {
  nb::class_<SaveSpec>(m, "SaveSpec")
      .def("__init__",
           [](SaveSpec* s, std::string name, std::int64_t step, std::string save_id,
              std::int32_t world_size, std::int32_t rank, bool replace, std::string user_json,
              std::string dcp_json, bool gathered) {
             new (s) SaveSpec{std::move(name),      step,     std::move(save_id),
                              world_size,           rank,     replace,
                              std::move(user_json), std::move(dcp_json), gathered};
           },
           "name"_a = "", "step"_a = -1, "save_id"_a = "", "world_size"_a = 1, "rank"_a = 0,
           "replace"_a = false, "user_json"_a = "{}", "dcp_json"_a = "", "gathered"_a = false)
      .def_rw("name", &SaveSpec::name)
      .def_rw("step", &SaveSpec::step)
      .def_rw("save_id", &SaveSpec::save_id)
      .def_rw("world_size", &SaveSpec::world_size)
      .def_rw("rank", &SaveSpec::rank)
      .def_rw("replace", &SaveSpec::replace)
      .def_rw("user_json", &SaveSpec::user_json)
      .def_rw("dcp_json", &SaveSpec::dcp_json)
      .def_rw("gathered", &SaveSpec::gathered);
  nb::class_<WriteItem>(m, "WriteItem")
      .def("__init__",
           [](WriteItem* w, std::string name, const std::string& kind, const std::string& dtype,
              std::vector<std::int64_t> global_shape, std::vector<std::int64_t> chunk_offsets,
              std::vector<std::int64_t> chunk_sizes, std::uintptr_t address,
              std::uint64_t nbytes) {
             if (kind != "tensor" && kind != "bytes")
               Raise(InvalidArgument("WriteItem " + name + ": kind must be tensor or bytes"));
             new (w) WriteItem{std::move(name),
                               kind == "bytes" ? ItemKind::kBytes : ItemKind::kTensor,
                               Take(ParseDType(dtype)),
                               std::move(global_shape),
                               std::move(chunk_offsets),
                               std::move(chunk_sizes),
                               reinterpret_cast<const void*>(address),
                               nbytes};
           },
           "name"_a, "kind"_a, "dtype"_a, "global_shape"_a, "chunk_offsets"_a, "chunk_sizes"_a,
           "address"_a, "nbytes"_a)
      .def_ro("name", &WriteItem::name)
      .def_prop_ro("kind", [](const WriteItem& w) {
        return w.kind == ItemKind::kBytes ? "bytes" : "tensor";
      })
      .def_prop_ro("dtype", [](const WriteItem& w) { return std::string(DTypeName(w.dtype)); })
      .def_ro("global_shape", &WriteItem::global_shape)
      .def_ro("chunk_offsets", &WriteItem::chunk_offsets)
      .def_ro("chunk_sizes", &WriteItem::chunk_sizes)
      .def_prop_ro("address", [](const WriteItem& w) {
        return reinterpret_cast<std::uintptr_t>(w.data);
      })
      .def_ro("nbytes", &WriteItem::nbytes);
  nb::class_<PyReadRequest>(m, "ReadRequest")
      .def("__init__",
           [](PyReadRequest* r, std::string item, std::size_t chunk,
              std::vector<std::int64_t> offsets, std::vector<std::int64_t> lengths,
              std::uintptr_t address, std::uint64_t nbytes, std::vector<std::int64_t> dst_shape,
              std::vector<std::int64_t> dst_offsets, std::vector<std::int64_t> chunk_at) {
             new (r) PyReadRequest{std::move(item),      chunk,   std::move(offsets),
                                   std::move(lengths),   address, nbytes,
                                   std::move(dst_shape), std::move(dst_offsets),
                                   std::move(chunk_at)};
           },
           "item"_a, "chunk"_a = 0, "offsets"_a = std::vector<std::int64_t>{},
           "lengths"_a = std::vector<std::int64_t>{}, "address"_a, "nbytes"_a,
           "dst_shape"_a = std::vector<std::int64_t>{},
           "dst_offsets"_a = std::vector<std::int64_t>{},
           "chunk_at"_a = std::vector<std::int64_t>{})
      .def_ro("item", &PyReadRequest::item)
      .def_ro("chunk", &PyReadRequest::chunk)
      .def_ro("nbytes", &PyReadRequest::nbytes);
}

// What the core returns: read-only, named fields.
void BindResults(nb::module_& m) {
  nb::class_<RankResult>(m, "RankResult")
      .def_ro("shard_path", &RankResult::shard_path)
      .def_ro("bytes", &RankResult::bytes)
      .def_ro("seconds", &RankResult::seconds)
      .def_ro("backend", &RankResult::backend)
      .def_ro("direct_io", &RankResult::direct_io)
      .def_ro("copied_bytes", &RankResult::copied_bytes)
      .def_prop_ro("index", [](const RankResult& r) {
        return nb::bytes(r.index.data(), r.index.size());
      });
  nb::class_<CommitResult>(m, "CommitResult")
      .def_ro("name", &CommitResult::name)
      .def_ro("dir", &CommitResult::dir)
      .def_ro("bytes", &CommitResult::bytes)
      .def_ro("latest_updated", &CommitResult::latest_updated)
      .def_ro("latest_error", &CommitResult::latest_error)
      .def_ro("export_error", &CommitResult::export_error);
  nb::class_<ExportInfo>(m, "ExportInfo")
      .def_prop_ro("state", [](const ExportInfo& e) { return std::string(ExportStateName(e.state)); })
      .def_ro("detail", &ExportInfo::detail);
  nb::class_<CheckpointInfo>(m, "CheckpointInfo")
      .def_prop_ro("state",
                   [](const CheckpointInfo& c) { return std::string(CheckpointStateName(c.state)); })
      .def_ro("name", &CheckpointInfo::name)
      .def_ro("dir_name", &CheckpointInfo::dir_name)
      .def_ro("step", &CheckpointInfo::step)
      .def_ro("world_size", &CheckpointInfo::world_size)
      .def_ro("bytes", &CheckpointInfo::bytes)
      .def_ro("created_unix", &CheckpointInfo::created_unix)
      .def_ro("save_id", &CheckpointInfo::save_id)
      .def_ro("items", &CheckpointInfo::items)
      .def_ro("is_latest", &CheckpointInfo::is_latest)
      .def_ro("active", &CheckpointInfo::active)
      .def_ro("problem", &CheckpointInfo::problem)
      .def_ro("export_info", &CheckpointInfo::export_info);
  nb::class_<GcReport>(m, "GcReport")
      .def_ro("removed_staging", &GcReport::removed_staging)
      .def_ro("removed_checkpoints", &GcReport::removed_checkpoints)
      .def_ro("kept", &GcReport::kept)
      .def_ro("kept_unexported", &GcReport::kept_unexported)
      .def_ro("newest_valid", &GcReport::newest_valid)
      .def_ro("errors", &GcReport::errors)
      .def_ro("dry_run", &GcReport::dry_run);
  nb::class_<VerifyProblem>(m, "VerifyProblem")
      .def_ro("file", &VerifyProblem::file)
      .def_prop_ro("code", [](const VerifyProblem& p) { return std::string(StatusCodeName(p.status.code())); })
      .def_prop_ro("message", [](const VerifyProblem& p) { return ToValidUtf8(p.status.message()); });
  nb::class_<VerifyReport>(m, "VerifyReport")
      .def_ro("bytes_checked", &VerifyReport::bytes_checked)
      .def_ro("files_checked", &VerifyReport::files_checked)
      .def_ro("problems", &VerifyReport::problems);
  nb::class_<StagingStats>(m, "StagingStats")
      .def_ro("allocations", &StagingStats::allocations)
      .def_ro("reserved_bytes", &StagingStats::reserved_bytes)
      .def_ro("leased_bytes", &StagingStats::leased_bytes)
      .def_ro("slabs", &StagingStats::slabs)
      .def_ro("leased", &StagingStats::leased);
}

void BindRepository(nb::module_& m) {
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
      .def("commit_gathered", &PyRepository::CommitGathered, "spec"_a, "indexes"_a)
      .def("wait_committed", &PyRepository::WaitCommitted, "spec"_a, "timeout_s"_a)
      .def("report_failure", &PyRepository::ReportFailure, "spec"_a, "why"_a)
      .def("lock_for_writing", &PyRepository::LockForWriting)
      .def("filesystem_summary", &PyRepository::FilesystemSummary)
      .def("list", &PyRepository::List, "with_exports"_a = false)
      .def("latest", &PyRepository::Latest)
      .def("delete", &PyRepository::Delete, "name"_a, "damaged_too"_a = false)
      .def("install", &PyRepository::Install, "name"_a, "files"_a, "data"_a)
      .def("gc", &PyRepository::Gc, "keep_last"_a = nb::none(), "keep_every"_a = nb::none(),
           "dry_run"_a = false, "grace_s"_a = nb::none(), "verify"_a = false);
  nb::class_<PyReader>(m, "Reader")
      .def(nb::init<const std::string&, const nb::dict&>(), "dir"_a, "options"_a)
      .def("manifest_json", &PyReader::ManifestJson)
      .def("header", &PyReader::Header)
      .def("item_names", &PyReader::ItemNames)
      .def("item", &PyReader::Item, "name"_a)
      .def("item_part", &PyReader::ItemPart, "name"_a, "offsets"_a, "sizes"_a)
      .def("item_parts", &PyReader::ItemParts, "queries"_a)
      .def("item_headers", &PyReader::ItemHeaders)
      .def("metadata_bytes_read", &PyReader::MetadataBytesRead)
      .def("read", &PyReader::Read, "requests"_a)
      .def("check_files", &PyReader::CheckFiles)
      .def("verify", &PyReader::Verify);
}

void BindStaging(nb::module_& m) {
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
}

}  // namespace
}  // namespace shardwise::python

NB_MODULE(_core, m) {
  using namespace shardwise::python;
  m.doc() = "shardwise C++ core (internal; use the shardwise package)";
  m.attr("__version__") = std::string(shardwise::Version());
  m.attr("MANIFEST_NAME") = std::string(shardwise::names::kManifest);
  BindErrors(m);
  BindSaveTypes(m);
  BindResults(m);
  BindRepository(m);
  BindStaging(m);
  m.def("parse_size", [](const std::string& text) -> std::uint64_t {
    return Take(shardwise::ParseSize(text));
  }, "text"_a);
  m.def("cli_main", &CliMain, "argv"_a, "direct"_a = false);
  // Checks engine options (and the SHARDWISE_* environment) as a save or
  // load would, opening nothing: constructors fail at once on a bad one.
  m.def("check_options", [](const nb::dict& d) { (void)MakeOptions(d); }, "options"_a);
  m.def(
      "check_target",
      [](const std::string& dir, bool replace) {
        Check(shardwise::Repository::CheckTarget(dir, replace));
      },
      "dir"_a, "replace"_a);
}
