// Announced memory (io/registered_memory.h): a map of regions by address
// and the holders to tell when one goes, under one lock.
#include "io/registered_memory.h"

#include <algorithm>
#include <map>
#include <utility>
#include <vector>

namespace shardwise::io {
namespace {

struct Registry {
  std::mutex mu;
  std::uint64_t next_id = 1;
  std::map<const std::byte*, announced::Region> by_base;
  std::vector<announced::Holder*> holders;
};

Registry& Get() {
  static auto* r = new Registry;  // never destroyed: memory may go during exit
  return *r;
}

}  // namespace

AnnouncedMemory::AnnouncedMemory(const std::byte* base, std::uint64_t bytes) {
  if (!base || bytes == 0) return;
  Registry& r = Get();
  std::lock_guard lock(r.mu);
  id_ = r.next_id++;
  r.by_base[base] = {id_, base, bytes};
}

AnnouncedMemory::~AnnouncedMemory() { Withdraw(); }

AnnouncedMemory::AnnouncedMemory(AnnouncedMemory&& o) noexcept : id_(std::exchange(o.id_, 0)) {}

AnnouncedMemory& AnnouncedMemory::operator=(AnnouncedMemory&& o) noexcept {
  if (this != &o) {
    Withdraw();
    id_ = std::exchange(o.id_, 0);
  }
  return *this;
}

void AnnouncedMemory::Withdraw() {
  if (id_ == 0) return;
  Registry& r = Get();
  std::lock_guard lock(r.mu);
  std::erase_if(r.by_base, [&](const auto& e) { return e.second.id == id_; });
  for (announced::Holder* h : r.holders) h->Forget(id_);
  id_ = 0;
}

namespace announced {

std::unique_lock<std::mutex> Lock() { return std::unique_lock(Get().mu); }

void AddHolder(Holder* h) { Get().holders.push_back(h); }

void RemoveHolder(Holder* h) { std::erase(Get().holders, h); }

Region Find(const std::byte* p, std::uint64_t n) {
  auto& by_base = Get().by_base;
  auto it = by_base.upper_bound(p);  // the first region starting after p
  if (it == by_base.begin()) return {};
  const Region& r = std::prev(it)->second;
  const auto end = reinterpret_cast<std::uintptr_t>(p) + n;
  if (end > reinterpret_cast<std::uintptr_t>(r.base) + r.bytes) return {};
  return r;
}

}  // namespace announced
}  // namespace shardwise::io
