// moe_bench_store: decode throughput of a layer stack whose experts live on disk, against the
// same stack in memory, for cache budgets, eviction policies and prefetch (issue #14 item 7).
//
//   moe_bench_store [--layers N] [--tokens N] [--small] [--zipf S] [--rho R]
//                   [--budgets F,F,...] [--dir DIR] [--no-cold] [--json FILE]
//
// The model: N layers (default 8) at the OLMoE-scaled shape of bench_shapes.hpp (64 SwiGLU
// experts of d 1024 x ff 512, top-8, 6 MiB of float weights each; 384 MiB per layer), with
// residual connections (moe::LayerStack). The experts are written to one safetensors file per
// layer under DIR (default /tmp/moe_store_bench); the routers stay in memory. Routing skew is
// realistic in the two ways the issue names:
//   * popularity: each layer's router has a bias b_e = -S * ln(1 + rank_e) (rank a random
//     permutation per layer), so expert popularity falls off as a Zipf law of exponent about S
//     (--zipf, default 1); the run prints the measured share of the most popular experts;
//   * locality: token t's input is rho * x_{t-1} + sqrt(1 - rho^2) * noise (--rho, default
//     0.8), so consecutive tokens share experts, as consecutive tokens of a text do.
// Each configuration decodes the --tokens tokens (default 64) four times, one token per forward
// (T = 1, the decode case), on one thread (the prefetch thread, where on, is a second): the
// first pass fills the cache, the next three are timed and the fastest counts (hit rate and
// bytes from the first of them). So the timed figures are the steady state:
// a miss is a capacity miss, not the first use of an expert (whose cost is mostly the first
// touch of fresh memory, large in a virtual machine); the in-memory stack is timed the same
// way. The first pass's hit rate is printed beside. Reported per configuration: tokens/s and its ratio to
// the in-memory stack's, the hit rate of the timed tokens, MiB read per token, and for prefetch
// the loads it placed and the share a call then used. Every configuration's outputs are
// compared bit for bit with the in-memory stack's; a difference fails the run.
//
// Configurations: budgets of 100, 50, 25 and 12.5 % of all experts (--budgets 1,0.5,...), each with LRU,
// frequency-weighted LRU, and each of those with the prefetch thread fed by the next layer's
// router applied to this layer's input (moe::store::predict_experts). "warm" runs have the
// files in the page cache (the first configuration read them); "cold" runs (the 50 % budget,
// unless --no-cold) drop the files from the page cache between the warm-up pass and the timed
// one with posix_fadvise(DONTNEED),
// which needs no privileges and works where the kernel honours it (the run reports the file
// bytes still cached, from mincore, so a cold row says whether it really was cold).
// --small: 4 layers of 16 experts of d 256 x ff 256 (a quick check of the program itself).
#include <moe/io/expert_source.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/kernels/arch.hpp>
#include <moe/layer/layer_stack.hpp>
#include <moe/moe.hpp>
#include <moe/store/expert_store.hpp>
#include <moe/store/on_demand_swiglu.hpp>

#include "bench_shapes.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using S = float;
using moe::Index;
namespace fs = std::filesystem;
using Source = moe::io::SwiGLUExpertSource<S>;
using Memory = moe::OlmoeMoE<S>;
template <class Policy>
using OnDemand = moe::MoELayer<moe::store::OnDemandSwiGLU<S>, moe::SoftmaxTopKRouter<S>, moe::WeightedSumCombiner<S>,
                               xsimd::default_arch, moe::store::OnDemandExecutor<Source, Policy>>;

struct Options {
  Index layers = 8;
  int tokens = 64;
  bool small = false;
  double zipf = 1.0;
  double rho = 0.8;
  std::string dir = "/tmp/moe_store_bench";
  bool cold = true;
  std::string json_path;
  std::vector<double> budgets{1.0, 0.5, 0.25, 0.125};
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " expected a value, got none");
      return argv[++i];
    };
    if (a == "--layers") o.layers = std::stol(value());
    else if (a == "--tokens") o.tokens = std::stoi(value());
    else if (a == "--small") o.small = true;
    else if (a == "--zipf") o.zipf = std::stod(value());
    else if (a == "--rho") o.rho = std::stod(value());
    else if (a == "--dir") o.dir = value();
    else if (a == "--no-cold") o.cold = false;
    else if (a == "--json") o.json_path = value();
    else if (a == "--budgets") {
      o.budgets.clear();
      std::string list = value();
      for (std::size_t at = 0; at <= list.size();) {
        const std::size_t comma = std::min(list.find(',', at), list.size());
        o.budgets.push_back(std::stod(list.substr(at, comma - at)));
        at = comma + 1;
      }
    }
    else throw std::invalid_argument("unknown option " + a + " (see the comment at the top of bench/store_bench.cpp)");
  }
  if (o.layers < 1 || o.tokens < 1) throw std::invalid_argument("--layers, --tokens expected >= 1");
  return o;
}

/// Timed passes over the tokens after the warm-up pass; the fastest counts (this machine is
/// shared and its speed drifts).
constexpr int kTimedPasses = 3;

std::string layer_prefix(Index l) { return "model.layers." + std::to_string(l) + ".mlp."; }
fs::path layer_file(const Options& o, Index l) { return fs::path(o.dir) / ("layer" + std::to_string(l) + ".safetensors"); }

/// Layer l: bench_shapes' initialisation with seeds per layer, and the Zipf bias.
Memory make_layer(const moe_bench::Shape& s, Index l, double zipf) {
  const auto seed = static_cast<std::uint64_t>(10 * l);
  moe::SwiGLUExperts<S> experts(s.num_experts, s.d_model, s.d_ff);
  moe_bench::fill_normal(experts.gate_up(), seed + 1, 1.0 / std::sqrt(double(s.d_model)));
  moe_bench::fill_normal(experts.down(), seed + 2, 1.0 / std::sqrt(double(s.d_ff)));
  moe::SoftmaxTopKRouter<S> router(s.num_experts, s.d_model, s.top_k, moe::SoftmaxTopK<S>{.renormalize = s.renormalize});
  moe_bench::fill_normal(router.weight(), seed + 3, 1.0 / std::sqrt(double(s.d_model)));
  std::vector<Index> rank(static_cast<std::size_t>(s.num_experts));
  std::iota(rank.begin(), rank.end(), Index{0});
  std::mt19937_64 gen(seed + 4);
  std::shuffle(rank.begin(), rank.end(), gen);
  router.bias() = moe::Vector<S>(s.num_experts);
  for (Index e = 0; e < s.num_experts; ++e)
    router.bias()(e) = static_cast<S>(-zipf * std::log1p(double(rank[static_cast<std::size_t>(e)])));
  return Memory(std::move(experts), std::move(router));
}

void save_experts(const Memory& layer, const fs::path& file, Index l) {
  moe::io::SafetensorsWriter w;
  const auto& x = layer.experts();
  const Index d = x.input_dim(), ff = x.d_ff();
  for (Index e = 0; e < x.num_experts(); ++e) {
    const std::string p = layer_prefix(l) + "experts." + std::to_string(e) + ".";
    const auto add = [&](const std::string& name, const auto& m, Index rows, Index cols) {
      const moe::RowMatrix<S> copy = m;  // contiguous rows
      w.add<S>(p + name, {rows, cols}, std::span<const S>(copy.data(), static_cast<std::size_t>(copy.size())));
    };
    add("gate_proj.weight", x.gate_proj(e), ff, d);
    add("up_proj.weight", x.up_proj(e), ff, d);
    add("down_proj.weight", x.down_proj(e), d, ff);
  }
  w.save(file);
}

/// Bytes of the file in the page cache (mincore), for the cold rows.
std::size_t cached_bytes(const fs::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  struct stat st {};
  ::fstat(fd, &st);
  const auto size = static_cast<std::size_t>(st.st_size);
  std::size_t cached = 0;
  void* map = size > 0 ? ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
  if (map != MAP_FAILED) {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    std::vector<unsigned char> in((size + page - 1) / page);
    if (::mincore(map, size, in.data()) == 0)
      for (unsigned char c : in) cached += (c & 1U) != 0 ? page : 0;
    ::munmap(map, size);
  }
  ::close(fd);
  return std::min(cached, size);
}

void drop_from_page_cache(const fs::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

/// The token inputs: x_t = rho x_{t-1} + sqrt(1 - rho^2) z_t, z ~ N(0, 1).
std::vector<moe::RowMatrix<S>> token_inputs(Index d, int n, double rho) {
  std::mt19937_64 gen(77);
  std::normal_distribution<S> normal(0, 1);
  std::vector<moe::RowMatrix<S>> out;
  moe::RowMatrix<S> x(1, d);
  for (Index j = 0; j < d; ++j) x(0, j) = normal(gen);
  const auto a = static_cast<S>(rho), b = static_cast<S>(std::sqrt(1 - rho * rho));
  for (int t = 0; t < n; ++t) {
    for (Index j = 0; j < d; ++j) x(0, j) = a * x(0, j) + b * normal(gen);
    out.push_back(x);
  }
  return out;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Row {
  std::string budget, policy, prefetch, files;
  double budget_fraction = 1;
  double memory_tokens_per_s = 0, tokens_per_s = 0, ratio = 0, hit_rate = 0, first_hit_rate = 0, mib_per_token = 0;
  std::uint64_t placed = 0, used = 0;
  double cached_fraction = 1;
  bool identical = true;
};

template <class Policy>
Row run_store(const Options& o, const moe::LayerStack<Memory>& memory, double fraction, bool prefetch, bool cold,
              const std::vector<moe::RowMatrix<S>>& inputs, const std::vector<moe::RowMatrix<S>>& expected,
              double memory_tokens_per_s) {
  const Index L = memory.num_layers(), E = memory.layer(0).num_experts();
  std::vector<std::shared_ptr<const Source>> sources;
  for (Index l = 0; l < L; ++l)
    sources.push_back(std::make_shared<const Source>(moe::io::LazyCheckpoint::open(layer_file(o, l)), layer_prefix(l), E));
  const std::size_t one = sources[0]->expert_bytes();
  const auto experts = std::max<std::size_t>(prefetch ? 2 : 1, static_cast<std::size_t>(std::llround(fraction * double(L * E))));
  const moe::store::ExpertStore<Source, Policy> store(sources, experts * one, {}, moe::store::PrefetchOptions{prefetch, false});
  std::vector<OnDemand<Policy>> layers;
  for (Index l = 0; l < L; ++l)
    layers.emplace_back(moe::store::OnDemandSwiGLU<S>(E, sources[0]->d_model(), sources[0]->d_ff(), sources[0]->bank_names()),
                        memory.layer(l).router(), moe::WeightedSumCombiner<S>{}, moe::Capacity{},
                        store.executor(l));
  const moe::LayerStack<OnDemand<Policy>> stack(std::move(layers));
  Row row;
  row.budget_fraction = fraction;
  std::vector<moe::Workspace<S>> ws;
  const auto hook = [&](Index l, const moe::ConstMatrixRef<S>& h) {
    if (prefetch && l + 1 < L) store.prefetch(l + 1, moe::store::predict_experts(stack.layer(l + 1).router(), h));
  };
  const auto n = inputs.size();
  moe::store::CallStats first, timed;
  double t0 = 0, best = 0;
  for (int pass = 0; pass < 1 + kTimedPasses; ++pass) {
    if (pass == 1 && cold) {  // the warm-up pass read the files: drop them before the timed one
      std::size_t cached = 0, total = 0;
      for (Index l = 0; l < L; ++l) {
        drop_from_page_cache(layer_file(o, l));
        cached += cached_bytes(layer_file(o, l));
        total += static_cast<std::size_t>(fs::file_size(layer_file(o, l)));
      }
      row.cached_fraction = double(cached) / double(total);
    }
    t0 = now_s();
    for (std::size_t t = 0; t < n; ++t) {
      moe::store::CallStats calls;
      moe::RowMatrix<S> y;
      {
        moe::store::StatsScope scope(calls);
        y = stack.forward(inputs[t], ws, {}, hook);
      }
      if (pass == 0) first += calls;
      if (pass == 1) timed += calls;
      row.identical = row.identical && y.rows() == expected[t].rows() &&
                      std::memcmp(y.data(), expected[t].data(), sizeof(S) * static_cast<std::size_t>(y.size())) == 0;
    }
    if (pass >= 1) best = pass == 1 ? now_s() - t0 : std::min(best, now_s() - t0);
  }
  const double seconds = best;
  store.wait_prefetch_idle();
  row.tokens_per_s = o.tokens / seconds;
  row.memory_tokens_per_s = memory_tokens_per_s;
  row.ratio = row.tokens_per_s / memory_tokens_per_s;
  const auto rate = [](const moe::store::CallStats& c) {
    return c.hits + c.misses > 0 ? double(c.hits) / double(c.hits + c.misses) : 1.0;
  };
  row.hit_rate = rate(timed);
  row.first_hit_rate = rate(first);
  row.mib_per_token = double(timed.bytes_read) / o.tokens / (1024.0 * 1024.0);
  const auto p = store.cache().prefetch_totals();
  row.placed = p.placed;
  row.used = p.used;
  return row;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  moe_bench::Shape shape = moe_bench::kOlmoeScaled;
  Index L = o.layers;
  if (o.small) {
    shape = moe_bench::Shape{"small", 256, 256, 16, 4, false};
    L = std::min<Index>(L, 4);
  }
  std::printf("moe_bench_store: %lld layers of %s (E %lld, top-%lld, d %lld, ff %lld; %.1f MiB per expert), T = 1\n",
              static_cast<long long>(L), shape.name, static_cast<long long>(shape.num_experts),
              static_cast<long long>(shape.top_k), static_cast<long long>(shape.d_model),
              static_cast<long long>(shape.d_ff), 3.0 * double(shape.d_model * shape.d_ff) * sizeof(S) / 1048576.0);
  std::printf("kernel architecture: %s; zipf %.2f, rho %.2f; %d tokens, a warm-up pass then a timed one, per configuration\n",
              xsimd::default_arch::name(), o.zipf, o.rho, o.tokens);
  fs::create_directories(o.dir);
  std::vector<Memory> memory;
  const double tw = now_s();
  for (Index l = 0; l < L; ++l) {
    memory.push_back(make_layer(shape, l, o.zipf));
    save_experts(memory.back(), layer_file(o, l), l);
  }
  // Written back before anything is timed: dirty pages flushed by the kernel in the background
  // would slow the first configurations.
  for (Index l = 0; l < L; ++l) {
    const int fd = ::open(layer_file(o, l).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
  }
  std::printf("wrote %lld files under %s in %.1f s\n", static_cast<long long>(L), o.dir.c_str(), now_s() - tw);

  const moe::LayerStack<Memory> in_memory(std::move(memory));  // one copy of the weights in memory
  const auto inputs = token_inputs(shape.d_model, o.tokens, o.rho);
  std::vector<moe::RowMatrix<S>> expected;
  std::vector<moe::Workspace<S>> ws;
  std::vector<Index> popularity(static_cast<std::size_t>(L * shape.num_experts), 0);
  for (const auto& x : inputs) {  // the warm-up pass
    expected.push_back(in_memory.forward(x, ws));
    for (Index l = 0; l < L; ++l)
      for (Index e = 0; e < shape.num_experts; ++e)
        popularity[static_cast<std::size_t>(l * shape.num_experts + e)] += ws[static_cast<std::size_t>(l)].plan.count(e);
  }
  // Timed again just before each configuration, so each ratio pairs two measurements taken
  // close together (this machine's speed drifts; the first 8-layer run here measured the
  // in-memory stack at a quarter of its later speed).
  const auto time_in_memory = [&] {
    double best = 0;
    for (int pass = 0; pass < kTimedPasses; ++pass) {
      const double t0 = now_s();
      for (const auto& x : inputs) (void)in_memory.forward(x, ws);
      best = pass == 0 ? now_s() - t0 : std::min(best, now_s() - t0);
    }
    return o.tokens / best;
  };
  const double memory_tps = time_in_memory();
  std::sort(popularity.begin(), popularity.end(), std::greater<>());
  const double total = double(std::accumulate(popularity.begin(), popularity.end(), Index{0}));
  const auto share = [&](double top) {
    const auto m = static_cast<std::size_t>(std::ceil(top * double(popularity.size())));
    return double(std::accumulate(popularity.begin(), popularity.begin() + static_cast<std::ptrdiff_t>(m), Index{0})) / total;
  };
  std::printf("routing skew: the top 10 %% of experts take %.0f %% of assignments, the top 50 %% take %.0f %%\n",
              100 * share(0.1), 100 * share(0.5));
  std::printf("in memory: %.2f tokens/s (the first timing; each row's ratio uses its own, just before)\n\n", memory_tps);

  std::vector<Row> rows;
  std::printf("%-7s %-6s %-10s %-8s %9s %9s %6s %6s %7s %8s %7s %5s\n", "budget", "files", "policy", "prefetch",
              "in-mem/s", "tokens/s", "ratio", "hits", "(first)", "MiB/tok", "placed", "used");
  const auto report = [&](Row r, const std::string& budget, const std::string& policy, bool prefetch, bool cold) {
    r.budget = budget;
    r.policy = policy;
    r.prefetch = prefetch ? "next-layer" : "off";
    r.files = cold ? "cold" : "warm";
    std::printf("%-7s %-6s %-10s %-8s %9.2f %9.2f %6.2f %5.1f%% %6.1f%% %8.1f %7llu %4.0f%%%s\n", budget.c_str(),
                r.files.c_str(), policy.c_str(), prefetch ? "on" : "off", r.memory_tokens_per_s, r.tokens_per_s, r.ratio,
                100 * r.hit_rate,
                100 * r.first_hit_rate, r.mib_per_token,
                static_cast<unsigned long long>(r.placed), r.placed > 0 ? 100.0 * double(r.used) / double(r.placed) : 0.0,
                cold ? (" (page cache held " + std::to_string(int(std::lround(100 * r.cached_fraction))) + " %)").c_str() : "");
    std::fflush(stdout);
    rows.push_back(r);
  };
  for (const double fraction : o.budgets) {
    char name[16];
    std::snprintf(name, sizeof name, "%g%%", 100 * fraction);
    for (bool prefetch : {false, true}) {
      report(run_store<moe::store::LruPolicy>(o, in_memory, fraction, prefetch, false, inputs, expected, time_in_memory()), name,
             "lru", prefetch, false);
      report(run_store<moe::store::FrequencyLruPolicy>(o, in_memory, fraction, prefetch, false, inputs, expected, time_in_memory()),
             name, "freq-lru", prefetch, false);
    }
  }
  if (o.cold)
    for (bool prefetch : {false, true})
      report(run_store<moe::store::FrequencyLruPolicy>(o, in_memory, 0.5, prefetch, true, inputs, expected, time_in_memory()), "50%",
             "freq-lru", prefetch, true);

  bool identical = true;
  for (const Row& r : rows) identical = identical && r.identical;
  std::printf("\noutputs bit-identical to the in-memory stack in every configuration: %s\n", identical ? "yes" : "NO");
  double best50 = 0;
  for (const Row& r : rows)
    if (r.budget == "50%" && r.files == "warm") best50 = std::max(best50, r.ratio);
  std::printf("goal (issue #14): at a 50 %% budget, warm files, >= 0.70 of the in-memory tokens/s: best %.2f, %s\n", best50,
              best50 >= 0.70 ? "met" : "NOT met");
  if (!o.json_path.empty()) {
    std::ofstream j(o.json_path);
    j << "{\"shape\":\"" << shape.name << "\",\"layers\":" << L << ",\"arch\":\"" << xsimd::default_arch::name()
      << "\",\"memory_tokens_per_s\":" << memory_tps << ",\"rows\":[";
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      j << (i ? "," : "") << "{\"budget\":" << r.budget_fraction << ",\"files\":\"" << r.files << "\",\"policy\":\""
        << r.policy << "\",\"prefetch\":\"" << r.prefetch << "\",\"tokens_per_s\":" << r.tokens_per_s
        << ",\"memory_tokens_per_s\":" << r.memory_tokens_per_s << ",\"ratio\":" << r.ratio << ",\"hit_rate\":" << r.hit_rate << ",\"first_pass_hit_rate\":" << r.first_hit_rate << ",\"mib_per_token\":" << r.mib_per_token
        << ",\"prefetch_placed\":" << r.placed << ",\"prefetch_used\":" << r.used
        << ",\"cached_fraction\":" << r.cached_fraction << ",\"identical\":" << (r.identical ? "true" : "false") << "}";
    }
    j << "]}\n";
  }
  return identical ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "moe_bench_store: %s\n", e.what());
  return 2;
}
