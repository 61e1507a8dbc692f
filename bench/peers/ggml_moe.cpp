// The ggml peer of moe_bench_quant: the routed experts' products of one MoE layer as llama.cpp
// computes them, two MUL_MAT_ID ops (ggml_mul_mat_id) per layer, gate and up fused in one
// [d, 2ff, E] weight and down in [ff, d, E], at the same shapes, types, token counts and
// thread count as bench/quant_bench.cpp, and its routing: --routing FILE reads the experts of
// each token that moe_bench_quant routed (it writes them with MOE_BENCH_ROUTING=FILE); without
// it, token t uses experts (t k + j) mod E, j < k (every expert gets T k / E rows).
//
// Not built by the project (ggml is not a dependency): scripts/bench_all.sh compiles it
// against a ggml checkout and build it is given (GGML_DIR), e.g.
//   c++ -O2 -std=c++17 bench/peers/ggml_moe.cpp -I$GGML_DIR/include -L$GGML_DIR/build/src
//       -lggml -lggml-base -lggml-cpu -Wl,-rpath,$GGML_DIR/build/src -o ggml_moe
// Why not test-backend-ops perf: its perf mode has fixed shapes of its own, and its test-file
// mode routes every token to experts 0..k-1; this program times the same operator on our
// shapes and routing. As moe_bench_quant, each timed call follows a read of 128 MiB, so the
// weights come from memory (bench/bench_measure.hpp, CacheSweep). Output: one JSON object per
// line.
//
//   ggml_moe [--threads N] [--min-time SECONDS] [--routing FILE]
#include <ggml-cpu.h>
#include <ggml.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

struct Shape {
  const char* name;
  int64_t d, ff, experts, top_k;
};

struct Type {
  const char* name;
  ggml_type type;
};

void fill(ggml_tensor* t, std::mt19937& rng, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  const int64_t n_per_row = t->ne[0];
  const int64_t rows = ggml_nelements(t) / n_per_row;
  std::vector<float> values(static_cast<size_t>(n_per_row * rows));
  for (float& v : values) v = normal(rng);
  if (t->type == GGML_TYPE_F32) {
    std::memcpy(t->data, values.data(), values.size() * sizeof(float));
  } else if (t->type == GGML_TYPE_BF16) {
    ggml_fp32_to_bf16_row(values.data(), static_cast<ggml_bf16_t*>(t->data), static_cast<int64_t>(values.size()));
  } else {
    ggml_quantize_chunk(t->type, values.data(), t->data, 0, rows, n_per_row, nullptr);
  }
}

/// Reads 128 MiB, one load per cache line, evicting the previous call's weights.
void sweep() {
  static std::vector<std::uint64_t> words(std::size_t{128} << 17, 1);
  static volatile std::uint64_t sink = 0;
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < words.size(); i += 8) sum += words[i];
  sink = sink + sum;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1;
  double min_time = 0.5;
  std::map<std::pair<std::string, int64_t>, std::vector<int32_t>> routing;  // (shape, T) -> T k ids
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (std::strcmp(argv[i], "--min-time") == 0 && i + 1 < argc) min_time = std::atof(argv[++i]);
    else if (std::strcmp(argv[i], "--routing") == 0 && i + 1 < argc) {
      std::ifstream f(argv[++i]);
      if (!f) {
        std::fprintf(stderr, "ggml_moe: cannot read %s\n", argv[i]);
        return 2;
      }
      std::string line;
      while (std::getline(f, line)) {
        std::istringstream in(line);
        std::string name;
        int64_t T = 0, k = 0;
        in >> name >> T >> k;
        std::vector<int32_t> ids;
        for (int32_t e; in >> e;) ids.push_back(e);
        if (T > 0 && static_cast<int64_t>(ids.size()) == T * k) routing[{name, T}] = std::move(ids);
      }
    } else {
      std::fprintf(stderr, "usage: %s [--threads N] [--min-time SECONDS] [--routing FILE]\n", argv[0]);
      return 2;
    }
  }
  ggml_cpu_init();
  const Shape shapes[] = {{"mixtral-scaled", 1024, 2816, 8, 2}, {"olmoe-scaled", 1024, 512, 64, 8}};
  const Type types[] = {{"f32", GGML_TYPE_F32},
                        {"bf16", GGML_TYPE_BF16},
                        {"q8_0", GGML_TYPE_Q8_0},
                        {"q4_0", GGML_TYPE_Q4_0},
                        {"q4_k", GGML_TYPE_Q4_K}};
  const int64_t token_counts[] = {1, 4, 16, 32, 512, 2048};
  for (const Shape& s : shapes) {
    for (const Type& ty : types) {
      // Weights once per shape and type; activations and ids per token count.
      const size_t weight_bytes = ggml_row_size(ty.type, s.d) * static_cast<size_t>(2 * s.ff * s.experts) +
                                  ggml_row_size(ty.type, s.ff) * static_cast<size_t>(s.d * s.experts);
      ggml_init_params wp{weight_bytes + 4 * ggml_tensor_overhead() + (16u << 20), nullptr, false};
      ggml_context* wctx = ggml_init(wp);
      ggml_tensor* gate_up = ggml_new_tensor_3d(wctx, ty.type, s.d, 2 * s.ff, s.experts);
      ggml_tensor* down = ggml_new_tensor_3d(wctx, ty.type, s.ff, s.d, s.experts);
      std::mt19937 rng(7);
      fill(gate_up, rng, 0.02f);
      fill(down, rng, 0.02f);
      for (const int64_t T : token_counts) {
        const size_t act_bytes = static_cast<size_t>(T) * static_cast<size_t>(s.d + s.top_k * s.ff) * sizeof(float) +
                                 static_cast<size_t>(T * s.top_k) * (2 * s.ff + s.d) * sizeof(float) +
                                 static_cast<size_t>(T * s.top_k) * sizeof(int32_t);
        // ggml_graph_compute_with_ctx takes its work buffer (the activations converted to the
        // weights' dot type, the routing) from this context too.
        ggml_init_params ap{3 * act_bytes + 64 * ggml_tensor_overhead() + ggml_graph_overhead() + (64u << 20), nullptr,
                            false};
        ggml_context* ctx = ggml_init(ap);
        ggml_tensor* x = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, s.d, 1, T);
        ggml_tensor* a = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, s.ff, s.top_k, T);
        ggml_tensor* ids = ggml_new_tensor_2d(ctx, GGML_TYPE_I32, s.top_k, T);
        fill(x, rng, 1.0f);
        fill(a, rng, 1.0f);
        auto* id = static_cast<int32_t*>(ids->data);
        const auto routed = routing.find({s.name, T});
        const bool same_routing = routed != routing.end();
        for (int64_t t = 0; t < T; ++t)
          for (int64_t j = 0; j < s.top_k; ++j)
            id[t * s.top_k + j] = same_routing ? routed->second[static_cast<size_t>(t * s.top_k + j)]
                                               : static_cast<int32_t>((t * s.top_k + j) % s.experts);
        ggml_tensor* h = ggml_mul_mat_id(ctx, gate_up, x, ids);
        ggml_tensor* y = ggml_mul_mat_id(ctx, down, a, ids);
        ggml_cgraph* gf = ggml_new_graph(ctx);
        ggml_build_forward_expand(gf, h);
        ggml_build_forward_expand(gf, y);
        ggml_graph_compute_with_ctx(ctx, gf, threads);  // warm-up
        int runs = 0;
        double best = 1e30, total = 0;
        while (total < min_time || runs < 3) {
          sweep();
          const auto t0 = std::chrono::steady_clock::now();
          ggml_graph_compute_with_ctx(ctx, gf, threads);
          const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          best = std::min(best, sec);
          total += sec;
          ++runs;
        }
        const double flops = 2.0 * double(T * s.top_k) * 3.0 * double(s.d) * double(s.ff);
        std::printf(
            "{\"peer\": \"ggml\", \"shape\": \"%s\", \"type\": \"%s\", \"tokens\": %lld, \"threads\": %d, "
            "\"runs\": %d, \"best_s\": %.9g, \"mean_s\": %.9g, \"gflops\": %.6g, \"tokens_per_s\": %.6g, "
            "\"routing\": \"%s\"}\n",
            s.name, ty.name, static_cast<long long>(T), threads, runs, best, total / runs, flops / best * 1e-9,
            double(T) / best, same_routing ? "moe_bench_quant" : "round-robin");
        std::fflush(stdout);
        ggml_free(ctx);
      }
      ggml_free(wctx);
    }
  }
  return 0;
}
