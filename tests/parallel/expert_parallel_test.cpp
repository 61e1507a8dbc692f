// expert_parallel_layer's configuration check, the guarded forward and backward, and loading
// a rank's expert range, under mpirun: ranks that disagree, or a rank that fails, end with a
// clear error on every rank and never a hang.
#include <moe/io/hf_loader.hpp>
#include <moe/io/save_layer.hpp>
#include <moe/parallel/expert_parallel.hpp>

#include <catch2/catch.hpp>
#include <parallel/ep_harness.hpp>
#include <support/random.hpp>
#include <support/safetensors_file.hpp>

#include <limits>
#include <stdexcept>
#include <string>

namespace {

using moe::Index;
namespace ep = moe::test::ep;
using Catch::Matchers::Contains;
using Catch::Matchers::Equals;
using Slice = moe::parallel::ExpertSlice<moe::SwiGLUExperts<double>>;

constexpr Index E = 6, d = 8, ff = 10;

struct Settings {
  Index experts = E, dim = d, k = 2, block_shift = 0;
  double router_nudge = 0;
  moe::Capacity capacity{};
  moe::parallel::CapacityScope scope = moe::parallel::CapacityScope::per_rank;
};

/// Rank r's layer of one model, or of a model with the given settings changed on this rank.
auto build(const Settings& s) {
  const Index r = ep::world_rank();
  moe::parallel::MpiExpertExecutor executor(MPI_COMM_WORLD, s.experts, s.scope);
  const auto& part = executor.partition();
  moe::RowMatrix<double> gate = moe::test::random_matrix(s.experts, s.dim, 81);
  gate(0, 0) += s.router_nudge;
  const auto whole = moe::test::swiglu<double>(s.experts, s.dim, ff, 82);
  const Index first = part.first(r) + s.block_shift;
  Slice slice(moe::parallel::copy_experts(whole, first, part.count(r),
                                          [&](Index n) { return moe::SwiGLUExperts<double>(n, s.dim, ff); }),
              s.experts, first);
  return moe::parallel::expert_parallel_layer(std::move(slice),
                                              moe::SoftmaxTopKRouter<double>(gate, s.k, moe::SoftmaxTopK<double>{true}),
                                              moe::WeightedSumCombiner<double>{}, s.capacity, executor);
}

/// What a call that fails on rank `bad` must end with: the failing rank's own message there, a
/// pointer to it on every other rank.
std::string failure_message(Index bad, const std::string& own, const std::string& others) {
  return ep::world_rank() == bad ? own : others;
}

/// MoELayer's message for a non-finite x entry.
std::string non_finite(const std::string& value, Index row, Index col) {
  return "MoELayer::forward(): x expected finite values (ForwardContext::non_finite = error), got " + value +
         " at row " + std::to_string(row) + ", column " + std::to_string(col);
}

/// The settings with `change` applied on rank `on` only.
template <class Change>
Settings on_rank(Index on, Change change) {
  Settings s;
  if (ep::world_rank() == on) change(s);
  return s;
}

}  // namespace

TEST_CASE("ranks that agree build their layers", "[parallel][mpi][configuration]") {
  auto layer = build({});
  CHECK(layer.num_experts() == E);
  CHECK(layer.experts().first() == layer.executor().partition().first(ep::world_rank()));
}

TEST_CASE("ranks that disagree on E, d, k, the partition or the router get one error on every rank",
          "[parallel][mpi][configuration][errors]") {
  const Index P = ep::world_size(), last = P - 1;
  if (P == 1) return;  // one rank agrees with itself
  const std::string where = "moe::parallel::expert_parallel_layer(): ";
  REQUIRE_THROWS_WITH(build(on_rank(1, [](Settings& s) { s.experts = 7; })),
                      where + "num_experts on every rank expected 6 (rank 0's), got 7 on rank 1");
  REQUIRE_THROWS_WITH(build(on_rank(last, [](Settings& s) { s.dim = 10; })),
                      where + "input_dim on every rank expected 8 (rank 0's), got 10 on rank " + std::to_string(last));
  REQUIRE_THROWS_WITH(build(on_rank(1, [](Settings& s) { s.k = 3; })),
                      where + "k (experts per token) on every rank expected 2 (rank 0's), got 3 on rank 1");
  const moe::parallel::ExpertPartition part(E, P);
  REQUIRE_THROWS_WITH(build(on_rank(1, [](Settings& s) { s.block_shift = -1; })),
                      where + "the expert block of rank 1 expected [" + std::to_string(part.first(1)) + ", " +
                          std::to_string(part.first(2)) + ") (contiguous blocks of 6 experts over " +
                          std::to_string(P) + " ranks), got [" + std::to_string(part.first(1) - 1) + ", " +
                          std::to_string(part.first(2) - 1) + ")");
  REQUIRE_THROWS_WITH(build(on_rank(last, [](Settings& s) { s.router_nudge = 1e-12; })),
                      Contains(where + "router weights' checksum on every rank expected 0x") &&
                          Contains("(rank 0's), got 0x") && Contains(" on rank " + std::to_string(last)));
  REQUIRE_THROWS_WITH(build(on_rank(1, [](Settings& s) { s.capacity = moe::Capacity::from_factor(1.25); })),
                      where + "capacity kind on every rank expected 0 (rank 0's), got 1 on rank 1");
  REQUIRE_THROWS_WITH(build(on_rank(last, [](Settings& s) { s.scope = moe::parallel::CapacityScope::global; })),
                      where + "capacity scope (0 per rank, 1 global) on every rank expected 0 (rank 0's), got 1 on rank " +
                          std::to_string(last));
  // A rank whose layer cannot be built: its own error there, a pointer to it everywhere else.
  const std::string bad_capacity = "Capacity::validate(): factor expected finite and > 0, got -1";
  REQUIRE_THROWS_WITH(build(on_rank(1, [](Settings& s) { s.capacity = moe::Capacity::from_factor(-1); })),
                      ep::world_rank() == 1 ? where + bad_capacity
                                            : where + "every rank's layer expected built, got rank 1 failed (its own "
                                                      "exception says why)");
  // Afterwards the ranks still agree and work.
  auto layer = build({});
  moe::Workspace<double> ws;
  CHECK(moe::parallel::forward(layer, moe::test::random_matrix(5, d, 83), ws).rows() == 5);
}

TEST_CASE("a rank whose forward fails before the exchange makes every rank fail", "[parallel][mpi][errors]") {
  const Index P = ep::world_size(), r = ep::world_rank(), bad = P - 1;
  auto layer = build({});
  moe::RowMatrix<double> x = moe::test::random_matrix(7, d, 84 + static_cast<unsigned>(r));
  if (r == bad) x(2, 3) = std::numeric_limits<double>::quiet_NaN();
  moe::Workspace<double> ws;
  REQUIRE_THROWS_WITH(moe::parallel::forward(layer, x, ws),
                      failure_message(bad, non_finite("NaN", 2, 3),
                              "MpiExpertExecutor::forward(): every rank's call expected to reach the exchange, got rank " +
                                  std::to_string(bad) + " failed before the exchange (its own exception says why)"));
  // The ranks are still in step: the next forward and backward run everywhere.
  x(2, 3) = 0;
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  const moe::RowMatrix<double> y = moe::parallel::forward(layer, x, ws, ctx);
  auto grads = layer.make_gradients();
  const moe::RowMatrix<double> dx = moe::parallel::backward(layer, moe::RowMatrix<double>::Ones(7, d), ws, grads);
  CHECK(dx.allFinite());
  // A backward that fails on one rank before its exchange (dy of the wrong shape) fails on all.
  const moe::RowMatrix<double> dy = moe::RowMatrix<double>::Ones(r == bad ? 6 : 7, d);
  REQUIRE_THROWS_WITH(moe::parallel::backward(layer, dy, ws, grads),
                      failure_message(bad, "MoELayer::backward(): dy expected shape [7, 8], got [6, 8]",
                                      "MpiExpertExecutor::backward(): every rank's call expected to reach the exchange, "
                                      "got rank " + std::to_string(bad) +
                                          " failed before the exchange (its own exception says why)"));
}

TEST_CASE("under a global capacity, a rank that fails before planning or plans differently fails every rank",
          "[parallel][mpi][errors][capacity]") {
  const Index P = ep::world_size(), r = ep::world_rank(), bad = P - 1;
  Settings s;
  s.scope = moe::parallel::CapacityScope::global;
  s.capacity = moe::Capacity::from_factor(1.0);
  auto layer = build(s);
  moe::RowMatrix<double> x = moe::test::random_matrix(7, d, 86 + static_cast<unsigned>(r));
  if (r == bad) x(1, 4) = std::numeric_limits<double>::infinity();
  moe::Workspace<double> ws;
  const std::string planning = "MpiExpertExecutor::plan(): every rank's forward expected to reach the planning "
                               "exchange, got rank ";
  REQUIRE_THROWS_WITH(moe::parallel::forward(layer, x, ws),
                      failure_message(bad, non_finite("inf", 1, 4),
                              planning + std::to_string(bad) + " failed before it (its own exception says why)"));
  x(1, 4) = 0;
  CHECK(moe::parallel::forward(layer, x, ws).allFinite());
  // A capacity changed on one rank after construction: the planning exchange tells.
  if (P > 1) {
    if (r == bad) layer.set_capacity(moe::Capacity::from_factor(2.0));
    REQUIRE_THROWS_WITH(moe::parallel::forward(layer, x, ws),
                        Contains("MpiExpertExecutor::plan(): capacity (factor bits, or slots) on every rank "
                                 "(CapacityScope::global) expected ") &&
                            Contains(" on rank " + std::to_string(bad)));
    layer.set_capacity(s.capacity);
  }
  // Rerouting is per rank: refused at call time too, on every rank.
  if (r == 0) layer.set_capacity(s.capacity.rerouted(1));
  REQUIRE_THROWS_WITH(moe::parallel::forward(layer, x, ws),
                      failure_message(0,
                              "MpiExpertExecutor::plan(): Capacity::reroute under CapacityScope::global expected 0 "
                              "(rerouting is per rank), got 1",
                              planning + "0 failed before it (its own exception says why)"));
  layer.set_capacity(s.capacity);
  // Still in step: forward and backward run everywhere.
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  (void)moe::parallel::forward(layer, x, ws, ctx);
  auto grads = layer.make_gradients();
  CHECK(moe::parallel::backward(layer, moe::RowMatrix<double>::Ones(7, d), ws, grads).allFinite());
  // And rerouting under a global scope is refused when the layer is built.
  Settings rerouted = s;
  rerouted.capacity = s.capacity.rerouted(1);
  REQUIRE_THROWS_WITH(build(rerouted), "moe::parallel::expert_parallel_layer(): Capacity::reroute under "
                                       "CapacityScope::global expected 0 (rerouting is per rank), got 1");
}

namespace {
/// SwiGLU experts that throw on a row whose first input is exactly 1000: a failure inside step 4
/// on the rank that owns the expert.
struct ThrowingExperts : moe::SwiGLUExperts<double> {
  using moe::SwiGLUExperts<double>::SwiGLUExperts;
  template <class Arch = xsimd::default_arch>
  void forward(Index e, const moe::ConstMatrixRef<double>& x, moe::MatrixRef<double> hidden, moe::MatrixRef<double> y) const {
    for (Index i = 0; i < x.rows(); ++i)
      if (x(i, 0) == 1000.0) throw std::runtime_error("ThrowingExperts::forward(): row expected no 1000, got one");
    moe::SwiGLUExperts<double>::forward<Arch>(e, x, hidden, y);
  }
};
}  // namespace

TEST_CASE("an expert that throws on its owner makes every rank fail", "[parallel][mpi][errors]") {
  const Index P = ep::world_size(), r = ep::world_rank();
  moe::parallel::MpiExpertExecutor executor(MPI_COMM_WORLD, E);
  const auto& part = executor.partition();
  ThrowingExperts local(part.count(r), d, ff);
  auto layer = moe::parallel::expert_parallel_layer(
      moe::parallel::ExpertSlice<ThrowingExperts>(std::move(local), part, r),
      moe::SoftmaxTopKRouter<double>(moe::test::random_matrix(E, d, 85), 2, moe::SoftmaxTopK<double>{true}),
      moe::WeightedSumCombiner<double>{}, {}, executor);
  moe::RowMatrix<double> x = moe::test::random_matrix(6, d, 86 + static_cast<unsigned>(r));
  if (r == P - 1) x(0, 0) = 1000.0;  // lands on some owner: which one, the router decides
  moe::Workspace<double> ws;
  try {
    (void)moe::parallel::forward(layer, x, ws);
    FAIL("forward returned");
  } catch (const std::exception& e) {
    const std::string what = e.what();
    CHECK((what == "ThrowingExperts::forward(): row expected no 1000, got one" ||
           what.rfind("MpiExpertExecutor::forward(): every rank's experts expected to run, got rank ", 0) == 0));
  }
  // Still in step.
  x(0, 0) = 0;
  CHECK(moe::parallel::forward(layer, x, ws).allFinite());
}

TEST_CASE("each rank loads only its experts' tensors and runs as the whole layer", "[parallel][mpi][io]") {
  const Index r = ep::world_rank();
  const std::string prefix = "model.layers.0.block_sparse_moe.";
  moe::MixtralMoE<double> whole(moe::test::swiglu<double>(E, d, ff, 87),
                                moe::SoftmaxTopKRouter<double>(moe::test::random_matrix(E, d, 88), 2,
                                                               moe::SoftmaxTopK<double>{true}));
  moe::parallel::MpiExpertExecutor executor(MPI_COMM_WORLD, E);
  const auto& part = executor.partition();
  // This rank's checkpoint: the router and its own experts only.
  moe::io::SafetensorsWriter all;
  moe::io::save_layer(all, whole, prefix, moe::io::Family::mixtral);
  const moe::io::SafetensorsFile all_file = moe::test::in_memory(all);
  moe::io::SafetensorsWriter mine;
  for (const std::string& name : all_file.names()) {
    bool other = false;
    for (Index e = 0; e < E; ++e)
      if (!(e >= part.first(r) && e < part.first(r + 1)))
        other = other || name.find("experts." + std::to_string(e) + ".") != std::string::npos;
    if (!other) mine.add<double>(name, all_file.info(name).shape, all_file.read<double>(name));
  }
  auto parts = moe::io::load_mixtral_parts<double>(moe::test::in_memory(mine), prefix, {.top_k = 2},
                                                   {.first = part.first(r), .count = part.count(r)});
  auto layer = moe::parallel::expert_parallel_layer(Slice(std::move(parts.experts), parts.num_experts, parts.first),
                                                    std::move(parts.router), parts.combiner, {}, executor);
  const moe::RowMatrix<double> x = moe::test::random_matrix(12, d, 89 + static_cast<unsigned>(r));
  moe::ForwardContext ctx;
  ctx.gemm = moe::GemmKernel::batch_invariant;
  moe::Workspace<double> ws, ref_ws;
  CHECK(moe::test::same_bits(moe::parallel::forward(layer, x, ws, ctx), whole.forward(x, ref_ws, ctx)));
}
