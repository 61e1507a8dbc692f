// The recurrent layer: GRU experts over whole sequences, routed once per sequence.
#ifndef MOE_LAYER_RECURRENT_MOE_HPP
#define MOE_LAYER_RECURRENT_MOE_HPP

#include <moe/combine/weighted_sum_combiner.hpp>
#include <moe/expert/gru_experts.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/router/sequence_router.hpp>

namespace moe {

/// Recurrent experts with per-sequence routing (the golden case recurrent_expert): each
/// sequence's mean picks k GRU experts by softmax top-k (renormalised), every token of the
/// sequence goes to them, and y_t = sum over the sequence's experts of gate * h_t. Forward
/// reads ForwardContext::sequence_length (0: the batch is one sequence). Capacity must stay
/// off: a dropped token would break its sequence, which GRUExperts refuses.
template <class S>
using RecurrentMoE = MoELayer<GRUExperts<S>, SequenceSoftmaxTopKRouter<S>, WeightedSumCombiner<S>>;

}  // namespace moe

#endif  // MOE_LAYER_RECURRENT_MOE_HPP
