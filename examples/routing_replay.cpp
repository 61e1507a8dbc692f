// routing_replay: record a forward's routing decisions, then replay them (docs/replay.md).
//
//   moe::RoutingTape tape;              // TapeMode::record
//   ctx.routing_tape = &tape;
//   layer.forward(x, ws, ctx);          // routes as usual and appends one record
//   tape.set_mode(moe::TapeMode::replay);
//   layer.forward(x, ws, ctx);          // no routing: experts, gates, kept flags from the tape
//
// A replay gives the recorded output bit for bit whatever the router's weights are now (here:
// after a step that changed them); TapeMode::replay_experts keeps the recorded experts and
// drops but recomputes the gates with the current router, which is how one trains through a
// fixed routing. A tape saves to a safetensors file and loads back for another process.
//
//   ./routing_replay [tape.safetensors]
#include <moe/io/routing_tape_io.hpp>
#include <moe/moe.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "example_util.hpp"

namespace {

using S = double;  // double: the printed digits do not depend on the SIMD width
using moe::Index;

void print_routing(const char* title, const moe::Workspace<S>& ws) {
  std::printf("%s\n", title);
  const moe::RoutingResult<S>& r = ws.routing;
  for (Index t = 0; t < r.num_tokens; ++t) {
    std::printf("  token %ld:", long(t));
    for (Index j = 0; j < r.k; ++j) {
      const auto i = static_cast<std::size_t>(t * r.k + j);
      std::printf("  e%ld %.3f", long(r.expert[i]), r.gate[i]);
      if (!ws.plan.kept(Index(i))) std::printf(" DROPPED");
      for (std::size_t m = 0; m < ws.plan.rerouted.size(); ++m)
        if (ws.plan.rerouted[m] == Index(i)) std::printf(" (rerouted from e%ld)", long(ws.plan.rerouted_from[m]));
    }
    std::printf("\n");
  }
}

bool identical(const moe::RowMatrix<S>& a, const moe::RowMatrix<S>& b) { return (a.array() == b.array()).all(); }

}  // namespace

int main(int argc, char** argv) {
  constexpr Index T = 8, E = 4, d = 8, ff = 16, k = 2;
  moe::SwiGLUExperts<S> experts(E, d, ff);
  moe::examples::fill_normal(experts.gate_up(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.down(), 2, 1.0 / std::sqrt(double(ff)));
  moe::SoftmaxTopKRouter<S> router(E, d, k);
  moe::examples::fill_normal(router.weight(), 3, 0.7);
  // Capacity factor 1.0 (4 slots per expert) with overflow rerouting: the record holds where each
  // assignment landed and which were dropped.
  moe::MixtralMoE<S> layer(std::move(experts), std::move(router), {}, moe::Capacity::from_factor(1.0).rerouted(1));
  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 4, 1.0);

  moe::RoutingTape tape;
  moe::ForwardContext ctx;
  ctx.routing_tape = &tape;
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> recorded = layer.forward(x, ws, ctx);
  std::printf("Mixtral top-2 over %ld experts, capacity %ld per expert, rerouting 1 try; %zu record(s) on the tape\n",
              long(E), long(ws.plan.capacity), tape.size());
  print_routing("recorded routing (expert, gate):", ws);

  // A training step changes the router; routing afresh now decides differently.
  moe::examples::fill_normal(layer.router().weight(), 5, 0.7);
  moe::Workspace<S> fresh_ws;
  const moe::RowMatrix<S> fresh = layer.forward(x, fresh_ws);
  Index changed = 0;
  for (std::size_t i = 0; i < fresh_ws.routing.expert.size(); ++i) changed += fresh_ws.routing.expert[i] != ws.routing.expert[i];
  print_routing("after the router changed, routing afresh:", fresh_ws);
  std::printf("assignments whose expert changed: %ld of %ld; output identical to the recorded one: %s\n", long(changed),
              long(T * k), identical(fresh, recorded) ? "yes" : "no");

  tape.set_mode(moe::TapeMode::replay);
  moe::Workspace<S> replay_ws;
  const moe::RowMatrix<S> replayed = layer.forward(x, replay_ws, ctx);
  std::printf("replay (router skipped): output identical to the recorded one: %s\n",
              identical(replayed, recorded) ? "yes" : "no");

  tape.set_mode(moe::TapeMode::replay_experts);
  const moe::RowMatrix<S> regated = layer.forward(x, replay_ws, ctx);
  print_routing("replay_experts (recorded experts and drops, gates from the current router):", replay_ws);
  std::printf("replay_experts: output identical to the recorded one: %s (max |difference| %.3f)\n",
              identical(regated, recorded) ? "yes" : "no", (regated - recorded).cwiseAbs().maxCoeff());

  const std::filesystem::path path =
      argc > 1 ? std::filesystem::path(argv[1]) : std::filesystem::temp_directory_path() / "routing_replay.safetensors";
  moe::io::save_routing_tape(tape, path);
  moe::RoutingTape loaded = moe::io::load_routing_tape(path);
  if (argc <= 1) std::filesystem::remove(path);
  ctx.routing_tape = &loaded;
  const moe::RowMatrix<S> from_file = layer.forward(x, replay_ws, ctx);
  std::printf("saved and loaded (%zu record(s)), replayed: output identical to the recorded one: %s\n", loaded.size(),
              identical(from_file, recorded) ? "yes" : "no");
  return 0;
}
