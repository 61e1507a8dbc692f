// ExpertStore: layers sharing one budget, with and without prefetch, give the in-memory
// stack's bits; deterministic prefetch statistics; errors.
#include <moe/core/thread_pool.hpp>
#include <moe/io/expert_source.hpp>
#include <moe/io/hf_loader.hpp>
#include <moe/io/save_layer.hpp>
#include <moe/layer/layer_stack.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/store/expert_store.hpp>
#include <moe/store/on_demand_swiglu.hpp>

#include <catch2/catch.hpp>
#include <support/bits.hpp>
#include <support/random.hpp>
#include <support/temp_dir.hpp>

#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace {

using moe::Index;
namespace fs = std::filesystem;
using Source = moe::io::SwiGLUExpertSource<float>;

std::string layer_prefix(Index l) { return "model.layers." + std::to_string(l) + ".block_sparse_moe."; }

template <class Policy>
using StackLayer = moe::MoELayer<moe::store::OnDemandSwiGLU<float>, moe::SoftmaxTopKRouter<float>,
                                 moe::WeightedSumCombiner<float>, xsimd::default_arch,
                                 moe::store::OnDemandExecutor<Source, Policy>>;

/// L Mixtral layers with random weights in one file; the in-memory stack read back from it.
struct Model {
  moe::test::TempDir dir;
  fs::path file;
  std::vector<moe::MixtralMoE<float>> layers;
};
Model save_model(const std::string& tag, Index L, Index E, Index d, Index ff, Index k) {
  moe::test::TempDir dir("expert_store_" + tag);
  const fs::path path = dir / "model.safetensors";
  Model m{std::move(dir), path, {}};
  moe::io::SafetensorsWriter w;
  for (Index l = 0; l < L; ++l) {
    moe::RowMatrix<float> gate = moe::test::random_matrix(E, d, 100 + static_cast<unsigned>(l)).cast<float>();
    moe::MixtralMoE<float> layer(moe::test::swiglu<float>(E, d, ff, 200 + static_cast<unsigned>(l)),
                                 moe::SoftmaxTopKRouter<float>(gate, k, moe::SoftmaxTopK<float>{true}));
    moe::io::save_layer(w, layer, layer_prefix(l), moe::io::Family::mixtral);
  }
  w.save(m.file);
  const auto file = moe::io::SafetensorsFile::open(m.file);
  for (Index l = 0; l < L; ++l) m.layers.push_back(moe::io::load_mixtral<float>(file, layer_prefix(l), {.top_k = k}));
  return m;
}

std::vector<std::shared_ptr<const Source>> sources(const Model& m) {
  std::vector<std::shared_ptr<const Source>> out;
  for (std::size_t l = 0; l < m.layers.size(); ++l)
    out.push_back(std::make_shared<const Source>(moe::io::LazyCheckpoint::open(m.file), layer_prefix(static_cast<Index>(l)),
                                                 m.layers[l].num_experts(), moe::io::SwiGLUExpertNames::mixtral()));
  return out;
}

template <class Policy>
moe::LayerStack<StackLayer<Policy>> on_demand_stack(const Model& m, const moe::store::ExpertStore<Source, Policy>& store) {
  std::vector<StackLayer<Policy>> layers;
  for (std::size_t l = 0; l < m.layers.size(); ++l) {
    const Source& s = store.source(static_cast<Index>(l));
    layers.emplace_back(moe::store::OnDemandSwiGLU<float>(s.num_experts(), s.d_model(), s.d_ff(), s.bank_names()),
                        m.layers[l].router(), moe::WeightedSumCombiner<float>{}, moe::Capacity{},
                        store.executor(static_cast<Index>(l)));
  }
  return moe::LayerStack<StackLayer<Policy>>(std::move(layers));
}

}  // namespace

TEMPLATE_TEST_CASE("layers sharing one budget give the in-memory stack's bits for every budget, policy and prefetch",
                   "[store][stack][threads]", moe::store::LruPolicy, moe::store::FrequencyLruPolicy) {
  const Index L = 3, E = 6, d = 12, ff = 20, k = 2;
  static const Model model = save_model("bits", L, E, d, ff, k);
  const moe::LayerStack<moe::MixtralMoE<float>> memory(model.layers);
  std::vector<moe::RowMatrix<float>> inputs;
  for (unsigned i = 0; i < 6; ++i)
    inputs.push_back(moe::test::random_matrix(i % 3 == 0 ? 1 : 9 * i, d, 300 + i).cast<float>());
  std::vector<moe::Workspace<float>> ref_ws;
  std::vector<moe::RowMatrix<float>> expected;
  for (const auto& x : inputs) expected.push_back(memory.forward(x, ref_ws));

  const std::size_t budget = GENERATE(std::size_t{2}, std::size_t{7}, std::size_t{18});
  const int mode = GENERATE(0, 1, 2);  // no prefetch; next-layer router; that and frequency
  const int threads = GENERATE(0, 2);
  CAPTURE(budget, mode, threads);
  std::unique_ptr<moe::ThreadPool> pool;
  if (threads > 0) pool = std::make_unique<moe::ThreadPool>(threads);
  moe::ForwardContext ctx;
  ctx.pool = pool.get();
  const moe::store::PrefetchOptions options{mode > 0, mode > 1};
  const moe::store::ExpertStore<Source, TestType> store(sources(model), budget * sources(model)[0]->expert_bytes(), {},
                                                        options);
  const auto stack = on_demand_stack(model, store);
  std::vector<moe::Workspace<float>> ws;
  moe::store::CallStats calls;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    moe::RowMatrix<float> y;
    {
      moe::store::StatsScope scope(calls);
      y = stack.forward(inputs[i], ws, ctx, [&](Index l, const moe::ConstMatrixRef<float>& h) {
        if (mode > 0 && l + 1 < stack.num_layers())
          store.prefetch(l + 1, moe::store::predict_experts(stack.layer(l + 1).router(), h));
      });
    }
    CHECK(moe::test::same_bits(y, expected[i]));
    CHECK(store.cache().resident_bytes() <= budget * store.source(0).expert_bytes());
  }
  store.wait_prefetch_idle();
  CHECK(store.cache().resident_bytes() <= budget * store.source(0).expert_bytes());
  CHECK(calls == store.cache().totals());  // every layer's calls went through the one cache
}

TEST_CASE("a prefetch that finishes first turns a layer's misses into hits", "[store][stack][threads]") {
  const Index L = 2, E = 6, d = 8, ff = 4, k = 2;
  const Model model = save_model("hits", L, E, d, ff, k);
  const moe::store::ExpertStore<Source> store(sources(model), 12 * sources(model)[0]->expert_bytes(), {},
                                              moe::store::PrefetchOptions{true, false});
  const auto stack = on_demand_stack(model, store);
  const moe::RowMatrix<float> x = moe::test::random_matrix(3, d, 9).cast<float>();
  std::vector<moe::Workspace<float>> ws;
  std::vector<Index> predicted;
  (void)stack.forward(x, ws, {}, [&](Index l, const moe::ConstMatrixRef<float>& h) {
    if (l != 1) return;
    // Layer 1's own input, so the prediction is exact; wait for it before the layer runs.
    predicted = moe::store::predict_experts(stack.layer(1).router(), h);
    store.prefetch(1, predicted);
    store.wait_prefetch_idle();
  });
  const auto p = store.cache().prefetch_totals();
  CHECK(p.requested == predicted.size());
  CHECK(p.placed == predicted.size());
  CHECK(p.used == predicted.size());
  CHECK(ws[1].expert_loads.misses == 0);
  CHECK(ws[1].expert_loads.hits == predicted.size());
  CHECK(ws[1].expert_loads.bytes_read == 0);
  CHECK(ws[0].expert_loads.hits == 0);  // layer 0 had no prefetch
  for (Index e : predicted) CHECK(store.cache().is_resident(store.first(1) + e));
}

TEST_CASE("an expert store refuses what cannot work", "[store][stack][errors]") {
  const Model model = save_model("errors", 2, 4, 8, 4, 1);
  // One expert: its weights and their packed copy (docs/experts.md#packed-weights).
  const auto bytes = [](Index d, Index ff) {
    return 3 * d * ff * sizeof(float) + moe::kernels::packed_bytes<float, float>(2 * ff, d) +
           moe::kernels::packed_bytes<float, float>(d, ff);
  };
  const std::size_t one = bytes(8, 4);
  using Store = moe::store::ExpertStore<Source>;
  CHECK_THROWS_WITH(Store({}, one), "ExpertStore::ExpertStore(): layers expected at least one source, got 0");
  CHECK_THROWS_WITH(Store(sources(model), one - 1), Catch::Contains("budget_bytes expected >= " + std::to_string(one)));
  CHECK_THROWS_WITH(Store(sources(model), one, {}, {true, false}),
                    Catch::Contains("budget_bytes expected >= " + std::to_string(2 * one)));
  CHECK_THROWS_WITH(Store(sources(model), 2 * one, {}, {false, true}),
                    "ExpertStore::ExpertStore(): PrefetchOptions::frequency expected PrefetchOptions::thread, got no thread");
  const Model wider = save_model("errors_wide", 1, 4, 8, 5, 1);
  auto mixed = sources(model);
  mixed.push_back(sources(wider)[0]);
  CHECK_THROWS_WITH(Store(mixed, 8 * one), "ExpertStore::ExpertStore(): layers[2] expert_bytes (= layer 0's) expected " +
                                               std::to_string(one) + ", got " + std::to_string(bytes(8, 5)));
  const Store store(sources(model), 2 * one);
  CHECK_THROWS_WITH(store.executor(2), "ExpertStore::executor(): layer expected in [0, 2), got 2");
  CHECK_THROWS_WITH(store.prefetch(0, {4}), "ExpertStore::prefetch(): expert expected in [0, 4), got 4");
  CHECK_NOTHROW(store.prefetch(1, {3}));  // no thread: nothing to do
  CHECK(store.first(1) == 4);
}

TEST_CASE("layers whose experts have the same bytes but another shape cannot share a store", "[store][stack][errors]") {
  // d 32, ff 64 and d 64, ff 32: the same 6144 floats, and packed copies of the same size on
  // every architecture (every packed dimension a multiple of the widest panel, 32 rows).
  const Model a = save_model("shape_a", 1, 4, 32, 64, 1);
  const Model b = save_model("shape_b", 1, 4, 64, 32, 1);
  auto mixed = sources(a);
  mixed.push_back(sources(b)[0]);
  REQUIRE(mixed[0]->expert_bytes() == mixed[1]->expert_bytes());
  CHECK_THROWS_WITH(moe::store::ExpertStore<Source>(mixed, 4 * mixed[0]->expert_bytes()),
                    "ExpertStore::ExpertStore(): layers[1] expert shape (input_dim, output_dim, hidden_cols) expected "
                    "layer 0's (32, 32, 192), got (64, 64, 96)");
}
