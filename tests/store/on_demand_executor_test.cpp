// OnDemandExecutor: bit-identity with the in-memory layer for every budget, policy and thread
// count, per-call statistics against a hand-computed sequence, gradients, errors.
#include <moe/core/thread_pool.hpp>
#include <moe/io/expert_source.hpp>
#include <moe/io/hf_loader.hpp>
#include <moe/io/save_layer.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/layer/quantized_layers.hpp>
#include <moe/store/on_demand_executor.hpp>
#include <moe/store/on_demand_swiglu.hpp>

#include <catch2/catch.hpp>
#include <support/bits.hpp>
#include <support/random.hpp>
#include <support/temp_dir.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

using moe::Index;
namespace fs = std::filesystem;
const std::string prefix = "model.layers.0.block_sparse_moe.";

template <class S, class Policy>
using OnDemandMixtral =
    moe::MoELayer<moe::store::OnDemandSwiGLU<S>, moe::SoftmaxTopKRouter<S>, moe::WeightedSumCombiner<S>,
                  xsimd::default_arch, moe::store::OnDemandExecutor<moe::io::SwiGLUExpertSource<S>, Policy>>;

/// A Mixtral layer with random weights, saved once as one file and once sharded (one file per
/// expert); returns the folder.
template <class S>
moe::test::TempDir save_test_layer(const std::string& tag, Index E, Index d, Index ff, Index k) {
  moe::test::TempDir dir("store_" + tag);
  fs::create_directories(dir / "sharded");
  moe::RowMatrix<S> gate = moe::test::random_matrix(E, d, 11).template cast<S>();
  moe::MixtralMoE<S> layer(moe::test::swiglu<S>(E, d, ff, 12),
                           moe::SoftmaxTopKRouter<S>(gate, k, moe::SoftmaxTopK<S>{true}));
  moe::io::SafetensorsWriter w;
  moe::io::save_layer(w, layer, prefix, moe::io::Family::mixtral);
  w.save(dir / "layer.safetensors");
  moe::io::save_layer_sharded(dir / "sharded", layer, prefix, moe::io::Family::mixtral);
  return dir;
}

template <class S, class Policy>
OnDemandMixtral<S, Policy> make_on_demand(const moe::MixtralMoE<S>& memory, const fs::path& checkpoint,
                                          std::size_t budget_experts, Policy policy = {}) {
  auto source = std::make_shared<const moe::io::SwiGLUExpertSource<S>>(
      moe::io::LazyCheckpoint::open(checkpoint), prefix, memory.num_experts(), moe::io::SwiGLUExpertNames::mixtral());
  const std::size_t budget = budget_experts * source->expert_bytes();
  moe::store::OnDemandSwiGLU<S> bank(source->num_experts(), source->d_model(), source->d_ff(), source->bank_names());
  return OnDemandMixtral<S, Policy>(std::move(bank), memory.router(), moe::WeightedSumCombiner<S>{}, {},
                                    moe::store::OnDemandExecutor<moe::io::SwiGLUExpertSource<S>, Policy>(
                                        source, budget, policy));
}

/// Batches with different routing: sizes across the 512-row task boundary, one token, a batch
/// routed to few experts (rows scaled so one expert's logit dominates).
template <class S>
std::vector<moe::RowMatrix<S>> batches(Index d) {
  std::vector<moe::RowMatrix<S>> out;
  out.push_back(moe::test::random_matrix(37, d, 21).template cast<S>());
  out.push_back(moe::test::random_matrix(1, d, 22).template cast<S>());
  out.push_back(moe::test::random_matrix(700, d, 23).template cast<S>());
  out.push_back(moe::test::random_matrix(5, d, 24).template cast<S>());
  out.push_back(moe::test::random_matrix(130, d, 25).template cast<S>());
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE("on-demand forward equals the in-memory layer bit for bit for every budget, policy and pool",
                   "[store][executor]", float, double) {
  using S = TestType;
  const Index E = 6, d = 12, ff = 20, k = 2;
  const auto dir = save_test_layer<S>(std::string("fwd_") + (sizeof(S) == 4 ? "f" : "d"), E, d, ff, k);
  const auto memory = moe::io::load_mixtral<S>(moe::io::SafetensorsFile::open(dir / "layer.safetensors"), prefix, {.top_k = k});
  const auto inputs = batches<S>(d);
  moe::Workspace<S> ref_ws;
  std::vector<moe::RowMatrix<S>> expected;
  for (const auto& x : inputs) expected.push_back(memory.forward(x, ref_ws));

  const fs::path where = GENERATE(as<std::string>{}, "layer.safetensors", "sharded");
  const std::size_t budget = GENERATE(std::size_t{1}, std::size_t{3}, std::size_t{6});
  const int threads = GENERATE(0, 2, 3);
  CAPTURE(where, budget, threads);
  std::unique_ptr<moe::ThreadPool> pool;
  if (threads > 0) pool = std::make_unique<moe::ThreadPool>(threads);
  moe::ForwardContext ctx;
  ctx.pool = pool.get();
  const auto run = [&](auto layer) {
    moe::Workspace<S> ws;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      moe::store::CallStats stats;
      moe::RowMatrix<S> y;
      {
        moe::store::StatsScope scope(stats);
        y = layer.forward(inputs[i], ws, ctx);
      }
      CHECK(moe::test::same_bits(y, expected[i]));
      CHECK(stats.hits + stats.misses == static_cast<std::uint64_t>(
                                             std::count_if(ws.plan.offsets.begin(), ws.plan.offsets.end() - 1,
                                                           [&, e = Index{0}](auto) mutable {
                                                             return ws.plan.count(e++) > 0;
                                                           })));
      CHECK(layer.executor().cache().resident_bytes() <= budget * layer.executor().source().expert_bytes());
    }
  };
  run(make_on_demand<S>(memory, dir / where, budget, moe::store::LruPolicy{}));
  run(make_on_demand<S>(memory, dir / where, budget, moe::store::FrequencyLruPolicy{}));
}

TEST_CASE("per-call statistics follow a hand-computed LRU sequence", "[store][executor][stats]") {
  // E = 4, budget 2 experts, LRU. One expert's weights in the file: 3 * d * ff floats.
  const Index E = 4, d = 8, ff = 4;
  const auto dir = save_test_layer<float>("stats", E, d, ff, 1);
  const auto memory = moe::io::load_mixtral<float>(moe::io::SafetensorsFile::open(dir / "layer.safetensors"), prefix, {.top_k = 1});
  auto layer = make_on_demand<float>(memory, dir / "layer.safetensors", 2, moe::store::LruPolicy{});
  const std::uint64_t B = 3 * d * ff * sizeof(float);
  // The router is bypassed: a tape would do, but an explicit gate row per token is simpler.
  // Make router weights an identity-like selector so token t picks the expert its row names.
  moe::RowMatrix<float> sel = moe::RowMatrix<float>::Zero(E, d);
  for (Index e = 0; e < E; ++e) sel(e, e) = 1;
  layer.router().weight() = sel;
  const auto tokens = [&](std::vector<Index> experts) {
    moe::RowMatrix<float> x = moe::RowMatrix<float>::Zero(static_cast<Index>(experts.size()), d);
    for (std::size_t t = 0; t < experts.size(); ++t) x(static_cast<Index>(t), experts[t]) = 5;
    return x;
  };
  moe::Workspace<float> ws;
  const auto call = [&](std::vector<Index> experts) {
    moe::store::CallStats s;
    moe::store::StatsScope scope(s);
    (void)layer.forward(tokens(experts), ws);
    CHECK(ws.expert_loads == s);  // the workspace records the same call
    return s;
  };
  using CS = moe::store::CallStats;
  auto& cache = layer.executor().cache();
  // 1: {0, 1}: two misses into free slots.
  CHECK(call({0, 1}) == CS{0, 2, 2 * B, 0});
  CHECK(cache.resident() == std::vector<Index>{0, 1});
  // 2: {1, 2}: 1 hits; 2 misses and evicts 0 (1 is pinned).
  CHECK(call({2, 1}) == CS{1, 1, B, 1});
  CHECK(cache.resident() == std::vector<Index>{1, 2});
  // 3: {0, 1, 2}: 1 and 2 hit (pinned, run as one wave, released); 0 then evicts the least
  // recently used of them: 1 (touched before 2 in this call).
  CHECK(call({0, 1, 2}) == CS{2, 1, B, 1});
  CHECK(cache.resident() == std::vector<Index>{0, 2});
  // 4: {1}: evicts 2 (touched in call 3 before 0 was loaded).
  CHECK(call({1}) == CS{0, 1, B, 1});
  CHECK(cache.resident() == std::vector<Index>{0, 1});
  // 5: {0, 1, 2, 3} with room for 2: hits 0, 1; 2 and 3 load one wave later each evicting.
  CHECK(call({3, 2, 1, 0}) == CS{2, 2, 2 * B, 2});
  CHECK(cache.totals() == CS{5, 7, 7 * B, 5});
}

TEST_CASE("frequency-weighted LRU keeps a popular expert that LRU evicts", "[store][executor][stats]") {
  const Index E = 4, d = 8, ff = 4;
  const auto dir = save_test_layer<float>("freq", E, d, ff, 1);
  const auto memory = moe::io::load_mixtral<float>(moe::io::SafetensorsFile::open(dir / "layer.safetensors"), prefix, {.top_k = 1});
  moe::RowMatrix<float> sel = moe::RowMatrix<float>::Zero(E, d);
  for (Index e = 0; e < E; ++e) sel(e, e) = 1;
  const auto sequence = [&](auto layer) {
    layer.router().weight() = sel;
    moe::Workspace<float> ws;
    for (Index e : {0, 0, 0, 1, 2}) {
      moe::RowMatrix<float> x = moe::RowMatrix<float>::Zero(1, d);
      x(0, e) = 5;
      (void)layer.forward(x, ws);
    }
    return layer.executor().cache().resident();
  };
  // Budget 2. After 0,0,0,1 both are resident; loading 2 evicts: LRU the oldest (0), the
  // frequency-weighted policy (score last call + uses: 0 -> 3 + 3, 1 -> 4 + 1) expert 1.
  CHECK(sequence(make_on_demand<float>(memory, dir / "layer.safetensors", 2, moe::store::LruPolicy{})) ==
        std::vector<Index>{1, 2});
  CHECK(sequence(make_on_demand<float>(memory, dir / "layer.safetensors", 2, moe::store::FrequencyLruPolicy{})) ==
        std::vector<Index>{0, 2});
}

TEMPLATE_TEST_CASE("on-demand backward gives the in-memory gradients of every expert it ran", "[store][executor][backward]",
                   float, double) {
  using S = TestType;
  const Index E = 5, d = 10, ff = 16, k = 2;
  const auto dir = save_test_layer<S>(std::string("bwd_") + (sizeof(S) == 4 ? "f" : "d"), E, d, ff, k);
  const auto memory = moe::io::load_mixtral<S>(moe::io::SafetensorsFile::open(dir / "layer.safetensors"), prefix, {.top_k = k});
  const std::size_t budget = GENERATE(std::size_t{1}, std::size_t{2}, std::size_t{5});
  const int threads = GENERATE(0, 3);
  CAPTURE(budget, threads);
  std::unique_ptr<moe::ThreadPool> pool;
  if (threads > 0) pool = std::make_unique<moe::ThreadPool>(threads);
  moe::ForwardContext ctx;
  ctx.pool = pool.get();
  ctx.mode = moe::Mode::training;
  auto layer = make_on_demand<S>(memory, dir / "sharded", budget, moe::store::FrequencyLruPolicy{});
  auto ref_grads = memory.make_gradients();
  auto grads = layer.make_gradients();
  moe::Workspace<S> ref_ws, ws;
  for (unsigned seed : {31u, 32u}) {  // two steps: gradients accumulate across calls
    const moe::RowMatrix<S> x = moe::test::random_matrix(600 + seed, d, seed).template cast<S>();
    const moe::RowMatrix<S> dy = moe::test::random_matrix(600 + seed, d, seed + 100).template cast<S>();
    const moe::RowMatrix<S> y_ref = memory.forward(x, ref_ws, ctx);
    const moe::RowMatrix<S> y = layer.forward(x, ws, ctx);
    REQUIRE(moe::test::same_bits(y, y_ref));
    const moe::RowMatrix<S> dx_ref = memory.backward(dy, ref_ws, ref_grads);
    const moe::RowMatrix<S> dx = layer.backward(dy, ws, grads);
    CHECK(moe::test::same_bits(dx, dx_ref));
  }
  CHECK(moe::test::same_bits(grads.router.weight(), ref_grads.router.weight()));
  Index ran = 0;
  for (Index e = 0; e < E; ++e) {
    const auto* slice = grads.experts.find_slice(e);
    if (slice == nullptr) {
      CHECK(ref_grads.experts.gate_proj(e).isZero(0));
      continue;
    }
    ++ran;
    CHECK(moe::test::same_bits(moe::RowMatrix<S>(slice->gate_proj(0)), moe::RowMatrix<S>(ref_grads.experts.gate_proj(e))));
    CHECK(moe::test::same_bits(moe::RowMatrix<S>(slice->up_proj(0)), moe::RowMatrix<S>(ref_grads.experts.up_proj(e))));
    CHECK(moe::test::same_bits(moe::RowMatrix<S>(slice->down_proj(0)), moe::RowMatrix<S>(ref_grads.experts.down_proj(e))));
  }
  CHECK(ran >= 2);
}

TEST_CASE("a budget smaller than one expert is refused at construction", "[store][executor][errors]") {
  const auto dir = save_test_layer<float>("budget", 3, 8, 4, 1);
  auto source = std::make_shared<const moe::io::SwiGLUExpertSource<float>>(
      moe::io::LazyCheckpoint::open(dir / "layer.safetensors"), prefix, 3, moe::io::SwiGLUExpertNames::mixtral());
  // d 8, ff 4: 384 bytes of weights and the packed copy, gate|up [8, 8] and down [8, 4] in
  // panels of nr rows (docs/experts.md#packed-weights).
  constexpr moe::Index nr = moe::kernels::PackedTile<float, float, xsimd::default_arch>::nr;
  const std::size_t one = 384 + (((8 + nr - 1) / nr) * nr * 8 + ((8 + nr - 1) / nr) * nr * 4) * sizeof(float);
  REQUIRE(source->expert_bytes() == one);
  using Ex = moe::store::OnDemandExecutor<moe::io::SwiGLUExpertSource<float>>;
  REQUIRE_THROWS_WITH(Ex(source, one - 1), "ExpertCache::ExpertCache(): budget_bytes expected >= " + std::to_string(one) +
                                               " (one expert), got " + std::to_string(one - 1));
  REQUIRE_NOTHROW(Ex(source, one));
}

TEST_CASE("a shard truncated after opening fails the call with the file and tensor named", "[store][executor][errors]") {
  const Index E = 3, d = 8, ff = 4;
  const auto dir = save_test_layer<float>("trunc", E, d, ff, 1);
  const auto memory = moe::io::load_mixtral<float>(moe::io::SafetensorsFile::open(dir / "layer.safetensors"), prefix, {.top_k = 1});
  auto layer = make_on_demand<float>(memory, dir / "layer.safetensors", 1, moe::store::LruPolicy{});
  fs::resize_file(dir / "layer.safetensors", fs::file_size(dir / "layer.safetensors") - 4);
  moe::Workspace<float> ws;
  const moe::RowMatrix<float> x = moe::test::random_matrix(4, d, 5).cast<float>();
  try {
    (void)layer.forward(x, ws);
    FAIL("expected an error");
  } catch (const moe::io::TensorError& e) {
    const std::string what = e.what();
    CHECK_THAT(what, Catch::Contains("layer.safetensors"));
    CHECK_THAT(what, Catch::Contains("file truncated: expected at least"));
    CHECK_THAT(what, Catch::Contains(prefix + "experts."));
  }
  CHECK(layer.executor().cache().resident().empty());  // the failed load left nothing behind
}

TEST_CASE("a shard missing, renamed or rewritten after opening fails with the file and tensor named",
          "[store][executor][errors]") {
  const Index E = 3, d = 8, ff = 4;
  const auto dir = save_test_layer<float>("faults", E, d, ff, 3);  // top-3 of 3: every expert runs
  const auto memory = moe::io::load_mixtral<float>(moe::io::SafetensorsFile::open(dir / "layer.safetensors"), prefix, {.top_k = 3});
  const std::string tensor = prefix + "experts.1.w1.weight";
  const fs::path shard = moe::io::LazyCheckpoint::open(dir / "sharded").file(tensor).display_name();
  const moe::RowMatrix<float> x = moe::test::random_matrix(4, d, 5).cast<float>();
  moe::Workspace<float> ws;
  const auto expect_error = [&](auto& layer, const std::string& why) {
    try {
      (void)layer.forward(x, ws);
      FAIL("expected an error");
    } catch (const moe::io::TensorError& e) {
      const std::string what = e.what();
      CHECK_THAT(what, Catch::Contains(shard.filename().string()));
      CHECK_THAT(what, Catch::Contains(why));
      CHECK_THAT(what, Catch::Contains(prefix + "experts.1."));
    }
  };
  SECTION("missing when the checkpoint is opened") {
    fs::remove(shard);
    CHECK_THROWS_WITH(moe::io::LazyCheckpoint::open(dir / "sharded"),
                      Catch::Contains("weight_map['" + tensor + "']") && Catch::Contains(shard.filename().string()) &&
                          Catch::Contains("expected a file at"));
  }
  SECTION("missing after the index was read, before the shard's first use") {
    auto checkpoint = moe::io::LazyCheckpoint::open(dir / "sharded");
    fs::remove(shard);
    try {
      (void)moe::io::SwiGLUExpertSource<float>(checkpoint, prefix, E, moe::io::SwiGLUExpertNames::mixtral());
      FAIL("expected an error");
    } catch (const moe::io::TensorError& e) {
      CHECK(e.tensor() == tensor);
      CHECK_THAT(std::string(e.what()), Catch::Contains("expected the shard the index lists it in to open") &&
                                            Catch::Contains(shard.filename().string()));
    }
  }
  SECTION("renamed after opening") {
    auto layer = make_on_demand<float>(memory, dir / "sharded", 1, moe::store::LruPolicy{});
    fs::rename(shard, shard.string() + ".old");
    expect_error(layer, "file renamed or removed since it was opened");
  }
  SECTION("rewritten after opening (a new file renamed over it)") {
    auto layer = make_on_demand<float>(memory, dir / "sharded", 1, moe::store::LruPolicy{});
    fs::copy_file(shard, shard.string() + ".new");
    fs::rename(shard.string() + ".new", shard);
    expect_error(layer, "file replaced since it was opened");
  }
  SECTION("rewritten in place after opening") {
    auto layer = make_on_demand<float>(memory, dir / "sharded", 1, moe::store::LruPolicy{});
    const auto when = fs::last_write_time(shard);
    {
      std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(-4, std::ios::end);
      const float v = 7.0F;
      f.write(reinterpret_cast<const char*>(&v), sizeof v);
    }
    fs::last_write_time(shard, when + std::chrono::seconds(1));  // the clock may not have ticked
    expect_error(layer, "file rewritten since it was opened");
  }
  CHECK(true);
}

TEST_CASE("a missing expert tensor is a clear error when the source is built", "[store][executor][errors]") {
  const auto dir = save_test_layer<float>("missing", 3, 8, 4, 1);
  REQUIRE_THROWS_AS(moe::io::SwiGLUExpertSource<float>(moe::io::LazyCheckpoint::open(dir / "layer.safetensors"), prefix, 4,
                                                       moe::io::SwiGLUExpertNames::mixtral()),
                    moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(moe::io::SwiGLUExpertSource<float>(moe::io::LazyCheckpoint::open(dir / "layer.safetensors"), prefix, 3,
                                                         moe::io::SwiGLUExpertNames::gate_up_down()),
                      Catch::Contains("experts.0.gate_proj.weight"));
}

TEST_CASE("threads sharing one on-demand layer each get the in-memory bits", "[store][executor][threads]") {
  const Index E = 6, d = 12, ff = 20, k = 2;
  const auto dir = save_test_layer<float>("threads", E, d, ff, k);
  const auto memory = moe::io::load_mixtral<float>(moe::io::SafetensorsFile::open(dir / "layer.safetensors"), prefix, {.top_k = k});
  const auto layer = make_on_demand<float>(memory, dir / "sharded", 2, moe::store::FrequencyLruPolicy{});
  const auto inputs = batches<float>(d);
  std::vector<moe::RowMatrix<float>> expected;
  moe::Workspace<float> ref_ws;
  for (const auto& x : inputs) expected.push_back(memory.forward(x, ref_ws));
  std::vector<int> ok(4, 0);
  std::vector<moe::store::CallStats> seen(4);
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t)
    workers.emplace_back([&, t] {
      moe::ThreadPool pool(2);
      moe::ForwardContext ctx;
      ctx.pool = t % 2 == 0 ? &pool : nullptr;
      moe::Workspace<float> ws;
      moe::store::StatsScope scope(seen[static_cast<std::size_t>(t)]);
      int good = 0;
      for (int rep = 0; rep < 3; ++rep)
        for (std::size_t i = 0; i < inputs.size(); ++i) {
          const std::size_t j = (i + static_cast<std::size_t>(t)) % inputs.size();
          good += moe::test::same_bits(layer.forward(inputs[j], ws, ctx), expected[j]) ? 1 : 0;
        }
      ok[static_cast<std::size_t>(t)] = good;
    });
  for (auto& w : workers) w.join();
  moe::store::CallStats sum;
  for (int t = 0; t < 4; ++t) {
    CHECK(ok[static_cast<std::size_t>(t)] == 15);
    sum += seen[static_cast<std::size_t>(t)];
  }
  CHECK(sum == layer.executor().cache().totals());
  CHECK(layer.executor().cache().resident_bytes() <= 2 * layer.executor().source().expert_bytes());
}

namespace {

template <class Source, class Policy>
using OnDemandTyped = moe::MoELayer<moe::store::OnDemandSwiGLU<float>, moe::SoftmaxTopKRouter<float>,
                                    moe::WeightedSumCombiner<float>, xsimd::default_arch,
                                    moe::store::OnDemandExecutor<Source, Policy>>;

/// An on-demand layer over `source` with the memory layer's router and a budget of `experts`.
template <class Source, class Policy>
OnDemandTyped<Source, Policy> on_demand_over(std::shared_ptr<const Source> source, const moe::MixtralMoE<float>& memory,
                                            std::size_t experts) {
  moe::store::OnDemandSwiGLU<float> bank(source->num_experts(), source->d_model(), source->d_ff(), source->bank_names());
  const std::size_t budget = experts * source->expert_bytes();
  return OnDemandTyped<Source, Policy>(std::move(bank), memory.router(), moe::WeightedSumCombiner<float>{}, {},
                                       moe::store::OnDemandExecutor<Source, Policy>(std::move(source), budget));
}

}  // namespace

TEMPLATE_TEST_CASE("quantized on demand: the in-memory quantized layer's bits for every budget and policy",
                   "[store][executor][quant]", moe::kernels::BlockQ8_0, moe::kernels::BlockQ4_0, moe::kernels::BlockQ4_K) {
  using Block = TestType;
  const Index E = 6, d = 40, ff = 24, k = 2;  // neither width whole blocks: rows padded with zeros
  const auto dir = save_test_layer<float>(std::string("q_") + moe::kernels::quant_format<Block>::name, E, d, ff, k);
  const auto memory = moe::io::load_mixtral<float>(moe::io::SafetensorsFile::open(dir / "layer.safetensors"), prefix, {.top_k = k});
  const auto quantized = moe::quantize_layer<Block>(memory);
  const auto inputs = batches<float>(d);
  const std::size_t budget = GENERATE(std::size_t{1}, std::size_t{4});
  const fs::path where = GENERATE(as<std::string>{}, "layer.safetensors", "sharded");
  CAPTURE(budget, where);
  using Source = moe::io::QuantizedSwiGLUExpertSource<Block>;
  auto source = std::make_shared<const Source>(moe::io::LazyCheckpoint::open(dir / where), prefix, E,
                                               moe::io::SwiGLUExpertNames::mixtral());
  CHECK(source->expert_bytes() == moe::QuantizedSwiGLUExperts<Block>(1, d, ff).weight_bytes());
  const auto check = [&](auto layer) {
    moe::Workspace<float> ws, ref_ws;
    for (const auto& x : inputs) {
      const moe::RowMatrix<float> y = layer.forward(x, ws);
      CHECK(moe::test::same_bits(y, quantized.forward(x, ref_ws)));
      CHECK(layer.executor().cache().resident_bytes() <= budget * source->expert_bytes());
    }
  };
  check(on_demand_over<Source, moe::store::LruPolicy>(source, memory, budget));
  check(on_demand_over<Source, moe::store::FrequencyLruPolicy>(source, memory, budget));
}

TEST_CASE("bf16 on demand: the in-memory layer's bf16 bits, its packed copy in the budget", "[store][executor][bf16]") {
  const Index E = 5, d = 16, ff = 24, k = 2;
  const auto dir = save_test_layer<float>("bf16", E, d, ff, k);
  auto memory = moe::io::load_mixtral<float>(moe::io::SafetensorsFile::open(dir / "layer.safetensors"), prefix, {.top_k = k});
  memory.experts().set_compute(moe::ComputeType::bf16);
  using Source = moe::io::SwiGLUExpertSource<float>;
  auto source = std::make_shared<const Source>(moe::io::LazyCheckpoint::open(dir / "sharded"), prefix, E,
                                               moe::io::SwiGLUExpertNames::mixtral(), moe::ComputeType::bf16);
  CHECK(source->make_resident().compute() == moe::ComputeType::bf16);
  CHECK(source->expert_bytes() == std::size_t(3 * d * ff) * sizeof(float) +
                                      moe::kernels::packed_bytes<float, moe::bf16>(2 * ff, d) +
                                      moe::kernels::packed_bytes<float, moe::bf16>(d, ff));
  auto layer = on_demand_over<Source, moe::store::LruPolicy>(source, memory, 2);
  moe::Workspace<float> ws, ref_ws;
  for (const auto& x : batches<float>(d)) CHECK(moe::test::same_bits(layer.forward(x, ws), memory.forward(x, ref_ws)));
  CHECK_THROWS_WITH(moe::io::SwiGLUExpertSource<double>(moe::io::LazyCheckpoint::open(dir / "sharded"), prefix, E,
                                                        moe::io::SwiGLUExpertNames::mixtral(), moe::ComputeType::bf16),
                    Catch::Contains("expected a float source"));
}
