// expert_parallel: train one MoE layer data-parallel and expert-parallel over MPI ranks, then
// check the result bit for bit against the same training in one process (docs/expert_parallel.md).
//
//   mpirun -np 4 ./expert_parallel          (as root: add --allow-run-as-root, or set
//                                            OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
//
// Every rank draws its own batch each step (data parallel) and holds 8 / P of the experts
// (expert parallel); the router is replicated and its gradient summed over the ranks in rank
// order. The toy task: imitate a fixed "teacher" MoE layer (mean squared error). Rank 0 prints.
#include <moe/layer/moe_layer.hpp>
#include <moe/parallel/expert_parallel.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "example_util.hpp"

namespace {

using S = float;
using moe::Index;
constexpr Index E = 8, d = 16, ff = 32, k = 2, tokens = 48, steps = 12;
constexpr S learning_rate = S(0.2);

moe::MixtralMoE<S> make_layer(std::uint64_t seed) {
  moe::SwiGLUExperts<S> experts(E, d, ff);
  moe::examples::fill_normal(experts.gate_up(), seed, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.down(), seed + 1, 1.0 / std::sqrt(double(ff)));
  moe::SoftmaxTopKRouter<S> router(E, d, k, moe::SoftmaxTopK<S>{.renormalize = true});
  moe::examples::fill_normal(router.weight(), seed + 2, 1.0 / std::sqrt(double(d)));
  return {std::move(experts), std::move(router)};
}

/// Rank q's batch at a step, and the teacher's output on it: every rank can rebuild any rank's.
moe::RowMatrix<S> batch(Index step, Index q) {
  moe::RowMatrix<S> x(tokens, d);
  moe::examples::fill_normal(x, 1000 + static_cast<std::uint64_t>(step * 64 + q), 1.0);
  return x;
}

/// dL/dy of L = sum over all ranks' tokens of |y - target|^2 / (P * tokens); the loss part.
S loss_gradient(const moe::RowMatrix<S>& y, const moe::RowMatrix<S>& target, Index P, moe::RowMatrix<S>& dy) {
  const S scale = S(1) / static_cast<S>(P * tokens);
  dy = (y - target) * (S(2) * scale);
  return (y - target).squaredNorm() * scale;
}

/// p -= lr * g for every tensor, p and g walked in the same order.
template <class Params, class Grads>
void sgd(Params& params, const Grads& grads) {
  std::vector<moe::RowMatrix<S>> g;
  grads.for_each_parameter([&](const std::string&, const auto& block) { g.emplace_back(block); });
  std::size_t i = 0;
  params.for_each_parameter([&](const std::string&, auto&& block) { block -= learning_rate * g[i++]; });
}

template <class M>
bool same_bits(const M& a, const M& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(S) * static_cast<std::size_t>(a.size())) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank_i = 0, size_i = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_i);
  MPI_Comm_size(MPI_COMM_WORLD, &size_i);
  const Index r = rank_i, P = size_i;
  int status = 0;
  {
    const moe::MixtralMoE<S> teacher = make_layer(1);
    const moe::MixtralMoE<S> initial = make_layer(7);
    moe::ForwardContext ctx;
    ctx.mode = moe::Mode::training;
    ctx.gemm = moe::GemmKernel::batch_invariant;  // a token's router row has the same bits in any batch

    // This rank's layer: its block of the student's experts, the whole router.
    moe::parallel::MpiExpertExecutor executor(MPI_COMM_WORLD, E);
    const auto& part = executor.partition();
    auto layer = moe::parallel::expert_parallel_layer(
        moe::parallel::ExpertSlice<moe::SwiGLUExperts<S>>(
            moe::parallel::copy_experts(initial.experts(), part.first(r), part.count(r),
                                        [](Index n) { return moe::SwiGLUExperts<S>(n, d, ff); }),
            part, r),
        initial.router(), initial.combiner(), {}, executor);

    // The same training in one process, on every rank (the reference of the check): experts'
    // gradients from the concatenated batch, the router's from each rank's batch apart added
    // in rank order, as the ranks do.
    moe::MixtralMoE<S> single = initial;

    std::vector<double> losses;
    moe::LayerStatistics last_stats;
    std::vector<moe::Index> last_local_load;
    moe::parallel::ExchangeStatistics step_bytes;
    moe::Workspace<S> ws, ws_whole, ws_apart;
    moe::RowMatrix<S> dy;
    for (Index step = 0; step < steps; ++step) {
      const moe::RowMatrix<S> x = batch(step, r);
      moe::Workspace<S> tws;
      const moe::RowMatrix<S> target = teacher.forward(x, tws, {});
      auto grads = layer.make_gradients();
      const moe::RowMatrix<S> y = moe::parallel::forward(layer, x, ws, ctx);
      const S loss = loss_gradient(y, target, P, dy);
      const moe::parallel::ExchangeStatistics fwd = layer.executor().last_call();
      (void)moe::parallel::backward(layer, dy, ws, grads);
      step_bytes = fwd;
      step_bytes += layer.executor().last_call();
      step_bytes.calls = 2;
      moe::parallel::sum_replicated_gradients(grads, layer.executor());
      last_stats = moe::parallel::global_statistics(ws.stats, layer.executor());
      last_local_load = ws.stats.expert_load;
      sgd(layer, grads);
      // The loss over all ranks, added in rank order.
      std::vector<S> all(static_cast<std::size_t>(P));
      MPI_Allgather(&loss, 1, MPI_FLOAT, all.data(), 1, MPI_FLOAT, MPI_COMM_WORLD);
      S total = 0;
      for (S v : all) total += v;
      losses.push_back(total);

      // One process: the concatenation for the experts, the batches apart for the router.
      moe::RowMatrix<S> X(P * tokens, d), T(P * tokens, d);
      for (Index q = 0; q < P; ++q) {
        X.middleRows(q * tokens, tokens) = batch(step, q);
        T.middleRows(q * tokens, tokens) = teacher.forward(X.middleRows(q * tokens, tokens), tws, {});
      }
      auto whole_grads = single.make_gradients();
      moe::RowMatrix<S> dY;
      (void)loss_gradient(single.forward(X, ws_whole, ctx), T, P, dY);
      (void)single.backward(dY, ws_whole, whole_grads);
      auto router_sum = single.make_gradients();
      for (Index q = 0; q < P; ++q) {
        auto g = single.make_gradients();
        moe::RowMatrix<S> dyq;
        (void)loss_gradient(single.forward(X.middleRows(q * tokens, tokens), ws_apart, ctx),
                            T.middleRows(q * tokens, tokens), P, dyq);
        (void)single.backward(dyq, ws_apart, g);
        if (q == 0) router_sum.router.weight() = g.router.weight();
        else router_sum.router.weight() += g.router.weight();
      }
      whole_grads.router.weight() = router_sum.router.weight();
      sgd(single, whole_grads);
    }

    // The check: this rank's experts and router, and an output, against the one process.
    const auto mine = moe::parallel::copy_experts(single.experts(), part.first(r), part.count(r),
                                                  [](Index n) { return moe::SwiGLUExperts<S>(n, d, ff); });
    const bool experts_same = same_bits(mine.gate_up(), layer.experts().local().gate_up()) &&
                              same_bits(mine.down(), layer.experts().local().down());
    const bool router_same = same_bits(single.router().weight(), layer.router().weight());
    const moe::RowMatrix<S> probe = batch(steps, r);
    moe::ForwardContext infer;
    infer.gemm = moe::GemmKernel::batch_invariant;
    const moe::RowMatrix<S> y_ep = moe::parallel::forward(layer, probe, ws, infer);
    const moe::RowMatrix<S> y_one = single.forward(probe, ws_whole, infer);
    const bool output_same = same_bits(y_ep, y_one);

    // Rank 0 prints what every rank reports, in rank order.
    const int flags[3] = {experts_same, router_same, output_same};
    std::vector<int> all_flags(static_cast<std::size_t>(3 * P));
    MPI_Gather(flags, 3, MPI_INT, all_flags.data(), 3, MPI_INT, 0, MPI_COMM_WORLD);
    const std::uint64_t bytes[2] = {step_bytes.bytes_sent, step_bytes.bytes_received};
    std::vector<std::uint64_t> all_bytes(static_cast<std::size_t>(2 * P));
    MPI_Gather(bytes, 2, MPI_UINT64_T, all_bytes.data(), 2, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    std::vector<std::int64_t> local_load(last_local_load.begin(), last_local_load.end());
    std::vector<std::int64_t> all_local(static_cast<std::size_t>(E * P));
    MPI_Gather(local_load.data(), static_cast<int>(E), MPI_INT64_T, all_local.data(), static_cast<int>(E), MPI_INT64_T,
               0, MPI_COMM_WORLD);
    if (r == 0) {
      std::printf("expert_parallel: %ld ranks, %ld SwiGLU experts (d %ld, ff %ld), softmax top-%ld, %ld tokens per rank\n",
                  long(P), long(E), long(d), long(ff), long(k), long(tokens));
      for (Index q = 0; q < P; ++q)
        std::printf("  rank %ld owns experts [%ld, %ld)\n", long(q), long(part.first(q)), long(part.first(q + 1)));
      std::printf("training (SGD, lr %.2f, MSE against a teacher layer):\n", double(learning_rate));
      for (Index s = 0; s < steps; s += 3) std::printf("  step %2ld  loss %.3f\n", long(s), losses[static_cast<std::size_t>(s)]);
      std::printf("  step %2ld  loss %.3f\n", long(steps - 1), losses.back());
      std::printf("last step, rows each rank routed to each expert (its own batch):\n");
      for (Index q = 0; q < P; ++q) {
        std::printf("  rank %ld:", long(q));
        for (Index e = 0; e < E; ++e) std::printf(" %3ld", long(all_local[static_cast<std::size_t>(q * E + e)]));
        std::printf("\n");
      }
      std::printf("  total: ");
      for (Index e = 0; e < E; ++e) std::printf(" %3ld", long(last_stats.expert_load[static_cast<std::size_t>(e)]));
      std::printf("   (%ld tokens, %ld assignments)\n", long(last_stats.tokens), long(last_stats.assignments));
      std::printf("last step, bytes exchanged with other ranks (forward + backward):\n");
      for (Index q = 0; q < P; ++q) {
        const std::uint64_t sent = all_bytes[static_cast<std::size_t>(2 * q)];
        std::printf("  rank %ld: sent %6llu  received %6llu  (%.1f bytes per token of the rank)\n", long(q),
                    static_cast<unsigned long long>(sent),
                    static_cast<unsigned long long>(all_bytes[static_cast<std::size_t>(2 * q + 1)]),
                    double(sent) / double(tokens));
      }
      std::printf("  model 4 k d sizeof(S) (1 - 1/P) = %.1f bytes per token (uniform routing)\n",
                  4.0 * double(k * d) * sizeof(S) * (1.0 - 1.0 / double(P)));
      bool all_same = true;
      std::printf("bit-identity against the same training in one process:\n");
      for (Index q = 0; q < P; ++q) {
        const int* f = all_flags.data() + 3 * q;
        std::printf("  rank %ld: experts %s, router %s, output %s\n", long(q), f[0] ? "identical" : "DIFFERENT",
                    f[1] ? "identical" : "DIFFERENT", f[2] ? "identical" : "DIFFERENT");
        all_same = all_same && f[0] && f[1] && f[2];
      }
      std::printf("%s\n", all_same ? "OK" : "MISMATCH");
      status = all_same ? 0 : 1;
    }
    MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
  }
  MPI_Finalize();
  return status;
}
