// ExpertSlice and copy_experts: a slice holding every expert is the bank it wraps; a block's
// tensors are the whole bank's; a rank loads its block only (io's expert ranges); errors.
#include <moe/io/hf_loader.hpp>
#include <moe/io/save_layer.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/parallel/expert_slice.hpp>

#include <catch2/catch.hpp>
#include <support/bits.hpp>
#include <support/random.hpp>
#include <support/safetensors_file.hpp>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace {

using moe::Index;
template <class S>
using SliceMixtral = moe::MoELayer<moe::parallel::ExpertSlice<moe::SwiGLUExperts<S>>, moe::SoftmaxTopKRouter<S>,
                                   moe::WeightedSumCombiner<S>>;

template <class S>
moe::SwiGLUExperts<S> block_of(const moe::SwiGLUExperts<S>& whole, Index first, Index count) {
  return moe::parallel::copy_experts(whole, first, count, [&](Index n) {
    return moe::SwiGLUExperts<S>(n, whole.input_dim(), whole.d_ff());
  });
}

}  // namespace

TEMPLATE_TEST_CASE("a slice of every expert runs as the bank it wraps in forward and backward", "[parallel][slice]", float,
                   double) {
  using S = TestType;
  const Index E = 5, d = 8, ff = 12;
  moe::MixtralMoE<S> plain(moe::test::swiglu<S>(E, d, ff, 7),
                           moe::SoftmaxTopKRouter<S>(moe::test::random_matrix(E, d, 8).template cast<S>(), 2,
                                                     moe::SoftmaxTopK<S>{true}));
  SliceMixtral<S> sliced(moe::parallel::ExpertSlice<moe::SwiGLUExperts<S>>(plain.experts(), E, 0), plain.router(),
                         moe::WeightedSumCombiner<S>{});
  const moe::RowMatrix<S> x = moe::test::random_matrix(30, d, 9).template cast<S>();
  const moe::RowMatrix<S> dy = moe::test::random_matrix(30, d, 10).template cast<S>();
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  moe::Workspace<S> ws_a, ws_b;
  CHECK(moe::test::same_bits(plain.forward(x, ws_a, ctx), sliced.forward(x, ws_b, ctx)));
  auto ga = plain.make_gradients();
  auto gb = sliced.make_gradients();
  CHECK(moe::test::same_bits(plain.backward(dy, ws_a, ga), sliced.backward(dy, ws_b, gb)));
  CHECK(moe::test::same_bits(ga.experts.gate_up(), gb.experts.local().gate_up()));
  CHECK(moe::test::same_bits(ga.experts.down(), gb.experts.local().down()));
  CHECK(moe::test::same_bits(ga.router.weight(), gb.router.weight()));
}

TEST_CASE("copy_experts takes a block's tensors from the whole bank", "[parallel][slice]") {
  const moe::SwiGLUExperts<double> whole = moe::test::swiglu<double>(6, 4, 5, 11);
  const auto part = block_of(whole, 3, 2);
  REQUIRE(part.num_experts() == 2);
  for (Index i = 0; i < 2; ++i) {
    CHECK(moe::RowMatrix<double>(part.gate_proj(i)) == moe::RowMatrix<double>(whole.gate_proj(3 + i)));
    CHECK(moe::RowMatrix<double>(part.up_proj(i)) == moe::RowMatrix<double>(whole.up_proj(3 + i)));
    CHECK(moe::RowMatrix<double>(part.down_proj(i)) == moe::RowMatrix<double>(whole.down_proj(3 + i)));
  }
  moe::parallel::ExpertSlice<moe::SwiGLUExperts<double>> slice(part, 6, 3);
  CHECK(slice.num_experts() == 6);
  CHECK(slice.owns(3));
  CHECK(slice.owns(4));
  CHECK_FALSE(slice.owns(2));
  CHECK_FALSE(slice.owns(5));
  // Expert 4 of the layer is local expert 1.
  const moe::RowMatrix<double> x = moe::test::random_matrix(3, 4, 12);
  moe::RowMatrix<double> h(3, slice.hidden_cols()), y(3, 4), h2 = h, y2 = y;
  slice.forward(4, x, h, y);
  whole.forward(4, x, h2, y2);
  CHECK(y == y2);
}

TEST_CASE("copy_experts takes a block's rows of a fused bank (GPT-OSS)", "[parallel][slice]") {
  const Index E = 6, d = 4, ff = 3;
  moe::GptOssExperts<double> whole(E, d, ff);
  unsigned seed = 30;
  whole.for_each_parameter([&](const std::string&, auto&& block) { moe::test::fill(block, seed++, 0.5); });
  const auto part = moe::parallel::copy_experts(whole, 2, 3, [&](Index n) { return moe::GptOssExperts<double>(n, d, ff); });
  REQUIRE(part.num_experts() == 3);
  // Expert e's rows of each fused tensor: gate_up [E d, 2 ff], down [E ff, d], biases [E, ...].
  CHECK(part.gate_up() == whole.gate_up().middleRows(2 * d, 3 * d));
  CHECK(part.down() == whole.down().middleRows(2 * ff, 3 * ff));
  CHECK(part.gate_up_bias() == whole.gate_up_bias().middleRows(2, 3));
  CHECK(part.down_bias() == whole.down_bias().middleRows(2, 3));
  // And the block runs as the whole bank's experts 2, 3, 4.
  const moe::RowMatrix<double> x = moe::test::random_matrix(2, d, 31);
  for (Index j = 0; j < 3; ++j) {
    moe::RowMatrix<double> h(2, part.hidden_cols()), y(2, d), h2 = h, y2 = y;
    part.forward(j, x, h, y);
    whole.forward(2 + j, x, h2, y2);
    CHECK(y == y2);
  }
}

TEST_CASE("expert slices refuse experts they do not own and blocks outside the layer", "[parallel][slice][errors]") {
  const moe::SwiGLUExperts<double> whole = moe::test::swiglu<double>(6, 4, 5, 11);
  moe::parallel::ExpertSlice<moe::SwiGLUExperts<double>> slice(block_of(whole, 3, 2), 6, 3);
  moe::RowMatrix<double> x(1, 4), h(1, slice.hidden_cols()), y(1, 4);
  x.setZero();
  REQUIRE_THROWS_WITH(slice.forward(2, x, h, y),
                      "ExpertSlice::forward(): expert index (an owned expert) expected in [3, 5), got 2");
  REQUIRE_THROWS_WITH((moe::parallel::ExpertSlice<moe::SwiGLUExperts<double>>(block_of(whole, 3, 2), 4, 3)),
                      "ExpertSlice::ExpertSlice(): the block [first, first + local experts) expected inside [0, 4), "
                      "got [3, 5)");
  REQUIRE_THROWS_WITH((moe::parallel::ExpertSlice<moe::SwiGLUExperts<double>>(block_of(whole, 3, 2),
                                                                               moe::parallel::ExpertPartition(6, 4), 2)),
                      "ExpertSlice::ExpertSlice(): local experts (rank 2's block) expected 1, got 2");
  REQUIRE_THROWS_WITH(block_of(whole, 5, 2),
                      "moe::parallel::copy_experts(): the block [first, first + count) expected inside [0, 6) and not "
                      "empty, got [5, 7)");
}

TEST_CASE("a rank loads its expert range only so a checkpoint without the other experts loads", "[parallel][slice][io]") {
  const Index E = 6, d = 8, ff = 10;
  const std::string prefix = "model.layers.0.block_sparse_moe.";
  moe::MixtralMoE<float> layer(moe::test::swiglu<float>(E, d, ff, 21),
                               moe::SoftmaxTopKRouter<float>(moe::test::random_matrix(E, d, 22).cast<float>(), 2,
                                                             moe::SoftmaxTopK<float>{true}));
  moe::io::SafetensorsWriter full;
  moe::io::save_layer(full, layer, prefix, moe::io::Family::mixtral);
  // The same checkpoint without experts 0, 1, 4 and 5: what a rank owning [2, 4) may be given.
  moe::io::SafetensorsWriter part;
  const moe::io::SafetensorsFile full_file = moe::test::in_memory(full);
  for (const std::string& name : full_file.names()) {
    bool other = false;
    for (Index e : {0, 1, 4, 5}) other = other || name.find("experts." + std::to_string(e) + ".") != std::string::npos;
    if (other) continue;
    const std::vector<float> v = full_file.read<float>(name);
    part.add<float>(name, full_file.info(name).shape, v);
  }
  const moe::io::SafetensorsFile part_file = moe::test::in_memory(part, "part.safetensors");
  auto parts = moe::io::load_mixtral_parts<float>(part_file, prefix, {.top_k = 2}, {.first = 2, .count = 2});
  CHECK(parts.num_experts == E);
  CHECK(parts.first == 2);
  REQUIRE(parts.experts.num_experts() == 2);
  for (Index i = 0; i < 2; ++i) {
    CHECK(moe::RowMatrix<float>(parts.experts.gate_proj(i)) == moe::RowMatrix<float>(layer.experts().gate_proj(2 + i)));
    CHECK(moe::RowMatrix<float>(parts.experts.down_proj(i)) == moe::RowMatrix<float>(layer.experts().down_proj(2 + i)));
  }
  CHECK(parts.router.weight() == layer.router().weight());
  // The whole layer cannot load from it (expert 0 is missing), and a range that needs a missing expert names it.
  CHECK_THROWS_AS(moe::io::load_mixtral<float>(part_file, prefix), moe::io::MissingTensorError);
  CHECK_THROWS_AS(moe::io::load_mixtral_parts<float>(part_file, prefix, {}, {.first = 3, .count = 2}),
                  moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(moe::io::load_mixtral_parts<float>(full_file, prefix, {}, {.first = 5, .count = 2}),
                      "moe::io::load_mixtral_parts(): expert range [first, first + count) expected a non-empty range "
                      "inside [0, 6), got [5, 7)");
  // The default range is the whole layer.
  auto all = moe::io::load_mixtral_parts<float>(full_file, prefix);
  CHECK(all.experts.gate_up() == layer.experts().gate_up());
  CHECK(all.experts.down() == layer.experts().down());
}

TEMPLATE_TEST_CASE("a rank loads its range of GPT-OSS's fused expert tensors", "[parallel][slice][io]", float, double) {
  using S = TestType;
  const Index E = 5, d = 4, ff = 3;
  moe::GptOssExperts<S> experts(E, d, ff, S(1.702), S(7));
  experts.gate_up() = moe::test::random_matrix(E * d, 2 * ff, 31).template cast<S>();
  experts.gate_up_bias() = moe::test::random_matrix(E, 2 * ff, 32).template cast<S>();
  experts.down() = moe::test::random_matrix(E * ff, d, 33).template cast<S>();
  experts.down_bias() = moe::test::random_matrix(E, d, 34).template cast<S>();
  const moe::GptOssMoE<S> layer(experts, moe::TopKSoftmaxRouter<S>(moe::test::random_matrix(E, d, 35).template cast<S>(), 2, {},
                                                                   moe::test::random_matrix(E, 1, 36).template cast<S>().col(0)));
  moe::io::SafetensorsWriter w;
  moe::io::save_layer(w, layer, "mlp.");
  const moe::io::SafetensorsFile file = moe::test::in_memory(w);
  for (const auto& [first, count] : {std::pair<Index, Index>{0, 5}, {1, 3}, {4, 1}, {0, 1}}) {
    auto parts = moe::io::load_gpt_oss_parts<S>(file, "mlp.", {2}, {.first = first, .count = count});
    CHECK(parts.num_experts == E);
    CHECK(parts.first == first);
    REQUIRE(parts.experts.num_experts() == count);
    // Expert first + i of the layer is expert i of the range: its rows of each fused tensor.
    CHECK(parts.experts.gate_up() == layer.experts().gate_up().middleRows(first * d, count * d));
    CHECK(parts.experts.gate_up_bias() == layer.experts().gate_up_bias().middleRows(first, count));
    CHECK(parts.experts.down() == layer.experts().down().middleRows(first * ff, count * ff));
    CHECK(parts.experts.down_bias() == layer.experts().down_bias().middleRows(first, count));
    CHECK(parts.router.weight() == layer.router().weight());
  }
  REQUIRE_THROWS_WITH(moe::io::load_gpt_oss_parts<S>(file, "mlp.", {2}, {.first = 4, .count = 2}),
                      "moe::io::load_gpt_oss_parts(): expert range [first, first + count) expected a non-empty range "
                      "inside [0, 5), got [4, 6)");
  // The default range is the whole layer, and the whole loader still reads it bit for bit.
  const auto all = moe::io::load_gpt_oss_parts<S>(file, "mlp.", {2});
  CHECK(all.experts.gate_up() == layer.experts().gate_up());
  const auto whole = moe::io::load_gpt_oss<S>(file, "mlp.", {2});
  CHECK(whole.experts().down() == layer.experts().down());
  CHECK(whole.router().bias() == layer.router().bias());
}
