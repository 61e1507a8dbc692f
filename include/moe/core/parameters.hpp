// Named parameters: every policy lists its trainable tensors under the names a Hugging Face
// checkpoint uses, so gradients, optimisers and loaders agree on one vocabulary.
#ifndef MOE_CORE_PARAMETERS_HPP
#define MOE_CORE_PARAMETERS_HPP

#include <moe/core/types.hpp>

#include <string>
#include <string_view>

namespace moe {

namespace detail {
/// Replaces "{e}" in a name pattern by the expert index.
inline std::string expand_name(std::string_view pattern, Index e) {
  std::string out(pattern);
  const auto pos = out.find("{e}");
  if (pos != std::string::npos) out.replace(pos, 3, std::to_string(e));
  return out;
}
}  // namespace detail

/// Sets every parameter of a policy (anything with for_each_parameter) to zero: a gradient
/// accumulator is a zeroed copy of the policy it belongs to, so it has the same names and
/// shapes by construction.
template <class Policy>
void zero_parameters(Policy& p) {
  p.for_each_parameter([](const std::string&, auto&& block) { block.setZero(); });
}

template <class Policy>
[[nodiscard]] Policy zeros_like(const Policy& p) {
  Policy z = p;
  zero_parameters(z);
  return z;
}

}  // namespace moe

#endif  // MOE_CORE_PARAMETERS_HPP
