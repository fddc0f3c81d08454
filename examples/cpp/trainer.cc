// A small C++ "trainer" that checkpoints through shardwise's public API only.
//
// It fits a linear model y = W x with SGD on synthetic data, saves its
// weights, momentum and step every --save-every steps, and on start resumes
// from the newest committed checkpoint. Because training is deterministic,
// an interrupted-and-resumed run ends with exactly the weights of an
// uninterrupted one; the last line prints a fingerprint of them to check.
//
//   example_trainer ROOT --steps 200 --save-every 50 [--keep-last 2] [--step-ms 5]
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "shardwise/shardwise.h"

namespace sw = shardwise;

namespace {

constexpr int kIn = 64, kOut = 32;

struct State {
  std::vector<float> weight = std::vector<float>(kIn * kOut, 0.f);
  std::vector<float> momentum = std::vector<float>(kIn * kOut, 0.f);
  std::int64_t step = 0;
};

// Deterministic data: sample i of a fixed "true" linear map plus noise.
float Target(int o, int i, const float* x) {
  float y = 0;
  for (int k = 0; k < kIn; ++k) y += std::sin(0.1f * static_cast<float>(o * kIn + k)) * x[k];
  return y + 0.01f * std::cos(static_cast<float>(i));
}

float TrainStep(State& s) {
  float x[kIn];
  for (int k = 0; k < kIn; ++k)
    x[k] = std::cos(0.37f * static_cast<float>(s.step * kIn + k));
  float loss = 0;
  for (int o = 0; o < kOut; ++o) {
    float y = 0;
    for (int k = 0; k < kIn; ++k) y += s.weight[o * kIn + k] * x[k];
    float e = y - Target(o, static_cast<int>(s.step), x);
    loss += e * e;
    for (int k = 0; k < kIn; ++k) {
      float& m = s.momentum[o * kIn + k];
      m = 0.9f * m + e * x[k];
      s.weight[o * kIn + k] -= 0.01f * m;
    }
  }
  ++s.step;
  return loss / kOut;
}

std::vector<sw::WriteItem> Items(State& s) {
  std::vector<sw::WriteItem> items(3);
  items[0].name = "model.weight";
  items[0].dtype = sw::DType::kFloat32;
  items[0].global_shape = {kOut, kIn};
  items[0].data = s.weight.data();
  items[0].nbytes = s.weight.size() * sizeof(float);
  items[1] = items[0];
  items[1].name = "optim.momentum";
  items[1].data = s.momentum.data();
  items[2].name = "trainer.step";
  items[2].dtype = sw::DType::kInt64;
  items[2].global_shape = {};
  items[2].data = &s.step;
  items[2].nbytes = sizeof(s.step);
  return items;
}

sw::Status Restore(sw::Repository& repo, State& s, bool* resumed) {
  *resumed = false;
  auto latest = repo.Latest();
  if (!latest.ok()) return latest.status();
  if (!*latest) return sw::Status::Ok();
  auto reader = repo.OpenCheckpoint(**latest);
  if (!reader.ok()) return reader.status();
  auto& r = **reader;
  for (auto [name, ptr, bytes] :
       {std::tuple{"model.weight", static_cast<void*>(s.weight.data()), s.weight.size() * 4},
        std::tuple{"optim.momentum", static_cast<void*>(s.momentum.data()), s.momentum.size() * 4},
        std::tuple{"trainer.step", static_cast<void*>(&s.step), sizeof(s.step)}}) {
    sw::Status st = r.ReadItem(name, ptr, bytes);
    if (!st.ok()) return st;
  }
  *resumed = true;
  return sw::Status::Ok();
}

std::uint64_t Fingerprint(const State& s) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a over the bytes
  auto mix = [&](const void* p, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      h ^= static_cast<const unsigned char*>(p)[i];
      h *= 1099511628211ull;
    }
  };
  mix(s.weight.data(), s.weight.size() * 4);
  mix(s.momentum.data(), s.momentum.size() * 4);
  mix(&s.step, sizeof s.step);
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help") {
    std::fprintf(stderr,
                 "usage: %s ROOT [--steps N] [--save-every K] [--keep-last M] [--step-ms T]\n"
                 "Trains a small linear model, checkpointing into ROOT with shardwise;\n"
                 "resumes from the newest checkpoint in ROOT.\n",
                 argv[0]);
    return 2;
  }
  std::string root = argv[1];
  std::int64_t steps = 200, save_every = 50;
  int keep_last = 0;
  int step_ms = 0;  // simulated compute per step, so a demo can kill it mid-run
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    long long v = std::atoll(argv[i + 1]);
    if (flag == "--steps") steps = v;
    else if (flag == "--save-every") save_every = v;
    else if (flag == "--keep-last") keep_last = static_cast<int>(v);
    else if (flag == "--step-ms") step_ms = static_cast<int>(v);
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (save_every < 1 || steps < 0) {
    std::fprintf(stderr, "--save-every must be >= 1 and --steps >= 0\n");
    return 2;
  }
  auto options = sw::Options::FromEnv();
  if (!options.ok()) {
    std::fprintf(stderr, "%s\n", options.status().ToString().c_str());
    return 2;
  }
  auto repo = sw::Repository::Open(root, *options);
  if (!repo.ok()) {
    std::fprintf(stderr, "%s\n", repo.status().ToString().c_str());
    return 1;
  }
  State state;
  bool resumed = false;
  if (sw::Status st = Restore(**repo, state, &resumed); !st.ok()) {
    std::fprintf(stderr, "restore failed: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("%s step %lld\n", resumed ? "resumed from" : "starting at",
              static_cast<long long>(state.step));
  float loss = 0;
  while (state.step < steps) {
    loss = TrainStep(state);
    if (step_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(step_ms));
    if (state.step % save_every == 0) {
      sw::SaveSpec spec;
      spec.step = state.step;
      auto items = Items(state);
      auto saved = (*repo)->Save(spec, items);
      if (!saved.ok()) {
        std::fprintf(stderr, "save failed: %s\n", saved.status().ToString().c_str());
        return 1;
      }
      std::printf("step %lld loss %.6f saved %s\n", static_cast<long long>(state.step), loss,
                  saved->name.c_str());
      std::fflush(stdout);
      if (keep_last > 0) {
        sw::GcOptions gc;
        gc.keep_last = keep_last;
        if (auto r = (*repo)->Gc(gc); !r.ok()) {
          std::fprintf(stderr, "gc failed: %s\n", r.status().ToString().c_str());
          return 1;
        }
      }
    }
  }
  std::printf("done at step %lld, fingerprint %016llx\n", static_cast<long long>(state.step),
              static_cast<unsigned long long>(Fingerprint(state)));
  return 0;
}
