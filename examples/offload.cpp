// offload: run a layer stack whose experts stay on disk, in a memory budget you choose
// (docs/store.md).
//
//   ./offload [--budget PERCENT] [--layers N] [--tokens N] [--policy lru|freq-lru] [--prefetch]
//             [--timing] [--dir DIR]
//
// Builds a small model (N layers of 16 SwiGLU experts, top-2, residual connections), saves each
// layer as a sharded checkpoint (one file per expert and an index, as Hugging Face shards large
// models), then decodes --tokens tokens one at a time twice: with every expert in memory,
// and with the experts read on demand into one cache of PERCENT % of them shared by all layers
// (moe::store::ExpertStore). It prints the cache's hits, misses, evictions and bytes read, and
// checks the two stacks' outputs are the same bits. --prefetch adds the prefetch thread, fed
// with the next layer's router applied to each layer's input; --timing prints tokens/s of both
// stacks (both vary from run to run, so the checked output leaves them out).
//
// The shape of the code, for a real checkpoint:
//
//   std::vector<std::shared_ptr<const Source>> layers;          // one source per layer
//   for (l...) layers.push_back(std::make_shared<const Source>(moe::io::LazyCheckpoint::open(dir),
//                                                               prefix(l), E, names));
//   moe::store::ExpertStore<Source, moe::store::LruPolicy> store(layers, budget_bytes);
//   Layer layer_l(moe::store::OnDemandSwiGLU<S>(E, d, ff, names), router_l, {}, {}, store.executor(l));
//   moe::LayerStack<Layer> stack(std::move(layers_));
//   y = stack.forward(x, ws);
#include <moe/io/expert_source.hpp>
#include <moe/io/save_layer.hpp>
#include <moe/layer/layer_stack.hpp>
#include <moe/moe.hpp>
#include <moe/store/expert_store.hpp>
#include <moe/store/on_demand_swiglu.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "example_util.hpp"

namespace {

using S = double;  // double: the printed digits do not depend on the SIMD width
using moe::Index;
namespace fs = std::filesystem;
using Source = moe::io::SwiGLUExpertSource<S>;
using Memory = moe::MixtralMoE<S>;
template <class Policy>
using OnDemand = moe::MoELayer<moe::store::OnDemandSwiGLU<S>, moe::SoftmaxTopKRouter<S>, moe::WeightedSumCombiner<S>,
                               xsimd::default_arch, moe::store::OnDemandExecutor<Source, Policy>>;

constexpr Index E = 16, d = 64, ff = 128, k = 2;

struct Options {
  double budget_percent = 25;
  Index layers = 4;
  int tokens = 32;
  std::string policy = "lru";
  bool prefetch = false;
  bool timing = false;
  fs::path dir = fs::temp_directory_path() / "moe_offload_example";
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " expected a value, got none");
      return argv[++i];
    };
    if (a == "--budget") o.budget_percent = std::stod(value());
    else if (a == "--layers") o.layers = std::stol(value());
    else if (a == "--tokens") o.tokens = std::stoi(value());
    else if (a == "--policy") o.policy = value();
    else if (a == "--prefetch") o.prefetch = true;
    else if (a == "--timing") o.timing = true;
    else if (a == "--dir") o.dir = value();
    else throw std::invalid_argument("unknown option " + a + " (see the comment at the top of examples/offload.cpp)");
  }
  if (!(o.budget_percent > 0 && o.budget_percent <= 100))
    throw std::invalid_argument("--budget expected a percentage in (0, 100], got " + std::to_string(o.budget_percent));
  if (o.layers < 1 || o.tokens < 1) throw std::invalid_argument("--layers and --tokens expected >= 1");
  if (o.policy != "lru" && o.policy != "freq-lru")
    throw std::invalid_argument("--policy expected lru or freq-lru, got " + o.policy);
  return o;
}

std::string prefix(Index l) { return "model.layers." + std::to_string(l) + ".mlp."; }

/// Layer l: random experts; a router whose bias makes a few experts popular, as trained
/// routers do.
Memory make_layer(Index l) {
  moe::SwiGLUExperts<S> experts(E, d, ff);
  moe::examples::fill_normal(experts.gate_up(), 10 * static_cast<std::uint64_t>(l) + 1, 1 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.down(), 10 * static_cast<std::uint64_t>(l) + 2, 1 / std::sqrt(double(ff)));
  moe::SoftmaxTopKRouter<S> router(E, d, k, moe::SoftmaxTopK<S>{true});  // Mixtral's gating
  moe::examples::fill_normal(router.weight(), 10 * static_cast<std::uint64_t>(l) + 3, 1 / std::sqrt(double(d)));
  router.bias() = moe::Vector<S>(E);
  for (Index e = 0; e < E; ++e) router.bias()(e) = -std::log1p(double((e * 7 + 3 * l) % E));  // Zipf-like popularity
  return Memory(std::move(experts), std::move(router));
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <class Policy>
int run(const Options& o) {
  std::vector<Memory> memory;
  for (Index l = 0; l < o.layers; ++l) memory.push_back(make_layer(l));
  fs::remove_all(o.dir);
  fs::create_directories(o.dir);
  // Each layer as a Hugging Face sharded checkpoint: its router in one shard, each expert in
  // its own, and model.safetensors.index.json (the router's bias, which Mixtral's format does
  // not have, stays out: the routers stay in memory here anyway).
  for (Index l = 0; l < o.layers; ++l) {
    Memory plain = memory[static_cast<std::size_t>(l)];
    plain.router().bias() = moe::Vector<S>();
    moe::io::save_layer_sharded(o.dir / ("layer" + std::to_string(l)), plain, prefix(l), moe::io::Family::mixtral);
  }

  std::vector<std::shared_ptr<const Source>> sources;
  for (Index l = 0; l < o.layers; ++l)
    sources.push_back(std::make_shared<const Source>(moe::io::LazyCheckpoint::open(o.dir / ("layer" + std::to_string(l))),
                                                     prefix(l), E, moe::io::SwiGLUExpertNames::mixtral()));
  const std::size_t one = sources[0]->expert_bytes();
  const Index all = o.layers * E;
  const auto fit = std::max<Index>(o.prefetch ? 2 : 1, std::llround(o.budget_percent / 100 * double(all)));
  const moe::store::ExpertStore<Source, Policy> store(sources, static_cast<std::size_t>(fit) * one, {},
                                                      moe::store::PrefetchOptions{o.prefetch, false});
  std::vector<OnDemand<Policy>> layers;
  for (Index l = 0; l < o.layers; ++l)
    layers.emplace_back(moe::store::OnDemandSwiGLU<S>(E, d, ff, sources[0]->bank_names()),
                        memory[static_cast<std::size_t>(l)].router(), moe::WeightedSumCombiner<S>{}, moe::Capacity{},
                        store.executor(l));
  const moe::LayerStack<OnDemand<Policy>> on_disk(std::move(layers));
  const moe::LayerStack<Memory> in_memory(memory);

  // A resident expert holds its weights and the packed copy its forward reads
  // (docs/experts.md#packed-weights): expert_bytes() counts both, the files the weights alone.
  const std::size_t file_one = std::size_t(3 * d * ff) * sizeof(S);
  std::printf("offload: %ld layers x %ld experts (d %ld, ff %ld, top-%ld), %.1f KiB of weights per expert, "
              "%.2f MiB in all; %.1f KiB resident per expert with its packed copy\n",
              long(o.layers), long(E), long(d), long(ff), long(k), double(file_one) / 1024,
              double(file_one * std::size_t(all)) / 1048576, double(one) / 1024);
  std::printf("checkpoint: per layer, a router shard, %ld expert shards and model.safetensors.index.json\n", long(E));
  std::printf("budget: %g %% = %ld experts (%.2f MiB) shared by every layer, %s%s\n", o.budget_percent, long(fit),
              double(one) * double(fit) / 1048576, o.policy.c_str(),
              o.prefetch ? ", prefetch from the next layer's router" : "");

  // Consecutive tokens alike, as in text: x_t = 0.8 x_{t-1} + 0.6 z_t.
  moe::RowMatrix<S> noise(o.tokens, d), x(1, d);
  moe::examples::fill_normal(noise, 99, 1.0);
  x.setZero();
  std::vector<moe::Workspace<S>> ws_memory, ws_disk;
  moe::store::CallStats loads;
  bool identical = true;
  double t_memory = 0, t_disk = 0;
  S checksum = 0;
  for (int t = 0; t < o.tokens; ++t) {
    x = 0.8 * x + 0.6 * noise.row(t);
    auto t0 = std::chrono::steady_clock::now();
    const moe::RowMatrix<S> expected = in_memory.forward(x, ws_memory);
    t_memory += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    moe::RowMatrix<S> y;
    {
      moe::store::StatsScope scope(loads);
      y = on_disk.forward(x, ws_disk, {}, [&](Index l, const moe::ConstMatrixRef<S>& h) {
        if (o.prefetch && l + 1 < on_disk.num_layers())
          store.prefetch(l + 1, moe::store::predict_experts(on_disk.layer(l + 1).router(), h));
      });
    }
    t_disk += seconds_since(t0);
    identical = identical && std::memcmp(y.data(), expected.data(), sizeof(S) * static_cast<std::size_t>(y.size())) == 0;
    checksum += y.sum();
  }
  store.wait_prefetch_idle();
  std::printf("decoded %d tokens one at a time (sum of the outputs %.6f)\n", o.tokens, checksum);
  if (!o.prefetch) {  // with the prefetch thread these depend on timing
    std::printf("cache: %llu hits, %llu misses (hit rate %.1f %%), %llu evictions, %.2f MiB read\n",
                static_cast<unsigned long long>(loads.hits), static_cast<unsigned long long>(loads.misses),
                100.0 * double(loads.hits) / double(loads.hits + loads.misses),
                static_cast<unsigned long long>(loads.evictions), double(loads.bytes_read) / 1048576);
  } else {
    const auto p = store.cache().prefetch_totals();
    std::printf("cache: hit rate %.1f %%, %.2f MiB read by calls; prefetch placed %llu experts, %llu of them used\n",
                100.0 * double(loads.hits) / double(loads.hits + loads.misses), double(loads.bytes_read) / 1048576,
                static_cast<unsigned long long>(p.placed), static_cast<unsigned long long>(p.used));
  }
  std::printf("resident now: %.2f of %.2f MiB\n", double(store.cache().resident_bytes()) / 1048576,
              double(one) * double(fit) / 1048576);
  if (o.timing)
    std::printf("tokens/s: in memory %.0f, on disk %.0f (%.2f of it)\n", o.tokens / t_memory, o.tokens / t_disk,
                t_memory / t_disk);
  std::printf("output equals the in-memory stack bit for bit: %s\n", identical ? "yes" : "NO");
  fs::remove_all(o.dir);
  return identical ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  return o.policy == "lru" ? run<moe::store::LruPolicy>(o) : run<moe::store::FrequencyLruPolicy>(o);
} catch (const std::exception& e) {
  std::fprintf(stderr, "offload: %s\n", e.what());
  return 2;
}
