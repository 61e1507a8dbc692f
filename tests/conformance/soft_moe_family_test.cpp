// Runner for Soft MoE (family puigcerver2023): the layer's dense path, loaded through
// moe::io::load_soft_moe, one sequence per row of the input's batch axis; forward and backward.
#include <moe/io/soft_moe_loader.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "conformance/golden_runner.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::io::SafetensorsFile;
using namespace moe::test;

/// "2x20x64" -> {2, 20, 64}.
std::vector<Index> parse_shape(const std::string& s) {
  std::vector<Index> dims;
  std::size_t start = 0;
  while (start <= s.size()) {
    const std::size_t x = s.find('x', start);
    dims.push_back(std::stol(s.substr(start, x == std::string::npos ? std::string::npos : x - start)));
    if (x == std::string::npos) break;
    start = x + 1;
  }
  if (dims.size() != 3) throw std::runtime_error("input_shape is not B x S x d: " + s);
  return dims;
}

template <class S>
GoldenRun run_soft_moe(const SafetensorsFile& f) {
  if (meta(f, "router") != "soft") throw std::runtime_error("puigcerver2023 case with router " + meta(f, "router"));
  if (meta(f, "expert") != "gelu_erf_ffn") throw std::runtime_error("Soft MoE case with experts " + meta(f, "expert"));
  moe::io::SoftMoeConfig config;
  config.slots_per_expert = meta_index(f, "slots_per_expert");
  const auto layer = moe::io::load_soft_moe<S>(f, meta(f, "prefix"), config);
  const std::vector<Index> shape = parse_shape(meta(f, "input_shape"));
  if (layer.num_experts() != meta_index(f, "num_experts") || layer.input_dim() != shape[2])
    throw std::runtime_error("loaded layer disagrees with the case's num_experts or d_model");
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  moe::ForwardContext ctx;
  ctx.sequence_length = shape[1];
  moe::Workspace<S> ws;
  const RowMatrix<S> y = layer.forward(x, ws, ctx);
  GoldenRun r;
  r.set("output", y.template cast<double>());
  r.set("dispatch", ws.routing.scores.template cast<double>());
  r.set("combine", moe::SoftCombiner<S>::combine_weights(ws).template cast<double>());
  // grad.input, grad.moe.phi and the experts' grad.moe.experts.{e}.wi|wo.weight.
  run_layer_backward(layer, f, r, ctx);
  return r;
}

const bool soft_moe_family_registered = register_family("puigcerver2023", {run_soft_moe<float>, run_soft_moe<double>});

}  // namespace
